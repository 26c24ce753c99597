"""Start-up noise (cover_jax/cli/log_noise.py): main.py's default output holds
only its own lines; --verbosity=0 brings TensorFlow's back. (Two runs of
main.py that stop at preflight, after TensorFlow started: ~8 s each.)"""

import logging
import os
import subprocess
import sys

import pytest

from cover_jax.cli import log_noise
from tests import unprepared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")


def main_py(tmp_path, *args):
  """stderr of the headline config with nothing prepared."""
  env = {k: v for k, v in os.environ.items() if k not in NOISE_VARIABLES}
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/cover_l16_jft.py",
       f"--workdir={tmp_path / 'run'}",
       f"--config.data_dir={tmp_path / 'tfds'}", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  return proc.stderr


@pytest.mark.slow
def test_default_output_is_only_the_runs_own(tmp_path):
  lines = "\n".join(f"  - {line}"
                    for line in unprepared.headline_missing(tmp_path / "tfds"))
  assert main_py(tmp_path) == f"This run cannot start; 5 missing:\n{lines}\n"


def _tensorflow_enables_onednn() -> bool:
  """TensorFlow turns oneDNN on by default (and says so at start-up) only on
  CPUs with these features."""
  with open("/proc/cpuinfo", encoding="utf-8") as f:
    flags = f.read()
  return any(flag in flags for flag in ("avx512_vnni", "avx512_bf16",
                                        "avx512_fp16", "amx_"))


def test_verbosity_brings_tensorflow_logs_back(tmp_path):
  if not _tensorflow_enables_onednn():
    pytest.skip("this CPU has no AVX512-VNNI, -BF16, -FP16 or AMX: "
                "TensorFlow prints no oneDNN line to bring back")
  stderr = main_py(tmp_path, "--verbosity=0")
  # TF's start-up line; its cpu_feature_guard line only comes once TF runs
  # an op, and preflight now stops the run before TF does any work.
  assert "oneDNN custom operations are on" in stderr


def test_tfds_warnings_are_dropped_errors_and_ours_kept():
  def record(path, level):
    return logging.LogRecord("absl", level, path, 1, "message", (), None)
  drop = log_noise._DropNoisyWarnings()  # pylint: disable=protected-access
  tfds_file = "/venv/site-packages/tensorflow_datasets/core/features/a.py"
  assert not drop.filter(record(tfds_file, logging.WARNING))
  assert drop.filter(record(tfds_file, logging.ERROR))
  assert drop.filter(record("/work/main/cover_jax/training/train.py", logging.WARNING))


# A save's writes still in flight when the asyncio loop awaiting them is
# closed (as orbax closes it when one of them fails), then an unrelated
# unraisable error.
_LATE_WRITES = """
import asyncio, sys, time
import numpy as np
import tensorstore as ts
if sys.argv[1] == "quiet":
  from cover_jax.cli import log_noise
  log_noise.quiet()

async def start_writes():
  array = await ts.open({"driver": "zarr", "kvstore": "file://" + sys.argv[2]},
                        create=True, shape=[2000, 2000], dtype=ts.float32)
  async def write(i):
    await array[i * 500:(i + 1) * 500].write(np.ones((500, 2000), np.float32))
  for i in range(4):
    asyncio.ensure_future(write(i))
  await asyncio.sleep(0)

loop = asyncio.new_event_loop()
loop.run_until_complete(start_writes())
loop.close()
time.sleep(2)

class Broken:
  def __del__(self):
    raise ValueError("a real problem")
Broken()
"""


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [False, True])
def test_writes_finishing_after_a_failed_save_are_not_reported(tmp_path, quiet):
  stderr = subprocess.run(
      [sys.executable, "-c", _LATE_WRITES, "quiet" if quiet else "loud",
       str(tmp_path / "array")], cwd=ROOT, capture_output=True, text=True,
      timeout=120, check=True).stderr
  assert ("RuntimeError: Event loop is closed" in stderr) != quiet, stderr
  assert "ValueError: a real problem" in stderr
