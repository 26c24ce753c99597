"""Every missing prerequisite of a run at once, before anything is opened.

A pod-sized config needs several prepared datasets and pretrained weights;
finding them missing one traceback at a time, each after TensorFlow and JAX
have started, costs a launch per mistake. `missing` lists them all (each
dataset with the command that prepares it), looking only at directories and
files: no dataset is opened and nothing is built or written.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from cover_jax import checkpointing
from cover_jax import stages
from cover_jax import storage
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
  """init_from / resume_from that do not exist, when the run needs them."""
  # A restart: the workdir's own checkpoint comes first.
  if checkpointing.has_checkpoint(storage.resolve(workdir) / "checkpoints"):
    return []
  resume_from = config.get("resume_from")
  if resume_from:
    if not storage.exists(storage.resolve(resume_from), "resume_from"):
      return [f"config.resume_from {resume_from} does not exist: give "
              f"another run's workdir, checkpoints directory or one step."]
    return []
  init_from = config.get("init_from")
  if init_from and not storage.exists(storage.resolve(init_from),
                                      "init_from"):
    return [f"config.init_from {init_from} does not exist: give "
            f"--config.init_from=PATH (a ViT .npz, a TimeSformer .pyth or a "
            f"run of ours)."]
  if config.get("requires_init") and not init_from and not has_stage:
    return ["config.init_from is not set and this config starts from "
            "pretrained weights: give --config.init_from=PATH, or "
            "--config.requires_init=False to train from scratch."]
  return []


def exit_if_missing(config: ConfigDict, workdir: str, mode: str) -> None:
  """SystemExit listing everything `missing` finds, if anything."""
  found = missing(config, workdir, mode)
  if found:
    raise SystemExit(f"This run cannot start; {len(found)} "
                     f"missing:\n" + "\n".join(f"  - {f}" for f in found))
