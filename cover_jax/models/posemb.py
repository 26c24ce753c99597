"""Resampling of learned position and time embeddings to other grids.

Two methods, chosen per model (`TimeSformer.posemb_interpolation`):

- "linear": separable linear interpolation with aligned corners, the same as
  `scipy.ndimage.zoom(order=1)` that google-research/vision_transformer and
  big_vision use for high-resolution fine-tuning. The spatial embedding is
  resampled as a 2-D grid of (rows, columns).
- "nearest": PyTorch's `F.interpolate(mode="nearest")` (source index
  `floor(i * old / new)`), which is what the official TimeSformer does in its
  forward pass; the checkpoint loader for official weights selects it so that
  logits match the reference at any resolution and frame count.

We deliberately do not copy the official *loader's* resize (a 1-D nearest
resize of the flattened spatial sequence, `timesformer/models/helpers.py`):
it mixes rows and columns and scrambles the grid.

A target size of 1 takes the first entry with either method (so a 1-frame
input uses the time embedding of frame 0, as in the official code).
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

METHODS = ("linear", "nearest")


def _source_positions(old: int, new: int, method: str) -> np.ndarray:
  if method == "nearest":
    return np.minimum(np.floor(np.arange(new) * (old / new)), old - 1)
  if method == "linear":
    if new == 1:
      return np.zeros(1)
    return np.arange(new) * ((old - 1) / (new - 1))
  raise ValueError(
      f"Unknown position-embedding interpolation {method!r}; use one of "
      f"{METHODS}.")


def resample_axis(emb, axis: int, new: int, method: str):
  """Resamples `emb` along `axis` to length `new` (numpy or jax arrays)."""
  old = emb.shape[axis]
  if old == new:
    return emb
  xp = jnp if not isinstance(emb, np.ndarray) else np
  pos = _source_positions(old, new, method)
  lo = np.floor(pos).astype(np.int32)
  hi = np.minimum(lo + 1, old - 1)
  frac = (pos - lo).astype(np.float32)
  lower = xp.take(emb, lo, axis=axis)
  if method == "nearest" or not frac.any():
    return lower
  shape = [1] * emb.ndim
  shape[axis] = new
  frac = frac.reshape(shape).astype(emb.dtype)
  return lower + (xp.take(emb, hi, axis=axis) - lower) * frac


def resample_grid(emb, old_grid: Sequence[int], new_grid: Sequence[int],
                  method: str):
  """Resamples a `[rows * cols, D]` embedding laid out row-major as a 2-D grid."""
  rows, cols = old_grid
  if emb.shape[0] != rows * cols:
    raise ValueError(
        f"Position embedding has {emb.shape[0]} entries, expected "
        f"{rows}x{cols}={rows * cols} for its grid.")
  if tuple(old_grid) == tuple(new_grid):
    return emb
  grid = emb.reshape(rows, cols, -1)
  grid = resample_axis(grid, 0, new_grid[0], method)
  grid = resample_axis(grid, 1, new_grid[1], method)
  return grid.reshape(new_grid[0] * new_grid[1], -1)


def square_grid(num_positions: int, what: str = "position embedding") -> tuple:
  """The (side, side) grid of a square embedding, or a clear error."""
  side = int(round(num_positions ** 0.5))
  if side * side != num_positions:
    raise ValueError(
        f"The {what} has {num_positions} spatial entries, which is not a square "
        "grid; only square pre-training grids are supported.")
  return side, side
