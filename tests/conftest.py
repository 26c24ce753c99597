"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""),
     "--xla_force_host_platform_device_count=8"]).strip()
# Tests must never touch an accelerator that happens to be present.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


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
