"""--mode=predict, features and export: a trained model applied (main.py).

The weights come from `checkpointing.inference_params` (the workdir's last
checkpoint, else resume_from, else init_from), the class names from
`label_maps.head_infos`; predict and features run `predict.run`, export
`export.export`.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

import numpy as np
from ml_collections import ConfigDict

from cover_jax import storage
from cover_jax.inference import export as exporting
from cover_jax.inference import predict
from cover_jax.training import label_maps
from cover_jax.training import checkpointing


def parse_class_names(values: Sequence[str] | None,
                      heads: Sequence[str]) -> dict[str, str]:
  """--class_names HEAD=FILE pairs (or a lone FILE for a one-head model)."""
  out = {}
  for value in values or ():
    head, sep, path = value.partition("=")
    if not sep:
      if len(heads) != 1:
        raise ValueError(f"--class_names={value}: this model has heads "
                         f"{sorted(heads)}; say which, as HEAD=FILE.")
      head, path = heads[0], value
    if head not in heads:
      raise ValueError(f"--class_names: {head!r} is not a head of this "
                       f"model: {sorted(heads)}.")
    out[head] = path
  return out


def load(config: ConfigDict, workdir: str, class_names=None):
  """(model, params, {head: HeadInfo}, where the weights came from)."""
  from cover_jax.training import train  # pylint: disable=import-outside-toplevel
  model = train.model_from_config(config)
  model.validate()
  infos = label_maps.head_infos(config, workdir, parse_class_names(
      class_names, list(config.heads)))
  params, origin, _ = checkpointing.inference_params(config, workdir, model)
  return model, params, infos, origin


def main(config: ConfigDict, workdir: str, *, mode: str, inputs=None,
         inputs_from=None, output=None, top_k: int = 5, heads=None,
         class_names=None, export_dir=None, decode_threads=None,
         max_image_pixels=None) -> int:
  """Runs one mode; returns the exit status (1 when an input failed).

  The inputs (`predict.input_files`) are checked before the model loads.
  """
  if mode == "export":
    if not export_dir:
      raise ValueError("--mode=export needs --export_dir=DIR.")
  else:
    paths = predict.input_files(inputs, inputs_from, mode)
  model, params, infos, origin = load(config, workdir, class_names)
  print(f"Model: {origin}", flush=True)
  if mode == "export":
    from cover_jax.input import make  # pylint: disable=import-outside-toplevel
    prep = make.preprocessing(config)
    paths = exporting.export(
        model, params, mean=prep.mean, std=prep.std,
        class_names={h: list(i.labels) for h, i in infos.items()},
        export_dir=export_dir, num_frames=prep.num_frames,
        crop_size=prep.crop_size)
    for what, path in paths.items():
      print(f"{what}: {path}")
    return 0
  results = predict.run(model, params, config, infos, paths, heads=heads,
                        top_k=top_k,
                        batch_size=config.get("eval_batch_size") or 8,
                        decode_threads=decode_threads,
                        max_image_pixels=max_image_pixels)
  failed = [r for r in results if r.error]
  if mode == "predict":
    print(predict.table(results))
    if output:
      storage.write_text(storage.resolve(output), "".join(
          json.dumps(r.as_json()) + "\n" for r in results), "--output")
  else:
    write_features(output or "features.npz", results)
  print(f"{len(results) - len(failed)} of {len(results)} inputs done"
        + (f"; {len(failed)} failed (see above)" if failed else "") +
        (f"; written to {output}" if output else ""), flush=True)
  for r in failed:
    print(f"FAILED {r.path}: {r.error}", file=sys.stderr)
  return 1 if failed else 0


def write_features(path: str, results) -> None:
  """ids [N] (input paths) and one [N, width] array per feature (cls,
  pre_logits); failed inputs are left out and listed in `failed`."""
  done = [r for r in results if not r.error]
  arrays = {"ids": np.array([r.path for r in done])}
  for key in (done[0].features if done else {}):
    arrays[key] = np.stack([r.features[key] for r in done])
  arrays["failed"] = np.array([r.path for r in results if r.error])
  with storage.resolve(path).open("wb") as f:
    np.savez(f, **arrays)
