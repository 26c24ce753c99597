"""Device meshes and the logical-axis rules that place arrays on them.

The model names every parameter axis and its main activations with logical
names ("embed", "heads", "mlp", "activation_batch", ...). Rules map those names
onto the axes of a `("data", "fsdp", "tensor")` mesh:

- data: pure data parallelism (parameters replicated);
- fsdp: data parallelism with parameters sharded along their "embed" axis;
- tensor: Megatron-style sharding of attention heads and the MLP hidden axis.

Usage::

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = sharding.param_shardings(model, mesh)
    params = jax.device_put(params, shardings)
    with sharding.use(mesh):
      logits = jax.jit(apply, in_shardings=...)(params, video)
"""

import contextlib
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax

from cover_jax.models import timesformer

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes, or None for replicated).
DEFAULT_RULES = (
    # Activations.
    ("activation_batch", ("data", "fsdp")),
    ("activation_time", None),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    # Parameters.
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("embed_out", None),
    ("classes", None),
    ("layers", None),
    ("length", None),
    ("time", None),
    ("patch_height", None),
    ("patch_width", None),
    ("channels", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A `("data", "fsdp", "tensor")` mesh; one size may be -1 (all the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(
        f"Mesh sizes data={data}, fsdp={fsdp}, tensor={tensor}: use positive "
        "sizes, with at most one -1 for 'all remaining devices'.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(
          f"{len(devices)} devices cannot be split into a mesh with "
          f"{known} devices per data index (fsdp x tensor); choose sizes that "
          "divide the device count.")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
        f"Mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} = "
        f"{math.prod(shape)} devices, but {len(devices)} are available; make "
        "the product equal the device count (or use -1 for one axis).")
  return jax.make_mesh(
      tuple(shape), MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
      devices=devices)


@contextlib.contextmanager
def use(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES):
  """Context in which the model's activation constraints apply on `mesh`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def _check_divisible(path, shape, spec, mesh):
  for dim, axes in zip(shape, spec):
    if axes is None:
      continue
    axes = (axes,) if isinstance(axes, str) else axes
    size = math.prod(mesh.shape[a] for a in axes)
    if dim % size:
      raise ValueError(
          f"Parameter {jax.tree_util.keystr(path)} has shape {tuple(shape)}: "
          f"its dimension {dim} cannot be split over mesh axes {axes} of size "
          f"{size}. Choose mesh sizes that divide it, or map that logical "
          "axis to None in the sharding rules.")


def param_shardings(model: nn.Module, mesh: jax.sharding.Mesh,
                    rules=DEFAULT_RULES, *, frames: Optional[int] = None):
  """`NamedSharding`s for the parameters of `model` (a TimeSformer).

  Computed from the logical axis names without allocating parameters; raises
  a clear error when a sharded dimension does not divide its mesh axes.
  """
  abstract = timesformer.abstract_variables(model, frames=frames)
  logical = nn.get_partition_spec(abstract)["params"]
  mesh_specs = nn.logical_to_mesh(logical, rules)
  shapes = timesformer.unboxed(abstract)["params"]
  jax.tree_util.tree_map_with_path(
      lambda path, x, spec: _check_divisible(path, x.shape, spec, mesh),
      shapes, mesh_specs,
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return jax.tree.map(
      lambda spec: jax.sharding.NamedSharding(mesh, spec), mesh_specs,
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int,
                   rules=DEFAULT_RULES) -> jax.sharding.NamedSharding:
  """Sharding of an input batch: leading axis over the batch axes, rest replicated."""
  spec = nn.logical_to_mesh_axes(("activation_batch",) + (None,) * (ndim - 1),
                                 rules)
  return jax.sharding.NamedSharding(mesh, spec)



def batch_axes(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES
               ) -> tuple[str, ...]:
  """The mesh axes the batch is split over (those of "activation_batch")."""
  axes = batch_sharding(mesh, 1, rules).spec[0] or ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def batch_shards(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> int:
  """How many equal shards a batch is split into on `mesh`."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def process_batch_shards(mesh: jax.sharding.Mesh, process_index=None,
                         rules=DEFAULT_RULES) -> list[int]:
  """The batch shards (0 .. batch_shards - 1) that a process's devices hold.

  Shard k is the k-th of `batch_shards(mesh)` equal blocks of rows. Several
  processes hold the same shard when a replicated axis (e.g. "tensor")
  spans them: they must feed it the same examples.
  """
  process_index = (jax.process_index() if process_index is None
                   else process_index)
  count = batch_shards(mesh, rules)
  indices = batch_sharding(mesh, 1, rules).devices_indices_map((count,))
  return sorted({index[0].start or 0 for device, index in indices.items()
                 if device.process_index == process_index})


def to_host(tree):
  """Whole numpy values of (possibly multi-process) arrays, on every process.

  (`jax.device_get` refuses arrays whose shards live on other processes.)
  """
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return multihost_utils.process_allgather(x, tiled=True)
    return jax.device_get(x)
  return jax.tree.map(get, tree)


def put(tree, shardings):
  """`tree` (numpy or jax arrays, the same on every process) on `shardings`.

  Each device takes its slice of the value, so this works where the
  shardings span several processes.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  def place(x, target):
    if isinstance(x, jax.Array):
      return jax.device_put(x, target)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, target, lambda i: x[i])
  return jax.tree.map(place, tree, shardings)
