"""Checkpoints that verify: each step's digest is written once orbax has
committed it, and every restore (train, eval/predict/export, resume_from)
checks it; a corrupt step of the run's own is set aside with one message and
the newest step that verifies is used. (tiny_run: tests/conftest.py; copied
before corrupting.)
"""

import json
import logging
import os
import re
import shutil

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cover_jax.training import checkpoint_digest
from cover_jax.training import checkpointing
from tests import tiny_runs

# Positions flipped per file (evenly spread, first and last byte included).
FLIPS_PER_FILE = 16


def copy_run(tiny_run, tmp_path) -> str:
  run = str(tmp_path / "run")
  shutil.copytree(tiny_run, run)
  return run


def listed_files(step_dir) -> list[str]:
  manifest = json.loads((epath.Path(step_dir) / checkpoint_digest.MANIFEST)
                        .read_text())
  return sorted(manifest["files"])


def params_file(step_dir) -> str:
  """The largest array data file of the step (the params live there)."""
  return max((f for f in listed_files(step_dir) if "/d/" in f),
             key=lambda f: os.path.getsize(os.path.join(step_dir, f)))


def flip(path, position):
  data = bytearray(open(path, "rb").read())
  data[position] ^= 1 << (position % 8)
  with open(path, "wb") as f:
    f.write(data)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def corrupt_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if "corrupt" in l]


@pytest.mark.slow
def test_every_flipped_byte_is_detected_or_restores_the_same_values(
    tiny_run, tmp_path):
  """FLIPS_PER_FILE positions of every file of the newest step (its digest
  too), one at a time: the digest check names the file, or else a full read
  gives the saved values (the digest alone decides: no restore per flip)."""
  step_dir = os.path.join(copy_run(tiny_run, tmp_path), "checkpoints", "5")
  saved = checkpointing.read_params(step_dir)
  files = listed_files(step_dir) + [checkpoint_digest.MANIFEST]
  detected, identical = 0, 0
  for name in files:
    path = os.path.join(step_dir, name)
    pristine = open(path, "rb").read()
    for position in sorted(set(np.linspace(0, len(pristine) - 1,
                                           FLIPS_PER_FILE).astype(int))):
      flip(path, int(position))
      try:
        checkpoint_digest.verify(epath.Path(step_dir))
        assert_trees_equal(checkpointing.read_params(step_dir), saved)
        identical += 1
      except checkpoint_digest.Mismatch as e:
        # A flip in the digest may name the file whose entry it changed.
        assert e.file == name or name == checkpoint_digest.MANIFEST
        detected += 1
      with open(path, "wb") as f:
        f.write(pristine)
  assert detected + identical > 10 * len(files)
  assert detected == detected + identical  # sha256: every flip is caught
  assert checkpoint_digest.verify(epath.Path(step_dir))


def test_corrupt_newest_step_is_set_aside_and_training_resumes_before_it(
    tiny_run, digits_dir, tmp_path, monkeypatch, capsys):
  """A flipped byte in step 5's params file: the run says so once, sets 5
  aside (kept) and starts from step 4's state and data position."""
  run = copy_run(tiny_run, tmp_path)
  checkpoints = os.path.join(run, "checkpoints")
  bad = params_file(os.path.join(checkpoints, "5"))
  flip(os.path.join(checkpoints, "5", bad), 100)
  capsys.readouterr()
  state, data, origin = tiny_runs.loop_start(
      monkeypatch, tiny_runs.tiny_config(digits_dir, num_train_steps=5), run)
  assert origin == "resumed from this workdir's checkpoint at step 4"
  assert data["step"] == 4
  assert_trees_equal(state["params"], tiny_runs.step_params(tiny_run, 4))
  [line] = corrupt_lines(capsys.readouterr().err)
  assert line.startswith("Checkpoint step 5 is corrupt: ")
  assert f"5/{bad}: content differs from the saved sha256" in line
  assert "5.corrupt-digest (kept, not deleted)" in line
  assert sorted(os.listdir(checkpoints)) == ["3", "4", "5.corrupt-digest"]
  assert listed_files(os.path.join(checkpoints, "5.corrupt-digest"))


@pytest.mark.parametrize("damage", ["truncate params", "empty _METADATA"])
def test_eval_predict_export_set_aside_a_damaged_step_with_one_message(
    tiny_run, tmp_path, capsys, damage):
  """inference_params (eval, predict, features, export): a truncated params
  file or an emptied state/_METADATA is one message, not a traceback, and
  the step before is used."""
  run = copy_run(tiny_run, tmp_path)
  step_dir = os.path.join(run, "checkpoints", "5")
  name = params_file(step_dir) if damage == "truncate params" else (
      "state/_METADATA")
  path = os.path.join(step_dir, name)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2 if damage == "truncate params" else 0)
  config = tiny_runs.tiny_config("/nonexistent")
  params, origin, step = checkpointing.inference_params(config, run, None)
  assert step == 4 and origin.startswith("the checkpoint at step 4 in ")
  assert_trees_equal(params, tiny_runs.step_params(tiny_run, 4))
  [line] = corrupt_lines(capsys.readouterr().err)
  kept = size // 2 if damage == "truncate params" else 0
  assert f"5/{name}: {kept} bytes, {size} when saved" in line
  assert os.path.isdir(os.path.join(run, "checkpoints", "5.corrupt-size"))


# ----------------------------------------------------------------------------
# Tiny pytrees saved with our manager.
# ----------------------------------------------------------------------------

def tiny_state(step):
  return {"params": {"w": jnp.arange(64, dtype=jnp.float32) * step},
          "step": jnp.int32(step)}


def save_steps(directory, steps, *, keep=3, async_save=False):
  mngr = checkpointing.manager(directory, keep=keep, async_save=async_save)
  for step in steps:
    checkpointing.save(mngr, step, tiny_state(step), {"step": step})
  mngr.wait_until_finished()
  return mngr


def abstract_state():
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tiny_state(0))


def test_async_saves_write_each_digest_once_the_step_is_committed(
    tmp_path, monkeypatch):
  """Every file of each kept step is listed with its size and sha256, by a
  digest written after orbax's commit (the step under its final name)."""
  written = []
  real_write = checkpoint_digest.write

  def record(step_dir):
    written.append((step_dir.name, ocp.step.is_path_finalized(step_dir)))
    real_write(step_dir)

  monkeypatch.setattr(checkpoint_digest, "write", record)
  directory = tmp_path / "ckpt"
  save_steps(directory, [1, 2, 3], keep=2, async_save=True)
  assert written == [("1", True), ("2", True), ("3", True)]
  assert sorted(os.listdir(directory)) == ["2", "3"]
  for step in ("2", "3"):
    step_dir = directory / step
    on_disk = sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*")
                     if p.is_file() and p.name != checkpoint_digest.MANIFEST)
    assert listed_files(step_dir) == on_disk
    assert checkpoint_digest.verify(epath.Path(step_dir))


def test_only_arrays_with_large_replica_slices_are_saved_replica_parallel(
    tmp_path):
  """Replicated on 8 devices: an array whose per-replica slice reaches
  MIN_REPLICA_SLICE_BYTES is saved as 8 slices (a slice program each, which
  jax logs as it compiles); the small one whole, with no program. Both
  restore to their values."""
  mesh = jax.make_mesh((8,), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # Shapes no other test saves: their slice programs are compiled here.
  big_rows = checkpointing.MIN_REPLICA_SLICE_BYTES // 4 + 8 * 7
  host = {"small": np.arange(8 * 13, dtype=np.float32).reshape(8, 13),
          "big": np.arange(8 * big_rows, dtype=np.float32).reshape(
              8 * big_rows, 1)}
  state = jax.tree.map(lambda x: jax.device_put(x, replicated), host)
  compiled = []

  class Record(logging.Handler):
    def emit(self, record):
      message = record.getMessage()
      if message.startswith("Compiling jit(slice) with global shapes"):
        compiled.append(re.search(r"float32\[([\d,]+)\]", message)[1])

  handler = Record()
  logging.getLogger("jax").addHandler(handler)
  try:
    with jax.log_compiles(True):
      mngr = checkpointing.manager(tmp_path / "ckpt", keep=1,
                                   async_save=False)
      checkpointing.save(mngr, 1, state, {"step": 1})
      checkpointing.finish_saves(mngr)
  finally:
    logging.getLogger("jax").removeHandler(handler)
  assert compiled == [f"{8 * big_rows},1"] * 8
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
  restored, _ = checkpointing.restore(mngr, abstract)
  assert_trees_equal(restored, host)


def test_a_step_without_digest_is_used_with_a_one_line_warning(tmp_path,
                                                               capsys):
  directory = tmp_path / "ckpt"
  mngr = save_steps(directory, [1, 2])
  (directory / "2" / checkpoint_digest.MANIFEST).unlink()
  capsys.readouterr()
  state, data = checkpointing.restore(mngr, abstract_state())
  assert int(state["step"]) == 2 and data == {"step": 2}
  assert capsys.readouterr().err == (
      f"Checkpoint step 2 in {directory} has no digest (saved before "
      f"digests, or stopped before its digest was written): used "
      f"unverified.\n")


def test_another_runs_corrupt_step_stops_with_one_message_unchanged(
    tmp_path):
  """resume_from and init_from name a step of another run: it is never
  renamed, and a corrupt one is an error saying what to do."""
  directory = tmp_path / "other"
  save_steps(directory, [1, 2])
  flip(directory / "2" / "state" / "_METADATA", 10)
  with pytest.raises(checkpointing.CorruptCheckpointError, match=(
      rf"^config.init_from {directory}/2 is corrupt: {directory}/2/state/"
      rf"_METADATA: content differs from the saved sha256: give an earlier "
      rf"step of that run \(a step directory\).$")):
    checkpointing.read_params(directory, "config.init_from")
  assert sorted(os.listdir(directory)) == ["1", "2"]
  assert_trees_equal(checkpointing.read_params(directory / "1"),
                     jax.device_get(tiny_state(1)["params"]))


def test_when_no_step_verifies_the_run_stops_and_keeps_them_all(tmp_path,
                                                                capsys):
  """Nothing to resume: an error, not a silent start from scratch; a step
  set aside twice keeps both copies."""
  directory = tmp_path / "ckpt"
  mngr = save_steps(directory, [1, 2])
  os.rename(directory / "2", directory / "2.corrupt-size")  # an earlier one
  save_steps(directory, [2])
  for step in ("1", "2"):
    (directory / step / "data" / "metadata").write_text("{}")
  with pytest.raises(checkpointing.CorruptCheckpointError, match=re.escape(
      f"No checkpoint in {directory} verifies: set aside "
      f"['2.corrupt-size.2', '1.corrupt-size']. Restore them from a copy, "
      f"or move them away to start afresh.")):
    checkpointing.restore(mngr, abstract_state())
  assert len(corrupt_lines(capsys.readouterr().err)) == 2
  assert sorted(os.listdir(directory)) == [
      "1.corrupt-size", "2.corrupt-size", "2.corrupt-size.2"]
  # A new manager (as the next run makes) neither sees nor removes them.
  assert checkpointing.manager(directory, keep=1).latest_step() is None
  assert len(os.listdir(directory)) == 3
