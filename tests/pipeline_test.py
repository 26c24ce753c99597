"""The co-training mixture and the evaluation iterator, on tiny known data."""

import collections

import jax
import numpy as np
import pytest
import tensorflow as tf

from cover_jax import input as inp
from cover_jax import sharding
from tests import synthetic_data

PREP = synthetic_data.PREP
# For the mixture's statistics, which do not depend on the frames: 2 frames
# of a clip to decode instead of 8.
FEW_FRAMES = inp.Preprocessing(num_frames=2, crop_size=16,
                               scale_range=(1.0, 1.0))


def pixels(frames):
  """The pipeline's uint8 frames as float 0..255."""
  assert np.asarray(frames).dtype == np.uint8
  return np.asarray(frames, np.float64)


def mirrored(clip):
  """Whether the dark columns are on the right: a flipped clip."""
  p = pixels(clip)
  return p[..., -2:, :].mean() < p[..., :2, :].mean()


def test_training_frames_cover_the_clip_uniformly(synthetic_dir):
  it = inp.TrainIterator([synthetic_data.source(synthetic_dir, "video")], PREP,
                         flips=[False], global_batch=6)
  for _ in range(4):
    batch = next(it)["video"]
    assert batch["frames"].shape == (6, 8, 16, 16, 3)
    for clip, label in zip(batch["frames"], batch["label"]):
      n = synthetic_data.LENGTHS[label]
      got = synthetic_data.sampled_indices(clip)
      assert not mirrored(clip)  # flip off: never mirrored
      for segment, index in enumerate(got):
        assert index < (segment + 1) * n / 8 and index + 1 > segment * n / 8


def test_flip_mirrors_about_half_when_allowed(synthetic_dir):
  it = inp.TrainIterator([synthetic_data.source(synthetic_dir, "video_large")],
                         PREP,
                         flips=[True],
                         global_batch=16)
  flips = [mirrored(c) for _ in range(8) for c in next(it)["video"]["frames"]]
  assert 0.3 < np.mean(flips) < 0.7


def test_eval_takes_segment_middles_in_order_and_reversed(synthetic_dir):
  src = synthetic_data.source(synthetic_dir, "video", "test")
  for reverse in (False, True):
    batches = list(inp.eval_batches(src, PREP, global_batch=4,
                                    reverse=reverse))
    for batch in batches:
      assert batch["frames"].shape == (4, 3, 8, 16, 16, 3)
      for views, label, mask in zip(batch["frames"], batch["label"],
                                    batch["mask"]):
        if not mask:
          continue
        n = synthetic_data.LENGTHS[label]
        expected = [min(int((i + 0.5) * n / 8), n - 1) for i in range(8)]
        if reverse:
          expected = expected[::-1]
        # Views of one video stay together: same frames, different crops.
        for view in views:
          np.testing.assert_array_equal(
              synthetic_data.sampled_indices(view), expected)
        # 24x32 frames, short side to 16, 3 crops of 16: windows of 24 source
        # columns from x = 0, 4, 8, holding 12, 8, 4 of the dark columns.
        dark = [np.mean(pixels(v).mean(axis=(0, 1, 3)) < 20) for v in views]
        np.testing.assert_allclose(dark, [12 / 24, 8 / 24, 4 / 24], atol=0.07)


def resized_pixels(frames, size):
  """round(bilinear resize) of uint8 [T, h, w, 3] to size x size, by
  jax.image (antialiased when shrinking more than 2x, as the pipeline
  resizes)."""
  out = jax.image.resize(np.asarray(frames, np.float32),
                         (len(frames), size, size, 3), "linear",
                         antialias=frames.shape[2] > 2 * size)
  return np.clip(np.floor(np.asarray(out) + 0.5), 0, 255)


def stored_frames(indices, window=None):
  """uint8 [T, h, w, 3]: a 24x32 synthetic clip's JPEG frames at `indices`,
  decoded (only `window` [y, x, h, w] of them, as training decodes)."""
  def decode(t):
    encoded = synthetic_data.jpeg(synthetic_data.frame(t, 24, 32))
    if window is None:
      return tf.io.decode_jpeg(encoded, channels=3).numpy()
    return tf.image.decode_and_crop_jpeg(encoded, window, channels=3).numpy()
  return np.stack([decode(t) for t in indices])


def test_training_frames_are_rounded_resized_uint8_crops(synthetic_dir):
  it = inp.TrainIterator([synthetic_data.source(synthetic_dir, "video")], PREP,
                         flips=[False], global_batch=6)
  batch = next(it)["video"]
  it.close()
  assert batch["frames"].dtype == np.uint8
  for clip in batch["frames"]:
    # Scale 1: a 24x24 window of the 24x32 frames (y = 0, x in 0..8),
    # resized to 16; exactly one x matches.
    errors = [np.abs(clip.astype(int) - resized_pixels(stored_frames(
        synthetic_data.sampled_indices(clip), window=[0, x, 24, 24]), 16)).max()
              for x in range(9)]
    assert min(errors) <= 1 and sorted(errors)[1] > 1, errors


def test_eval_frames_are_rounded_resized_uint8_views(synthetic_dir):
  batches = list(
      inp.eval_batches(
          synthetic_data.source(synthetic_dir, "video", "test"),
          PREP,
          global_batch=4))
  for batch in batches:
    assert batch["frames"].dtype == np.uint8
    for views, label, mask in zip(batch["frames"], batch["label"],
                                  batch["mask"]):
      if not mask:
        continue
      n = synthetic_data.LENGTHS[label]
      frames = stored_frames([min(int((i + 0.5) * n / 8), n - 1)
                              for i in range(8)])
      # Short side 24 -> 16: 3 windows of 24 columns from x = 0, 4, 8.
      for view, x in zip(views, (0, 4, 8)):
        want = resized_pixels(frames[:, :, x:x + 24], 16)
        assert np.abs(view.astype(int) - want).max() <= 1


@pytest.mark.slow
def test_eval_visits_every_example_once_across_processes(synthetic_dir):
  src = synthetic_data.source(synthetic_dir, "video", "test")  # 7 examples
  seen = []
  counts = set()
  for p in range(3):  # each process holds one of 3 batch shards
    batches = list(inp.eval_batches(src, PREP, global_batch=6, reverse=False,
                                    granule=3, shards=[p]))
    counts.add(len(batches))
    for batch in batches:
      assert batch["frames"].shape[0] == 2
      seen += list(batch["record"][batch["mask"] == 1])
  assert len(counts) == 1  # every process runs the same number of batches
  assert sorted(seen) == list(range(7))
  # Global batch b holds records 6b .. 6b + 5: shard 1 rows 2 and 3.
  second = list(inp.eval_batches(src, PREP, global_batch=6, granule=3,
                                 shards=[1]))
  assert [list(b["record"]) for b in second] == [[2, 3], [0, 0]]
  assert [list(b["mask"]) for b in second] == [[1, 1], [0, 0]]


def test_every_epoch_reads_every_record_once_in_a_new_order(synthetic_dir):
  src = synthetic_data.source(synthetic_dir, "video_large")  # 90 examples
  records = inp.pipeline._Records([src])  # pylint: disable=protected-access
  order = np.array([records.record(tf.constant(0), tf.constant(j, tf.int64),
                                   shuffle_seed=5).numpy()
                    for j in range(3 * 90)])
  epochs = order.reshape(3, 90)
  for epoch in epochs:  # each epoch is a permutation of the split
    assert sorted(epoch) == list(range(90))
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
  assert not np.array_equal(epochs[0], np.arange(90))


def _take(it, steps):
  batches = [next(it) for _ in range(steps)]
  state = it.state()
  it.close()
  return batches, state


@pytest.mark.slow
def test_global_batch_does_not_depend_on_how_processes_split_it(
    synthetic_dir):
  """Each process loads the rows of its batch shards of one global batch:
  four processes of one shard each, two holding the same two shards (a
  tensor group across them), or one process of all, give the same batches
  and the same state."""
  sources = [  # 12, 90 and 60 examples
      synthetic_data.source(synthetic_dir, "video", name="small"),
      synthetic_data.source(synthetic_dir, "video_large", name="large"),
      synthetic_data.source(synthetic_dir, "image")]
  make = lambda shards, state=None: inp.TrainIterator(
      sources, PREP, flips=[False, False, True], global_batch=16, granule=4,
      shards=shards, seed=2, state=state)
  whole, whole_state = _take(make(None), 3)
  assert {k: v for k, v in whole_state["consumed"].items()} == {
      name: sum(int(np.sum(b[part]["dataset"] == i)) for b in whole
                for part in b) for i, name in enumerate(
                    ["small", "large", "image"])}
  per_shard = [_take(make([k]), 3) for k in range(4)]
  pairs = [_take(make(shards), 3) for shards in ([0, 2], [1, 3], [0, 2])]
  for step in range(3):
    for part in whole[step]:
      for key in ("frames", "label", "dataset"):
        want = whole[step][part][key]
        rows = np.split(want, 4)
        for k in range(4):
          np.testing.assert_array_equal(per_shard[k][0][step][part][key],
                                        rows[k])
        np.testing.assert_array_equal(pairs[0][0][step][part][key],
                                      np.concatenate([rows[0], rows[2]]))
        np.testing.assert_array_equal(pairs[2][0][step][part][key],
                                      pairs[0][0][step][part][key])
        np.testing.assert_array_equal(pairs[1][0][step][part][key],
                                      np.concatenate([rows[1], rows[3]]))
  for _, state in per_shard + pairs:
    assert state == whole_state
  # A state saved by one split of the batch resumes exactly on another.
  after, _ = _take(make([1], state=per_shard[0][1]), 1)
  more, _ = _take(make(None), 4)
  for part in more[3]:
    np.testing.assert_array_equal(after[0][part]["frames"],
                                  np.split(more[3][part]["frames"], 4)[1])


def test_accumulation_makes_every_part_a_multiple_of_shards_times_steps(
    synthetic_dir):
  sources = [synthetic_data.source(synthetic_dir, "video"),
             synthetic_data.source(synthetic_dir, "image")]
  it = inp.TrainIterator(sources, PREP, flips=[False, True], global_batch=16,
                         granule=2, micro_batches=4)
  assert it.global_batch_sizes == {"video": 8, "image": 8}
  it.close()
  with pytest.raises(ValueError, match=r"not divisible by the 2 batch shards "
                     r"of the mesh x 4 accumulation steps; choose a multiple "
                     r"of 8"):
    inp.TrainIterator(sources, PREP, flips=[False, True], global_batch=12,
                      granule=2, micro_batches=4)
  with pytest.raises(ValueError, match=r"Batch shards \[4\] are not"):
    inp.TrainIterator(sources, PREP, flips=[False, True], global_batch=16,
                      granule=4, shards=[4])


@pytest.mark.slow
def test_mixture_follows_dataset_sizes(synthetic_dir):
  sources = [  # 12, 90 and 60 examples
      synthetic_data.source(synthetic_dir, "video", name="small"),
      synthetic_data.source(synthetic_dir, "video_large", name="large"),
      synthetic_data.source(synthetic_dir, "image")]
  it = inp.TrainIterator(sources, FEW_FRAMES, flips=[False, False, True],
                         global_batch=27)
  # Parts by size: videos 102 / 162 of the batch -> 17 of 27.
  assert it.global_batch_sizes == {"video": 17, "image": 10}
  counts = collections.Counter()
  steps = 120
  for _ in range(steps):
    batch = next(it)
    assert batch["video"]["frames"].shape == (17, 2, 16, 16, 3)
    assert batch["image"]["frames"].shape == (10, 1, 16, 16, 3)
    assert set(batch["image"]["dataset"]) == {2}
    counts.update(batch["video"]["dataset"].tolist())
  total = steps * 17
  expected_small = total * 12 / 102
  sigma = np.sqrt(total * (12 / 102) * (90 / 102))
  assert abs(counts[0] - expected_small) < 4 * sigma
  assert counts[0] + counts[1] == total
  # Every example of the small set was read many times: it never runs dry.
  assert it.state()["consumed"]["small"] == counts[0] > 12 * 10


@pytest.mark.slow
def test_mixture_follows_config_weights(synthetic_dir):
  sources = [synthetic_data.source(synthetic_dir, "video", name="small"),
             synthetic_data.source(synthetic_dir, "video_large", name="large")]
  it = inp.TrainIterator(sources, FEW_FRAMES, flips=[False, False],
                         global_batch=20, weights=[1.0, 1.0])
  counts = collections.Counter()
  for _ in range(60):
    counts.update(next(it)["video"]["dataset"].tolist())
  assert abs(counts[0] / 1200 - 0.5) < 4 * np.sqrt(0.25 / 1200)
  assert "image" not in next(it)


@pytest.mark.slow
def test_restored_iterator_continues_exactly(synthetic_dir):
  sources = [synthetic_data.source(synthetic_dir, "video", name="small"),
             synthetic_data.source(synthetic_dir, "image")]
  make = lambda state=None, seed=3: inp.TrainIterator(
      sources, PREP, flips=[True, True], global_batch=8, seed=seed,
      state=state)
  first = make()
  for _ in range(5):
    next(first)
  state = first.state()
  expected = [next(first) for _ in range(3)]
  resumed = make(state=state)
  for want in expected:
    got = next(resumed)
    for part in want:
      for key in want[part]:
        np.testing.assert_array_equal(got[part][key], want[part][key])
  assert resumed.state() == first.state()
  # Same seed: same batches from the start; another seed: others.
  a, b, c = next(make()), next(make()), next(make(seed=4))
  np.testing.assert_array_equal(a["video"]["frames"], b["video"]["frames"])
  assert not np.array_equal(a["video"]["frames"], c["video"]["frames"])


def test_state_for_another_mixture_is_refused(synthetic_dir):
  sources = [synthetic_data.source(synthetic_dir, "video", name="small")]
  with pytest.raises(ValueError, match="different mixture"):
    inp.TrainIterator(sources, PREP, flips=[False], global_batch=4,
                      state={"step": 3, "consumed": {"other": 5}})


def test_split_batch():
  assert inp.split_batch(32, 3.0, 1.0, granule=8) == {"video": 24, "image": 8}
  assert inp.split_batch(128, 1.0, 0.0) == {"video": 128, "image": 0}
  assert inp.split_batch(16, 100.0, 1.0, granule=8) == {"video": 8,
                                                         "image": 8}
  assert inp.split_batch(30, 1.0, 1.0, video_share=0.2) == {"video": 6,
                                                             "image": 24}
  with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
    inp.split_batch(20, 1.0, 1.0, granule=8)
  with pytest.raises(ValueError, match="cannot hold one shard"):
    inp.split_batch(8, 1.0, 1.0, granule=8)


def test_crop_larger_than_stored_frames_is_refused(synthetic_dir):
  src = synthetic_data.source(synthetic_dir, "small_frames")  # short side 16
  prep = inp.Preprocessing(num_frames=8, crop_size=24)
  with pytest.raises(ValueError, match=r"short side of 16 px, smaller than "
                     r"the crop 24\. Prepare it again with --short_side=24"):
    inp.TrainIterator([src], prep, flips=[False], global_batch=4)


def test_flipping_a_dataset_whose_labels_mirror_is_refused(synthetic_dir):
  src = synthetic_data.source(
      synthetic_dir, "mirrored_classes", name="ssv2_like")
  with pytest.raises(ValueError, match="'ssv2_like'.*set flip=False"):
    inp.TrainIterator([src], PREP, flips=[True], global_batch=4)


def test_unknown_dataset_and_split_errors(synthetic_dir):
  with pytest.raises(ValueError, match=r"Unknown dataset 'kinetcs400'.*"
                     r"Known datasets: digits_image, .*kinetics400"):
    inp.open_source("kinetcs400", "train", data_dir=synthetic_dir)
  with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', "
                     r"'train'\]"):
    synthetic_data.source(synthetic_dir, "video", "validation")
  with pytest.raises(ValueError, match=r"'kinetics400' is not prepared.*"
                     r"python -m data.prepare kinetics400 --manual_dir"):
    inp.open_source("kinetics400", "train", data_dir=synthetic_dir)


def test_global_batch_is_sharded_over_the_mesh(synthetic_dir):
  mesh = sharding.make_mesh(data=4, fsdp=2)
  it = inp.TrainIterator([synthetic_data.source(synthetic_dir, "video")], PREP,
                         flips=[False], global_batch=8, granule=8)
  local = next(it)
  batch = inp.to_global(local, mesh)
  frames = batch["video"]["frames"]
  assert isinstance(frames, jax.Array) and frames.shape == (8, 8, 16, 16, 3)
  assert len(frames.addressable_shards) == 8
  assert frames.addressable_shards[0].data.shape == (1, 8, 16, 16, 3)
  np.testing.assert_array_equal(np.asarray(frames), local["video"]["frames"])


def test_a_stream_nobody_closed_is_dropped_without_waiting_for_itself():
  """Garbage collection may finalize an unclosed stream on a thread that
  holds a lock its own reads in flight wait for (a read thread inside
  concurrent.futures' submit, as ArrayRecord's reads are): the finalizer
  must not destroy the iterator there, or that thread waits forever."""
  import threading  # pylint: disable=import-outside-toplevel
  import weakref  # pylint: disable=import-outside-toplevel
  from cover_jax.input.pipeline import NumpyStream  # pylint: disable=import-outside-toplevel
  lock, waiting = threading.Lock(), threading.Event()

  def read(i):
    if i > 0:  # the reads after the first wait for the lock
      waiting.set()
      with lock:
        pass
    return i
  dataset = tf.data.Dataset.range(100).map(
      lambda i: tf.py_function(read, [i], tf.int64), num_parallel_calls=2)
  iterator = []

  def collect_while_holding_the_lock():
    with lock:
      stream = NumpyStream(dataset)
      assert next(stream) == 0
      assert waiting.wait(30)  # a read in flight, waiting for the lock
      iterator.append(weakref.ref(stream._holder[0]))  # pylint: disable=protected-access
      del stream  # its last reference: finalized here, holding the lock
  thread = threading.Thread(target=collect_while_holding_the_lock,
                            daemon=True)
  thread.start()
  thread.join(30)
  assert not thread.is_alive(), "the finalizer waited for its own reads"
  for _ in range(300):  # and the iterator is dropped, once the reads end
    if iterator[0]() is None:
      break
    threading.Event().wait(0.1)
  assert iterator[0]() is None
