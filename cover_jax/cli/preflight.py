"""Every missing prerequisite of a run at once, before anything is opened.

A pod-sized config needs several prepared datasets and pretrained weights;
finding them missing one traceback at a time, each after TensorFlow and JAX
have started, costs a launch per mistake. `missing` lists them all (each
dataset with the command that prepares it), looking only at directories and
files: no dataset is opened and nothing is built or written.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from cover_jax import storage
from cover_jax.training import checkpointing
from cover_jax.training import stages
from data import registry


def missing(config: ConfigDict, workdir: str, mode: str) -> list[str]:
  """What `--mode=mode` (train or eval) of `config` lacks, one line each."""
  found = []
  split = "train_split" if mode == "train" else "eval_split"
  stage = stages.pretrain_config(config) if mode == "train" else None
  seen = set()
  for run in ([stage] if stage is not None else []) + [config]:
    for name, spec in run.get("datasets", {}).items():
      dataset = spec.get("dataset") or name
      if dataset in seen:
        continue
      seen.add(dataset)
      try:
        command = registry.preparation(dataset, run.get("data_dir"))
      except (ValueError, OSError) as e:  # OSError: gs:// not readable
        found.append(f"config.datasets.{name}: {e}")
        continue
      if command:
        found.append(f"dataset {dataset!r} (config.datasets.{name}, split "
                     f"{spec.get(split)!r}) is not prepared: {command}")
  found += _missing_weights(config, workdir, stage is not None)
  return found


def _missing_weights(config: ConfigDict, workdir: str,
                     has_stage: bool) -> list[str]:
  """The weights checkpointing.start_point would start from, where they do
  not exist or the config refuses to start without them."""
  start = checkpointing.start_point(config,
                                    storage.resolve(workdir) / "checkpoints")
  if start.kind in ("resume_from", "init_from") and not storage.exists(
      storage.resolve(start.path), start.kind):
    what = ("another run's workdir, checkpoints directory or one step"
            if start.kind == "resume_from" else
            "--config.init_from=PATH (a ViT .npz, a TimeSformer .pyth or a "
            "run of ours)")
    return [f"config.{start.kind} {start.path} does not exist: give {what}."]
  refusal = checkpointing.refuses_scratch(config, start, has_stage=has_stage)
  return [refusal] if refusal else []


def exit_if_missing(config: ConfigDict, workdir: str, mode: str) -> None:
  """SystemExit listing everything `missing` finds, if anything."""
  found = missing(config, workdir, mode)
  if found:
    raise SystemExit(f"This run cannot start; {len(found)} "
                     f"missing:\n" + "\n".join(f"  - {f}" for f in found))
