"""An exponential moving average (EMA) of the parameters, off by default.

With `config.ema_decay` = d > 0 the training state holds `ema_params`,
started at the initial parameters p_0 and, after each optimizer update
giving p_t, moved to

    ema_t = d_t * ema_{t-1} + (1 - d_t) * p_t

(Polyak averaging, `optax.incremental_update`). d_t is d, or with
`config.ema_warmup` TensorFlow's warm-up (tf.train.ExponentialMovingAverage
with num_updates), min(d, (1 + t) / (10 + t)) for the update after t
updates, so the average forgets p_0 quickly early on. Evaluation reports
the EMA's results beside the raw ones; predict, features, export and
init_from use the EMA where a run has one (cover_jax/training/
checkpointing.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

PARAMS = "ema_params"  # the training state's entry


def enabled(config) -> bool:
  """Whether `config` keeps an EMA of its parameters."""
  decay = float(config.get("ema_decay") or 0.0)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"config.ema_decay must be in [0, 1) (0 is off), not "
                     f"{decay}.")
  return decay > 0.0


def decay_at(updates_done, decay: float, warmup: bool = False):
  """The decay of the update after `updates_done` updates: `decay`, or with
  `warmup` min(decay, (1 + t) / (10 + t)) (TensorFlow's num_updates form)."""
  if not warmup:
    return jnp.float32(decay)
  t = jnp.asarray(updates_done, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def update(ema_params, params, updates_done, decay: float,
           warmup: bool = False):
  """The EMA after the update giving `params` (each leaf keeps its dtype)."""
  d = decay_at(updates_done, decay, warmup)
  new = optax.incremental_update(params, ema_params, step_size=1.0 - d)
  return jax.tree.map(lambda x, old: x.astype(old.dtype), new, ema_params)
