"""CoVeR-mini: three small datasets made from scikit-learn's bundled digits.

`sklearn.datasets.load_digits` ships 1797 real 8x8 handwritten digits inside
the package, so these build on any machine with no download, deterministically,
and go through exactly the same storage and input pipeline as Kinetics:

- `digits_image` (the ImageNet role): one digit on a 40x40 canvas; label: the
  digit (10 classes).
- `digits_appearance` (the Kinetics role): a digit drifts on a random bouncing
  path; label: the digit. Frame order carries no information.
- `digits_motion` (the SSv2 role): any digit; label: what happens (moves
  left/right/up/down, grows, shrinks, fades in, fades out). Every class is the
  time reversal of another, so reversed frames swap the label, and a
  horizontal flip swaps moving_left and moving_right: never flip it.

All three use the same split of the source images (a fifth held out for
`test`), so no test digit is ever seen in training by any dataset.

Each has a config per share of the training source digits, for the paper's
regime of video data scarcer than image data: `train100` (the default, all of
them), `train50`, `train25`, `train10`, named in configs as e.g.
`digits_motion/train10`. Smaller shares are nested in larger ones and keep
every digit class; an example kept is byte-identical to the same example of
`train100`, and the test split is the same in every config.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from data import features
from data import frame_store

CANVAS = 40  # stored frame size (short side); configs crop 32
SPRITE = 24  # digit size in pixels at scale 1: 6x6 patches of 4 px
TEST_FRACTION = 0.2
TRAIN_COPIES = 2  # renderings per training source image (different paths)
FRAMES = (12, 20)  # stored frames per video, inclusive range
SEED = 20211211
MOVE_OVERHANG = 4  # px of a moving digit outside the canvas at either end
TRAIN_PERCENTS = (100, 50, 25, 10)  # builder configs `trainNN`; first: default

MOTIONS = ("moving_left", "moving_right", "moving_up", "moving_down",
           "growing", "shrinking", "fading_in", "fading_out")
# Each motion's time reversal: the label a reversed video truly shows.
REVERSED = {"moving_left": "moving_right", "moving_right": "moving_left",
            "moving_up": "moving_down", "moving_down": "moving_up",
            "growing": "shrinking", "shrinking": "growing",
            "fading_in": "fading_out", "fading_out": "fading_in"}
# Each motion's horizontal mirror image.
MIRRORED = {**{m: m for m in MOTIONS},
            "moving_left": "moving_right", "moving_right": "moving_left"}


def source_digits(split: str, train_percent: int = 100
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images [N, 8, 8] in [0, 1], digit labels [N], source ids [N]) of a split.

  The split is a fixed permutation of the 1797 source images: train and test
  never share one. `train_percent` keeps that share of the training images, a
  prefix of their class-balanced order, so smaller shares are nested in larger
  ones; the test split ignores it.
  """
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  order = np.random.default_rng(SEED).permutation(len(digits.target))
  num_test = int(round(TEST_FRACTION * len(order)))
  if split == "test":
    ids = order[:num_test]
  else:
    ids = _class_balanced(order[num_test:], digits.target)
    ids = ids[:int(round(train_percent / 100 * len(ids)))]
  ids = np.sort(ids)
  return digits.images[ids] / 16.0, digits.target[ids], ids


def _class_balanced(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """`ids` reordered so that every prefix holds each class in proportion.

  Each id is ranked by its place among its class's ids in the given (random)
  order, as a fraction of the class size; classes interleave by that rank.
  """
  classes = labels[ids]
  rank = np.empty(len(ids))
  for c in np.unique(classes):
    members = classes == c
    rank[members] = (np.arange(members.sum()) + 0.5) / members.sum()
  return ids[np.argsort(rank, kind="stable")]


def _pixel_size(size: float) -> int:
  """The drawn side in pixels of a digit of nominal `size`."""
  return max(2, int(round(size)))


def _sprite(digit: np.ndarray, size: int) -> np.ndarray:
  """The 8x8 digit resampled to size x size pixels, values in [0, 1]."""
  img = Image.fromarray(np.uint8(digit * 255), mode="L")
  return np.asarray(img.resize((size, size), Image.BILINEAR),
                    np.float32) / 255.0


def _coverage(digit: np.ndarray, centers: np.ndarray,
              sizes: np.ndarray) -> np.ndarray:
  """float32 [T, CANVAS, CANVAS, 3]: the digit's alpha in each frame, clipped
  to the canvas (growing digits may overflow it), the same in each channel.

  A video resamples its digit once per distinct size, not once per frame.
  """
  pixels = [_pixel_size(s) for s in sizes]
  sprites = {s: np.repeat(_sprite(digit, s)[..., None], 3, axis=-1)
             for s in set(pixels)}
  alpha = np.zeros((len(pixels), CANVAS, CANVAS, 3), np.float32)
  for frame, center, s in zip(alpha, centers, pixels):
    top, left = int(round(center[0] - s / 2)), int(round(center[1] - s / 2))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + s, CANVAS), min(left + s, CANVAS)
    if y1 > y0 and x1 > x0:
      frame[y0:y1, x0:x1] = sprites[s][y0 - top:y1 - top, x0 - left:x1 - left]
  return alpha


def render_frames(digit: np.ndarray, *, centers, sizes, opacities,
                  color: np.ndarray, background: np.ndarray) -> np.ndarray:
  """uint8 [T, CANVAS, CANVAS, 3]: frame t is the digit at `centers[t]`
  (row, column), `sizes[t]` and `opacities[t]` blended over `background`."""
  opacities = np.asarray(opacities, np.float32)[:, None, None, None]
  alpha = _coverage(digit, centers, sizes) * opacities
  # Operands of one shape: numpy loops slowly over a broadcast last axis of 3.
  color = np.broadcast_to(color, background.shape).copy()
  frames = background * (1 - alpha) + color * alpha
  return np.uint8(np.clip(frames, 0, 255))


def render(digit: np.ndarray, *, center: tuple[float, float], size: float,
           opacity: float, color: np.ndarray,
           background: np.ndarray) -> np.ndarray:
  """One uint8 [CANVAS, CANVAS, 3] frame: the digit blended over background."""
  return render_frames(digit, centers=[center], sizes=[size],
                       opacities=[opacity], color=color,
                       background=background)[0]


def encode_jpegs(frames: np.ndarray) -> list[bytes]:
  """The JPEG bytes of each uint8 [H, W, 3] frame of `frames` [T, H, W, 3]."""
  t, h, w, _ = frames.shape
  # One PIL image per video, cropped per frame: cheaper than T conversions.
  strip = Image.fromarray(frames.reshape(t * h, w, 3))
  return [_jpeg(strip.crop((0, i * h, w, (i + 1) * h))) for i in range(t)]


def _jpeg(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def _look(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A random bright colour and a dark, noisy background."""
  color = rng.uniform(150, 255, size=3).astype(np.float32)
  background = rng.uniform(0, 60, size=(CANVAS, CANVAS, 3)).astype(np.float32)
  return color, background


def _bouncing_path(rng: np.random.Generator, n: int) -> np.ndarray:
  """[n, 2] centres of a random walk with constant speed, bouncing at walls."""
  low, high = SPRITE / 2 + 2, CANVAS - SPRITE / 2 - 2
  pos = rng.uniform(low, high, size=2)
  vel = rng.uniform(-2.0, 2.0, size=2)
  path = []
  for _ in range(n):
    path.append(pos.copy())
    pos = pos + vel
    for axis in range(2):
      if not low <= pos[axis] <= high:
        vel[axis] = -vel[axis]
        pos[axis] = np.clip(pos[axis], low, high)
  return np.array(path)


def motion_frames(digit: np.ndarray, motion: str, n: int,
                  rng: np.random.Generator) -> np.ndarray:
  """uint8 [n, CANVAS, CANVAS, 3]: `digit` performing `motion`; reversal
  gives REVERSED[motion]."""
  color, background = _look(rng)
  # Moving digits cross the canvas, entering and leaving a third outside it:
  # 24 px of travel, 3 px per frame of an 8-frame clip, so that direction is
  # legible to 8-px patches (v1.1's 12 px were barely so).
  low, high = SPRITE / 2 - MOVE_OVERHANG, CANVAS - SPRITE / 2 + MOVE_OVERHANG
  mid = CANVAS / 2
  jitter = rng.uniform(-4, 4, size=2)
  # Parameters at t in [0, 1]; each twin runs the same path backwards, so the
  # reversed frames of one class are exactly frames of its twin.
  forward = {"moving_right": "x", "moving_down": "y", "growing": "size",
             "fading_in": "opacity"}
  twin = {v: k for k, v in REVERSED.items()}
  kind = motion if motion in forward else twin[motion]
  t = np.arange(n) / (n - 1)
  if motion not in forward:
    t = 1 - t
  centers = np.tile([mid + jitter[0], mid + jitter[1]], (n, 1))
  sizes, opacities = np.full(n, float(SPRITE)), np.ones(n)
  if forward[kind] == "x":
    centers[:, 1] = low + (high - low) * t
  elif forward[kind] == "y":
    centers[:, 0] = low + (high - low) * t
  elif forward[kind] == "size":
    sizes = SPRITE * (0.4 + 1.1 * t)
  else:
    opacities = 0.1 + 0.9 * t
  return render_frames(digit, centers=centers, sizes=sizes,
                       opacities=opacities, color=color,
                       background=background)


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
  """Renders `train_percent` % of the training source digits (all of test)."""
  train_percent: int = 100


class _Digits(frame_store.WritesFrameStore, tfds.core.GeneratorBasedBuilder):
  """Shared split logic: TRAIN_COPIES renderings per train image, 1 per test."""

  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "Digits drawn at 24 px instead of 16.",
      "1.2.0": "Builder configs trainNN: a fraction of the training source "
               "digits. digits_motion: moving digits travel 24 px (was 12).",
      "1.3.0": "Video frames in a frame store (data.frame_store)."}
  BUILDER_CONFIGS = [
      DigitsConfig(name=f"train{p}", train_percent=p,
                   description=f"{p}% of the training source digits, "
                               "balanced by digit; the full test split.")
      for p in TRAIN_PERCENTS]
  MEDIA = features.VIDEO
  FLIP_CHANGES_LABEL = False

  def _label_names(self) -> list[str]:
    return [str(d) for d in range(10)]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=features.media_features(self.MEDIA, self._label_names()),
        metadata=features.metadata(
            short_side=CANVAS, flip_changes_label=self.FLIP_CHANGES_LABEL))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples("train"),
            "test": self._generate_examples("test")}

  def _generate_examples(self, split):
    images, digits, ids = source_digits(split)
    kept = set(source_digits(split, self.builder_config.train_percent)[2])
    copies = TRAIN_COPIES if split == "train" else 1
    for copy in range(copies):
      for n, (image, digit, source_id) in enumerate(zip(images, digits, ids)):
        # Skipped, not renumbered: `n` (the motion label) and the generator
        # stay those of train100, so a share only removes examples.
        if source_id not in kept:
          continue
        # One generator per example: deterministic whatever the order.
        rng = np.random.default_rng([SEED, split == "test", copy, source_id])
        key = f"{source_id}_{copy}"
        example = self._example(image, int(digit), n * copies + copy, rng,
                                key)
        if self.MEDIA == features.VIDEO:
          example[self.MEDIA] = self._stored(split, key, example[self.MEDIA])
        yield key, example

  def _example(self, image, digit, index, rng, key):
    raise NotImplementedError


class DigitsImage(_Digits):
  """Digits as images: a digit of random size, place and colour; 10 classes."""

  MEDIA = features.IMAGE

  def _example(self, image, digit, index, rng, key):
    color, background = _look(rng)
    size = rng.uniform(0.8, 1.3) * SPRITE
    center = rng.uniform(size / 2 + 1, CANVAS - size / 2 - 1, size=2)
    frame = render(image, center=tuple(center), size=size, opacity=1.0,
                   color=color, background=background)
    return {"image": encode_jpegs(frame[None])[0], "label": digit,
            "id": key}


class DigitsAppearance(_Digits):
  """Digits drifting on random paths; the label is the digit (10 classes)."""

  def _example(self, image, digit, index, rng, key):
    color, background = _look(rng)
    n = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
    frames = render_frames(image, centers=_bouncing_path(rng, n),
                           sizes=np.full(n, SPRITE), opacities=np.ones(n),
                           color=color, background=background)
    return {"video": encode_jpegs(frames), "label": digit,
            "id": key}


class DigitsMotion(_Digits):
  """Any digit doing one of 8 motions; the label is the motion."""

  FLIP_CHANGES_LABEL = True

  def _label_names(self) -> list[str]:
    return features.sorted_label_names(MOTIONS)

  def _example(self, image, digit, index, rng, key):
    del digit  # the label is the motion, whatever the digit
    names = self._label_names()
    motion = names[index % len(names)]  # balanced classes
    n = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
    frames = motion_frames(image, motion, n, rng)
    return {"video": encode_jpegs(frames), "label": names.index(motion),
            "id": key}
