"""Training checkpoints (orbax): the state, the data position, restore order.

A checkpoint holds the training state (`step`, `params`, `opt_state`, `rng`:
sharded arrays, restored onto any mesh or device count) and, as JSON, the
data-iterator state (global, so the same for every process), so that a
resumed run reads exactly the batches an uninterrupted one would, on any
number of processes. Orbax writes each step to a temporary
directory and renames it when complete, so a run killed mid-save never
leaves a checkpoint that looks complete but is not.

Where a run's weights come from (`start_point`: training, evaluation,
predict, export and the command line's preflight all follow it), the first
that applies:
  1. the latest checkpoint in `workdir/checkpoints` (the run was restarted);
  2. `config.resume_from`, a checkpoint of another run (state and data);
  3. `config.init_from`, weights only: a ViT `.npz`, a TimeSformer `.pyth`
     (imported by `cover_jax.models.pretrained`) or a checkpoint of ours;
     heads are matched by name, new heads start fresh;
  4. scratch (config.seed), refused where `config.requires_init` is set.

Every step carries a digest of its files (`checkpoint_digest`), written once
orbax has committed it, and every restore (train, eval, predict, export:
`verified_step`) checks it first. In the run's own checkpoints a step that
fails is set aside (renamed `<step>.corrupt-<what>`, which orbax ignores;
never deleted) with one message, and the newest step that verifies is used;
a step named by `resume_from` or `init_from` that fails stops the run with
that message. A step saved without a digest (before digests existed, or a
run stopped between orbax's commit and the digest) is used as before, with
a one-line warning.

A save that fails (a full disk, a revoked permission) raises SaveFailed, one
line naming the step, the file and the OS's error: at once when `save` fails,
else when the asynchronous part has failed (`check_saves`, called every
step, or `finish_saves`). The steps saved before it are intact.

Paths may be local or URIs (gs://bucket/run): they are read through
`storage` (etils.epath) and orbax, never os.path.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
# Orbax's default array metadata (not exported; orbax is pinned).
from orbax.checkpoint._src.metadata import array_metadata_store

from cover_jax import storage
from cover_jax.training import checkpoint_digest
from cover_jax.training import ema

STATE = "state"
DATA = "data"


def manager(directory: str | epath.Path, *, keep: int | None = None,
            async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the last `keep` checkpoints.

  keep=None: read only (another run's checkpoints, never changed).
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=async_save,
      create=keep is not None, read_only=keep is None)
  handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
  state_handler = ocp.PyTreeCheckpointHandler(
      type_handler_registry=_type_handlers())
  for args in (ocp.args.PyTreeSave, ocp.args.PyTreeRestore):
    handlers.add(STATE, args, state_handler)
  json_handler = ocp.JsonCheckpointHandler()
  for args in (ocp.args.JsonSave, ocp.args.JsonRestore):
    handlers.add(DATA, args, json_handler)
  return _DigestingManager(storage.resolve(directory), options=options,
                           handler_registry=handlers)


# Replica-parallel saving writes each replicated array as one slice per
# replica, and every slice shape is a device program of its own: worth it
# for large arrays only. Smaller ones are written whole by one replica.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _type_handlers():
  """Orbax's default type handlers, replica-parallel only above
  MIN_REPLICA_SLICE_BYTES per slice."""
  array = ocp.type_handlers.ArrayHandler(
      array_metadata_store=array_metadata_store.Store(),
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
  others = (int, float, bytes, np.number, np.ndarray, str)
  return ocp.type_handlers.create_type_handler_registry(
      *[(ty, ocp.type_handlers.get_type_handler(ty)) for ty in others],
      (jax.Array, array))


class _DigestingManager(ocp.CheckpointManager):
  """A CheckpointManager that writes each step's digest once it is final."""

  unconfirmed_step: int | None = None  # saved, not yet known to have ended

  def _finalize_checkpoint(self, step: int):
    # Orbax's hook (0.12.8) once a step is committed: after every process
    # finished and the primary renamed it (async saves: in orbax's finalize
    # thread), before older steps are deleted and the processes sync, so
    # wait_until_finished returns with the digest written. A digest that
    # cannot be written fails the save, as a failed write does.
    super()._finalize_checkpoint(step)
    step_dir = self.directory / str(step)
    if jax.process_index() == 0 and _finalized(step_dir):
      checkpoint_digest.write(step_dir)


def data_state(iterator_state: dict, names: list[str]) -> dict:
  """The data position to save: the iterator's, the same on every process.

  (TrainIterator counts the examples of the global batches, so one state
  serves every process and any number of them.)
  """
  return {"names": list(names), "step": int(iterator_state["step"]),
          "consumed": {n: int(iterator_state["consumed"][n]) for n in names},
          "process_count": jax.process_count()}


def resumed_data_state(saved: dict, names: list[str]) -> dict:
  """The iterator state to resume from a checkpoint's `data_state`.

  Exact on any number of processes (the position is global).
  """
  if sorted(saved["names"]) != sorted(names):
    raise ValueError(f"The checkpoint's data state is for datasets "
                     f"{sorted(saved['names'])}, this config trains on "
                     f"{sorted(names)}: use init_from (weights only) to "
                     f"change the mixture.")
  return {"step": saved["step"], "consumed": dict(saved["consumed"])}


class SaveFailed(RuntimeError):
  """A checkpoint could not be written; earlier ones are intact."""


def save(mngr: ocp.CheckpointManager, step: int, state: Any,
         data: dict) -> None:
  """Starts an (asynchronous) save of `step`; the caller decides when.

  SaveFailed if the save before it failed, or if this one fails to start.
  """
  finish_saves(mngr)  # as orbax would, but naming the step that failed
  try:
    mngr.save(step, args=ocp.args.Composite(
        **{STATE: ocp.args.PyTreeSave(state),
           DATA: ocp.args.JsonSave(data)}), force=True)
  except Exception as e:  # pylint: disable=broad-except
    raise SaveFailed(_save_failure(mngr, step, e)) from None
  mngr.unconfirmed_step = step


def check_saves(mngr: ocp.CheckpointManager) -> None:
  """SaveFailed if the last save started has failed; returns at once while
  it is still running (cheap: call it every step)."""
  if (getattr(mngr, "unconfirmed_step", None) is not None and
      not mngr.is_saving_in_progress()):
    finish_saves(mngr)


def finish_saves(mngr: ocp.CheckpointManager) -> None:
  """Waits for the last save started to end; SaveFailed if it failed."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise SaveFailed(_save_failure(
        mngr, getattr(mngr, "unconfirmed_step", None), e)) from None
  mngr.unconfirmed_step = None


def _save_failure(mngr, step: int | None, error: Exception) -> str:
  """One line: the step, the file, the OS's error, what is left."""
  kept = sorted(int(p.name) for p in mngr.directory.iterdir()
                if p.name.isdigit() and _finalized(p) and
                (step is None or int(p.name) < step))
  where, why = _failed_file(error)
  return (f"Saving the checkpoint of step {step} to {where or mngr.directory}"
          f" failed: {why}. The checkpoints saved before it are intact "
          f"({'latest: step ' + str(kept[-1]) if kept else 'none yet'}): "
          f"free space or fix the cause, then run the same command to "
          f"resume.")


# tensorstore's wording of a failed file write.
_TENSORSTORE_WRITE = re.compile(
    r'Failed (?:writing|to write)[^"]*"(?P<path>[^"]+)"[:,]? '
    r"(?:Failed to write \d+ bytes to file \d+: )?(?P<why>.*?)"
    r"(?: \[os_error_code='?(?P<errno>\d+)'?\])?$")


def _failed_file(error: BaseException) -> tuple[str | None, str]:
  """(the file, the OS's reason) behind a failed save, as well as known."""
  first, seen = error, set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.strerror:
      return error.filename, f"{error.strerror} (errno {error.errno})"
    match = _TENSORSTORE_WRITE.search(str(error).split("\n")[0])
    if match:
      errno = f" (errno {match['errno']})" if match["errno"] else ""
      return match["path"], match["why"] + errno
    error = error.__cause__ or error.__context__
  return None, f"{type(first).__name__}: {str(first).splitlines()[0]}"


def restore(mngr: ocp.CheckpointManager, abstract_state: Any,
            step: int | None = None) -> tuple[Any, dict]:
  """(state placed as `abstract_state`'s shardings say, data states).

  Of `step` (raising CorruptCheckpointError if it fails verification), else
  of the newest step that verifies, the corrupt ones set aside.
  """
  step = verified_step(mngr.directory, step)
  _check_ema_matches(mngr.directory / str(step), abstract_state)
  mngr.reload()  # steps set aside are gone
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{STATE: ocp.args.PyTreeRestore(
          abstract_state, restore_args=ocp.checkpoint_utils.
          construct_restore_args(abstract_state)),
         DATA: ocp.args.JsonRestore()}))
  return restored[STATE], restored[DATA]


def _check_ema_matches(step_dir: epath.Path, abstract_state: Any) -> None:
  """ValueError, naming the fix, where the checkpoint keeps an EMA of the
  parameters and the config does not, or the other way round."""
  saved = ema.PARAMS in _state_metadata(step_dir)
  if saved != (ema.PARAMS in abstract_state):
    raise ValueError(
        f"The checkpoint {step_dir} was saved {'with' if saved else 'without'}"
        f" an EMA of the parameters (ema_params), but this config has "
        f"ema_decay {'0' if saved else '> 0'}: resume with the run's own "
        f"config.ema_decay, or train in a new workdir with "
        f"--config.init_from={step_dir} (weights only).")


class CorruptCheckpointError(ValueError):
  """No checkpoint to use: the one asked for, or every one, is corrupt."""


def verified_step(directory: epath.Path, step: int | None = None,
                  what: str = "Checkpoint") -> int:
  """The step of `directory` to read, its digest checked (one policy for
  train, eval, predict and export).

  step=None (the run's own checkpoints): the newest complete step that
  verifies; each newer one is set aside as `<step>.corrupt-<what failed>`
  with one message. Else `step` itself, or CorruptCheckpointError (another
  run's checkpoints are never changed). Every process must call it: process
  0 checks, the others use its answer.
  """
  if jax.process_count() == 1:
    return _verified_step(directory, step, what)
  chosen, error = -1, None
  if jax.process_index() == 0:
    try:
      chosen = _verified_step(directory, step, what)
    except Exception as e:  # pylint: disable=broad-except
      error = e  # raised once the others know, so that none waits
  chosen = int(multihost_utils.broadcast_one_to_all(np.int64(chosen)))
  if error is not None:
    raise error
  if chosen < 0:
    raise CorruptCheckpointError(f"No checkpoint to use in {directory}: "
                                 f"process 0's message says why.")
  return chosen


def _verified_step(directory: epath.Path, step: int | None, what: str) -> int:
  directory = storage.resolve(directory)
  candidates = [step] if step is not None else sorted(
      (int(d) for d in storage.list_dir(directory, what)
       if d.isdigit() and _finalized(directory / d)), reverse=True)
  set_aside = []
  for candidate in candidates:
    step_dir = directory / str(candidate)
    try:
      if not checkpoint_digest.verify(step_dir):
        _report(f"Checkpoint step {candidate} in {directory} has no digest "
                f"(saved before digests, or stopped before its digest was "
                f"written): used unverified.")
      return candidate
    except checkpoint_digest.Mismatch as e:
      failure = f"{step_dir / e.file}: {e.reason}"
      if step is not None:
        raise CorruptCheckpointError(
            f"{what} {step_dir} is corrupt: {failure}: give an earlier "
            f"step of that run (a step directory).") from None
      aside = _set_aside(step_dir, e.tag)
      set_aside.append(aside.name)
      _report(f"Checkpoint step {candidate} is corrupt: {failure}. Set "
              f"aside as {aside} (kept, not deleted); using the newest step "
              f"that verifies.")
  raise CorruptCheckpointError(
      f"No checkpoint in {directory} verifies: set aside {set_aside}. "
      f"Restore them from a copy, or move them away to start afresh.")


def _set_aside(step_dir: epath.Path, tag: str) -> epath.Path:
  """Renames `step_dir` out of orbax's step names (digits only)."""
  target = step_dir.parent / f"{step_dir.name}.corrupt-{tag}"
  n = 1
  while target.exists():  # set aside before: keep both
    n += 1
    target = step_dir.parent / f"{step_dir.name}.corrupt-{tag}.{n}"
  step_dir.rename(target)
  return target


def _report(message: str) -> None:
  """One line on stderr (process 0 alone checks, so it alone reports)."""
  print(message, file=sys.stderr, flush=True)


def checkpoint_step_dir(path: str | epath.Path, what: str = "Checkpoint path"
                        ) -> tuple[epath.Path, int]:
  """(checkpoints directory, step) of `path`: a step dir or a directory of
  steps (then its latest complete step). `what` names the path in errors
  (e.g. "config.resume_from")."""
  path = storage.resolve(path)
  if not storage.exists(path, what):
    raise FileNotFoundError(
        f"{what} {path} does not exist: give a run's workdir, its "
        f"checkpoints directory or one step directory (holding "
        f"'{STATE}/').")
  if storage.exists(path / STATE, what) and path.name.isdigit():
    if not _finalized(path):
      raise ValueError(f"{what} {path} is a checkpoint whose save did not "
                       f"finish: give its directory to use the latest "
                       f"complete step.")
    return path.parent, int(path.name)
  if storage.exists(path / "checkpoints", what):
    path = path / "checkpoints"
  steps = sorted(int(d) for d in storage.list_dir(path, what)
                 if d.isdigit() and _finalized(path / d))
  if not steps:
    raise ValueError(f"{what}: no complete checkpoint in {path}: give a "
                     f"run's workdir, its checkpoints directory, or one step "
                     f"directory (holding '{STATE}/').")
  return path, steps[-1]


def _finalized(step_dir: epath.Path) -> bool:
  # Orbax renames a finished step locally, but marks it on object stores
  # (gs://, no atomic rename) with a commit file: ask orbax.
  return ocp.step.is_path_finalized(step_dir)


def read_params(path: str | epath.Path, what: str = "Checkpoint path"
                ) -> dict:
  """Parameters of our checkpoint at `path`, as host numpy arrays.

  The checkpoint's own tree is read (whatever mesh saved it), so heads and
  shapes can be compared with the config before use.
  """
  return read_weights(path, what)[0]


def read_weights(path: str | epath.Path, what: str = "Checkpoint path"
                 ) -> tuple[dict, dict | None]:
  """(parameters, their EMA or None where the run kept none) of our
  checkpoint at `path`, as host numpy arrays (see `read_params`)."""
  directory, step = checkpoint_step_dir(path, what)
  return _weights_at(directory / str(verified_step(directory, step, what)))


def _weights_at(step_dir: epath.Path) -> tuple[dict, dict | None]:
  state = _state_at(step_dir)
  return state["params"], state.get(ema.PARAMS)


def _state_metadata(step_dir: epath.Path) -> dict:
  """The saved state's tree of array metadata (nothing is read)."""
  metadata = ocp.PyTreeCheckpointer().metadata(step_dir / STATE)
  tree = getattr(metadata, "item_metadata", metadata)
  return getattr(tree, "tree", tree)


def _state_at(step_dir: epath.Path) -> dict:
  item = step_dir / STATE
  checkpointer = ocp.PyTreeCheckpointer()
  tree = _state_metadata(step_dir)
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          tree, is_leaf=lambda m: hasattr(m, "shape"))
  return checkpointer.restore(item, args=ocp.args.PyTreeRestore(
      restore_args=as_numpy))


def merge_heads(loaded: dict, fresh: dict, source: str) -> tuple[dict, list]:
  """`loaded` backbone + heads matched by name; other heads from `fresh`.

  Raises ValueError naming the parameter when a backbone shape differs, or a
  head of the same name has another number of classes.
  """
  def shapes(tree):
    return {jax.tree_util.keystr(p): np.shape(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  # A pre-logits layer the config has no use for is dropped, as in ViT
  # fine-tuning (set model.representation_size to keep it).
  loaded_backbone = {k: v for k, v in loaded.items() if k != "heads" and (
      k != "pre_logits" or k in fresh)}
  fresh_backbone = {k: v for k, v in fresh.items() if k != "heads"}
  want, have = shapes(fresh_backbone), shapes(loaded_backbone)
  if want != have:
    diff = sorted(set(want.items()) ^ set(have.items()))[:6]
    raise ValueError(f"{source} does not fit config.model: parameters that "
                     f"differ (name, shape): {diff}. Make config.model match "
                     f"the checkpoint.")
  heads, new = {}, []
  for name, head in fresh["heads"].items():
    old = loaded.get("heads", {}).get(name)
    if old is None:
      heads[name] = head
      new.append(name)
    elif shapes(old) != shapes(head):
      raise ValueError(
          f"Head {name!r} has {shapes(head)} in the config but "
          f"{shapes(old)} in {source}: give the new head another name (heads "
          f"are matched by name) or set config.heads.{name} to the "
          f"checkpoint's class count.")
    else:
      heads[name] = old
  return {**loaded_backbone, "heads": heads}, new


def inflate_image_model(params: dict, num_frames: int) -> dict:
  """A space_only (ViT) model's parameters as a divided space-time model's.

  TimeSformer's initialisation from an image model (paper 4.1: "temporal
  layers as in TimeSformer"): each block's temporal attention and its
  LayerNorm start as copies of the spatial ones, `temporal_fc` and the time
  embedding at zero, so the new model computes the image model's function on
  every frame. Works for loop ("encoderblock_i") and scanned layouts.
  """
  params = dict(params)
  width = np.shape(params["cls"])[-1]
  params["time_embedding"] = np.zeros((num_frames, width), np.float32)
  for name, block in params.items():
    if not name.startswith("encoderblock"):
      continue
    block = dict(block)
    lead = np.shape(block["spatial_norm"]["scale"])[:-1]  # (depth,) if scanned
    block["temporal_norm"] = block["spatial_norm"]
    block["temporal_attention"] = block["spatial_attention"]
    block["temporal_fc"] = {
        "kernel": np.zeros(lead + (width, width), np.float32),
        "bias": np.zeros(lead + (width,), np.float32)}
    params[name] = block
  return params


def init_params_from(path: str, model, fresh_params: dict
                     ) -> tuple[dict, str]:
  """Parameters for `model` from a ViT .npz, TimeSformer .pyth or ours.

  Returns (params as numpy, a sentence saying what was loaded).
  """
  # Imported here: the importers are only needed when init_from is set.
  from cover_jax.models import pretrained  # pylint: disable=import-outside-toplevel
  resolved = storage.resolve(path)
  path = str(resolved)
  if not storage.exists(resolved, "config.init_from"):
    raise FileNotFoundError(f"config.init_from {path} does not exist: give a "
                            f"ViT .npz, a TimeSformer .pyth or a checkpoint "
                            f"directory of ours.")
  # The loaders build the model from the file: pass every field the file
  # does not determine, so the layouts agree (e.g. scanned blocks). Heads
  # the file lacks are the run's own (fresh_params: its config.seed).
  overrides = dict(num_frames=model.num_frames, image_size=model.image_size,
                   heads=dict(model.heads), scan_layers=model.scan_layers,
                   remat_policy=model.remat_policy, dtype=model.dtype,
                   param_dtype=model.param_dtype,
                   fresh_heads=fresh_params["heads"])
  if path.endswith(".npz"):
    _, loaded = pretrained.load_vit_npz(path, **overrides)
    kind = "ViT .npz"
  elif path.endswith(".pyth"):
    _, loaded = pretrained.load_timesformer_pyth(
        path, num_heads=model.num_heads, **overrides)
    kind = "TimeSformer .pyth"
  else:
    raw, averaged = read_weights(path, "config.init_from")
    # A run's EMA is the weights it reports and hands on (predict, export).
    loaded = raw if averaged is None else averaged
    kind = "cover-jax checkpoint"
    if (model.attention_type == "divided_space_time" and
        "time_embedding" not in loaded):
      loaded = inflate_image_model(loaded, model.num_frames)
      kind = "cover-jax image-model (space_only) checkpoint"
    if averaged is not None:
      kind = f"the EMA weights (ema_params) of {kind}"
  loaded = jax.tree.map(np.asarray, loaded)
  params, new = merge_heads(loaded, jax.tree.map(np.asarray, fresh_params),
                            f"init_from {path}")
  note = f"initialised from {kind} {path}"
  if new:
    note += f" (new heads, initialised fresh: {', '.join(new)})"
  return params, note


@dataclasses.dataclass(frozen=True)
class StartPoint:
  """Where a run's weights come from: `kind` "workdir" (its own
  checkpoints, at `path`, the latest complete one being `step`),
  "resume_from", "init_from" (the config's `path`) or "scratch"."""
  kind: str
  path: str | None = None
  step: int | None = None


def start_point(config, checkpoints_dir) -> StartPoint:
  """The one restore order (module docstring), for a run whose own
  checkpoints are `checkpoints_dir`. Raises when they cannot be read, so an
  unreadable workdir never silently restarts at step 0."""
  checkpoints_dir = storage.resolve(checkpoints_dir)
  try:
    _, step = checkpoint_step_dir(checkpoints_dir)
    return StartPoint("workdir", str(checkpoints_dir), step)
  except (ValueError, FileNotFoundError):  # no complete checkpoint
    pass
  for field in ("resume_from", "init_from"):
    if config.get(field):
      return StartPoint(field, config.get(field))
  return StartPoint("scratch")


def refuses_scratch(config, start: StartPoint, *, has_stage: bool = False
                    ) -> str | None:
  """Why a training run may not start at `start`: from scratch though
  config.requires_init is set and no pretraining stage (`has_stage`)
  provides the weights; None if it may."""
  if start.kind == "scratch" and config.get("requires_init") and not has_stage:
    return ("This config starts from pretrained weights, but "
            "config.init_from is not set and there is no checkpoint to "
            "resume: pass --config.init_from=PATH (a ViT .npz, a TimeSformer "
            ".pyth or a run of ours), or --config.requires_init=False to "
            "train from scratch.")
  return None


@dataclasses.dataclass(frozen=True)
class InferenceWeights:
  """A run's weights to apply: `params`, their EMA `ema_params` (None where
  the run kept none), where they came from (`origin`) and their step."""
  params: dict
  ema_params: dict | None
  origin: str
  step: int


def inference_weights(config, workdir: str, model) -> InferenceWeights:
  """The weights to apply `model` with, as numpy, in `start_point`'s order
  (init_from: heads it lacks start fresh from config.seed; a run of ours
  gives its EMA where it kept one)."""
  checkpoints_dir = storage.resolve(workdir) / "checkpoints"
  start = start_point(config, checkpoints_dir)
  if start.kind == "workdir":
    step = verified_step(checkpoints_dir)  # as train resumes
    return InferenceWeights(*_weights_at(checkpoints_dir / str(step)),
                            f"the checkpoint at step {step} in "
                            f"{checkpoints_dir}", step)
  if start.kind == "resume_from":
    directory, step = checkpoint_step_dir(start.path, "config.resume_from")
    return InferenceWeights(*read_weights(start.path, "config.resume_from"),
                            f"the checkpoint at step {step} in {directory}",
                            step)
  if start.kind == "init_from":
    from cover_jax.models import init_params  # pylint: disable=import-outside-toplevel
    fresh = jax.device_get(init_params(model,
                                       jax.random.PRNGKey(config.seed)))
    params, origin = init_params_from(start.path, model, fresh)
    return InferenceWeights(params, None, origin, 0)
  raise ValueError(f"Nothing to apply the model with: no checkpoint in "
                   f"{checkpoints_dir}, and neither config.resume_from nor "
                   f"config.init_from is set.")


def inference_params(config, workdir: str, model) -> tuple[dict, str, int]:
  """(params as numpy, where they came from, step) to apply `model` with:
  predict, features and export (`inference_weights`): the EMA of the
  parameters where the run kept one (config.ema_decay), else the parameters.
  """
  weights = inference_weights(config, workdir, model)
  if weights.ema_params is None:
    return weights.params, weights.origin, weights.step
  return (weights.ema_params, f"the EMA weights (ema_params) of "
          f"{weights.origin}", weights.step)
