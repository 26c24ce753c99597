"""Resampling of position and time embeddings."""

import numpy as np
import pytest
import scipy.ndimage

from cover_jax.models import posemb


def test_linear_matches_scipy_zoom_order_1():
  rng = np.random.default_rng(0)
  grid = rng.standard_normal((14, 14, 8)).astype(np.float32)
  out = posemb.resample_grid(grid.reshape(196, 8), (14, 14), (24, 20), "linear")
  expected = scipy.ndimage.zoom(grid, (24 / 14, 20 / 14, 1), order=1)
  np.testing.assert_allclose(out.reshape(24, 20, 8), expected, atol=1e-5)


def test_nearest_matches_pytorch_interpolate():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  grid = rng.standard_normal((14, 14, 3)).astype(np.float32)
  for new in [(16, 16), (7, 10), (28, 28), (9, 13)]:
    out = posemb.resample_grid(grid.reshape(-1, 3), (14, 14), new, "nearest")
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(grid).permute(2, 0, 1)[None], size=new,
        mode="nearest")[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out.reshape(*new, 3), expected)
  time = rng.standard_normal((8, 3)).astype(np.float32)
  for frames in (1, 4, 16, 6):
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(time).T[None], size=frames, mode="nearest")[0].T.numpy()
    np.testing.assert_array_equal(
        posemb.resample_axis(time, 0, frames, "nearest"), expected)


def test_grid_is_not_scrambled():
  """An embedding that encodes (row, column) keeps rows and columns apart."""
  rows, cols = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
  emb = np.stack([rows, cols], -1).reshape(16, 2)
  out = posemb.resample_grid(emb, (4, 4), (7, 7), "linear").reshape(7, 7, 2)
  np.testing.assert_allclose(out[..., 0], np.repeat(
      np.linspace(0, 3, 7)[:, None], 7, 1), atol=1e-6)
  np.testing.assert_allclose(out[..., 1], np.repeat(
      np.linspace(0, 3, 7)[None], 7, 0), atol=1e-6)


def test_one_frame_takes_the_first_entry():
  time = np.arange(8.0)[:, None]
  for method in posemb.METHODS:
    np.testing.assert_array_equal(posemb.resample_axis(time, 0, 1, method),
                                  [[0.0]])


def test_errors():
  with pytest.raises(ValueError, match="not a square grid"):
    posemb.square_grid(15)
  with pytest.raises(ValueError, match="Unknown position-embedding "
                     "interpolation 'cubic'"):
    posemb.resample_axis(np.zeros((4, 2)), 0, 3, "cubic")
  with pytest.raises(ValueError, match="has 15 entries, expected 4x4=16"):
    posemb.resample_grid(np.zeros((15, 2)), (4, 4), (5, 5), "linear")
