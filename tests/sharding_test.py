"""Meshes, sharding rules and a sharded forward pass on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cover_jax import sharding
from cover_jax.models import TimeSformer, init_params

SMALL = dict(width=64, depth=2, num_heads=4, mlp_dim=128, patch_size=8,
             num_frames=4, image_size=32)


def test_eight_fake_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("data,fsdp,tensor", [(2, 2, 2), (1, 8, 1), (2, 1, 4),
                                              (-1, 1, 1)])
@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_sharded_forward_equals_single_device(data, fsdp, tensor, scan):
  model = TimeSformer(heads={"a": 6, "b": 3}, scan_layers=scan, **SMALL)
  params = init_params(model, jax.random.PRNGKey(0))
  params = jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
      params)
  video = jnp.asarray(np.random.default_rng(0).standard_normal(
      (8, 4, 32, 32, 3)), jnp.float32)
  apply = lambda p, v: model.apply({"params": p}, v)
  expected = jax.jit(apply)(params, video)

  mesh = sharding.make_mesh(data, fsdp, tensor)
  shardings = sharding.param_shardings(model, mesh)
  sharded = jax.device_put(params, shardings)
  inputs = jax.device_put(video, sharding.batch_sharding(mesh, video.ndim))
  with sharding.use(mesh):
    out = jax.jit(apply)(sharded, inputs)
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
