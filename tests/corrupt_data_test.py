"""Broken records and frames in training and evaluation: named ("stop"),
replaced deterministically and counted ("skip"), never a hang at exit."""

import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from cover_jax import input as inp
from data import frame_store
from tests import damaged_data
from tests import tiny_runs

PREP = inp.Preprocessing(num_frames=8, crop_size=16, scale_range=(1.0, 1.2))
DATASET = "synthetic_clips/video"
# A 5-frame clip: 8 sampled frames take every one of its frames, so the
# broken frame is in every clip drawn from it.
LENGTH, FRAME = 5, 2
# The 12 training clips: a batch of 12 holds each record exactly once.
BATCH = 12
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", params=["stored", "undecodable"])
def broken(request, synthetic_dir, tmp_path_factory):
  """(data dir, broken record): a copy of synthetic_clips/video whose frame
  FRAME of one 5-frame training clip has its stored bytes overwritten
  (riegeli's chunk hash catches it when read), or was stored undecodable
  (the decoder fails on it)."""
  data_dir = damaged_data.copy_dataset(
      synthetic_dir, "video", str(tmp_path_factory.mktemp(request.param)))
  record = damaged_data.first_record_of_length(data_dir, "video", LENGTH)
  if request.param == "stored":
    damaged_data.overwrite_stored_frame(data_dir, "video", record, FRAME)
  else:
    damaged_data.replace_frame(data_dir, "video", record, FRAME,
                               damaged_data.UNDECODABLE)
  return data_dir, record


def source(data_dir, split="train"):
  return inp.open_source("clips", split, dataset=DATASET, data_dir=data_dir)


def train_iterator(data_dir, **kwargs):
  return inp.TrainIterator([source(data_dir)], PREP, flips=[True],
                           global_batch=BATCH, seed=5, **kwargs)


def assert_names_the_frame(message, data_dir, record):
  key = damaged_data.record_key(data_dir, "video", record)
  assert "\n" not in message  # one line for main.py to print
  assert f"Dataset 'clips' ({DATASET}, split 'train')" in message
  assert f"video {key!r} (record {record}), frame {FRAME}" in message
  assert (f"python -m data.verify {DATASET} --data_dir={data_dir} "
          f"--split=train") in message
  assert (f"rm -r {damaged_data.version_dir(data_dir, 'video')}) and "
          f"prepare it again (tfds build {DATASET} ") in message
  assert "config.input.on_corrupt='skip'" in message


@pytest.mark.slow
def test_stop_names_the_dataset_split_video_and_frame(broken):
  data_dir, record = broken
  it = train_iterator(data_dir)
  with pytest.raises(Exception) as error:
    next(it)
  assert_names_the_frame(str(error.value), data_dir, record)
  assert isinstance(error.value, inp.CorruptData)
  assert (error.value.record, error.value.frame) == (record, FRAME)


@pytest.mark.slow
def test_evaluation_stops_with_the_name_or_masks_the_record(broken):
  data_dir, record = broken
  with pytest.raises(Exception) as error:
    list(inp.eval_batches(source(data_dir), PREP, global_batch=8))
  assert_names_the_frame(str(error.value), data_dir, record)
  batches = list(inp.eval_batches(source(data_dir), PREP, global_batch=8,
                                  on_corrupt="skip"))
  mask = np.concatenate([b["mask"] for b in batches])
  records = np.concatenate([b["record"] for b in batches])
  # Every record once (then padding); the broken one counts nowhere.
  assert records[:BATCH].tolist() == list(range(BATCH))
  assert mask.tolist() == [int(r != record) for r in range(BATCH)] + [0] * 4
  broken_rows = np.concatenate([b["broken"] for b in batches])
  assert broken_rows.tolist() == [int(r == record) for r in range(BATCH)] + [
      0] * 4
  # Scored and skipped together cover the split once; the results say so.
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  totals = {"top1": 3, "top5": 5, "loss": 7.0, "skipped": 1,
            "examples": BATCH - 1}
  assert evaluate._finalize(totals, source(data_dir)) == {  # pylint: disable=protected-access
      "top1": 3 / (BATCH - 1), "top5": 5 / (BATCH - 1),
      "loss": 7.0 / (BATCH - 1), "examples": BATCH - 1, "skipped": 1}
  with pytest.raises(RuntimeError, match="scored 7 examples and skipped 0"):
    evaluate._finalize({**totals, "skipped": 0, "examples": 7},  # pylint: disable=protected-access
                       source(data_dir))


@pytest.mark.slow
def test_skip_replaces_the_record_by_the_next_deterministically(
    broken, synthetic_dir):
  data_dir, record = broken
  first = train_iterator(data_dir, on_corrupt="skip")
  got = [next(first)["video"] for _ in range(3)]
  # One row per step was the broken clip: every other row is what the
  # intact dataset gives; that row holds the next record's label.
  clean = train_iterator(synthetic_dir)
  next_label = frame_store.FrameStore(
      damaged_data.version_dir(data_dir, "video"), "train").label[record + 1]
  for batch in got:
    want = next(clean)["video"]
    differ = [i for i in range(BATCH) if not np.array_equal(
        batch["frames"][i], want["frames"][i])]
    assert len(differ) == 1
    assert batch["label"][differ[0]] == next_label
    assert np.array_equal(np.delete(batch["label"], differ),
                          np.delete(want["label"], differ))
    assert set(batch) == {"frames", "label", "dataset"}
  assert first.corrupt_skipped() == {"clips": 3}
  # The same batches from a fresh iterator, and from a restored one.
  again = train_iterator(data_dir, on_corrupt="skip")
  for want in got:
    np.testing.assert_array_equal(next(again)["video"]["frames"],
                                  want["frames"])
  one = train_iterator(data_dir, on_corrupt="skip")
  next(one)
  resumed = train_iterator(data_dir, on_corrupt="skip", state=one.state())
  for want in got[1:]:
    batch = next(resumed)["video"]
    np.testing.assert_array_equal(batch["frames"], want["frames"])
    np.testing.assert_array_equal(batch["label"], want["label"])
  assert resumed.corrupt_skipped() == {"clips": 2}
  assert resumed.state() == first.state()


def test_on_corrupt_is_checked():
  config = ml_collections.ConfigDict(dict(
      input=dict(num_frames=8, crop_size=16, on_corrupt="ignore")))
  with pytest.raises(ValueError, match="config.input.on_corrupt must be "
                                       "'stop' .* or 'skip'"):
    inp.make.preprocessing(config)
  config.input.on_corrupt = "skip"
  assert inp.make.preprocessing(config).crop_size == 16


@pytest.mark.slow
def test_a_run_stopped_by_broken_data_exits_without_hanging(tmp_path,
                                                            synthetic_dir):
  """Reading batches ahead, the pipeline still has reads in flight when the
  error reaches the top and the interpreter exits (here they sleep, so that
  they surely are): the exit must not wait for them forever."""
  data_dir = damaged_data.copy_dataset(synthetic_dir, "video", str(tmp_path))
  record = damaged_data.first_record_of_length(data_dir, "video", LENGTH)
  damaged_data.overwrite_stored_frame(data_dir, "video", record, FRAME)
  script = textwrap.dedent(f"""
      import threading, time
      from tests import synthetic_data  # registers the builder
      from cover_jax import input as inp
      from cover_jax.input.source import Source
      read = Source.read
      def slow_read(self, records, frame_indices):
        if threading.current_thread() is not threading.main_thread():
          time.sleep(4 if 2 <= slow_read.calls < 5 else 0.2)
        slow_read.calls += 1
        return read(self, records, frame_indices)
      slow_read.calls = 0
      Source.read = slow_read
      it = inp.TrainIterator(
          [inp.open_source("clips", "train", dataset={DATASET!r},
                           data_dir={data_dir!r})],
          inp.Preprocessing(num_frames=8, crop_size=16), flips=[False],
          global_batch={BATCH})
      next(it)  # fails, uncaught: the interpreter exits with the error
      """)
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  try:
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=90)
  except subprocess.TimeoutExpired:
    pytest.fail("the process hung at exit after the input error")
  assert done.returncode == 1, done.stderr[-3000:]
  assert f"frame {FRAME} cannot be read or decoded" in done.stderr


@pytest.mark.slow
def test_a_broken_image_record_is_named_or_replaced(synthetic_dir, tmp_path):
  data_dir = damaged_data.copy_dataset(synthetic_dir, "image", str(tmp_path))
  damaged_data.overwrite_record_file(data_dir, "image", "train")
  images = inp.open_source("images", "train", dataset="synthetic_clips/image",
                           data_dir=data_dir)
  broken = []
  for record in range(images.num_examples):
    try:
      images.encoded(record)
    except Exception:  # pylint: disable=broad-except
      broken.append(record)
  assert len(broken) == 1
  make = lambda on_corrupt: inp.TrainIterator(
      [images], PREP, flips=[False], global_batch=images.num_examples,
      on_corrupt=on_corrupt)  # each record once per batch
  with pytest.raises(inp.CorruptData,
                     match=rf"Dataset 'images' \(synthetic_clips/image, split "
                           rf"'train'\): record {broken[0]} \(its id cannot "
                           rf"be read either\) cannot be read or decoded: "
                           rf"Corrupted Riegeli"):
    next(make("stop"))
  it = make("skip")
  next(it), next(it)
  assert it.corrupt_skipped() == {"images": 2}


@pytest.mark.slow
def test_training_logs_the_replaced_rows_per_dataset(digits_dir, tmp_path,
                                                     monkeypatch):
  """What the iterator counts reaches TensorBoard at every log step."""
  from cover_jax.training import evaluate, train  # pylint: disable=import-outside-toplevel
  from cover_jax.training.event_writer import read_scalars  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
  counts = iter([{"digits_image": 0, "digits_motion": 1},
                 {"digits_image": 2, "digits_motion": 1}])
  monkeypatch.setattr(inp.TrainIterator, "corrupt_skipped",
                      lambda self: next(counts))
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_runs.tiny_config(
      digits_dir, num_train_steps=4, **{"checkpoint.every_steps": 4}),
                           workdir)
  assert read_scalars(workdir, "train/digits_image/corrupt_skipped") == {
      2: 0, 4: 2}
  assert read_scalars(workdir, "train/digits_motion/corrupt_skipped") == {
      2: 1, 4: 1}
