"""The co-training loop: one TimeSformer, one head per dataset (CoVeR).

    python main.py --config=configs/cover_mini.py --workdir=/tmp/cover

Sections, in order: mesh, data, init, restore, step, eval, checkpoint, hooks.
Every process runs the same program (`jax.distributed`); only process 0
writes logs and TensorBoard events. A restarted run continues from the last
checkpoint in the workdir exactly (same parameters, learning rate, RNG and
data position) as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

from absl import logging
from clu import periodic_actions
import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict
import numpy as np
import optax

from cover_jax import input as inp
from cover_jax import pixels
from cover_jax import sharding
from cover_jax import storage
from cover_jax.models import create, unboxed
from cover_jax.runtime import stop_request
from cover_jax.training import checkpointing
from cover_jax.training import ema
from cover_jax.training import evaluate
from cover_jax.training import event_writer
from cover_jax.training import label_maps
from cover_jax.training import mixing
from cover_jax.training import optimizer
from cover_jax.training import workdir_lock


@dataclasses.dataclass(frozen=True)
class Head:
  """A dataset as the loss sees it: its head, part of the batch, weight and
  target options (label smoothing, mixup, cutmix: off by default)."""
  name: str
  part: str
  loss_weight: float
  mixing_options: mixing.Options = mixing.OFF


# ----------------------------------------------------------------------------
# Data: the mixture, checked against the config before any compute.
# ----------------------------------------------------------------------------

def head_of(name: str, part: str, entry: ConfigDict) -> Head:
  """The Head of `config.datasets[name]`, whose examples are in `part`."""
  return Head(name, part, float(entry.loss_weight),
              mixing.from_entry(name, entry))


def check_heads(config: ConfigDict, sources: list[inp.Source]) -> None:
  """config.heads must name every dataset with its label map's size."""
  heads = dict(config.heads)
  names = [s.name for s in sources]
  if sorted(heads) != sorted(names):
    raise ValueError(f"config.heads {sorted(heads)} must name exactly the "
                     f"datasets of config.datasets {sorted(names)}.")
  for source in sources:
    inp.check_head(heads, source)


def train_steps(config: ConfigDict, steps_per_epoch: int) -> int:
  """The steps a run trains: num_train_steps, else num_epochs of the mixture."""
  return config.get("num_train_steps") or int(round(
      config.num_epochs * steps_per_epoch))


def model_from_config(config: ConfigDict):
  fields = dict(config.model)
  if isinstance(fields.get("dtype"), str):
    fields["dtype"] = jnp.dtype(fields["dtype"])
  return create(dict(config.heads), **fields)


# ----------------------------------------------------------------------------
# Init: the state's shapes and shardings, without allocating it.
# ----------------------------------------------------------------------------

def _init_fn(model, tx, with_ema: bool = False):
  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    video = jnp.zeros((1, model.num_frames, model.image_size,
                       model.image_size, 3), jnp.float32)
    params = model.init(init_rng, video, train=False)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": tx.init(params), "rng": train_rng}
    if with_ema:  # the average starts at the initial parameters
      state[ema.PARAMS] = params
    return state
  return init


def state_layout(model, tx, mesh, rules=sharding.DEFAULT_RULES,
                 with_ema: bool = False):
  """(unboxed init function, abstract state with shardings, shardings).

  Optimizer slots inherit their parameter's logical axes (flax boxes pass
  through optax), so everything is placed by the same sharding rules; so
  does the EMA of the parameters (`with_ema`: state["ema_params"]).
  """
  init = _init_fn(model, tx, with_ema)
  boxed = jax.eval_shape(init, jax.random.PRNGKey(0))

  def place(x):  # logical axes -> mesh axes; unnamed leaves are replicated
    if isinstance(x, nn.Partitioned) and not jax.tree.leaves(x.value):
      return x.value  # a boxed empty node (optax's MaskedNode): keep it
    axes = x.names if isinstance(x, nn.Partitioned) else ()
    return jax.sharding.NamedSharding(
        mesh, nn.logical_to_mesh_axes(axes, rules))
  shardings = jax.tree.map(place, boxed,
                           is_leaf=lambda x: isinstance(x, nn.Partitioned))
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      unboxed(boxed), shardings)
  return (lambda rng: unboxed(init(rng))), abstract, shardings


# ----------------------------------------------------------------------------
# Step: weighted per-dataset cross-entropy, one optimizer update.
# ----------------------------------------------------------------------------

def dataset_sums(logits: dict, labels, dataset_ids, heads: list[Head],
                 part: str, mixed: mixing.Mixed | None = None) -> dict:
  """Per dataset of `part`: summed cross-entropy, correct top-1, count.

  A head with soft targets (label smoothing, or `mixed` examples) sums the
  cross-entropy against them: the loss that is optimised. Its top-1 counts
  argmax == the dominant label (the example's own where its lambda >= 0.5,
  else its partner's; the own label where unmixed).
  """
  sums = {}
  for index, head in enumerate(heads):
    if head.part != part:
      continue
    mask = (dataset_ids == index).astype(jnp.float32)
    head_logits = logits[head.name]
    safe = jnp.where(mask > 0, labels, 0)  # others' labels may be too large
    options = head.mixing_options
    if options.soft_targets:
      ce = mixing.soft_cross_entropy(head_logits, mixing.targets(
          safe, head_logits.shape[-1], options.label_smoothing, mixed))
      top1_labels = mixing.dominant_labels(safe, mixed)
    else:
      ce = optax.softmax_cross_entropy_with_integer_labels(head_logits, safe)
      top1_labels = safe
    sums[head.name] = {
        "loss_sum": jnp.sum(ce * mask),
        "correct": jnp.sum((jnp.argmax(head_logits, -1) == top1_labels) *
                           mask),
        "count": jnp.sum(mask)}
  return sums


LOSS_REDUCTIONS = ("weighted_sum", "weighted_average")


def weighted_loss(sums: dict, counts: dict, heads: list[Head],
                  reduction: str = "weighted_sum"):
  """sum_d w_d * (sum of d's cross-entropies) / (d's examples in the batch).

  "weighted_sum" is the paper's loss (3.3, eqs. 2 and 4: the weighted sum of
  per-dataset mean cross-entropies). "weighted_average" divides it by the sum
  of w_d over the datasets in the batch (appendix A's "weighted average of
  both image and video classification loss"). With the same datasets in
  every batch that is a constant factor: for SGD, the learning rate divided
  by the sum of the weights.
  """
  loss = sum(head.loss_weight * sums[head.name]["loss_sum"] /
             jnp.maximum(counts[head.name], 1.0) for head in heads)
  if reduction == "weighted_average":
    loss /= sum(h.loss_weight * (counts[h.name] > 0) for h in heads)
  return loss


def micro_batches(batch, count: int):
  """`batch` as `count` micro-batches along a new leading axis.

  Micro-batch a holds rows a, a + count, a + 2 count, ...: with each batch
  shard's rows a multiple of `count` (TrainIterator's micro_batches), every
  micro-batch is spread over all batch shards, so accumulation moves no
  data between devices and keeps them all busy.
  """
  def split(x):
    return jnp.swapaxes(x.reshape((-1, count) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(model, tx, schedule, heads: list[Head], *, mean, std,
                    accumulation_steps: int = 1, skip_nonfinite: bool = False,
                    loss_reduction: str = "weighted_sum",
                    ema_decay: float = 0.0, ema_warmup: bool = False):
  """The pure step: (state, batch) -> (state, metrics).

  The batch's frames are the pipeline's uint8 pixels; the step normalises
  them with `mean` and `std` (config.input's, `pixels.normalize`). Heads
  whose mixing_options mix have their examples mixed after that, each with
  one of its own dataset in its part (micro-batch, with accumulation), by
  keys of the step's rng and step: the same (seed, step) mixes alike.
  ema_decay > 0: the state's "ema_params" follow the new parameters
  (cover_jax/training/ema.py).
  """
  if loss_reduction not in LOSS_REDUCTIONS:
    raise ValueError(f"config.loss_reduction must be one of {LOSS_REDUCTIONS},"
                     f" not {loss_reduction!r}.")

  def loss_fn(params, batch, rng, counts):
    sums = {}
    for part in sorted(batch):
      frames = pixels.normalize(batch[part]["frames"], mean, std)
      mixed = None
      if any(h.mixing_options.mixes for h in heads if h.part == part):
        # Keys 0 and 1 are the parts' dropout; mixing takes the next ones.
        mixed = mixing.draw(
            jax.random.fold_in(rng, len(inp.PARTS) + inp.PARTS.index(part)),
            batch[part]["dataset"], [h.mixing_options if h.part == part
                                     else mixing.OFF for h in heads],
            *frames.shape[-3:-1])
        frames = mixing.apply(mixed, frames, pixels.normalize(
            batch[part]["frames"][mixed.partner], mean, std))
      logits = model.apply({"params": params}, frames, train=True,
                           rngs={"dropout": jax.random.fold_in(
                               rng, inp.PARTS.index(part))})
      sums.update(dataset_sums(logits, batch[part]["label"],
                               batch[part]["dataset"], heads, part, mixed))
    return weighted_loss(sums, counts, heads, loss_reduction), sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    counts = {h.name: jnp.sum(batch[h.part]["dataset"] == i).astype(
        jnp.float32) for i, h in enumerate(heads) if h.part in batch}
    if accumulation_steps == 1:
      (loss, sums), grads = grad_fn(state["params"], batch, rng, counts)
    else:
      # The loss is a sum over examples divided by whole-batch counts, so the
      # micro-batch gradients add up to the whole batch's exactly.
      micro = micro_batches(batch, accumulation_steps)

      def accumulate(carry, xs):
        micro_batch, index = xs
        out = grad_fn(state["params"], micro_batch,
                      jax.random.fold_in(rng, index), counts)
        return jax.tree.map(jnp.add, carry, out), None
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          grad_fn, state["params"], jax.tree.map(lambda x: x[0], micro), rng,
          counts))
      ((loss, sums), grads), _ = jax.lax.scan(
          accumulate, zeros, (micro, jnp.arange(accumulation_steps)))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = {"params": params, "opt_state": opt_state}
    if ema_decay:
      updated[ema.PARAMS] = ema.update(state[ema.PARAMS], params,
                                       state["step"], ema_decay, ema_warmup)
    if skip_nonfinite:  # keep the old state where the update is not finite
      updated = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             updated, {k: state[k] for k in updated})
    new_state = {"step": state["step"] + 1, "rng": state["rng"], **updated}
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               "learning_rate": schedule(state["step"]), "datasets": sums}
    return new_state, metrics

  return step


# ----------------------------------------------------------------------------
# Hooks: metrics, non-finite losses.
# ----------------------------------------------------------------------------

class NonFiniteLoss(FloatingPointError):
  """The loss or gradient became NaN or inf."""


@dataclasses.dataclass(frozen=True)
class StepFromConfig:
  """A config's jitted training step and the state it steps."""
  step: Any  # jitted (state, batch) -> (state, metrics)
  init: Any  # rng -> state (state_layout's)
  abstract: Any
  shardings: Any


def step_from_config(config: ConfigDict, model, heads: list[Head],
                     steps_per_epoch: int, mesh: jax.sharding.Mesh,
                     batch_shardings: Any = None) -> StepFromConfig:
  """The config's training step over `mesh`: what training runs and
  --mode=plan compiles (one function, so that the plan is of the real step).

  batch_shardings None: the batch arrives as inp.to_global placed it.
  """
  nonfinite = config.get("nonfinite", "stop")
  if nonfinite not in ("stop", "skip"):
    raise ValueError(f"config.nonfinite must be 'stop' or 'skip', not "
                     f"{nonfinite!r}.")
  tx, schedule = optimizer.make(config, steps_per_epoch)
  with_ema = ema.enabled(config)
  init, abstract, shardings = state_layout(model, tx, mesh,
                                           with_ema=with_ema)
  prep = inp.make.preprocessing(config)
  step = jax.jit(
      make_train_step(model, tx, schedule, heads, mean=prep.mean,
                      std=prep.std,
                      accumulation_steps=inp.make.accumulation_steps(config),
                      skip_nonfinite=nonfinite == "skip",
                      loss_reduction=config.get("loss_reduction",
                                                "weighted_sum"),
                      ema_decay=config.ema_decay if with_ema else 0.0,
                      ema_warmup=bool(config.get("ema_warmup"))),
      in_shardings=(shardings, batch_shardings),
      out_shardings=(shardings, None), donate_argnums=0)
  return StepFromConfig(step, init, abstract, shardings)


def summarize(pending: list[tuple[int, dict]], nonfinite: str) -> dict:
  """Averages of a log interval; raises NonFiniteLoss in "stop" mode."""
  host = [(step, jax.device_get(m)) for step, m in pending]
  bad = [(step, m) for step, m in host if not m["finite"]]
  if bad and nonfinite == "stop":
    step, m = bad[0]
    culprits = [name for name, s in m["datasets"].items()
                if not np.isfinite(s["loss_sum"])] or ["the gradient"]
    raise NonFiniteLoss(
        f"Non-finite loss at step {step + 1} (dataset: {', '.join(culprits)};"
        f" loss {m['loss']}, gradient norm {m['grad_norm']}). Lower the "
        f"learning rate, clip gradients (config.optimizer.grad_clip_norm), or"
        f" set config.nonfinite='skip' to skip such steps.")
  out = {"train/loss": np.mean([m["loss"] for _, m in host]),
         "train/grad_norm": np.mean([m["grad_norm"] for _, m in host]),
         "train/learning_rate": host[-1][1]["learning_rate"],
         "train/skipped_steps": len(bad)}
  for name in host[-1][1]["datasets"]:
    count = sum(m["datasets"][name]["count"] for _, m in host)
    if count:
      out[f"train/{name}/loss"] = sum(
          m["datasets"][name]["loss_sum"] for _, m in host) / count
      out[f"train/{name}/top1"] = sum(
          m["datasets"][name]["correct"] for _, m in host) / count
  return {k: float(v) for k, v in out.items()}


def _log_line(step: int, num_steps: int, summary: dict, names: list[str],
              rate: float, input_wait: float) -> str:
  tops = "  ".join(f"{n} {summary[f'train/{n}/top1']:.3f}" for n in names
                   if f"train/{n}/top1" in summary)
  eta = (num_steps - step) / rate if rate else float("nan")
  return (f"step {step}/{num_steps}  loss {summary['train/loss']:.4f}  "
          f"top1 {tops}  lr {summary['train/learning_rate']:.3g}  "
          f"{rate:.2f} steps/s  input wait {input_wait:.0%}  "
          f"ETA {eta / 60:.1f} min")


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------

def train_and_evaluate(config: ConfigDict, workdir: str,
                       stop: stop_request.StopRequest | None = None) -> dict:
  """Trains as `config` says, checkpointing in workdir; returns final eval.

  The run holds workdir (cover_jax/training/workdir_lock.py) from its first write to
  its return: WorkdirInUse if another run holds it. On SIGTERM or SIGINT
  (`stop`, else handlers installed for this call) it saves the step it is at
  and raises stop_request.Stopped. A run that is already finished returns
  its saved evaluation.
  """
  with workdir_lock.held(workdir, config.checkpoint.get("lock_lease_seconds")):
    if stop is not None:
      return _train_and_evaluate(config, workdir, stop)
    with stop_request.StopRequest() as stop:
      return _train_and_evaluate(config, workdir, stop)


@dataclasses.dataclass(frozen=True)
class Mixture:
  """The datasets a run trains on, checked against its config."""
  sources: list
  heads: list[Head]
  steps_per_epoch: int
  num_steps: int

  @property
  def names(self) -> list[str]:
    return [h.name for h in self.heads]


def checked_mixture(config: ConfigDict) -> Mixture:
  """The training mixture; raises ValueError before any compute where the
  config's heads do not match the datasets."""
  sources = inp.make.sources(config, "train_split")
  check_heads(config, sources)
  heads = [head_of(s.name, s.kind, config.datasets[s.name]) for s in sources]
  steps_per_epoch = optimizer.steps_per_epoch(
      sum(s.num_examples for s in sources), config.batch_size)
  return Mixture(sources, heads, steps_per_epoch,
                 train_steps(config, steps_per_epoch))


class MetricLog:
  """The steps' metrics since the last log point, written at the next one.

  Also the host seconds the loop spent blocked on input since then, over the
  wall time to the log point (closed once `summarize` has fetched the
  interval's metrics): near 0, input never held the loop up. Steps are
  dispatched asynchronously, so while the loop waits the step before may
  still run: it is not the device's idle time.
  """

  def __init__(self, config: ConfigDict, writer, mixture: Mixture,
               train_iter, step: int):
    self._nonfinite = config.nonfinite
    self._writer, self._mixture, self._train_iter = writer, mixture, train_iter
    self._pending: list[tuple[int, dict]] = []
    self._last = (time.perf_counter(), step)
    self._input_wait = 0.0

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def waited(self, seconds: float) -> None:
    self._input_wait += seconds

  def flush(self, step: int) -> None:
    """Writes the pending steps' summary (raises NonFiniteLoss in "stop"
    mode) and prints the log line."""
    if not self._pending:
      return
    summary = summarize(self._pending, self._nonfinite)
    self._pending = []
    now = time.perf_counter()
    interval = max(now - self._last[0], 1e-9)
    rate = (step - self._last[1]) / interval
    wait = self._input_wait / interval
    self._last, self._input_wait = (now, step), 0.0
    skipped = {f"train/{name}/corrupt_skipped": count
               for name, count in self._train_iter.corrupt_skipped().items()}
    self._writer.write_scalars(step, {**summary, **skipped,
                                      "train/steps_per_sec": rate,
                                      "train/input_wait_fraction": wait})
    if jax.process_index() == 0:
      print(_log_line(step, self._mixture.num_steps, summary,
                      self._mixture.names, rate, wait), flush=True)


class Saver:
  """Saves the state every `config.checkpoint.every_steps` and when forced,
  never twice for one step, never into another run's checkpoints."""

  def __init__(self, config: ConfigDict, workdir: str, mngr, log: MetricLog,
               writer, train_iter, names: list[str]):
    self._every = config.checkpoint.every_steps
    self._workdir, self._mngr, self._log = workdir, mngr, log
    self._writer, self._train_iter, self._names = writer, train_iter, names
    self._saved = mngr.latest_step()

  def save(self, step: int, state, *, force: bool = False) -> None:
    if step == self._saved or (not force and step % self._every):
      return
    self._log.flush(step)  # never save after a non-finite step in "stop" mode
    self._writer.flush()  # TensorBoard holds every step up to each checkpoint
    workdir_lock.check_held(self._workdir)
    checkpointing.save(self._mngr, step, state, checkpointing.data_state(
        self._train_iter.state(), self._names))
    self._saved = step

  def check(self) -> None:
    checkpointing.check_saves(self._mngr)  # a failed save stops the run

  def finish(self) -> None:
    checkpointing.finish_saves(self._mngr)


def _train_and_evaluate(config: ConfigDict, workdir: str,
                        stop: stop_request.StopRequest) -> dict:
  # One spelling for every writer: absolute if local, the URI if remote.
  workdir = str(storage.resolve(workdir))
  mesh = sharding.make_mesh(**config.mesh)
  mixture = checked_mixture(config)  # every check before any compute
  checkpoints_dir = storage.resolve(workdir) / "checkpoints"
  start = checkpointing.start_point(config, checkpoints_dir)
  refusal = checkpointing.refuses_scratch(config, start)
  if refusal:
    raise ValueError(refusal)
  if jax.process_index() == 0:  # class names for predict, with no data
    label_maps.write_label_maps(workdir, mixture.sources)
  finished = finished_results(config, workdir, start, mixture.num_steps)
  if finished is not None:
    return finished

  model = model_from_config(config)
  model.validate()
  compiled = step_from_config(config, model, mixture.heads,
                              mixture.steps_per_epoch, mesh)
  mngr = checkpointing.manager(checkpoints_dir, keep=config.checkpoint.keep,
                               async_save=config.checkpoint.get("async_save",
                                                                True))
  state, data_state, origin = restore_or_init(
      config, mngr, model, compiled.init, compiled.abstract,
      compiled.shardings, mixture.names, start)
  logging.info("Start: %s", origin)
  if jax.process_index() == 0:
    print(f"Start: {origin}", flush=True)

  train_iter = inp.make.for_train(config, mesh=mesh, state=data_state)
  step = int(jax.device_get(state["step"]))
  writer = event_writer.create(workdir, resumes_at=step,
                               just_logging=jax.process_index() > 0)
  log = MetricLog(config, writer, mixture, train_iter, step)
  saver = Saver(config, workdir, mngr, log, writer, train_iter, mixture.names)

  loop = Loop(config, workdir, mesh, mixture.num_steps, compiled.step,
              train_iter, log, saver, writer, stop,
              functools.partial(run_evaluation, model, config=config,
                                mesh=mesh, writer=writer, workdir=workdir,
                                stop=stop))
  with sharding.use(mesh):
    try:
      results = _loop(loop, state, step)
    finally:
      train_iter.close()
  writer.flush()
  return results


@dataclasses.dataclass(frozen=True)
class Loop:
  """What the loop works with; the state and the step are its arguments."""
  config: ConfigDict
  workdir: str
  mesh: Any
  num_steps: int
  train_step: Any
  train_iter: Any
  log: MetricLog
  saver: Saver
  writer: Any
  stop: stop_request.StopRequest
  evaluate: Any  # (params, step, ema_params) -> results

  def evaluate_at(self, step: int, state) -> dict:
    return self.evaluate(state["params"], step=step,
                         ema_params=state.get(ema.PARAMS))


def _loop(loop: Loop, state, step: int) -> dict:
  """Steps to num_steps, saving and evaluating on schedule; the final
  evaluation. On a stop request: saves the step it is at and re-raises."""
  config, workdir, num_steps = loop.config, loop.workdir, loop.num_steps
  log, saver, evaluate_at = loop.log, loop.saver, loop.evaluate_at
  eval_every = config.eval_every_steps
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                             writer=loop.writer)
  try:
    # An evaluation cut short by a kill or a signal is done on resuming.
    if (eval_every and 0 < step < num_steps and step % eval_every == 0 and
        evaluate.saved_results(config, workdir, step) is None):
      evaluate_at(step, state)
    while step < num_steps:
      loop.stop.check()
      fetch = time.perf_counter()
      batch = inp.to_global(next(loop.train_iter), loop.mesh)
      log.waited(time.perf_counter() - fetch)
      state, metrics = loop.train_step(state, batch)
      log.add(step, metrics)
      step += 1
      progress(step)
      if step % config.log_every_steps == 0:
        log.flush(step)
      saver.save(step, state)
      saver.check()
      # The last step is evaluated once, after the loop.
      if eval_every and step % eval_every == 0 and step < num_steps:
        evaluate_at(step, state)
    # Its threads would go on filling buffers through the final evaluation.
    loop.train_iter.close()
    log.flush(step)
    saver.save(step, state, force=True)
    saver.finish()
    loop.stop.check()
    return evaluate_at(step, state)
  except stop_request.Stopped as stopped:
    saver.save(step, state, force=True)
    saver.finish()
    loop.writer.flush()
    stopped.step = step
    logging.info("%s", stopped)
    raise


def finished_results(config: ConfigDict, workdir: str,
                     start: checkpointing.StartPoint, num_steps: int
                     ) -> dict | None:
  """The saved final evaluation of a run that has ended (its own latest
  checkpoint is at step `num_steps` or past it, and workdir/eval holds that
  step's results for this config), so that running its command again
  restores, builds and compiles nothing; None otherwise."""
  if start.kind != "workdir" or start.step < num_steps:
    return None
  results = evaluate.saved_results(config, workdir, start.step)
  if results is not None and jax.process_index() == 0:
    print(f"Finished at step {start.step}; its evaluation: "
          f"{evaluate.json_paths(workdir, start.step)[0]}", flush=True)
  return results


def run_evaluation(model, params, config, mesh, writer, step, workdir,
                   stop=None, ema_params=None):
  """Evaluation of every dataset (and with reversed frames if configured);
  with `ema_params`, of those weights too, as sections "<name>/ema"
  (evaluate.section_name)."""
  results = {}
  for weights, averaged in [(params, False), (ema_params, True)]:
    if averaged and weights is None:
      continue
    for reverse in (False, True) if config.get("eval_reverse") else (False,):
      results.update(evaluate.evaluate(
          model, weights, config, mesh=mesh, reverse=reverse, writer=writer,
          step=step, workdir=workdir, stop=stop, ema=averaged))
  if jax.process_index() == 0:  # every metric is in the JSON, not here
    where = evaluate.json_paths(workdir, step)[0] if workdir else None
    print(f"Evaluation at step {step}" +
          (f" (all metrics: {where})" if where else "") + ":", flush=True)
    print(results_table(results), flush=True)
  return results


def results_table(results: dict) -> str:
  """Test top-1 and top-5 per dataset, and top-1 with frames reversed
  where measured (rows "<name>/ema": the EMA weights')."""
  reversed_suffix = "/reversed"
  rows = [f"{'dataset':<24}{'top-1':>8}{'top-5':>8}{'reversed':>10}"
          f"{'examples':>10}"]
  for name, metrics in results.items():
    if name.endswith(reversed_suffix):
      continue
    flipped = results.get(name + reversed_suffix)
    rows.append(f"{name:<24}{metrics['top1']:>8.3f}{metrics['top5']:>8.3f}"
                f"{format(flipped['top1'], '.3f') if flipped else '-':>10}"
                f"{metrics['examples']:>10}")
  return "\n".join(rows)


# ----------------------------------------------------------------------------
# Restore: workdir, then resume_from, then init_from, then scratch.
# ----------------------------------------------------------------------------

def restore_or_init(config, mngr, model, init, abstract, shardings,
                    names: list[str],
                    start: checkpointing.StartPoint | None = None
                    ) -> tuple[Any, dict | None, str]:
  """(state, the data state to resume or None, what was used), from `start`
  (default: checkpointing.start_point for the run whose checkpoints `mngr`
  holds)."""
  start = start or checkpointing.start_point(config, mngr.directory)
  if start.kind == "workdir":
    state, data = checkpointing.restore(mngr, abstract)
    return (state, checkpointing.resumed_data_state(data, names),
            f"resumed from this workdir's checkpoint at step "
            f"{mngr.latest_step()}")
  if start.kind == "resume_from":
    directory, step = checkpointing.checkpoint_step_dir(
        start.path, "config.resume_from")
    other = checkpointing.manager(directory)  # read only
    state, data = checkpointing.restore(other, abstract, step)
    return (state, checkpointing.resumed_data_state(data, names),
            f"resumed from {directory} at step {step}")
  rng = jax.random.PRNGKey(config.seed)
  state = jax.jit(init, out_shardings=shardings)(rng)
  if start.kind == "init_from":
    # The fresh parameters whole on every process (for the new heads), even
    # where fsdp or tensor axes spread them over several processes.
    params, note = checkpointing.init_params_from(
        start.path, model, sharding.to_host(state["params"]))
    # Optimizer slots start at zero whatever the weights: keep init's.
    state = {**state, "params": sharding.put(params, shardings["params"])}
    if ema.PARAMS in state:  # the average starts at the loaded weights
      state[ema.PARAMS] = sharding.put(params, shardings[ema.PARAMS])
    return state, None, note
  return state, None, f"initialised from scratch (seed {config.seed})"


def evaluate_checkpoint(config: ConfigDict, workdir: str) -> dict:
  """Evaluates the workdir's last checkpoint (else resume_from, init_from)."""
  mesh = sharding.make_mesh(**config.mesh)
  check_heads(config, inp.make.sources(config, "eval_split"))
  model = model_from_config(config)
  workdir = str(storage.resolve(workdir))
  weights = checkpointing.inference_weights(config, workdir, model)
  if jax.process_index() == 0:
    print(f"Evaluating {weights.origin}" + (
        "" if weights.ema_params is None else
        " (its parameters and their EMA, ema_params)"), flush=True)
  params, ema_params = (
      None if p is None else
      sharding.put(p, sharding.param_shardings(model, mesh))
      for p in (weights.params, weights.ema_params))
  writer = event_writer.create(workdir, resumes_at=None,
                               just_logging=jax.process_index() > 0)
  results = run_evaluation(model, params, config, mesh, writer,
                           weights.step, workdir, ema_params=ema_params)
  writer.flush()
  return results
