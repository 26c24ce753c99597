"""Per-example preprocessing ops: frame sampling, decoding, crops, views.

Pure TensorFlow functions of an example and a stateless seed, so that the
pipeline is deterministic and its position is a counter. Frames are
`[T, H, W, 3]`; an image is a 1-frame video and takes the same path.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def sample_frame_indices(num_available: tf.Tensor, num_frames: int, *,
                         training: bool, seed: tf.Tensor | None = None
                         ) -> tf.Tensor:
  """T frame indices spread uniformly over the whole video (TSN segments).

  The video is cut into `num_frames` equal segments; training takes a random
  frame in each segment, evaluation the middle one. A video shorter than
  `num_frames` repeats frames (several segments fall on one frame).
  """
  n = tf.cast(num_available, tf.float32)
  if training:
    offsets = tf.random.stateless_uniform([num_frames], seed=seed)
  else:
    offsets = tf.fill([num_frames], 0.5)
  positions = (tf.range(num_frames, dtype=tf.float32) + offsets) * (
      n / num_frames)
  return tf.minimum(tf.cast(tf.floor(positions), tf.int32),
                    tf.cast(num_available, tf.int32) - 1)


def frame_shape(encoded_frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(height, width) of a clip, read from its first JPEG header only."""
  shape = tf.image.extract_jpeg_shape(encoded_frames[0])
  return shape[0], shape[1]


def random_crop_window(height, width, crop_size: int,
                       scale_range: Sequence[float], seed) -> tf.Tensor:
  """[y, x, size, size] of a scale-jittered random square crop.

  Equivalent to resizing the short side to a random length in
  `scale_range * crop_size` and cropping `crop_size` there, but expressed in
  source pixels so that only the window is decoded and resized.
  """
  seed_scale, seed_y, seed_x = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  short = tf.cast(tf.minimum(height, width), tf.float32)
  target_short = crop_size * tf.random.stateless_uniform(
      [], seed=seed_scale, minval=scale_range[0], maxval=scale_range[1])
  size = tf.cast(tf.round(short * crop_size / target_short), tf.int32)
  size = tf.clip_by_value(size, 1, tf.minimum(height, width))
  y = tf.random.stateless_uniform([], seed=seed_y, minval=0,
                                  maxval=height - size + 1, dtype=tf.int32)
  x = tf.random.stateless_uniform([], seed=seed_x, minval=0,
                                  maxval=width - size + 1, dtype=tf.int32)
  return tf.stack([y, x, size, size])


def decode_frames(encoded_frames: tf.Tensor,
                  window: tf.Tensor | None = None) -> tf.Tensor:
  """uint8 [T, H, W, 3] from T JPEGs; with a window, only that part decodes."""
  if window is None:
    decode = lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3)
  else:
    decode = lambda jpeg: tf.image.decode_and_crop_jpeg(jpeg, window,
                                                        channels=3)
  return tf.map_fn(decode, encoded_frames,
                   fn_output_signature=tf.TensorSpec([None, None, 3],
                                                     tf.uint8))


# Shrinks by more than this are antialiased.
ANTIALIAS_ABOVE = 2.0


def resize(frames: tf.Tensor, size: int) -> tf.Tensor:
  """float32 [T, size, size, 3], bilinear; antialiased when shrinking more
  than 2x.

  Up to 2x, bilinear's two taps already weigh every source pixel, so
  antialiasing only blurs slightly, and it costs 3x the decoding (13 of 17
  CPU ms per 8x224 clip from 256-320 px windows). The TimeSformer reference
  (torch `interpolate`, bilinear) never antialiases. An enlargement (every
  448 crop from 512 px frames) is never antialiased: it would change nothing
  and cost 5x.
  """
  frames = tf.cast(frames, tf.float32)
  far = tf.cast(tf.shape(frames)[1], tf.float32) > ANTIALIAS_ABOVE * size
  return tf.cond(
      far,
      lambda: tf.image.resize(frames, [size, size], antialias=True),
      lambda: tf.image.resize(frames, [size, size], antialias=False))


def random_flip(frames: tf.Tensor, seed) -> tf.Tensor:
  """Mirror all frames of a clip left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed=seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)


def view_windows(height, width, crop_size: int, short_side: int,
                 num_views: int) -> tf.Tensor:
  """[num_views, 4] windows (y, x, size, size) in source pixels.

  The evaluation views: resize the short side to `short_side`, then take
  `num_views` crops of `crop_size` evenly along the long side (1: centre;
  3: the paper's 1 clip x 3 crops).
  """
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  short = tf.minimum(h, w)
  size = tf.minimum(short * crop_size / short_side, short)
  along = tf.linspace(0.0, tf.maximum(h, w) - size, num_views)
  if num_views == 1:
    along = tf.reshape((tf.maximum(h, w) - size) / 2, [1])
  across = tf.fill([num_views], (short - size) / 2)
  ys, xs = tf.cond(h >= w, lambda: (along, across), lambda: (across, along))
  windows = tf.stack([ys, xs, tf.fill([num_views], size),
                      tf.fill([num_views], size)], axis=1)
  return tf.cast(tf.round(windows), tf.int32)


def crop_views(frames: tf.Tensor, windows: tf.Tensor,
               crop_size: int) -> tf.Tensor:
  """float32 [V, T, crop, crop, 3]: each window cut from every frame, resized."""
  def one_view(window):
    cut = frames[:, window[0]:window[0] + window[2],
                 window[1]:window[1] + window[3]]
    return resize(cut, crop_size)
  return tf.map_fn(one_view, windows,
                   fn_output_signature=tf.TensorSpec(
                       [None, crop_size, crop_size, 3], tf.float32))


def to_uint8(frames: tf.Tensor) -> tf.Tensor:
  """uint8 pixels of frames resized from uint8 ones (`resize`), rounded half
  up. The pipeline's output: the devices normalise them
  (cover_jax.pixels.normalize), so a batch crosses as a quarter of the bytes
  of float32.

  Bilinear and antialiased (triangle-kernel) resizing average their inputs
  with non-negative weights, so the values stay in [0, 255] and the cast
  needs no clipping pass (a fifth of this op's cost at 16x448).
  """
  return tf.cast(frames + 0.5, tf.uint8)
