"""Test setup: 8 fake CPU devices and fast compiles, set before JAX is
imported anywhere."""

import fcntl
import os
import shutil
import tempfile

from tests import distributed  # imports no JAX

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), distributed.xla_flags(8)]).strip()
# Tests must never touch an accelerator that happens to be present.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for every process of the suite (pytest's
# workers and the main.py runs they start): the tiny programs the tests share
# compile once. Entries are keyed by program, flags and versions.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "cover_jax_tests_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The GCS emulator fixture, for every test module.
from tests.gcs import gcs_emulator  # noqa: F401  pylint: disable=unused-import,wrong-import-position


# The longest a test may run; past it, it fails with every thread's stack.
TEST_TIMEOUT_S = 900


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: takes seconds or more (training runs, subprocesses, "
      "model compiles); `-m \"not slow\"` runs the rest in under 2 minutes")


# Fixtures that build the mini datasets or train a run: their tests are slow.
SLOW_FIXTURES = frozenset({"digits_dir", "tiny_run"})


def pytest_collection_modifyitems(items):
  for item in items:
    if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
    if item.get_closest_marker("timeout") is None:
      item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, method="thread"))
  # Slow tests first, each file's in its order: xdist's workers then end
  # on short tests instead of one of them finishing a long one alone.
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _session_root(tmp_path_factory, worker_id: str):
  """The folder every xdist worker of this session shares."""
  base = tmp_path_factory.getbasetemp()
  return base if worker_id == "master" else base.parent


def built_once(tmp_path_factory, worker_id: str, name: str, build, *,
               parts: tuple[str, ...] = ("",)) -> str:
  """A folder that `build(path, part)` fills once per test session for each
  of `parts` (a subfolder each; "" the whole folder), shared by every xdist
  worker: the first to come to a part builds it while the others wait.
  Odd-numbered workers take the parts in reverse order, so that two
  workers build different parts at once."""
  root = _session_root(tmp_path_factory, worker_id)
  path = root / name
  path.mkdir(exist_ok=True)
  worker = int(worker_id[2:]) if worker_id.startswith("gw") else 0
  for part in parts[::-1] if worker % 2 else parts:
    tag = f"{name}.{part}" if part else name
    with open(root / f"{tag}.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      done = root / f"{tag}.built"
      if not done.exists():
        target = path / part if part else path
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        build(str(path), part)
        done.touch()
  return str(path)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory, worker_id):
  """A data dir holding the three built-in mini datasets (built once)."""
  from data import registry  # pylint: disable=import-outside-toplevel
  return built_once(tmp_path_factory, worker_id, "digits",
                    lambda data_dir, name: registry.load_builder(name,
                                                                 data_dir),
                    parts=registry.BUILT_ON_FIRST_USE)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory, worker_id):
  """A data dir holding every config of tests.synthetic_data.SyntheticClips."""
  from tests import synthetic_data  # pylint: disable=import-outside-toplevel
  return built_once(tmp_path_factory, worker_id, "synthetic",
                    lambda path, _: synthetic_data.prepare(path))


@pytest.fixture(scope="session")
def tiny_run(digits_dir, tmp_path_factory, worker_id):
  """Workdir of a 5-step run of tests.tiny_runs.tiny_config (evaluation
  stubbed out), checkpointed every step with keep=3: steps 3, 4, 5. Shared
  by every worker: read it, or copy it before writing (shutil.copytree)."""
  from cover_jax.training import evaluate, train  # pylint: disable=import-outside-toplevel
  from tests import tiny_runs  # pylint: disable=import-outside-toplevel
  config = tiny_runs.tiny_config(
      digits_dir, num_train_steps=5,
      **{"checkpoint.every_steps": 1, "checkpoint.keep": 3,
         "checkpoint.async_save": False})

  def build(workdir, _):
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
      train.train_and_evaluate(config, workdir)
  return built_once(tmp_path_factory, worker_id, "tiny_run", build)
