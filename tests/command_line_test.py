"""Command-line mistakes (cover_jax/cli/command_line.py): `python main.py` stops
with one line on stderr, status 1, before TensorFlow or JAX start and before
the workdir is created. (Each run exits at flag parsing: well under 1 s.)"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_py(tmp_path, *args):
  """(status, stderr) of main.py with --workdir=tmp_path/run and `args`."""
  proc = subprocess.run(
      [sys.executable, "main.py", f"--workdir={tmp_path / 'run'}", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  return proc.returncode, proc.stderr


MINI = "--config=configs/cover_mini.py"


@pytest.mark.parametrize("args, message", [
    ((MINI, "--config.batch_sise=64"),
     "--config.batch_sise=64: no such field config.batch_sise; closest "
     "known: config.batch_size, config.eval_batch_size, config.datasets."),
    ((MINI, "--config.optimizer.lr=0.1"),
     "--config.optimizer.lr=0.1: no such field config.optimizer.lr; closest "
     "known: config.optimizer.layer_decay, config.optimizer.learning_rates, "
     "config.optimizer.nesterov."),
    ((MINI, "--config.batch_size.x=1"),
     "--config.batch_size.x=1: config.batch_size is a value (int), not a "
     "group of fields."),
    ((MINI, "--config.batch_size=abc"),
     "--config.batch_size=abc: config.batch_size holds an int (now 32); "
     "'abc' is not one (invalid literal for int() with base 10: 'abc')."),
    (("--config=configs/nope.py",),
     "No config file configs/nope.py (--config=configs/nope.py)."),
    (("--config=configs/cover_l16_jft.py:k900",),
     "--config=configs/cover_l16_jft.py:k900: Unknown config argument "
     "'k900' (in 'k900'). Accepted, comma-separated, one per group: "
     "kinetics: k400, k600, k700; input: 16x448, 8x224; ablations: "
     "no_<dataset>, no_images, image_weight=W, <dataset>_weight=W, "
     "<dataset>_sample=S."),
], ids=["unknown", "unknown_nested", "not_a_group", "bad_type",
        "missing_file", "bad_config_argument"])
def test_a_mistake_is_one_line_and_nothing_is_written(tmp_path, args,
                                                      message):
  status, stderr = main_py(tmp_path, *args)
  assert (status, stderr) == (1, f"main.py: error: {message}\n")
  assert not os.path.exists(tmp_path / "run")  # no config.json, no folder


def test_a_right_override_parses(tmp_path):
  """A known field gets past parsing (--only_check_args: absl exits with
  0 after parsing, before main)."""
  status, stderr = main_py(tmp_path, MINI, "--config.batch_size=64",
                           "--only_check_args")
  assert (status, stderr) == (0, "")
