"""The built-in mini datasets: splits, labels, and the motion set's symmetries."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data import digits
from data import frame_store
from data import registry


def test_train_and_test_never_share_a_source_digit():
  _, _, train = digits.source_digits("train")
  _, _, test = digits.source_digits("test")
  assert not set(train) & set(test)
  assert sorted(set(train) | set(test)) == list(range(1797))
  assert len(test) == round(0.2 * 1797)


def test_training_shares_are_nested_balanced_and_never_test_digits():
  test = set(digits.source_digits("test")[2])
  full = np.bincount(digits.source_digits("train")[1], minlength=10)
  shares = {}
  for percent in digits.TRAIN_PERCENTS:
    _, labels, ids = digits.source_digits("train", percent)
    np.testing.assert_array_equal(  # deterministic
        ids, digits.source_digits("train", percent)[2])
    assert len(ids) == round(percent / 100 * 1438)
    assert not set(ids) & test
    # Balanced by digit: each class holds its share, within rounding.
    counts = np.bincount(labels, minlength=10)
    assert np.all(counts > 0)
    assert np.all(np.abs(counts - percent / 100 * full) <= 1)
    shares[percent] = set(ids)
  assert shares[10] <= shares[25] <= shares[50] <= shares[100]
  assert len(shares[100]) == 1797 - len(test)
  np.testing.assert_array_equal(  # the test split ignores the share
      digits.source_digits("test", 10)[2], sorted(test))


def stored_examples(builder, split):
  """(stored record: a tf.train.Example proto, its JPEG frames) by id; a
  video's frames are in the frame store."""
  source = builder.as_data_source(
      split, deserialize_method=tfds.decode.DeserializeMethod.
      DESERIALIZE_NO_DECODE)
  store = (frame_store.FrameStore(builder.data_dir, split)
           if "video" in builder.info.features else None)
  return {e.features.feature["id"].bytes_list.value[0]:
          (e, store.frames(i) if store else None)
          for i, e in enumerate(source)}


@pytest.mark.slow
def test_a_share_only_removes_examples(digits_dir, tmp_path):
  """train10 is train100 minus examples, byte for byte; test is identical."""
  assert [c.name for c in digits.DigitsMotion.BUILDER_CONFIGS] == [
      "train100", "train50", "train25", "train10"]
  for name in ("digits_motion", "digits_image"):
    full = registry.load_builder(name, digits_dir)
    assert full.info.config_name == "train100"  # the default
    small = registry.load_builder(f"{name}/train10", str(tmp_path))
    assert small.info.config_name == "train10"
    assert small.info.metadata == full.info.metadata
    full_train = stored_examples(full, "train")
    small_train = stored_examples(small, "train")
    assert len(small_train) == digits.TRAIN_COPIES * 144
    assert set(small_train) < set(full_train)
    kept = {f"{i}_{c}".encode() for i in digits.source_digits("train", 10)[2]
            for c in range(digits.TRAIN_COPIES)}
    assert set(small_train) == kept
    for key, example in small_train.items():
      assert example == full_train[key]  # every stored byte
    assert stored_examples(small, "test") == stored_examples(full, "test")


def test_unknown_share_names_the_configs(tmp_path):
  with pytest.raises(ValueError, match="digits_motion/train7.*"
                                       "digits_motion/train100, "):
    registry.load_builder("digits_motion/train7", str(tmp_path))


def centroid(frame):
  """(row, column) of the bright digit, and its total brightness."""
  mass = frame.astype(np.float64).sum(axis=-1)
  mass = np.where(mass > 3 * 100, mass, 0)  # the background stays below 60
  assert mass.any(), "no digit in the frame"
  rows, cols = np.indices(mass.shape)
  total = mass.sum()
  return (rows * mass).sum() / total, (cols * mass).sum() / total, total


def test_each_motion_reversed_is_its_twin_exactly():
  image = digits.source_digits("train")[0][0]
  for motion, twin in digits.REVERSED.items():
    forward = digits.motion_frames(image, motion, 12,
                                   np.random.default_rng(1))
    backward = digits.motion_frames(image, twin, 12,
                                    np.random.default_rng(1))
    for a, b in zip(forward, backward[::-1]):
      np.testing.assert_array_equal(a, b)


def test_motions_move_the_way_their_names_say():
  image = digits.source_digits("train")[0][3]
  rng = np.random.default_rng(0)
  first_last = {m: [centroid(f) for f in digits.motion_frames(image, m, 12,
                                                              rng)[::11]]
                for m in ("moving_right", "moving_down", "growing")}
  (y0, x0, _), (y1, x1, _) = first_last["moving_right"]
  assert x1 - x0 > 10 and abs(y1 - y0) < 2
  (y0, x0, _), (y1, x1, _) = first_last["moving_down"]
  assert y1 - y0 > 10 and abs(x1 - x0) < 2
  assert first_last["growing"][1][2] > 3 * first_last["growing"][0][2]
  fade = digits.motion_frames(image, "fading_in", 12, rng)
  assert fade[-1].mean() > fade[0].mean() + 3
  # A horizontal flip turns moving_right into moving_left: flip changes label.
  frames = digits.motion_frames(image, "moving_right", 12, rng)
  mirrored = [centroid(f[:, ::-1])[1] for f in (frames[0], frames[-1])]
  assert mirrored[1] - mirrored[0] < -10
  assert digits.MIRRORED["moving_right"] == "moving_left"


def test_built_datasets_read_back(digits_dir):
  sizes = {}
  for name in registry.BUILT_ON_FIRST_USE:
    builder = registry.load_builder(name, digits_dir)
    info = builder.info
    sizes[name] = {s: info.splits[s].num_examples for s in ("train", "test")}
    names = info.features["label"].names
    assert names == sorted(names)
    assert info.metadata["short_side"] == digits.CANVAS
    assert info.metadata["flip_changes_label"] == (name == "digits_motion")
    source = builder.as_data_source("test")
    for i in range(3):
      if name == "digits_image":
        frames = np.asarray(source[i]["image"])[None]
      else:
        assert len(source[i]["video"]) == 0  # in the frame store only
        frames = np.stack([tf.io.decode_jpeg(f).numpy() for f in
                           frame_store.FrameStore(builder.data_dir,
                                                  "test").frames(i)])
      assert frames.shape[1:] == (40, 40, 3)
      assert digits.FRAMES[0] <= len(frames) <= digits.FRAMES[1] or (
          name == "digits_image")
  for name in registry.BUILT_ON_FIRST_USE:
    assert sizes[name] == {"train": 2 * (1797 - 359), "test": 359}
  motion = registry.load_builder("digits_motion", digits_dir)
  labels = [int(motion.as_data_source("train")[i]["label"])
            for i in range(400)]
  counts = np.bincount(labels, minlength=8)
  assert counts.min() > 30  # balanced classes (400 / 8 = 50 expected)


def test_generation_is_deterministic(tmp_path):
  builder = digits.DigitsMotion(data_dir=str(tmp_path))
  image = digits.source_digits("test")[0][5]
  make = lambda: builder._example(image, 3, 5,  # pylint: disable=protected-access
                                  np.random.default_rng([1, 2]), "k")
  a, b = make(), make()
  assert a["video"] == b["video"] and a["label"] == b["label"]


def reference_frame(digit, center, size, opacity, color, background):
  """One frame drawn alone: the digit resized by PIL for this frame, pasted
  with clipping, blended per pixel in float32."""
  s = max(2, int(round(size)))
  sprite = np.asarray(Image.fromarray(np.uint8(digit * 255)).resize(
      (s, s), Image.BILINEAR), np.float32) / 255.0
  top, left = int(round(center[0] - s / 2)), int(round(center[1] - s / 2))
  padded = np.zeros((digits.CANVAS + 2 * 64,) * 2, np.float32)
  padded[top + 64:top + 64 + s, left + 64:left + 64 + s] = sprite
  alpha = padded[64:-64, 64:-64][..., None] * np.float32(opacity)
  frame = background * (1 - alpha) + color * alpha
  return np.uint8(np.clip(frame, 0, 255))


def test_a_video_renders_as_its_frames_drawn_one_by_one():
  """Sprites shared between frames of one size, and the blend of all frames
  at once, give each frame exactly as drawing it alone does."""
  image = digits.source_digits("train")[0][7]
  color, background = digits._look(np.random.default_rng(3))  # pylint: disable=protected-access
  # Repeated and distinct sizes, digits overflowing every edge, fades.
  centers = [(20, 20), (3.4, 38.2), (41, -2), (20.5, 19.5), (-13, 20),
             (20, 52), (12.7, 27.1)]
  sizes = [24, 24, 36.6, 9.4, 24.4, 24, 30.2]
  opacities = [1.0, 0.1, 0.55, 0.9, 1.0, 0.37, 0.73]
  frames = digits.render_frames(image, centers=np.array(centers, float),
                                sizes=np.array(sizes), opacities=opacities,
                                color=color, background=background)
  assert frames.shape == (7, 40, 40, 3) and frames.dtype == np.uint8
  for frame, c, s, o in zip(frames, centers, sizes, opacities):
    np.testing.assert_array_equal(
        frame, reference_frame(image, c, s, o, color, background))
  assert (frames[4:6] == background.astype(np.uint8)).all()  # off canvas


def test_frames_encode_as_each_frame_saved_alone():
  frames = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3),
                                             np.uint8)
  def saved(frame):
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
  assert digits.encode_jpegs(frames) == [saved(f) for f in frames]
