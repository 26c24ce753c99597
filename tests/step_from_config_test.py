"""The training step from a config (train.step_from_config): one function
builds it for training and for --mode=plan, so both refuse the same
configs and plan compiles the step training runs."""

import jax
import pytest

from cover_jax.tools import plan
from cover_jax.training import train
from tests import tiny_runs


def test_training_and_plan_refuse_an_unknown_nonfinite_policy(tmp_path):
  config = tiny_runs.mini_config(str(tmp_path))
  config.nonfinite = "ignore"
  message = "config.nonfinite must be 'stop' or 'skip', not 'ignore'"
  with pytest.raises(ValueError, match=message):
    plan.lower_step(config, jax.devices())
  model = train.model_from_config(config)
  with pytest.raises(ValueError, match=message):
    train.step_from_config(config, model, [], 10,
                           jax.sharding.Mesh(jax.devices(), ("data",)))
