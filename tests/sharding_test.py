"""Meshes, sharding rules and a sharded forward pass on 8 fake CPU devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cover_jax import sharding
from cover_jax.models import TimeSformer, abstract_variables, unboxed

SMALL = dict(width=64, depth=2, num_heads=4, mlp_dim=128, patch_size=8,
             num_frames=4, image_size=32)


def test_eight_fake_devices():
  assert jax.device_count() == 8


@functools.lru_cache(maxsize=None)
def single_device(scan):
  """(model, parameters, video, logits of the single-device program), once
  per layout for every mesh. Parameters: ones for the LayerNorm scales,
  zeros elsewhere (init's tree, by abstract evaluation: nothing compiled),
  plus N(0, 0.05) noise from numpy (jax.random compiles per leaf shape)."""
  model = TimeSformer(heads={"a": 6, "b": 3}, scan_layers=scan, **SMALL)
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray((path[-1].key == "scale") + 0.05 *
                                  rng.standard_normal(s.shape), s.dtype),
      unboxed(abstract_variables(model))["params"])
  video = jnp.asarray(np.random.default_rng(0).standard_normal(
      (8, 4, 32, 32, 3)), jnp.float32)
  expected = jax.jit(_apply(model))(params, video)
  return model, params, video, expected


def _apply(model):
  return lambda p, v: model.apply({"params": p}, v)


# Every mesh with loop-layout blocks; the scanned layout (its extra leading
# "layers" axis is never split) on the meshes that split block parameters
# over fsdp and tensor together, and over all 8 devices. (Pure data
# parallelism replicates the parameters, so their layout plays no part.)
@pytest.mark.parametrize("scan,data,fsdp,tensor", [
    (False, 2, 2, 2), (False, 1, 8, 1), (False, 2, 1, 4), (False, -1, 1, 1),
    (True, 2, 2, 2), (True, 1, 8, 1)])
@pytest.mark.slow
def test_sharded_forward_equals_single_device(data, fsdp, tensor, scan):
  model, params, video, expected = single_device(scan)
  mesh = sharding.make_mesh(data, fsdp, tensor)
  shardings = sharding.param_shardings(model, mesh)
  sharded = jax.device_put(params, shardings)
  inputs = jax.device_put(video, sharding.batch_sharding(mesh, video.ndim))
  with sharding.use(mesh):
    out = jax.jit(_apply(model))(sharded, inputs)
  for name in expected:
    np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-6)
  # Parameters really are split: the MLP kernel over fsdp and tensor.
  kernel = sharded["encoderblock"]["mlp"]["Dense_0"]["kernel"] if scan else (
      sharded["encoderblock_0"]["mlp"]["Dense_0"]["kernel"])
  shard_shape = kernel.addressable_shards[0].data.shape
  assert shard_shape[-2:] == (64 // fsdp, 128 // tensor)


def test_make_mesh_errors():
  with pytest.raises(ValueError, match="but 8 are available"):
    sharding.make_mesh(2, 2, 1)
  with pytest.raises(ValueError, match="cannot be split into a mesh with 3"):
    sharding.make_mesh(-1, 3, 1)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh(-1, -1, 1)


def test_indivisible_parameter_is_reported():
  model = TimeSformer(heads={"a": 6}, **dict(SMALL, num_heads=2, width=64))
  mesh = sharding.make_mesh(1, 1, 8)
  with pytest.raises(ValueError, match=r"dimension 2 cannot be split over mesh "
                     r"axes \('tensor',\) of size 8"):
    sharding.param_shardings(model, mesh)
