"""Tiny training runs for the tests: the mini config with a model small
enough that a step takes milliseconds, main.py's command line for it, and
reading a run's checkpoints back."""

import importlib.util
import os
import re
import subprocess
import sys

from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
import pytest

from cover_jax.training import checkpointing
from cover_jax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model small enough that a step takes milliseconds.
TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8)
# Per-channel pixel normalisation (ImageNet's): channels told apart.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def config_file(name: str, data_dir: str):
  """configs/<name>.py's get_config(), reading data from data_dir."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data_dir = data_dir
  return config


def mini_config(data_dir):
  return config_file("cover_mini", data_dir)


def tiny_config(data_dir, **overrides):
  """configs/cover_mini.py with the TINY model: 6 steps of batch 16, a
  checkpoint every 2, for train.train_and_evaluate (one stage; main.py runs
  the image stage first: `command`). `overrides` by dotted name, e.g.
  **{"checkpoint.keep": 3}."""
  config = mini_config(data_dir)
  config.model.update(TINY)
  config.batch_size = 16
  config.eval_batch_size = 128
  config.eval_reverse = False
  config.num_train_steps = 6
  config.checkpoint.every_steps = 2
  config.log_every_steps = 2
  for key, value in overrides.items():
    target = config
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return config


def flags_of(config_overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in config_overrides.items()]


def command(workdir, data_dir, **overrides):
  """main.py's command line for tiny_config's run, with cover_mini.py's image
  stage first (cover_jax/training/stages.py), kept short."""
  base = {"data_dir": data_dir, "batch_size": 16, "eval_batch_size": 128,
          "eval_reverse": False, "num_train_steps": 6,
          "checkpoint.every_steps": 2, "log_every_steps": 2,
          "pretrain.num_train_steps": 4, "pretrain.log_every_steps": 2,
          "pretrain.eval_batch_size": 128,
          **{f"model.{k}": v for k, v in TINY.items()}, **overrides}
  return ([sys.executable, os.path.join(ROOT, "main.py"),
           f"--config={os.path.join(ROOT, 'configs', 'cover_mini.py')}",
           f"--workdir={workdir}"] + flags_of(base))


def run(cmd, **kwargs):
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, PYTHONPATH=ROOT),
                        **kwargs)


def resumed_at(output: str) -> list[int]:
  """The steps main.py's output says it resumed from, in order."""
  return [int(s) for s in re.findall(
      r"resumed from this workdir's checkpoint at step (\d+)", output)]


def final_params(workdir):
  return checkpointing.read_params(os.path.join(workdir, "checkpoints"))


def assert_same_params(a, b):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def saved_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir,
                                                        "checkpoints"))
                if d.isdigit())


def command_line_config(argv: list[str]):
  """The config main.py builds from `argv` (its --config flags; other
  flags, such as --workdir, are left to main.py)."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values.mark_as_parsed()
  flag_values(argv, known_only=True)
  return flag_values.config


class _Started(Exception):
  """Raised once the run has restored its state: nothing is trained."""


def loop_start(monkeypatch, config, workdir):
  """(state on the host, data state, origin) the run's loop starts from."""
  seen = []
  real = train.restore_or_init

  def record_and_stop(*args, **kwargs):
    seen.append(real(*args, **kwargs))
    raise _Started

  monkeypatch.setattr(train, "restore_or_init", record_and_stop)
  with pytest.raises(_Started):
    train.train_and_evaluate(config, str(workdir))
  monkeypatch.setattr(train, "restore_or_init", real)
  state, data, origin = seen[0]
  return jax.device_get(state), data, origin


def step_params(workdir, step):
  return checkpointing.read_params(os.path.join(workdir, "checkpoints",
                                                str(step)))
