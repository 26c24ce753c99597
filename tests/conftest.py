"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""),
     "--xla_force_host_platform_device_count=8"]).strip()
# Tests must never touch an accelerator that happens to be present.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The GCS emulator fixture, for every test module.
from tests.gcs import gcs_emulator  # noqa: F401  pylint: disable=unused-import,wrong-import-position


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  """A data dir holding the three built-in mini datasets (built once)."""
  from data import registry  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("digits"))
  for name in registry.BUILT_ON_FIRST_USE:
    registry.load_builder(name, data_dir)
  return data_dir


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
  """A data dir holding every config of tests.synthetic_data.SyntheticClips."""
  from tests import synthetic_data  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("synthetic"))
  synthetic_data.prepare(data_dir)
  return data_dir


@pytest.fixture(scope="session")
def tiny_run(digits_dir, tmp_path_factory):
  """Workdir of a 5-step run of tests.train_test.tiny_config (evaluation
  stubbed out), checkpointed every step with keep=3: steps 3, 4, 5."""
  from cover_jax import evaluate, train  # pylint: disable=import-outside-toplevel
  from tests import train_test  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  config = train_test.tiny_config(
      digits_dir, num_train_steps=5,
      **{"checkpoint.every_steps": 1, "checkpoint.keep": 3,
         "checkpoint.async_save": False})
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
    train.train_and_evaluate(config, workdir)
  return workdir
