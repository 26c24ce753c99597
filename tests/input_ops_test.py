"""Frame sampling, crops, views and flips against direct numpy computations."""

import numpy as np
import pytest
import tensorflow as tf

from cover_jax.input import ops
from tests import synthetic_data


def seed(i):
  return tf.constant([7, i], tf.int64)


@pytest.mark.parametrize("n,t", [(16, 8), (19, 8), (8, 8), (5, 8), (1, 4),
                                 (300, 16)])
def test_eval_indices_are_segment_middles(n, t):
  got = ops.sample_frame_indices(tf.constant(n), t, training=False).numpy()
  expected = [min(int(np.floor((i + 0.5) * n / t)), n - 1) for i in range(t)]
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("n,t", [(16, 8), (19, 8), (5, 8), (300, 16)])
def test_train_indices_fall_in_their_segments(n, t):
  seen = set()
  for i in range(50):
    got = ops.sample_frame_indices(tf.constant(n), t, training=True,
                                   seed=seed(i)).numpy()
    assert np.all(np.diff(got) >= 0) and got.min() >= 0 and got.max() < n
    for segment, index in enumerate(got):
      # index = floor((segment + u) * n / t) for some u in [0, 1).
      assert index < (segment + 1) * n / t and index + 1 > segment * n / t
    seen.add(tuple(got))
  if n > t:
    assert len(seen) > 10  # random, not the same pick every time
  again = ops.sample_frame_indices(tf.constant(n), t, training=True,
                                   seed=seed(3)).numpy()
  first = ops.sample_frame_indices(tf.constant(n), t, training=True,
                                   seed=seed(3)).numpy()
  np.testing.assert_array_equal(again, first)


def test_short_video_repeats_frames_in_order():
  got = ops.sample_frame_indices(tf.constant(3), 8, training=False).numpy()
  np.testing.assert_array_equal(got, [0, 0, 0, 1, 1, 2, 2, 2])


def test_random_crop_window_is_inside_and_scale_jittered():
  sizes = []
  for i in range(200):
    y, x, h, w = ops.random_crop_window(tf.constant(240), tf.constant(320),
                                        224, (1.14, 1.43), seed(i)).numpy()
    assert h == w and 0 <= y <= 240 - h and 0 <= x <= 320 - w
    sizes.append(h)
  # size = short * crop / (crop * scale), scale in [1.14, 1.43].
  assert 240 / 1.43 - 1 <= min(sizes) and max(sizes) <= 240 / 1.14 + 1
  assert max(sizes) - min(sizes) > 30


@pytest.mark.parametrize("height,width,views,expected", [
    (24, 32, 3, [[0, 0], [0, 4], [0, 8]]),
    (32, 24, 3, [[0, 0], [4, 0], [8, 0]]),
    (24, 32, 1, [[0, 4]]),
    (48, 64, 3, [[0, 0], [0, 8], [0, 16]]),  # short side 48 -> crop 24 of 48
])
def test_view_windows(height, width, views, expected):
  windows = ops.view_windows(tf.constant(height), tf.constant(width), 24,
                             24 if height < 48 else 24, views).numpy()
  short = min(height, width)
  np.testing.assert_array_equal(windows[:, :2], expected)
  np.testing.assert_array_equal(windows[:, 2:], short)


def test_crop_views_cut_the_windows():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (4, 24, 32, 3)).astype(np.uint8)
  windows = ops.view_windows(tf.constant(24), tf.constant(32), 24, 24, 3)
  views = ops.crop_views(tf.constant(frames), windows, 24).numpy()
  assert views.shape == (3, 4, 24, 24, 3)
  for v, x in enumerate([0, 4, 8]):  # no resize: exact slices
    np.testing.assert_allclose(views[v], frames[:, :, x:x + 24], atol=1e-3)


def test_decoding_a_window_equals_cropping_the_decoded_frame():
  frames = [synthetic_data.frame(t, 24, 32) for t in range(3)]
  encoded = tf.constant([synthetic_data.jpeg(f) for f in frames])
  window = tf.constant([0, 8, 16, 16])
  full = ops.decode_frames(encoded).numpy()
  part = ops.decode_frames(encoded, window).numpy()
  assert part.shape == (3, 16, 16, 3)
  np.testing.assert_allclose(part.astype(int), full[:, 0:16, 8:24].astype(int),
                             atol=2)
  assert ops.frame_shape(encoded)[0].numpy() == 24
  assert ops.frame_shape(encoded)[1].numpy() == 32


def test_random_flip_mirrors_about_half_and_all_frames_alike():
  frames = tf.constant(np.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1))
  flipped = 0
  for i in range(200):
    out = ops.random_flip(frames, seed(i)).numpy()
    if np.array_equal(out, frames.numpy()[:, :, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, frames.numpy())
  assert 70 < flipped < 130


def test_to_uint8_rounds_half_up():
  values = [0.0, 0.4, 0.5, 0.6, 1.5, 2.5, 127.49, 254.5, 254.6, 255.0]
  out = ops.to_uint8(tf.constant(values)).numpy()
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, [0, 0, 1, 1, 2, 3, 127, 255, 255, 255])


@pytest.mark.parametrize("size", [4, 7, 40])  # shrink > 2x, < 2x, enlarge
def test_resized_frames_stay_in_range_so_to_uint8_needs_no_clip(size):
  # The worst case for overshoot: a 0/255 checkerboard.
  board = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)
  frames = np.repeat(board[None, :, :, None], 3, axis=-1)
  resized = ops.resize(tf.constant(frames), size).numpy()
  assert resized.min() >= 0 and resized.max() <= 255
  np.testing.assert_array_equal(
      ops.to_uint8(tf.constant(resized)).numpy(),
      np.clip(np.floor(resized.astype(np.float64) + 0.5), 0, 255))


@pytest.mark.parametrize("size,antialias", [(4, True), (7, True), (8, False),
                                            (12, False), (40, False)])
def test_resize_antialiases_only_beyond_2x(size, antialias):
  frames = np.random.default_rng(size).integers(0, 256, (2, 16, 16, 3))
  expected = tf.image.resize(frames.astype(np.float32), [size, size],
                             antialias=antialias).numpy()
  other = tf.image.resize(frames.astype(np.float32), [size, size],
                          antialias=not antialias).numpy()
  out = ops.resize(tf.constant(frames.astype(np.uint8)), size).numpy()
  np.testing.assert_allclose(out, expected, atol=1e-3)
  if size < 16:  # shrinking: the two differ, so the choice was checked
    assert np.abs(out - other).max() > 1
