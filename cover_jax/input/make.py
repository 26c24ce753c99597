"""Input iterators from an experiment config (config.datasets, config.input).

    config.datasets.<name>: dataset (prepared dataset, default: name),
        train_split, eval_split, flip (training horizontal flips),
        sample_weight (None: the dataset's size), loss_weight (the trainer's)
    config.input: the fields of `Preprocessing`, plus seed, video_share and
        on_corrupt ("stop" or "skip": what a record or frame that cannot be
        read or decoded does; pipeline.py)
    config.data_dir: where datasets are prepared (None: ~/tensorflow_datasets)
"""

from __future__ import annotations

import dataclasses

import jax
from ml_collections import ConfigDict

from cover_jax.input.pipeline import (NumpyStream, Preprocessing,
                                      TrainIterator, check_on_corrupt,
                                      eval_batches, mixture_split,
                                      sampling_weights)
from cover_jax.input.source import Source, open_source


def preprocessing(config: ConfigDict) -> Preprocessing:
  """The Preprocessing that config.input describes."""
  fields = {f.name for f in dataclasses.fields(Preprocessing)}
  others = {"seed", "video_share", "on_corrupt"}
  unknown = set(config.input) - fields - others
  if unknown:
    raise ValueError(f"Unknown config.input fields {sorted(unknown)}; known: "
                     f"{sorted(fields | others)}.")
  on_corrupt(config)
  values = {k: (tuple(v) if isinstance(v, (list, tuple)) else v)
            for k, v in config.input.items() if k in fields}
  return Preprocessing(**values)


def on_corrupt(config: ConfigDict) -> str:
  """config.input.on_corrupt ("stop" by default), checked."""
  return check_on_corrupt(config.input.get("on_corrupt", "stop"))


def sources(config: ConfigDict, split_field: str) -> list[Source]:
  """The config's datasets opened at `split_field`, in name order.

  (ConfigDict iterates its keys sorted; this order is the heads' order.)
  """
  return [open_source(name, spec[split_field],
                      dataset=spec.get("dataset") or name,
                      data_dir=config.get("data_dir"))
          for name, spec in config.datasets.items()]


def flips(config: ConfigDict) -> list[bool]:
  """Per dataset, in `sources` order, whether training flips horizontally."""
  return [bool(spec.get("flip", True)) for spec in config.datasets.values()]


def accumulation_steps(config: ConfigDict) -> int:
  """The step's gradient accumulation (config.optimizer.accumulation_steps)."""
  return config.get("optimizer", {}).get("accumulation_steps", 1)


def _sample_weights(config: ConfigDict) -> list[float | None]:
  """Per dataset, in `sources` order, config's sample_weight (None: its
  size)."""
  return [spec.get("sample_weight") for spec in config.datasets.values()]


def batch_split(config: ConfigDict, train_sources: list[Source],
                granule: int) -> dict[str, int]:
  """Examples per part of the config's training batch over `granule` batch
  shards: those for_train's iterator loads (--mode=describe reports it)."""
  return mixture_split(
      [s.kind for s in train_sources],
      sampling_weights(train_sources, _sample_weights(config)),
      config.batch_size, granule=granule,
      micro_batches=accumulation_steps(config),
      video_share=config.input.get("video_share"))


def for_train(config: ConfigDict, *, mesh: jax.sharding.Mesh | None = None,
              granule: int = 1, state: dict | None = None) -> TrainIterator:
  """This process's training iterator over the config's mixture.

  With `mesh`, the batch is split into the mesh's batch shards and this
  process loads the rows of its own (see `sharding.process_batch_shards`);
  without, into `granule` shards, all loaded here. Each part is also a
  multiple of config.optimizer.accumulation_steps per shard.
  """
  granule, shards = _shards(mesh, granule)
  return TrainIterator(
      sources(config, "train_split"), preprocessing(config),
      flips=flips(config),
      global_batch=config.batch_size, seed=config.input.get("seed", 0),
      weights=_sample_weights(config), granule=granule,
      shards=shards,
      micro_batches=accumulation_steps(config),
      video_share=config.input.get("video_share"), state=state,
      on_corrupt=on_corrupt(config))


def for_eval(config: ConfigDict, source: Source, *,
             mesh: jax.sharding.Mesh | None = None,
             reverse: bool = False) -> NumpyStream:
  """This process's evaluation batches of one source (every example once).

  Batch size: config.eval_batch_size, else config.batch_size. With `mesh`,
  this process's rows of each global batch (see `for_train`); without, all.
  """
  granule, shards = _shards(mesh)
  return eval_batches(
      source, preprocessing(config),
      global_batch=config.get("eval_batch_size") or config.batch_size,
      reverse=reverse, granule=granule, shards=shards,
      on_corrupt=on_corrupt(config))


def _shards(mesh: jax.sharding.Mesh | None, granule: int = 1
            ) -> tuple[int, list[int] | None]:
  """(batch shards, those this process loads): the mesh's, else `granule`
  shards, all loaded here (None)."""
  if mesh is None:
    return granule, None
  from cover_jax import sharding  # pylint: disable=import-outside-toplevel
  return sharding.batch_shards(mesh), sharding.process_batch_shards(mesh)
