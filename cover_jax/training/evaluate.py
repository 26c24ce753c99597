"""Multi-view evaluation of every dataset on its own head (1 clip x 3 crops).

Every example of a dataset's `eval_split` is scored once: the views of a
video (config.input.eval_views spatial crops of each of config.input.
eval_clips temporal clips, `input.pipeline.eval_frame_indices`; an image
has 1 clip) go through the model together, the softmax probabilities of the
dataset's head are averaged over the views (the paper's protocol, 1 x 3),
and the averaged prediction is scored:

    top1, top5: accuracy of the averaged prediction (top-k: k = min(5, classes))
    loss: mean cross-entropy of the averaged prediction
    examples: examples scored; always the split's size, else an error
    clips, views: the temporal clips and spatial crops averaged per example

Results are keyed by dataset name, or by "<name>/reversed" for an evaluation
with the frames in reverse order (`reverse=True`, the paper's Table 2; video
datasets only: an image has one frame); the EMA of the parameters
(config.ema_decay, `ema=True`) is reported as "<name>/ema" and
"<name>/ema/reversed"::

    results = evaluate(model, params, config, mesh=mesh, writer=writer,
                       step=step, workdir=workdir)
    results["kinetics400"]["top1"]

One jitted function per architecture scores a batch and adds its sums to
running totals on the devices. The head is an argument of it, not part of
the program: the program compiles once per input shape, whatever the number
of datasets of that shape (the video datasets of a paper config share one),
and is reused by later calls (periodic evaluation).
Only the final totals, a few scalars, leave the devices. With several
processes, each feeds the rows of its batch shards of every global batch
(all run the same number of batches) and the sums run over the global arrays, so every process
gets the same results.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from typing import Any, Iterable, Mapping

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict
import numpy as np

from cover_jax import input as inp
from cover_jax import pixels
from cover_jax import sharding
from cover_jax.training import ema

METRICS = ("top1", "top5", "loss")
REVERSED = "reversed"
EMA = "ema"
TOP_K = 5


def section_name(name: str, reverse: bool = False, ema: bool = False) -> str:
  """The results key of a dataset: "kinetics400", "kinetics400/reversed",
  and for the EMA weights "kinetics400/ema", "kinetics400/ema/reversed"."""
  return (name + (f"/{EMA}" if ema else "") +
          (f"/{REVERSED}" if reverse else ""))


def eval_batch_size(config: ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """The global eval batch (in videos); raises unless the mesh can shard it."""
  batch = config.get("eval_batch_size") or config.batch_size
  field = ("config.eval_batch_size" if config.get("eval_batch_size")
           else "config.batch_size (config.eval_batch_size is unset)")
  shards = sharding.batch_shards(mesh)
  if batch % shards:
    raise ValueError(
        f"{field} = {batch} is not divisible by the {shards} batch shards of "
        f"the mesh (its {sharding.batch_axes(mesh)} axes); set "
        f"--config.eval_batch_size to a multiple of {shards}, e.g. "
        f"{math.ceil(batch / shards) * shards}.")
  return batch


def _sources(config: ConfigDict, names: Iterable[str] | None,
             reverse: bool) -> list[inp.Source]:
  """The eval splits of `names` (default: all); videos only if reversed."""
  known = list(config.datasets)
  names = known if names is None else list(names)
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise ValueError(f"Datasets {unknown} are not in config.datasets; "
                     f"known: {known}.")
  chosen = [s for s in inp.make.sources(config, "eval_split")
            if s.name in names]
  if reverse:
    skipped = [s.name for s in chosen if s.kind != "video"]
    if skipped:
      logging.info("Reversed evaluation skips the image datasets %s.",
                   skipped)
    return [s for s in chosen if s.kind == "video"]
  return chosen


class _Static:
  """A model as a jit static argument, hashed and compared by its fields.

  Flax modules holding a dict (the heads) are not hashable. By value, not
  identity: every model of one architecture shares one compiled program, and
  jit's cache keeps no model object per evaluation (a study evaluates dozens).
  """

  def __init__(self, module: nn.Module):
    self.module = module
    self._key = (type(module),) + tuple(
        (f.name, _hashable(getattr(module, f.name)))
        for f in dataclasses.fields(module) if f.name not in ("parent", "name"))

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _Static) and other._key == self._key


def _hashable(value):
  if isinstance(value, Mapping):
    return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


def view_averaged_log_probs(logits, views: int):
  """log of the view-averaged softmax: logits [b * views, classes] (the views
  of an example together) -> [b, classes]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  log_probs = log_probs.reshape(-1, views, log_probs.shape[-1])
  return jax.nn.logsumexp(log_probs, axis=1) - math.log(views)


def _all_logits(model, params, frames, mean, std):
  """(every head's logits [b * views, classes], views) of uint8 frames
  [b, clips * views, T, H, W, 3] normalised with `mean`, `std`."""
  b, views = frames.shape[:2]
  x = pixels.normalize(frames.reshape((b * views,) + frames.shape[2:]),
                       mean, std)
  return model.apply({"params": params}, x, train=False), views


def _batch_sums(log_probs, label, mask, broken):
  """Masked sums of a batch: correct top-1 and top-k, examples, loss, and
  the broken records skipped."""
  k = min(TOP_K, log_probs.shape[-1])
  _, top = jax.lax.top_k(log_probs, k)
  hits = top == label[:, None]
  valid = mask > 0
  nll = -jnp.take_along_axis(log_probs, label[:, None], axis=-1)[:, 0]

  def count(correct):
    return jnp.sum(correct & valid, dtype=jnp.int32)

  return {"top1": count(hits[:, 0]), "top5": count(jnp.any(hits, axis=-1)),
          "examples": count(valid), "loss": jnp.sum(jnp.where(valid, nll, 0.)),
          "skipped": jnp.sum(broken, dtype=jnp.int32)}


def _head_names(model: nn.Module) -> list[str]:
  """The heads in `_accumulate`'s branch order: sorted, as `_Static`
  compares them, so models equal to it share its program whatever order
  their heads dict has."""
  return sorted(model.heads)


@functools.partial(jax.jit, static_argnames=("model", "mean", "std"))
def _accumulate(totals, params, batch, head, *, model: _Static,
                mean: tuple[float, ...], std: tuple[float, ...]):
  """`totals` plus the sums of one global batch on head number `head` of
  `_head_names`: every head's logits, the sums of the one chosen."""
  logits, views = _all_logits(model.module, params, batch["frames"], mean,
                              std)

  def sums_of(name):
    return lambda: _batch_sums(view_averaged_log_probs(logits[name], views),
                               batch["label"], batch["mask"], batch["broken"])

  sums = jax.lax.switch(head, [sums_of(name)
                               for name in _head_names(model.module)])
  return jax.tree.map(jnp.add, totals, sums)


def _zero_totals(mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  zeros = {"top1": np.int32(0), "top5": np.int32(0), "examples": np.int32(0),
           "loss": np.float32(0), "skipped": np.int32(0)}
  return jax.device_put(zeros, replicated)


def evaluate_source(model: nn.Module, params, config: ConfigDict,
                    source: inp.Source, *, mesh: jax.sharding.Mesh,
                    reverse: bool = False, stop=None
                    ) -> dict[str, float | int]:
  """{top1, top5, loss, examples, clips, views} of one eval split on its
  head.

  `params` must already be placed on `mesh` (see `evaluate`); `stop` (a
  stop_request.StopRequest) is checked before every batch.
  """
  inp.check_head(model.heads, source)
  eval_batch_size(config, mesh)
  totals = _zero_totals(mesh)
  static, head = _Static(model), np.int32(
      _head_names(model).index(source.name))
  prep = inp.make.preprocessing(config)
  stream = inp.make.for_eval(config, source, mesh=mesh,
                                reverse=reverse)
  try:
    with sharding.use(mesh):
      for local in stream:
        if stop is not None:
          stop.check(f" during the evaluation of {source.name}")
        local = {k: local[k] for k in ("frames", "label", "mask", "broken")}
        totals = _accumulate(totals, params, inp.to_global(local, mesh),
                             head, model=static, mean=prep.mean, std=prep.std)
  finally:
    stream.close()
  return {**_finalize(jax.device_get(totals), source),
          "clips": prep.clips_of(source.kind), "views": prep.eval_views}


def _finalize(totals: Mapping[str, Any], source: inp.Source
              ) -> dict[str, float | int]:
  examples, skipped = int(totals["examples"]), int(totals["skipped"])
  if examples + skipped != source.num_examples:
    raise RuntimeError(
        f"Evaluation of {source.name!r} ({source.dataset}, split "
        f"{source.split!r}) scored {examples} examples and skipped "
        f"{skipped} broken ones, but the split has {source.num_examples}: "
        f"every example must be scored exactly once.")
  results = {"top1": int(totals["top1"]) / examples,
             "top5": int(totals["top5"]) / examples,
             "loss": float(totals["loss"]) / examples,
             "examples": examples}
  if skipped:  # config.input.on_corrupt="skip"
    results["skipped"] = skipped
  return results


def evaluate(model: nn.Module, params, config: ConfigDict, *,
             mesh: jax.sharding.Mesh, reverse: bool = False,
             names: Iterable[str] | None = None, writer=None,
             step: int | None = None, workdir: str | None = None,
             stop=None, ema: bool = False
             ) -> dict[str, dict[str, float | int]]:
  """Scores every dataset (or `names`) on its eval_split and head.

  Args:
    model: the TimeSformer, with one head per dataset of config.datasets.
    params: its parameters (placed on `mesh` by the sharding rules here; no
      copy when they already are, e.g. the training state's).
    config: the experiment config (datasets, input, eval_batch_size).
    mesh: the device mesh; the eval batch is sharded over its batch axes.
    reverse: feed the frames in reverse order; results are keyed
      "<name>/reversed" and only video datasets are scored.
    names: the datasets to score (default: all of config.datasets).
    writer: a clu metric writer; gets "eval/<key>/<metric>" at `step` on
      every process (clu's `create_default_writer(just_logging=...)` makes
      the other processes' writers only log).
    step: the training step the parameters come from.
    workdir: where process 0 writes the results as JSON (see `write_json`).
    stop: a stop_request.StopRequest, checked before every batch (raises
      stop_request.Stopped; nothing is written).
    ema: `params` are the EMA of the parameters: keys "<name>/ema[...]".

  Returns:
    {key: {"top1", "top5", "loss", "examples"}} with key `section_name(name,
    reverse, ema)`; the same on every process.
  """
  if writer is not None and step is None:
    raise ValueError("evaluate(writer=...) needs the step to write at.")
  eval_batch_size(config, mesh)
  sources = _sources(config, names, reverse)
  params = sharding.put(params, sharding.param_shardings(model, mesh))
  results = {}
  for source in sources:
    start = time.time()
    key = section_name(source.name, reverse, ema)
    results[key] = evaluate_source(model, params, config, source, mesh=mesh,
                                   reverse=reverse, stop=stop)
    logging.info("eval %s: top1 %.4f top5 %.4f loss %.4f (%d examples, "
                 "%.1f s)", key, *(results[key][m] for m in METRICS),
                 results[key]["examples"], time.time() - start)
  if writer is not None:
    write_scalars(writer, step, results)
  if workdir is not None and jax.process_index() == 0:
    write_json(workdir, step, results)
  return results


def write_scalars(writer, step: int, results: Mapping[str, Mapping]) -> None:
  """"eval/<key>/<metric>" scalars of `results` to a clu metric writer."""
  writer.write_scalars(step, {f"eval/{key}/{metric}": values[metric]
                              for key, values in results.items()
                              for metric in METRICS})
  writer.flush()


def json_paths(workdir: str, step: int | None) -> list[epath.Path]:
  """workdir/eval/step_<step>.json (when step is known) and latest.json."""
  folder = epath.Path(workdir) / "eval"
  names = ([] if step is None else [f"step_{int(step)}.json"])
  return [folder / name for name in names + ["latest.json"]]


def write_json(workdir: str, step: int | None,
               results: Mapping[str, Mapping]) -> None:
  """Writes {"step": step, "results": results} to each of `json_paths`.

  Sections already in a file for the same step are kept (e.g. a reversed
  evaluation after the plain one at the same step adds its keys); a file of
  another step is replaced. latest.json is the last evaluation written.
  """
  step = None if step is None else int(step)
  for path in json_paths(workdir, step):
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = dict(results)
    if path.exists():
      old = json.loads(path.read_text())
      if old.get("step") == step:
        merged = {**old.get("results", {}), **results}
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps({"step": step, "results": merged}, indent=2,
                              sort_keys=True))
    tmp.replace(path)


def saved_results(config: ConfigDict, workdir: str, step: int
                  ) -> dict[str, dict[str, float | int]] | None:
  """The results workdir/eval holds for `step`, if they cover every section
  an evaluation of `config` writes (with reversed frames if configured, and
  of the EMA weights if kept) with the clips and views it uses."""
  path = json_paths(workdir, step)[0]
  if not path.exists():
    return None
  saved = json.loads(path.read_text()).get("results", {})
  sources = inp.make.sources(config, "eval_split")
  reverses = (False, True) if config.get("eval_reverse") else (False,)
  weights = (False, True) if ema.enabled(config) else (False,)
  wanted = {section_name(s.name, reverse, averaged): s for averaged in weights
            for reverse in reverses for s in sources
            if s.kind == "video" or not reverse}
  views = config.input.eval_views
  clips = config.input.get("eval_clips", 1)

  def same_views(entry, source) -> bool:  # else evaluated another way
    return (entry.get("views") == views and entry.get("clips") ==
            (clips if source.kind == "video" else 1))

  if not all(key in saved and same_views(saved[key], source)
             for key, source in wanted.items()):
    return None
  return {key: saved[key] for key in wanted}


def read_json(workdir: str, step: int | None = None) -> dict:
  """The results in workdir/eval for `step` (default: latest.json)."""
  path = json_paths(workdir, step)[0]
  return json.loads(path.read_text())
