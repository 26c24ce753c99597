"""Pixels on the device: the input pipeline's uint8 frames as model inputs.

The pipeline sends frames as uint8 (a quarter of float32's bytes to copy to
the devices) and every jitted function that feeds them to the model, the
training step, evaluation, predict and the exported serving function,
normalises them with `normalize` first: one definition of the model's input.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def normalize(frames, mean: Sequence[float], std: Sequence[float]):
  """float32 (frames / 255 - mean) / std per channel, as one multiply-add.

  `frames` are uint8 [..., 3] pixels; mean and std are of [0, 1] values
  (config.input.mean and std). The model casts the result to its compute
  dtype (bfloat16 configs) as it casts any input.
  """
  if frames.dtype != jnp.uint8:
    raise TypeError(f"Frames must be uint8 pixels (0..255), as the input "
                    f"pipeline makes them; got {frames.dtype}.")
  scale = np.asarray([1.0 / (255.0 * s) for s in std], np.float32)
  offset = np.asarray([-m / s for m, s in zip(mean, std)], np.float32)
  return frames.astype(jnp.float32) * scale + offset
