"""The optimizer: SGD with momentum, a piecewise-constant schedule in epochs.

The paper (section 4.1): SGD, momentum 0.9, 20 epochs, learning rate 5e-3,
5e-4 from epoch 11 and 5e-5 from epoch 15. Here the schedule is written in
epochs of the training mixture and converted to steps, so one config serves
any batch size. `config.optimizer` fields:

    learning_rates: (5e-3, 5e-4, 5e-5)  the value in each phase
    boundaries_epochs: (10, 14)         where the next phase starts
    warmup_epochs: 0.0                  linear warm-up from 0 (optional)
    name: "sgd"                         the paper's; "adamw" for runs from
                                        scratch (cover_mini), where SGD
                                        barely moves a transformer
    momentum: 0.9, nesterov: False      (sgd)
    weight_decay: 0.0                   on parameters named "kernel" only
                                        (dense and patch-embedding kernels;
                                        never biases, norms, cls or position
                                        and time embeddings): for sgd L2
                                        added to the gradient as PyTorch's
                                        SGD does, for adamw decoupled
    grad_clip_norm: None                clip by global norm when set
    trainable: "all" | "heads"          "heads": a linear probe, backbone frozen
    layer_decay: None                   layer-wise lr decay d in (0, 1] for
                                        fine-tuning (BEiT, VideoMAE V2):
                                        `layer_scales`; None (and 1): off
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Steps that show `num_examples` examples once (the last batch counted)."""
  return max(1, math.ceil(num_examples / batch_size))


def learning_rate_schedule(learning_rates: Sequence[float],
                           boundaries_epochs: Sequence[float],
                           steps_per_epoch: int,
                           warmup_epochs: float = 0.0) -> optax.Schedule:
  """Piecewise-constant learning rate over steps, from values and epochs.

  Phase i (learning_rates[i]) starts at step round(boundaries_epochs[i - 1]
  x steps_per_epoch). With warm-up, the rate rises linearly from 0 to
  learning_rates[0] over the first warmup_epochs.
  """
  if len(learning_rates) != len(boundaries_epochs) + 1:
    raise ValueError(
        f"{len(learning_rates)} learning rates need "
        f"{len(learning_rates) - 1} boundaries, got {len(boundaries_epochs)}: "
        f"each boundary is the epoch where the next rate starts.")
  if list(boundaries_epochs) != sorted(boundaries_epochs):
    raise ValueError(f"boundaries_epochs {tuple(boundaries_epochs)} must be "
                     f"increasing.")
  warmup_steps = int(round(warmup_epochs * steps_per_epoch))
  # join_schedules restarts the count at the join: shift the boundaries.
  boundaries = [int(round(e * steps_per_epoch)) - warmup_steps
                for e in boundaries_epochs]
  schedule = optax.piecewise_constant_schedule(
      learning_rates[0],
      {step: new / old for step, new, old in
       zip(boundaries, learning_rates[1:], learning_rates[:-1])})
  if warmup_steps:
    warmup = optax.linear_schedule(0.0, learning_rates[0], warmup_steps)
    schedule = optax.join_schedules([warmup, schedule], [warmup_steps])
  return schedule


def _leaf_name(path) -> str:
  """The last dict key on a leaf's path: its parameter name.

  (Flax's partitioning boxes add an attribute key after it.)
  """
  return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]


def kernel_mask(params):
  """True on leaves named "kernel": weight decay skips biases, norms, tokens.

  By name, not by rank: the q/k/v biases are 2-D ([heads, head_dim]) and the
  position and time embeddings 2-D, yet none of them should be decayed.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _leaf_name(path) == "kernel", params)


def head_labels(params):
  """"train" on the heads, "freeze" elsewhere: the linear-probe partition."""
  return {name: jax.tree.map(lambda _, n=name: "train" if n == "heads"
                             else "freeze", subtree)
          for name, subtree in params.items()}


# The top-level parameters before the first block (layer id 0) and after the
# last one (id depth + 1). Any other name is refused by `layer_scales`: a new
# parameter must be placed here, not given a scale by default.
EMBEDDINGS = ("embedding", "cls", "pos_embedding", "time_embedding")
AFTER_BLOCKS = ("encoder_norm", "pre_logits", "heads")
BLOCK_PREFIX = "encoderblock_"  # the loop layout's blocks, 0-based
STACKED_BLOCKS = "encoderblock"  # the scanned layout's, on a leading axis


def _depth(params) -> int:
  """The number of transformer blocks in either layout of `params`."""
  if STACKED_BLOCKS in params:
    return jax.tree.leaves(params[STACKED_BLOCKS])[0].shape[0]
  return sum(name.startswith(BLOCK_PREFIX) for name in params)


def layer_scales(params, decay: float):
  """The learning-rate factor of every leaf of `params`: layer-wise decay.

  The convention of BEiT and VideoMAE V2 (`layer_decay`): layer id 0 is the
  embeddings (patch embedding, class token, position and time embeddings),
  1..depth the blocks, depth + 1 the final norm, pre-logits and heads; the
  factor is decay ** (depth + 1 - layer id). So block i (0-based) gets
  decay ** (depth - i), the embeddings decay ** (depth + 1), the heads 1.

  Returns a tree of `params`' structure: a np.float32 per leaf in the
  loop layout ("encoderblock_<i>"); in the scanned layout ("encoderblock",
  the blocks stacked on a leading axis) a per-block vector shaped
  [depth, 1, ...] that broadcasts along that axis. `params` may be flax's
  boxed parameters or shapes only (jax.eval_shape's): only the names and
  shapes are read. The depth is read from the tree itself, which also holds
  for configs that name a variant ("B/16") instead of setting model.depth.
  """
  depth = _depth(params)
  if not depth:
    raise ValueError(
        f"config.optimizer.layer_decay needs transformer blocks "
        f"('{BLOCK_PREFIX}<i>' or '{STACKED_BLOCKS}'), found only "
        f"{sorted(params)}.")

  def factor(layer_id):
    return np.float32(decay ** (depth + 1 - layer_id))

  def scale(path, leaf):
    top = path[0].key
    if top == STACKED_BLOCKS:
      per_block = np.array([factor(i + 1) for i in range(depth)], np.float32)
      return per_block.reshape((depth,) + (1,) * (len(leaf.shape) - 1))
    if top.startswith(BLOCK_PREFIX):
      return factor(int(top[len(BLOCK_PREFIX):]) + 1)
    if top in EMBEDDINGS:
      return factor(0)
    if top in AFTER_BLOCKS:
      return factor(depth + 1)
    raise ValueError(
        f"config.optimizer.layer_decay: no layer for parameter {top!r}; "
        f"place it in optimizer.EMBEDDINGS or optimizer.AFTER_BLOCKS.")
  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its `layer_scales` factor (stateless).

  Meant to come last, after the learning rate: the result is then the
  per-layer learning rate of BEiT's and VideoMAE V2's PyTorch parameter
  groups (lr x scale) for both rules here. SGD's momentum and L2 decay are
  linear in the gradient, so scaling the final update equals scaling the
  lr; AdamW's decoupled decay (lr x wd x p) is scaled with it, as a group's
  lr scales it in PyTorch. Scaling the gradient before the optimizer
  instead would be undone by Adam's normalisation. Clipping still sees the
  unscaled gradient, as PyTorch's clip_grad_norm_ before step() does, and
  accumulated gradients are summed in the step before the optimizer, so
  neither interacts with it. The factors are computed from the updates'
  structure (the parameters'), so no parameters are needed and both
  layouts work.
  """
  def update(updates, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates,
                        layer_scales(updates, decay))
  return optax.stateless(update)


def make(config: ConfigDict, steps_per_epoch: int
         ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation and its learning-rate schedule.

  In order: clipping by global norm, then SGD (L2 weight decay, momentum,
  lr) or AdamW; with trainable="heads" that runs on the heads only and the
  rest gets zero updates; with layer_decay in (0, 1) every update is then
  multiplied by its `layer_scales` factor (`scale_by_layer_decay`).
  layer_decay None (the default) or 1 leaves the chain as without the field.
  """
  opt = config.optimizer
  schedule = learning_rate_schedule(
      opt.learning_rates, opt.boundaries_epochs, steps_per_epoch,
      opt.get("warmup_epochs", 0.0))
  parts = []
  if opt.get("grad_clip_norm"):
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  name = opt.get("name", "sgd")
  if name == "sgd":
    if opt.get("weight_decay"):
      parts.append(optax.add_decayed_weights(opt.weight_decay, kernel_mask))
    parts.append(optax.sgd(schedule, momentum=opt.get("momentum", 0.9),
                           nesterov=opt.get("nesterov", False)))
  elif name == "adamw":
    parts.append(optax.adamw(schedule,
                             weight_decay=opt.get("weight_decay", 0.0),
                             mask=kernel_mask))
  else:
    raise ValueError(f"config.optimizer.name must be 'sgd' (the paper's) or "
                     f"'adamw', not {name!r}.")
  tx = optax.chain(*parts)
  trainable = opt.get("trainable", "all")
  if trainable == "heads":
    tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                               head_labels)
  elif trainable != "all":
    raise ValueError(f"config.optimizer.trainable must be 'all' or 'heads' "
                     f"(a linear probe), not {trainable!r}.")
  decay = opt.get("layer_decay")
  if decay is not None:
    if not 0.0 < decay <= 1.0:
      raise ValueError(f"config.optimizer.layer_decay must be in (0, 1] "
                       f"(None: off), not {decay!r}.")
    if decay < 1.0:  # 1 scales nothing: the optimizer of today, exactly
      tx = optax.chain(tx, scale_by_layer_decay(decay))
  return tx, schedule
