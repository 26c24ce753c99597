"""The two-stage run: image pretraining, then co-training initialised from it
as TimeSformer initialises from a ViT; killed in either stage, it resumes
bit for bit."""

import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import args
from cover_jax.models import create
from cover_jax.training import checkpointing
from cover_jax.training import evaluate
from cover_jax.training import stages
from tests import tiny_runs

HEADS = {"digits_image": 10, "digits_motion": 8}


@pytest.mark.slow
def test_image_model_inflates_to_a_timesformer_computing_the_same():
  """A space_only model's parameters, inflated: the divided model gives the
  image model's logits on images and on videos of one repeated frame, and
  its temporal attention is the spatial one, temporal_fc zero."""
  from cover_jax.models import abstract_variables, unboxed  # pylint: disable=import-outside-toplevel
  vit = create(HEADS, attention_type="space_only", **tiny_runs.TINY,
               num_frames=4, image_size=16)
  # The image model's parameter tree (init's, by abstract evaluation: init's
  # random draws would compile for seconds): ones for the LayerNorm scales
  # plus N(0, 0.05) noise from numpy, so that every parameter matters.
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: np.asarray((path[-1].key == "scale") + 0.05 *
                                 rng.standard_normal(s.shape), s.dtype),
      unboxed(abstract_variables(vit))["params"])
  assert "time_embedding" not in params
  assert "temporal_fc" not in params["encoderblock_0"]
  inflated = checkpointing.inflate_image_model(params, num_frames=4)
  block = inflated["encoderblock_0"]
  np.testing.assert_array_equal(block["temporal_fc"]["kernel"], 0)
  np.testing.assert_array_equal(inflated["time_embedding"], 0)
  for leaf in ("kernel", "bias"):
    np.testing.assert_array_equal(block["temporal_attention"]["query"][leaf],
                                  block["spatial_attention"]["query"][leaf])
  timesformer = vit.clone(attention_type="divided_space_time")
  # Inflated parameters have exactly the divided model's tree and shapes
  # (init's, by abstract evaluation).
  fresh = unboxed(abstract_variables(timesformer))["params"]
  assert (jax.tree.map(np.shape, fresh) ==
          jax.tree.map(np.shape, inflated))
  # Each model's forward pass compiled once (op by op, every primitive of
  # every shape compiles a program of its own).
  vit_apply = jax.jit(lambda p, x: vit.apply({"params": p}, x))
  ts_apply = jax.jit(lambda p, x: timesformer.apply({"params": p}, x))
  image = jnp.asarray(rng.normal(size=(3, 1, 16, 16, 3)), jnp.float32)
  repeated = jnp.repeat(image, 4, axis=1)
  want = vit_apply(params, image)
  for video in (image, repeated):
    got = ts_apply(inflated, video)
    for name in HEADS:
      np.testing.assert_allclose(got[name], want[name], atol=1e-5)
  # And a video model: once temporal_fc and the time embedding have learned
  # something, frame order changes its output.
  moving = jnp.asarray(rng.normal(size=(3, 4, 16, 16, 3)), jnp.float32)
  trained = jax.tree.map(lambda x: x + 0.05, inflated)
  trained["time_embedding"] = rng.normal(size=(4, 16)).astype(np.float32)
  assert not np.allclose(
      ts_apply(trained, moving)["digits_image"],
      ts_apply(trained, moving[:, ::-1])["digits_image"],
      atol=1e-4)


def test_pretraining_stage_uses_the_runs_model_without_temporal_layers():
  config = args.load("configs/cover_mini.py")
  config.model.width = 32
  config.seed, config.data_dir = 7, "/data"
  stage = stages.pretrain_config(config)
  assert stage.model.width == 32
  assert stage.model.attention_type == "space_only"
  assert config.model.attention_type == "divided_space_time"
  assert (stage.seed, stage.data_dir) == (7, "/data")
  assert list(stage.datasets) == ["digits_image"]
  # An explicit init_from replaces the pretraining stage.
  config.init_from = "/runs/vit"
  assert stages.pretrain_config(config) is None
  # Configs without a stage have none.
  assert stages.pretrain_config(args.load("configs/vit_mini.py")) is None


def config_of(cmd):
  """The config main.py builds from the command line `cmd`."""
  return tiny_runs.command_line_config(cmd[1:])


def _run_until(cmd, is_marker):
  """Runs `cmd`, SIGKILLs it at the first stdout line where is_marker."""
  proc = subprocess.Popen(cmd, cwd=tiny_runs.ROOT, text=True,
                          env=dict(os.environ, PYTHONPATH=tiny_runs.ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if is_marker(line):
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=300)
  assert any(map(is_marker, seen)), "".join(seen)[-3000:]
  return "".join(seen)


# Every option of issue 22's recipes, on the mini config's datasets.
RECIPES = {"datasets.digits_motion.label_smoothing": 0.1,
           "datasets.digits_motion.mixup_alpha": 0.8,
           "datasets.digits_appearance.cutmix_alpha": 1.0,
           "datasets.digits_appearance.mixup_alpha": 0.2,
           "input.randaugment": "rand-m9-n2-mstd0.5",
           "ema_decay": 0.9, "ema_warmup": True,
           "optimizer.layer_decay": 0.75, "input.eval_clips": 2}


@pytest.mark.slow
def test_killed_in_either_stage_resumes_to_bit_identical_parameters(
    digits_dir, tmp_path, monkeypatch):
  # Every step logged, a synchronous save every 2 steps: a kill after the
  # line of step 3 of 10 lands mid-training (the 7 steps and 3 saves left
  # take far longer than the kill), with at least step 2 saved. One view:
  # the evaluations are not what is tested.
  steps = {"pretrain.num_train_steps": 10, "num_train_steps": 10,
           "pretrain.log_every_steps": 1, "log_every_steps": 1,
           "pretrain.checkpoint.async_save": False,
           "checkpoint.async_save": False,
           "pretrain.checkpoint.every_steps": 2,
           "input.eval_views": 1, "pretrain.input.eval_views": 1,
           # Stage 2 with every fine-tuning option on (README's recipes): its
           # randomness too must resume exactly.
           **RECIPES}
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  cmd = tiny_runs.command(killed, digits_dir, **steps)
  # The run never killed: the same command line's config, trained here
  # (its evaluations stubbed out: parameters do not depend on them).
  with monkeypatch.context() as patch:
    patch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
    stages.train_and_evaluate(config_of(cmd), straight)
  assert os.path.exists(os.path.join(straight, stages.PRETRAIN_DIR))

  in_stage = lambda dataset: lambda line: (
      line.startswith("step 3/10") and dataset in line)
  first = _run_until(cmd, in_stage("digits_image"))
  assert "Stage 2" not in first
  second = _run_until(cmd, in_stage("digits_motion"))  # stage 2's line
  [stage1_resume] = tiny_runs.resumed_at(second)
  assert 2 <= stage1_resume < 10, second
  out = tiny_runs.run(cmd)
  assert out.returncode == 0, out.stderr[-3000:]
  # Stage 1 had finished: its evaluation is read back, nothing restored.
  stage1_eval = os.path.join(killed, stages.PRETRAIN_DIR, "eval",
                             "step_10.json")
  assert f"Finished at step 10; its evaluation: {stage1_eval}" in out.stdout
  [stage2_resume] = tiny_runs.resumed_at(out.stdout)
  assert 2 <= stage2_resume < 10, out.stdout
  assert "step 10/10" in out.stdout  # it trained on after the restart
  for sub in ("pretrain", ""):
    tiny_runs.assert_same_params(
        tiny_runs.final_params(os.path.join(straight, sub)),
        tiny_runs.final_params(os.path.join(killed, sub)))
  _, ema_straight = checkpointing.read_weights(
      os.path.join(straight, "checkpoints"))
  _, ema_killed = checkpointing.read_weights(
      os.path.join(killed, "checkpoints"))
  assert ema_straight is not None
  tiny_runs.assert_same_params(ema_straight, ema_killed)
