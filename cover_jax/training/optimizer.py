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
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
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


def make(config: ConfigDict, steps_per_epoch: int
         ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation and its learning-rate schedule."""
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
  return tx, schedule
