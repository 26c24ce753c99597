"""The devices' normalisation of uint8 frames, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cover_jax import pixels
from cover_jax.models import abstract_variables, create, unboxed

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference(frames):
  """(x / 255 - mean) / std per channel, in float64."""
  return (np.asarray(frames, np.float64) / 255.0 - np.array(MEAN)) / np.array(
      STD)


def test_normalize_is_the_per_channel_formula():
  frames = np.arange(256, dtype=np.uint8)[:, None].repeat(3, 1)  # every value
  frames = frames.reshape(1, 256, 1, 1, 3)
  out = jax.jit(lambda f: pixels.normalize(f, MEAN, STD))(frames)
  assert out.dtype == jnp.float32 and out.shape == frames.shape
  np.testing.assert_allclose(out, reference(frames), rtol=0, atol=1e-6)


def test_float_frames_are_refused():
  with pytest.raises(TypeError, match="Frames must be uint8 pixels"):
    pixels.normalize(np.zeros((1, 2, 2, 3), np.float32), MEAN, STD)


@pytest.mark.slow
def test_the_model_refuses_pixels_and_a_bf16_model_takes_normalised_frames():
  model = create({"a": 3}, width=16, depth=1, num_heads=2, mlp_dim=32,
                 patch_size=8, num_frames=2, image_size=16,
                 dtype=jnp.bfloat16)
  # init's tree (abstract evaluation: init's random draws would compile for
  # seconds), as ones for the LayerNorm scales plus N(0, 0.05) noise.
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: np.asarray((path[-1].key == "scale") + 0.05 *
                                 rng.standard_normal(s.shape), s.dtype),
      unboxed(abstract_variables(model))["params"])
  frames = np.random.default_rng(0).integers(0, 256, (2, 2, 16, 16, 3),
                                             np.uint8)
  with pytest.raises(TypeError, match="normalise the pipeline's uint8"):
    model.apply({"params": params}, frames)
  # The model on frames normalised on the device, and on the reference's
  # frames: one program for both (each program costs a compile).
  logits = lambda p, x: model.apply({"params": p}, x)["a"]
  got, want = jax.jit(lambda p, f, x: (
      logits(p, pixels.normalize(f, MEAN, STD)), logits(p, x)))(
          params, frames, reference(frames).astype(np.float32))
  np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
