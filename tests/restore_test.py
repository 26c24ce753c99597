"""Where a run starts: this workdir's checkpoint, then config.resume_from (a
workdir, its checkpoints directory or one step), then config.init_from (a
ViT .npz, a TimeSformer .pyth), then scratch; requires_init's refusal; the
`keep` pruning of checkpoints. (tiny_run: tests/conftest.py.)

Each case runs `train.train_and_evaluate` up to the state its loop starts
from (the restore's result is recorded, then the run is stopped), so no
step is compiled and the checks compare that state with the files'.
"""

import os
import re

import jax
import numpy as np
import pytest

from cover_jax.training import train
from tests import reference_vit
from tests import tiny_runs


def optimizer_moments(state):
  """AdamW's first and second moments (all zero in a fresh state)."""
  moments = [x for path, x in jax.tree_util.tree_leaves_with_path(
      state["opt_state"]) if re.search(r"\.(mu|nu)\b",
                                       jax.tree_util.keystr(path))]
  assert moments  # the mini config's optimizer is AdamW
  return moments


@pytest.fixture(scope="module")
def vit_npz(tmp_path_factory):
  """A ViT .npz whose shapes fit tiny_runs.TINY at 32x32 (4x4 patches)."""
  vit = reference_vit.random_vit(np.random.default_rng(0), width=16, depth=1,
                                 num_heads=2, mlp_dim=32, patch=8, grid=4)
  path = tmp_path_factory.mktemp("vit") / "vit.npz"
  np.savez(path, **reference_vit.vit_npz_arrays(vit, "original"))
  return vit, str(path)


def test_checkpoints_beyond_keep_are_deleted(tiny_run):
  assert tiny_runs.saved_steps(tiny_run) == [3, 4, 5]


@pytest.mark.slow
def test_restore_order_workdir_resume_from_init_from_scratch(
    tiny_run, vit_npz, digits_dir, tmp_path, monkeypatch):
  """With requires_init: each of the first three is enough; without any,
  the run refuses before any compute, and without requires_init it starts
  from scratch."""
  vit, npz = vit_npz
  config = tiny_runs.tiny_config(
      digits_dir, resume_from=os.path.join(tiny_run, "checkpoints", "3"),
      init_from=npz, requires_init=True)
  # 1. This workdir's latest checkpoint, whatever resume_from and init_from.
  state, data, origin = tiny_runs.loop_start(monkeypatch, config, tiny_run)
  assert origin.startswith("resumed from this workdir's checkpoint at step 5")
  assert int(state["step"]) == 5 and data["step"] == 5
  tiny_runs.assert_same_params(state["params"],
                               tiny_runs.step_params(tiny_run, 5))
  # 2. No checkpoint here: resume_from (state, optimizer and data), not
  # init_from.
  state, data, origin = tiny_runs.loop_start(monkeypatch, config,
                                             tmp_path / "a")
  assert origin.startswith("resumed from ") and "at step 3" in origin
  assert int(state["step"]) == 3 and data["step"] == 3
  tiny_runs.assert_same_params(state["params"],
                               tiny_runs.step_params(tiny_run, 3))
  assert any(np.abs(m).max() > 0 for m in optimizer_moments(state))
  # 3. No resume_from: init_from's weights, a fresh optimizer and data.
  config.resume_from = None
  state, data, origin = tiny_runs.loop_start(monkeypatch, config,
                                             tmp_path / "b")
  assert origin.startswith("initialised from ViT .npz")
  assert int(state["step"]) == 0 and data is None
  assert all(not np.any(m) for m in optimizer_moments(state))
  from_vit = state["params"]
  np.testing.assert_array_equal(from_vit["embedding"]["kernel"],
                                vit["embedding"]["kernel"])
  block = from_vit["encoderblock_0"]
  for proj in ("query", "key", "value", "out"):
    for attention in ("spatial_attention", "temporal_attention"):
      np.testing.assert_array_equal(block[attention][proj]["kernel"],
                                    vit["blocks"][0]["attn"][proj]["kernel"])
  np.testing.assert_array_equal(from_vit["heads"]["digits_image"]["kernel"],
                                vit["head"]["kernel"])  # 10 classes: the ViT's
  # 4. None of them: refused under requires_init, else scratch.
  config.init_from = None
  with pytest.raises(ValueError, match=r"config.init_from is not set and "
                     r"there is no checkpoint to resume: pass "
                     r"--config.init_from=PATH"):
    train.train_and_evaluate(config, str(tmp_path / "c"))
  assert not os.path.exists(tmp_path / "c" / "checkpoints")
  config.requires_init = False
  state, data, origin = tiny_runs.loop_start(monkeypatch, config,
                                             tmp_path / "c")
  assert origin == f"initialised from scratch (seed {config.seed})"
  assert int(state["step"]) == 0 and data is None
  assert not np.array_equal(state["params"]["embedding"]["kernel"],
                            from_vit["embedding"]["kernel"])
  # The heads the ViT lacks were the run's own, from the same seed.
  np.testing.assert_array_equal(from_vit["heads"]["digits_motion"]["kernel"],
                                state["params"]["heads"]["digits_motion"][
                                    "kernel"])


@pytest.mark.slow
@pytest.mark.parametrize("form", ["workdir", "checkpoints", "step"])
def test_resume_from_a_workdir_its_checkpoints_or_one_step(
    tiny_run, digits_dir, tmp_path, monkeypatch, form):
  """A workdir or its checkpoints directory: the latest step (5); a step
  directory: that step (4), not the latest."""
  path = {"workdir": tiny_run,
          "checkpoints": os.path.join(tiny_run, "checkpoints"),
          "step": os.path.join(tiny_run, "checkpoints", "4")}[form]
  step = 4 if form == "step" else 5
  config = tiny_runs.tiny_config(digits_dir, resume_from=path)
  state, data, origin = tiny_runs.loop_start(monkeypatch, config, tmp_path)
  assert origin == (f"resumed from {os.path.join(tiny_run, 'checkpoints')}"
                    f" at step {step}")
  assert int(state["step"]) == step and data["step"] == step
  tiny_runs.assert_same_params(state["params"], tiny_runs.step_params(tiny_run,
                                                                      step))


def test_init_from_a_timesformer_pyth(digits_dir, tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  from tests import reference_timesformer  # pylint: disable=import-outside-toplevel
  sd = reference_timesformer.random_state_dict(
      torch.Generator().manual_seed(0), width=16, depth=1, mlp_dim=32,
      patch=8, grid=4, frames=8, classes=8)
  path = tmp_path / "ts.pyth"
  torch.save({"model_state": {"model." + k: v for k, v in sd.items()}}, path)
  config = tiny_runs.tiny_config(digits_dir, init_from=str(path))
  state, data, origin = tiny_runs.loop_start(monkeypatch, config,
                                             tmp_path / "run")
  assert origin.startswith("initialised from TimeSformer .pyth")
  assert int(state["step"]) == 0 and data is None
  params = state["params"]
  np.testing.assert_array_equal(params["time_embedding"],
                                sd["time_embed"][0].numpy())
  np.testing.assert_array_equal(params["encoderblock_0"]["temporal_fc"][
      "kernel"], sd["blocks.0.temporal_fc.weight"].numpy().T)
  np.testing.assert_array_equal(params["encoderblock_0"]["mlp"]["Dense_0"][
      "kernel"], sd["blocks.0.mlp.fc1.weight"].numpy().T)
  # The 8-class head is the checkpoint's.
  np.testing.assert_array_equal(params["heads"]["digits_motion"]["kernel"],
                                sd["head.weight"].numpy().T)
