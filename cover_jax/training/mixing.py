"""Label smoothing, mixup and cutmix per dataset of a co-training batch.

The options are timm's `Mixup` (timm/data/mixup.py: mixup_alpha,
cutmix_alpha, prob, switch_prob, label_smoothing, correct_lam=True, mode
"batch"), set per dataset (`config.datasets.<name>`). A co-training batch
part holds examples of several label spaces at once, so an example is only
ever mixed with an example of its own dataset in its own part, and each
dataset of a part draws its own batch-mode parameters (mixed or not, mixup
or cutmix, lambda, box). Everything is a pure function of a JAX key: the
training step derives it from (seed, step), so resume is exact.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class Options:
  """A dataset's target options; the defaults are off (the paper's recipe).

  Attributes:
    label_smoothing: s; the target is 1 - s + s/K on the label, s/K
      elsewhere (K: the dataset's classes).
    mixup_alpha: Beta(alpha, alpha) of mixup's lambda; 0: no mixup.
    cutmix_alpha: Beta(alpha, alpha) of cutmix's lambda; 0: no cutmix.
    mix_prob: the probability that a batch part's examples of the dataset
      are mixed at all (timm's `prob`).
    switch_prob: with both alphas > 0, the probability of cutmix instead of
      mixup.
  """
  label_smoothing: float = 0.0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  switch_prob: float = 0.5

  @property
  def mixes(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0

  @property
  def soft_targets(self) -> bool:
    """Whether the loss needs soft targets (else integer labels, as ever)."""
    return self.mixes or self.label_smoothing > 0


OFF = Options()
FIELDS = tuple(f.name for f in dataclasses.fields(Options))


def from_entry(name: str, entry) -> Options:
  """A `config.datasets` entry's options (missing fields: off), checked."""
  values = {f: float(entry.get(f, getattr(OFF, f))) for f in FIELDS}
  limits = {"label_smoothing": (0.0, 1.0, "[0, 1)"),
            "mixup_alpha": (0.0, float("inf"), ">= 0"),
            "cutmix_alpha": (0.0, float("inf"), ">= 0"),
            "mix_prob": (0.0, 1.0, "in [0, 1]"),
            "switch_prob": (0.0, 1.0, "in [0, 1]")}
  for field, (low, high, words) in limits.items():
    value = values[field]
    ok = low <= value < high if field == "label_smoothing" else (
        low <= value <= high)
    if not ok:
      raise ValueError(f"config.datasets.{name}.{field} must be {words}, "
                       f"not {value}.")
  return Options(**values)


class Mixed(NamedTuple):
  """How each example of a batch part was mixed.

  partner: [B] the example it was mixed with (itself where unmixed);
  lam: [B] the weight of its own label (1 where unmixed; for cutmix, 1 -
  pasted area / frame area); cut: [B] cutmix (True) or mixup; box: [B, 4]
  the pasted box (top, bottom, left, right; empty where unmixed), the same
  on every frame of the clip.
  """
  partner: jax.Array
  lam: jax.Array
  cut: jax.Array
  box: jax.Array


def smoothed_one_hot(labels, num_classes: int, smoothing: float):
  """[..., K] float32: 1 - s + s/K at the label, s/K elsewhere (timm's)."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def soft_cross_entropy(logits, targets):
  """-sum_k target_k log softmax(logits)_k per example."""
  return optax.softmax_cross_entropy(logits, targets)


def partners(key, dataset_ids):
  """[B] int32: each example's partner, of the same dataset.

  The examples of each dataset are put in a random order and each is paired
  with the next one in it (the last with the first): a random cycle within
  every dataset, so every example is pasted into exactly one other; a
  dataset with one example in the batch is paired with itself.
  """
  size = dataset_ids.shape[0]
  order = jnp.lexsort((jax.random.uniform(key, (size,)), dataset_ids))
  grouped = dataset_ids[order]
  start = jnp.searchsorted(grouped, grouped, side="left")
  end = jnp.searchsorted(grouped, grouped, side="right")
  position = jnp.arange(size)
  following = jnp.where(position + 1 < end, position + 1, start)
  return jnp.zeros(size, jnp.int32).at[order].set(
      order[following].astype(jnp.int32))


def cutmix_box(key, lam, height: int, width: int):
  """(box [4] int32 (top, bottom, left, right), corrected lambda).

  timm's rand_bbox: a box of sqrt(1 - lam) of each side centred at a uniform
  pixel, clipped to the frame; the lambda returned is 1 - its clipped area /
  the frame's area (timm's correct_lam).
  """
  y_key, x_key = jax.random.split(key)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = (height * ratio).astype(jnp.int32)
  cut_w = (width * ratio).astype(jnp.int32)
  cy = jax.random.randint(y_key, (), 0, height)
  cx = jax.random.randint(x_key, (), 0, width)
  top, bottom = (jnp.clip(cy - cut_h // 2, 0, height),
                 jnp.clip(cy + cut_h // 2, 0, height))
  left, right = (jnp.clip(cx - cut_w // 2, 0, width),
                 jnp.clip(cx + cut_w // 2, 0, width))
  area = (bottom - top) * (right - left)
  return (jnp.stack([top, bottom, left, right]),
          1.0 - area.astype(jnp.float32) / (height * width))


def _dataset_draw(key, options: Options, height: int, width: int):
  """One dataset's batch-mode (lam, cut, box), as timm's _params_per_batch."""
  apply_key, switch_key, mixup_key, cutmix_key, box_key = jax.random.split(
      key, 5)
  apply = jax.random.uniform(apply_key) < options.mix_prob
  if options.mixup_alpha > 0 and options.cutmix_alpha > 0:
    use_cut = jax.random.uniform(switch_key) < options.switch_prob
  else:
    use_cut = jnp.asarray(options.cutmix_alpha > 0)
  lam_mixup = (jax.random.beta(mixup_key, options.mixup_alpha,
                               options.mixup_alpha)
               if options.mixup_alpha > 0 else jnp.float32(1.0))
  lam_cut = (jax.random.beta(cutmix_key, options.cutmix_alpha,
                             options.cutmix_alpha)
             if options.cutmix_alpha > 0 else jnp.float32(1.0))
  box, lam_cut = cutmix_box(box_key, lam_cut, height, width)
  lam = jnp.where(apply, jnp.where(use_cut, lam_cut, lam_mixup), 1.0)
  # Unmixed is an empty cutmix box: the frames stay as they are, exactly.
  box = jnp.where(apply & use_cut, box, jnp.zeros(4, jnp.int32))
  return lam.astype(jnp.float32), use_cut | ~apply, box


def draw(key, dataset_ids, options: Sequence[Options], height: int,
         width: int) -> Mixed:
  """How a batch part's examples are mixed; options[i]: dataset i's.

  `dataset_ids` index `options` (every head's, in head order); each
  dataset draws its own parameters, its examples share them (timm's batch
  mode within the dataset).
  """
  pair_key, dataset_key = jax.random.split(key)
  lam, cut, box = [], [], []
  for index, opts in enumerate(options):
    if opts.mixes:
      draws = _dataset_draw(jax.random.fold_in(dataset_key, index), opts,
                            height, width)
    else:
      draws = (jnp.float32(1.0), jnp.asarray(True), jnp.zeros(4, jnp.int32))
    for table, value in zip((lam, cut, box), draws):
      table.append(value)
  return Mixed(partners(pair_key, dataset_ids), jnp.stack(lam)[dataset_ids],
               jnp.stack(cut)[dataset_ids], jnp.stack(box)[dataset_ids])


def box_mask(box, height: int, width: int):
  """[B, H, W] bool: the pixels inside each example's box."""
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  top, bottom, left, right = (box[:, i, None, None] for i in range(4))
  return ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right))


def apply(mixed: Mixed, frames, partner_frames):
  """The mixed frames [B, ..., H, W, C]: lam x + (1 - lam) x[partner] for
  mixup, x with x[partner] pasted in the box for cutmix (every frame).

  `partner_frames` is frames[mixed.partner] (the caller gathers it, e.g.
  from the uint8 pixels, a quarter of the bytes to move between devices).
  """
  batch, height, width = frames.shape[0], frames.shape[-3], frames.shape[-2]
  middle = (1,) * (frames.ndim - 4)
  inside = box_mask(mixed.box, height, width).reshape(
      (batch, *middle, height, width, 1))
  lam = mixed.lam.reshape((batch, *middle, 1, 1, 1))
  cut = mixed.cut.reshape((batch, *middle, 1, 1, 1))
  return jnp.where(cut, jnp.where(inside, partner_frames, frames),
                   lam * frames + (1.0 - lam) * partner_frames)


def targets(labels, num_classes: int, smoothing: float, mixed: Mixed | None):
  """[B, K] soft targets: lam smooth(y) + (1 - lam) smooth(y[partner]).

  Each row sums to one; `labels` must be valid (< K) at the partners of
  the rows that count (those of this dataset: their partners are too).
  """
  own = smoothed_one_hot(labels, num_classes, smoothing)
  if mixed is None:
    return own
  lam = mixed.lam[:, None]
  return lam * own + (1.0 - lam) * own[mixed.partner]


def dominant_labels(labels, mixed: Mixed | None):
  """The label of the larger share of each example: its own where lam >=
  0.5 (and unmixed), else its partner's. Train top-1 is measured on it."""
  if mixed is None:
    return labels
  return jnp.where(mixed.lam >= 0.5, labels, labels[mixed.partner])
