"""RandAugment (Cubuk et al. 2019) for clips, in timm's notation and ops.

`parse("rand-m9-n2-mstd0.5")` reads timm's config string
(`timm.data.auto_augment.rand_augment_transform`); `augment` then draws, from
a stateless seed, `num_layers` ops of timm's `_RAND_TRANSFORMS` (uniformly,
with replacement), each applied with probability 1/2 at the policy's
magnitude (with gaussian noise of std `mstd`, or uniform in [0, M] for
mstd > 100; clipped to [0, mmax], mmax 10 by default) and a random sign
where timm has one. One draw serves the whole clip: every frame
of `[T, H, W, 3]` goes through the same ops with the same arguments (an
image is a 1-frame clip). Statistics that PIL computes per image (the
histograms of AutoContrast and Equalize, Contrast's mean) are per frame.

The ops work on uint8 as the PIL functions timm calls do (ImageOps,
ImageEnhance, Image.transform), so tests/randaugment_test.py compares each
with PIL. Geometric ops are bilinear (TensorFlow's projective transform has
no bicubic; timm draws bilinear or bicubic unless the model names one) and
fill with the normalisation mean, as timm's `img_mean`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

import tensorflow as tf

FORM = ("'rand-m<M>-n<N>' with optional '-mstd<float>', '-mmax<int>', "
        "'-inc1' (timm's notation, e.g. 'rand-m9-n2' or "
        "'rand-m9-n2-mstd0.5'), or '' for none")
# timm's _LEVEL_DENOM: magnitude M maps to the fraction M / 10 of each op's
# range, and is clipped to [0, 10] unless mmax says otherwise.
LEVEL_DENOM = 10.0
# The sections of a config string: pattern of the value, what it means.
SECTIONS = {
    "m": (r"\d+", "the magnitude, an integer"),
    "n": (r"[1-9]\d*", "the ops per clip, an integer >= 1"),
    "mstd": (r"\d+(\.\d*)?|\.\d+", "the magnitude's std, a float >= 0"),
    "mmax": (r"[1-9]\d*", "the magnitude's upper bound, an integer >= 1"),
    "inc": (r"[01]", "0 or 1 (ops whose severity increases with M)"),
}


@dataclasses.dataclass(frozen=True)
class Policy:
  """A RandAugment setting, as timm's config string states it."""
  magnitude: int = 10
  num_layers: int = 2
  magnitude_std: float = 0.0  # > 100: uniform in [0, magnitude] (timm)
  magnitude_max: int | None = None  # None: LEVEL_DENOM
  increasing: bool = False


def parse(spec: str) -> Policy:
  """The Policy of a timm config string, e.g. "rand-m9-n2-mstd0.5"; a
  ValueError naming the bad part and the accepted form otherwise.

  Omitted sections take timm's defaults (m10, n2); unlike timm, a section
  it does not know (or would ignore, such as one without a number) is
  refused, and 'w' (op weights) is not offered.
  """
  def bad(why):
    return ValueError(f"config.input.randaugment={spec!r}: {why}; expected "
                      f"{FORM}.")

  head, *sections = spec.split("-")
  if head != "rand":
    raise bad(f"it starts with {head!r}, not 'rand'")
  values = {}
  for section in sections:
    match = re.fullmatch(r"(mstd|mmax|inc|m|n)(.*)", section)
    if not match:
      raise bad(f"unknown section {section!r}")
    key, value = match.groups()
    pattern, meaning = SECTIONS[key]
    if not re.fullmatch(pattern, value):
      raise bad(f"section {section!r}: {key} takes {meaning}")
    if key in values:
      raise bad(f"section {key!r} is given twice")
    values[key] = value
  return Policy(magnitude=int(values.get("m", 10)),
                num_layers=int(values.get("n", 2)),
                magnitude_std=float(values.get("mstd", 0)),
                magnitude_max=int(values["mmax"]) if "mmax" in values
                else None,
                increasing=values.get("inc") == "1")


def fill_of(mean: Sequence[float]) -> tuple[int, ...]:
  """The fill of geometric ops: the normalisation mean in 0..255 (timm's
  `img_mean`)."""
  return tuple(min(255, round(255 * m)) for m in mean)


# -- The ops on uint8 [T, H, W, 3], as PIL computes them ---------------------
# Written for TensorFlow's CPU kernels: elementwise uint8 arithmetic is
# cheap, while a select (tf.where) or a table look-up (tf.gather) costs 10
# to 30 times as much a pixel, so they are used only where a table is
# needed. The affine ops share one kernel (`affine`), which `augment`'s
# graph holds once.


def _histograms(frames: tf.Tensor) -> tf.Tensor:
  """int32 [T, 3, 256]: each frame's histogram of each channel."""
  t = tf.shape(frames)[0]
  values = tf.reshape(tf.transpose(tf.cast(frames, tf.int32), [0, 3, 1, 2]),
                      [t * 3, -1])
  counts = tf.math.bincount(values, minlength=256, maxlength=256, axis=-1)
  return tf.reshape(counts, [t, 3, 256])


def _look_up(frames: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """frames through a table per frame and channel, [T, 3, 256] in 0..255:
  one look-up in the flat table."""
  offsets = tf.reshape(tf.range(tf.shape(frames)[0] * 3) * 256, [-1, 1, 1, 3])
  return tf.gather(tf.reshape(tf.cast(lut, tf.uint8), [-1]),
                   tf.cast(frames, tf.int32) + offsets)


def auto_contrast(frames: tf.Tensor, _=None) -> tf.Tensor:
  """ImageOps.autocontrast: each channel's range stretched to 0..255."""
  lo = tf.cast(tf.reduce_min(frames, axis=[1, 2]), tf.float64)[..., None]
  hi = tf.cast(tf.reduce_max(frames, axis=[1, 2]), tf.float64)[..., None]
  levels = tf.range(256, dtype=tf.float64)
  # PIL's table, in double: int(ix * scale + offset), clamped.
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  stretched = tf.clip_by_value(tf.floor(levels * scale - lo * scale), 0, 255)
  return _look_up(frames, tf.where(hi > lo, stretched, levels))


def equalize(frames: tf.Tensor, _=None) -> tf.Tensor:
  """ImageOps.equalize: each channel's histogram flattened."""
  histogram = _histograms(frames)
  used = histogram > 0
  last = 255 - tf.argmax(tf.reverse(tf.cast(used, tf.int32), [-1]), axis=-1,
                         output_type=tf.int32)
  last_count = tf.gather(histogram, last, batch_dims=2)
  step = (tf.reduce_sum(histogram, -1) - last_count) // 255
  identity = (tf.reduce_sum(tf.cast(used, tf.int32), -1) <= 1) | (step == 0)
  step = tf.maximum(step, 1)[..., None]
  lut = (step // 2 + tf.cumsum(histogram, -1, exclusive=True)) // step
  return _look_up(frames, tf.where(identity[..., None], tf.range(256),
                                   tf.minimum(lut, 255)))


def invert(frames: tf.Tensor, _=None) -> tf.Tensor:
  """ImageOps.invert."""
  return 255 - frames


def posterize(frames: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """ImageOps.posterize: the `bits` high bits kept (0: black, >= 8: all)."""
  bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  mask = 256 - tf.bitwise.left_shift(1, 8 - bits)
  return tf.bitwise.bitwise_and(frames, tf.cast(mask, tf.uint8))


def solarize(frames: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """ImageOps.solarize: values >= threshold inverted (255 - x = x ^ 255)."""
  threshold = tf.cast(threshold, tf.int32)
  ones = tf.cast(tf.where(threshold < 256, 255, 0), tf.uint8)
  high = frames >= tf.cast(tf.minimum(threshold, 255), tf.uint8)
  return tf.bitwise.bitwise_xor(frames, tf.cast(high, tf.uint8) * ones)


def solarize_add(frames: tf.Tensor, add: tf.Tensor,
                 threshold: int = 128) -> tf.Tensor:
  """timm's solarize_add: min(255, x + add) for values below the threshold
  (x + min(x, 255 - add) + add - x: no uint8 step overflows)."""
  add = tf.cast(tf.clip_by_value(tf.cast(add, tf.int32), 0, 255), tf.uint8)
  below = tf.cast(frames < threshold, tf.uint8)
  return frames + below * (tf.minimum(frames, 255 - add) + add - frames)


def _blend(degenerate: tf.Tensor, pixels: tf.Tensor,
           factor: tf.Tensor) -> tf.Tensor:
  """Image.blend(degenerate, frames, factor) of float32 pixels: truncated,
  clipped."""
  out = degenerate + tf.cast(factor, tf.float32) * (pixels - degenerate)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _grayscale(pixels: tf.Tensor) -> tf.Tensor:
  """float32 [T, H, W, 1] of float32 RGB: PIL's convert("L"), (19595 R +
  38470 G + 7471 B + 2^15) >> 16; exact, every sum is an integer < 2^24."""
  weights = tf.constant([[19595.0], [38470.0], [7471.0]])
  return tf.floor((tf.tensordot(pixels, weights, 1) + 32768.0) / 65536.0)


def color(frames: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """ImageEnhance.Color: blended with the grey of each pixel."""
  pixels = tf.cast(frames, tf.float32)
  return _blend(_grayscale(pixels), pixels, factor)


def contrast(frames: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """ImageEnhance.Contrast: blended with each frame's mean grey, rounded."""
  pixels = tf.cast(frames, tf.float32)
  mean = tf.reduce_mean(tf.cast(_grayscale(pixels), tf.float64),
                        axis=[1, 2, 3], keepdims=True)
  return _blend(tf.cast(tf.floor(mean + 0.5), tf.float32), pixels, factor)


def brightness(frames: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """ImageEnhance.Brightness: blended with black."""
  return _blend(0.0, tf.cast(frames, tf.float32), factor)


def sharpness(frames: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """ImageEnhance.Sharpness: blended with PIL's SMOOTH filter (3x3, centre
  5, others 1, over 13, rounded), whose border pixels are the frame's own."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  pixels = tf.cast(frames, tf.float32)
  smooth = tf.round(tf.nn.depthwise_conv2d(pixels, kernel, [1, 1, 1, 1],
                                           "VALID"))
  middle = tf.concat([pixels[:, 1:-1, :1], smooth, pixels[:, 1:-1, -1:]], 2)
  return _blend(tf.concat([pixels[:, :1], middle, pixels[:, -1:]], 1), pixels,
                factor)


def _size(frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(width, height), float32, as PIL's Image.size."""
  shape = tf.cast(tf.shape(frames), tf.float32)
  return shape[2], shape[1]


def rotate_coefficients(frames: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
  """Image.rotate(degrees)'s: counter-clockwise about the centre."""
  angle = -tf.cast(degrees, tf.float32) * (math.pi / 180)
  cos, sin = tf.cos(angle), tf.sin(angle)
  width, height = _size(frames)
  cx, cy = width / 2, height / 2
  return tf.stack([cos, sin, cx - cos * cx - sin * cy,
                   -sin, cos, cy + sin * cx - cos * cy])


def shear_x_coefficients(frames: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """timm's shear_x: x + factor y."""
  del frames
  return tf.stack([1.0, factor, 0.0, 0.0, 1.0, 0.0])


def shear_y_coefficients(frames: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """timm's shear_y: y + factor x."""
  del frames
  return tf.stack([1.0, 0.0, 0.0, factor, 1.0, 0.0])


def translate_x_rel_coefficients(frames: tf.Tensor,
                                 fraction: tf.Tensor) -> tf.Tensor:
  """timm's translate_x_rel: content moved left by fraction x width."""
  return tf.stack([1.0, 0.0, fraction * _size(frames)[0], 0.0, 1.0, 0.0])


def translate_y_rel_coefficients(frames: tf.Tensor,
                                 fraction: tf.Tensor) -> tf.Tensor:
  """timm's translate_y_rel: content moved up by fraction x height."""
  return tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, fraction * _size(frames)[1]])


def affine(frames: tf.Tensor, coefficients: tf.Tensor,
           fill: Sequence[int]) -> tf.Tensor:
  """Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR, fillcolor=fill):
  output pixel (x, y) samples the input at (a x + b y + c, d x + e y + f),
  pixel centres at half-integers; where that point falls outside the frame
  the output is `fill`, and inside it neighbours beyond the edge are the
  edge's (PIL's rule). Truncated to integers, as PIL does."""
  a, b, c, d, e, f = tf.unstack(tf.cast(coefficients, tf.float32))
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  # TensorFlow samples at integer pixel coordinates: shift by half a pixel.
  # On uint8 its kernel truncates the interpolated value, as PIL does.
  transform = tf.stack([a, b, c + (a + b - 1) / 2, d, e, f + (d + e - 1) / 2,
                        0.0, 0.0])[None]
  sampled = tf.raw_ops.ImageProjectiveTransformV3(
      images=frames, transforms=transform,
      output_shape=tf.stack([height, width]), fill_value=0.0,
      interpolation="BILINEAR", fill_mode="NEAREST")
  y, x = tf.meshgrid(tf.range(height, dtype=tf.float32) + 0.5,
                     tf.range(width, dtype=tf.float32) + 0.5, indexing="ij")
  u, v = a * x + b * y + c, d * x + e * y + f
  inside = tf.cast((u >= 0) & (u < tf.cast(width, tf.float32)) & (v >= 0) &
                   (v < tf.cast(height, tf.float32)), tf.uint8)[..., None]
  # sampled where inside, fill elsewhere: one frame's [H, W, 3] of fill.
  return sampled * inside + (1 - inside) * tf.constant(fill, tf.uint8)


# -- timm's level-to-argument functions (magnitude m, sign s = +-1) ---------
# In float64, as timm's Python floats, so that the integer arguments match.

def _fraction(m):
  return m / LEVEL_DENOM


LEVELS = {
    "rotate": lambda m, s: s * _fraction(m) * 30.0,
    "posterize": lambda m, s: tf.floor(_fraction(m) * 4),
    "posterize_increasing": lambda m, s: 4 - tf.floor(_fraction(m) * 4),
    "solarize": lambda m, s: tf.floor(_fraction(m) * 256),
    "solarize_increasing": lambda m, s: 256 - tf.floor(_fraction(m) * 256),
    "solarize_add": lambda m, s: tf.floor(_fraction(m) * 110),
    "enhance": lambda m, s: _fraction(m) * 1.8 + 0.1,
    "enhance_increasing": lambda m, s: tf.maximum(
        1.0 + s * _fraction(m) * 0.9, 0.1),  # 0.1 takes the tensor's dtype
    "shear": lambda m, s: s * _fraction(m) * 0.3,
    "translate_rel": lambda m, s: s * _fraction(m) * 0.45,
}

DIRECT, AFFINE = "direct", "affine"


@dataclasses.dataclass(frozen=True)
class Transform:
  """An op of timm's RandAugment: its kind, its function of the frames and
  the argument (DIRECT: the new frames; AFFINE: the coefficients for
  `affine`), and its level functions (plain, 'inc1'; None: no argument)."""
  name: str
  kind: str
  function: Callable
  level: str | None = None
  increasing_level: str | None = None


# timm's _RAND_TRANSFORMS, in its order.
TRANSFORMS = (
    Transform("AutoContrast", DIRECT, auto_contrast),
    Transform("Equalize", DIRECT, equalize),
    Transform("Invert", DIRECT, invert),
    Transform("Rotate", AFFINE, rotate_coefficients, "rotate", "rotate"),
    Transform("Posterize", DIRECT, posterize, "posterize",
              "posterize_increasing"),
    Transform("Solarize", DIRECT, solarize, "solarize", "solarize_increasing"),
    Transform("SolarizeAdd", DIRECT, solarize_add, "solarize_add",
              "solarize_add"),
    Transform("Color", DIRECT, color, "enhance", "enhance_increasing"),
    Transform("Contrast", DIRECT, contrast, "enhance", "enhance_increasing"),
    Transform("Brightness", DIRECT, brightness, "enhance",
              "enhance_increasing"),
    Transform("Sharpness", DIRECT, sharpness, "enhance", "enhance_increasing"),
    Transform("ShearX", AFFINE, shear_x_coefficients, "shear", "shear"),
    Transform("ShearY", AFFINE, shear_y_coefficients, "shear", "shear"),
    Transform("TranslateXRel", AFFINE, translate_x_rel_coefficients,
              "translate_rel", "translate_rel"),
    Transform("TranslateYRel", AFFINE, translate_y_rel_coefficients,
              "translate_rel", "translate_rel"),
)
NAMES = tuple(t.name for t in TRANSFORMS)


def argument(name: str, policy: Policy, magnitude, sign) -> tf.Tensor | None:
  """The argument (float64) op `name` takes at `magnitude` and `sign`."""
  transform = TRANSFORMS[NAMES.index(name)]
  level = (transform.increasing_level if policy.increasing
           else transform.level)
  return None if level is None else LEVELS[level](
      tf.cast(magnitude, tf.float64), tf.cast(sign, tf.float64))


def apply(name: str, frames: tf.Tensor, value=None,
          fill: Sequence[int] = (128, 128, 128)) -> tf.Tensor:
  """Op `name` of TRANSFORMS with its PIL argument `value` (None for the
  ops without), on every frame."""
  transform = TRANSFORMS[NAMES.index(name)]
  value = None if value is None else tf.cast(value, tf.float32)
  out = transform.function(frames, value)
  return out if transform.kind == DIRECT else affine(frames, out, fill)


# -- The random draws ------------------------------------------------------


def _magnitude(policy: Policy, seed: tf.Tensor) -> tf.Tensor:
  """timm's AugmentOp magnitude: noisy if mstd (uniform in [0, M] beyond
  100), clipped to [0, mmax or 10]; float64."""
  m = tf.constant(policy.magnitude, tf.float64)
  if policy.magnitude_std > 100:
    m = tf.random.stateless_uniform([], seed, maxval=m, dtype=tf.float64)
  elif policy.magnitude_std > 0:
    m = m + policy.magnitude_std * tf.random.stateless_normal(
        [], seed, dtype=tf.float64)
  return tf.clip_by_value(m, 0.0, float(policy.magnitude_max or LEVEL_DENOM))


def draws(policy: Policy, seed: tf.Tensor) -> list[tuple]:
  """Per layer (op index, applied, magnitude, sign): timm's choices (an op
  among TRANSFORMS uniformly, applied with probability 1/2, its noisy
  magnitude, the sign its level function flips to with probability 1/2),
  stateless in `seed`."""
  layers = []
  for layer_seed in tf.unstack(
      tf.random.experimental.stateless_split(seed, policy.num_layers)):
    choose, keep, magnitude, sign = tf.unstack(
        tf.random.experimental.stateless_split(layer_seed, 4))
    layers.append((
        tf.random.stateless_uniform([], choose, maxval=len(TRANSFORMS),
                                    dtype=tf.int32),
        tf.random.stateless_uniform([], keep) < 0.5,
        _magnitude(policy, magnitude),
        tf.where(tf.random.stateless_uniform([], sign) < 0.5, 1.0, -1.0)))
  return layers


def _layer(frames: tf.Tensor, policy: Policy, index: tf.Tensor,
           magnitude: tf.Tensor, sign: tf.Tensor,
           fill: Sequence[int]) -> tf.Tensor:
  """TRANSFORMS[index] at `magnitude` and `sign` (index len(TRANSFORMS):
  none); the affine ops' branches give coefficients to one `affine`."""
  def branch(transform):
    level = argument(transform.name, policy, magnitude, sign)
    value = None if level is None else tf.cast(level, tf.float32)
    return lambda: transform.function(frames, value)

  def kind_branch(kind):
    members = [t for t in TRANSFORMS if t.kind == kind]
    position = tf.gather([members.index(t) if t.kind == kind else 0
                          for t in TRANSFORMS] + [0], index)

    def run():
      out = tf.switch_case(position, [branch(t) for t in members])
      return out if kind == DIRECT else affine(frames, out, fill)
    return run

  kind = tf.gather([int(t.kind == AFFINE) for t in TRANSFORMS] + [2], index)
  return tf.switch_case(kind, [kind_branch(DIRECT), kind_branch(AFFINE),
                               lambda: frames])


def augment(frames: tf.Tensor, policy: Policy, seed: tf.Tensor,
            fill: Sequence[int] = (128, 128, 128)) -> tf.Tensor:
  """uint8 [T, H, W, 3] through RandAugment: one draw of ops and arguments
  (`draws(policy, seed)`) for every frame of the clip."""
  index, magnitude, sign = (tf.stack(v) for v in zip(*[
      (tf.where(applied, i, len(TRANSFORMS)), m, s)
      for i, applied, m, s in draws(policy, seed)]))

  def layer(i, frames):
    return i + 1, tf.ensure_shape(
        _layer(frames, policy, index[i], magnitude[i], sign[i], fill),
        frames.shape)

  # A loop, not N copies: the pipeline's graph holds the ops once.
  _, frames = tf.while_loop(lambda i, _: i < policy.num_layers, layer,
                            (tf.constant(0), frames))
  return frames
