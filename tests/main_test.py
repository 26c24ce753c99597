"""main.py in this process: --mode=eval evaluates a checkpoint (the
workdir's last, else resume_from's) without training, and saves the config
it ran as config.json. (Command-line overrides: configs_test.)"""

import json
import os
import shutil

import jax
import pytest

from cover_jax.training import checkpointing
from cover_jax.training import evaluate
from tests import tiny_runs

ROOT = tiny_runs.ROOT


class _Flags:
  """main.FLAGS after parsing: the given values, other flags unset."""

  def __init__(self, **values):
    self.__dict__.update(values)

  def __getattr__(self, name):  # flags this test does not set
    return None

  def __getitem__(self, name):  # FLAGS["verbosity"].present: as if given
    return type("Flag", (), {"present": True})()


@pytest.fixture
def run_main(monkeypatch, digits_dir):
  """Calls main.main as `python main.py ARGS` would; evaluation is
  recorded, not computed: run_main.calls = [(step, reverse, params)]."""
  import main  # pylint: disable=import-outside-toplevel
  calls = []

  def record(model, params, config, *, step, reverse=False, **kwargs):
    del model, config, kwargs
    calls.append((step, reverse, jax.device_get(params)))
    return {"digits_motion" + ("/reversed" if reverse else ""): {
        "top1": 0.5, "top5": 1.0, "loss": 1.0, "examples": 359}}

  monkeypatch.setattr(evaluate, "evaluate", record)
  monkeypatch.setattr(main.allocator, "retain_freed_host_memory", lambda: False)

  def run(workdir, mode, **overrides):
    """main.main with --config=configs/cover_mini.py, tiny_runs.TINY and
    `overrides` as --config.FIELD=VALUE flags would set them."""
    config = tiny_runs.tiny_config(digits_dir, **overrides)
    monkeypatch.setattr(main, "FLAGS", _Flags(config=config, mode=mode,
                                              workdir=str(workdir)))
    main.main([])
    return config
  run.calls = calls
  return run


def test_eval_mode_evaluates_the_last_checkpoint_without_training(
    run_main, tiny_run, tmp_path):
  tiny_run = shutil.copytree(tiny_run, tmp_path / "run")  # written: config
  before = sorted(os.listdir(os.path.join(tiny_run, "checkpoints")))
  config = run_main(tiny_run, "eval", eval_reverse=True, batch_size=24,
                    resume_from=f"{tiny_run}/checkpoints/3")
  # The workdir's step 5 (not resume_from's 3), with and without reversed
  # frames (eval_reverse); nothing trained or saved.
  assert [(s, r) for s, r, _ in run_main.calls] == [(5, False), (5, True)]
  for _, _, params in run_main.calls:
    tiny_runs.assert_same_params(params, checkpointing.read_params(
        os.path.join(tiny_run, "checkpoints", "5")))
  assert sorted(os.listdir(os.path.join(tiny_run, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(tiny_run, "pretrain"))
  # config.json: the config as run, overrides included.
  with open(os.path.join(tiny_run, "config.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(config.to_json_best_effort())
  assert saved["batch_size"] == 24 and saved["model"]["width"] == 16
  assert saved["resume_from"] == f"{tiny_run}/checkpoints/3"
  assert saved["data_dir"] == config.data_dir
  # An empty workdir: resume_from's checkpoint; nothing at all: an error.
  run_main.calls.clear()
  run_main(tmp_path / "other", "eval", eval_reverse=True,
           resume_from=f"{tiny_run}/checkpoints/3")
  assert [(s, r) for s, r, _ in run_main.calls] == [(3, False), (3, True)]
  tiny_runs.assert_same_params(run_main.calls[0][2], checkpointing.read_params(
      os.path.join(tiny_run, "checkpoints", "3")))
  assert not os.path.exists(tmp_path / "other" / "checkpoints")
  with pytest.raises(ValueError, match=r"no checkpoint in .*empty.*neither "
                     r"config.resume_from nor config.init_from is set"):
    run_main(tmp_path / "empty", "eval")


def test_host_allocator_setting_only_where_the_config_asks(
    run_main, tmp_path, monkeypatch):
  """config.retain_freed_host_memory (default False) applies cover_jax.runtime.allocator's
  setting, which slows the input pipeline beside the step; else glibc's
  allocator is left as it is."""
  import main  # pylint: disable=import-outside-toplevel
  applied = []
  monkeypatch.setattr(main.allocator, "retain_freed_host_memory",
                      lambda: applied.append(True) or True)
  run_main(tmp_path / "a", "describe")
  assert not applied
  run_main(tmp_path / "b", "describe", retain_freed_host_memory=True)
  assert applied == [True]
