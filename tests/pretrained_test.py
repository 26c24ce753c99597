"""Pretrained-weight import (cover_jax.models.pretrained), checked against
independent reference implementations."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from cover_jax.models import init_params
from cover_jax.models import pretrained
from cover_jax.models.pretrained import CheckpointError
from cover_jax.training import checkpointing
from tests import reference_vit

try:
  import torch
  from tests import reference_timesformer
except ImportError:  # the ViT tests run without it
  torch = None
needs_torch = pytest.mark.skipif(
    torch is None, reason="the .pyth tests need torch: pip install "
    "'cover-jax[torch]'")


_JITTED = {}


def forward(model, params, video, head):
  """model.apply as one compiled program, one per model for the module (op
  by op, every primitive of every shape compiles a program of its own)."""
  key = repr(model)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(lambda p, v: model.apply({"params": p}, v))
  return _JITTED[key](params, np.asarray(video, np.float32))[head]


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def write_npz(tmp_path, arrays, name="vit.npz"):
  path = tmp_path / name
  np.savez(path, **arrays)
  return str(path)


@pytest.fixture(scope="module")
def vit():
  return reference_vit.random_vit(np.random.default_rng(0))


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype(np.float32)


def to64(tree):
  if isinstance(tree, dict):
    return {k: to64(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [to64(v) for v in tree]
  return np.asarray(tree, np.float64) if isinstance(tree, np.ndarray) else tree


# ----------------------------------------------------------------------------
# ViT .npz
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["original", "linen", "big_vision",
                                    "big_vision_scanned"])
@pytest.mark.slow
def test_vit_one_frame_equals_the_vit(tmp_path, vit, images, layout):
  path = write_npz(tmp_path, reference_vit.vit_npz_arrays(vit, layout))
  model, params = pretrained.load_vit_npz(
      path, num_frames=4, image_size=16, heads={"imagenet": 10})
  assert (model.width, model.depth, model.num_heads, model.mlp_dim,
          model.patch_size) == (32, 2, 4, 64, 4)
  assert model.gelu_approximate
  ours = forward(model, params, images[:, None], "imagenet")
  expected = reference_vit.vit_logits(
      to64(vit), images.astype(np.float64),
      cls_pos=not layout.startswith("big_vision"))
  assert rel_err(ours, expected) <= 1e-5


@pytest.mark.slow
def test_vit_pre_logits_and_scanned_model(tmp_path, images):
  vit = reference_vit.random_vit(np.random.default_rng(2),
                                 representation_size=24)
  path = write_npz(tmp_path, reference_vit.vit_npz_arrays(vit, "original"))
  model, params = pretrained.load_vit_npz(
      path, num_frames=2, image_size=16, heads={"imagenet": 10},
      scan_layers=True)
  assert model.representation_size == 24
  assert params["encoderblock"]["mlp"]["Dense_0"]["kernel"].shape == (2, 32, 64)
  ours = forward(model, params, images[:, None], "imagenet")
  assert rel_err(ours, reference_vit.vit_logits(to64(vit), images.astype(
      np.float64))) <= 1e-5


@pytest.mark.slow
def test_vit_temporal_layers_start_as_timesformer(tmp_path, vit):
  path = write_npz(tmp_path, reference_vit.vit_npz_arrays(vit, "linen"))
  _, params = pretrained.load_vit_npz(path, num_frames=4, image_size=16,
                                       heads={"imagenet": 10})
  block = params["encoderblock_1"]
  for proj in ("query", "key", "value", "out"):
    np.testing.assert_array_equal(block["temporal_attention"][proj]["kernel"],
                                  vit["blocks"][1]["attn"][proj]["kernel"])
  np.testing.assert_array_equal(block["temporal_norm"]["scale"],
                                vit["blocks"][1]["ln1"]["scale"])
  assert not block["temporal_fc"]["kernel"].any()
  assert not block["temporal_fc"]["bias"].any()
  assert not params["time_embedding"].any()
  assert params["time_embedding"].shape == (4, 32)


@pytest.mark.slow
def test_vit_video_input_is_timesformers_function_of_the_vit(tmp_path, vit):
  """Videos through the model loaded from a ViT: TimeSformer's function
  (an independent numpy one), in which frames meet in the class token, so
  it is neither one frame's ViT logits nor their mean; a video of one
  repeated frame gives that frame's."""
  path = write_npz(tmp_path, reference_vit.vit_npz_arrays(vit, "linen"))
  model, params = pretrained.load_vit_npz(path, num_frames=4, image_size=16,
                                           heads={"imagenet": 10})
  video = np.random.default_rng(3).standard_normal((2, 4, 16, 16, 3))
  out = forward(model, params, video, "imagenet")
  assert out.shape == (2, 10)
  assert rel_err(out, reference_vit.vit_video_logits(to64(vit), video)) <= 1e-5
  per_frame = [reference_vit.vit_logits(to64(vit), video[:, i])
               for i in range(4)]
  for logits in per_frame + [np.mean(per_frame, 0)]:
    assert rel_err(out, logits) > 1e-2
  repeated = np.repeat(video[:, :1], 4, axis=1)
  assert rel_err(forward(model, params, repeated, "imagenet"),
                 per_frame[0]) <= 1e-5


def test_vit_position_embedding_resampled_as_a_grid(tmp_path, vit):
  path = write_npz(tmp_path, reference_vit.vit_npz_arrays(vit, "original"))
  _, params = pretrained.load_vit_npz(path, num_frames=4, image_size=28,
                                       heads={"imagenet": 10})
  pos = params["pos_embedding"]
  assert pos.shape == (1 + 7 * 7, 32)
  np.testing.assert_array_equal(pos[0], vit["pos"][0, 0])
  grid = vit["pos"][0, 1:].reshape(4, 4, 32)
  expected = scipy.ndimage.zoom(grid, (7 / 4, 7 / 4, 1), order=1)
  np.testing.assert_allclose(pos[1:].reshape(7, 7, 32), expected, atol=1e-6)


def test_vit_heads_initialised_from_checkpoint_only_when_sizes_match(
    tmp_path, vit):
  path = write_npz(tmp_path, reference_vit.vit_npz_arrays(vit, "original"))
  _, params = pretrained.load_vit_npz(
      path, num_frames=4, image_size=16,
      heads={"imagenet": 10, "in1k": 10, "kinetics": 7})
  for name in ("imagenet", "in1k"):
    np.testing.assert_array_equal(params["heads"][name]["kernel"],
                                  vit["head"]["kernel"])
    np.testing.assert_array_equal(params["heads"][name]["bias"],
                                  vit["head"]["bias"])
  fresh = params["heads"]["kinetics"]["kernel"]
  assert fresh.shape == (32, 7) and 0 < np.abs(fresh).std() < 0.1


@pytest.mark.slow
def test_init_from_vit_new_heads_follow_the_runs_seed(tmp_path):
  """config.seed reaches the heads the .npz lacks: init_params_from takes
  them from the run's own initialisation (fresh_params)."""
  # One block: init's random draws, per parameter, make its compile dear.
  vit = reference_vit.random_vit(np.random.default_rng(0), depth=1)
  path = write_npz(tmp_path, reference_vit.vit_npz_arrays(vit, "original"))
  model, _ = pretrained.load_vit_npz(
      path, num_frames=4, image_size=16, heads={"imagenet": 10, "kinetics": 7})
  # init_params, traced and compiled once for the three seeds.
  init = jax.jit(lambda key: init_params(model, key))

  def heads_with_seed(seed):
    fresh = jax.device_get(init(jax.random.PRNGKey(seed)))
    params, _ = checkpointing.init_params_from(path, model, fresh)
    np.testing.assert_array_equal(params["heads"]["kinetics"]["kernel"],
                                  fresh["heads"]["kinetics"]["kernel"])
    # The head the checkpoint has is the checkpoint's, whatever the seed.
    np.testing.assert_array_equal(params["heads"]["imagenet"]["kernel"],
                                  vit["head"]["kernel"])
    return params["heads"]["kinetics"]["kernel"]

  first, again, other = heads_with_seed(1), heads_with_seed(1), heads_with_seed(2)
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).max() > 1e-3


def test_vit_missing_key_is_named(tmp_path, vit):
  arrays = reference_vit.vit_npz_arrays(vit, "original")
  del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
  path = write_npz(tmp_path, arrays)
  with pytest.raises(CheckpointError,
                     match="missing key 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias'"):
    pretrained.load_vit_npz(path, num_frames=4, image_size=16,
                             heads={"imagenet": 10})


def test_vit_wrong_shape_names_key_and_shapes(tmp_path, vit):
  arrays = reference_vit.vit_npz_arrays(vit, "linen")
  arrays["Transformer/encoder_norm/scale"] = np.ones(31, np.float32)
  path = write_npz(tmp_path, arrays)
  with pytest.raises(CheckpointError, match=r"'Transformer/encoder_norm/scale' "
                     r"has shape \(31,\).*expects \(32,\)"):
    pretrained.load_vit_npz(path, num_frames=4, image_size=16,
                             heads={"imagenet": 10})


def test_vit_without_class_token_is_refused(tmp_path, vit):
  arrays = reference_vit.vit_npz_arrays(vit, "big_vision")
  del arrays["params/cls"]
  path = write_npz(tmp_path, arrays)
  with pytest.raises(CheckpointError, match="no class token"):
    pretrained.load_vit_npz(path, num_frames=4, image_size=16,
                             heads={"imagenet": 10})


def test_vit_unknown_layout_is_refused(tmp_path):
  path = write_npz(tmp_path, {"weights": np.zeros(3, np.float32)})
  with pytest.raises(CheckpointError, match="no 'embedding/kernel'"):
    pretrained.load_vit_npz(path, num_frames=4, image_size=16,
                             heads={"imagenet": 10})


def test_vit_unreadable_file(tmp_path):
  path = tmp_path / "broken.npz"
  path.write_bytes(b"not a zip file")
  with pytest.raises(CheckpointError, match="not a readable .npz"):
    pretrained.load_vit_npz(str(path), num_frames=4, image_size=16,
                             heads={"imagenet": 10})


# ----------------------------------------------------------------------------
# Official TimeSformer .pyth
# ----------------------------------------------------------------------------


def write_pyth(tmp_path, sd, prefix="model.", name="ts.pyth"):
  path = tmp_path / name
  torch.save({"epoch": 3, "model_state": {prefix + k: v for k, v in sd.items()},
              "cfg": "TRAIN:\n  ENABLE: True\n"}, path)
  return str(path)


def torch_logits(sd, video, num_heads=4):
  sd64 = {k: v.double() for k, v in sd.items()}
  x = torch.from_numpy(np.asarray(video, np.float64)).permute(0, 4, 1, 2, 3)
  with torch.no_grad():
    return reference_timesformer.logits(sd64, x, num_heads).numpy()


@needs_torch
@pytest.mark.parametrize("divided,prefix", [(True, "model."),
                                            (True, "module.model."),
                                            (False, "model.")])
@pytest.mark.slow
def test_pyth_logits_equal_reference(tmp_path, divided, prefix):
  sd = reference_timesformer.random_state_dict(torch.Generator().manual_seed(0),
                                               divided=divided)
  path = write_pyth(tmp_path, sd, prefix)
  model, params = pretrained.load_timesformer_pyth(path, num_heads=4)
  assert set(model.heads) == {"timesformer"} and not model.gelu_approximate
  assert model.attention_type == ("divided_space_time" if divided
                                  else "space_only")
  assert model.image_size == 12 and (model.num_frames == 4 or not divided)
  video = np.random.default_rng(0).standard_normal((2, 4, 12, 12, 3))
  ours = forward(model, params, video, "timesformer")
  assert rel_err(ours, torch_logits(sd, video)) <= 1e-5


@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize("frames,size", [(8, 12), (2, 20), (1, 8)])
def test_pyth_other_input_sizes_follow_the_official_resizing(tmp_path, frames,
                                                             size):
  sd = reference_timesformer.random_state_dict(torch.Generator().manual_seed(1))
  model, params = pretrained.load_timesformer_pyth(write_pyth(tmp_path, sd),
                                                    num_heads=4)
  video = np.random.default_rng(1).standard_normal((2, frames, size, size, 3))
  ours = forward(model, params, video, "timesformer")
  assert rel_err(ours, torch_logits(sd, video)) <= 1e-5


@pytest.mark.slow
@needs_torch
def test_pyth_overrides_resize_embeddings_at_load(tmp_path):
  sd = reference_timesformer.random_state_dict(torch.Generator().manual_seed(2))
  model, params = pretrained.load_timesformer_pyth(
      write_pyth(tmp_path, sd), num_heads=4, num_frames=8, image_size=20)
  assert params["time_embedding"].shape == (8, 32)
  assert params["pos_embedding"].shape == (1 + 25, 32)
  video = np.random.default_rng(2).standard_normal((1, 8, 20, 20, 3))
  ours = forward(model, params, video, "timesformer")
  assert rel_err(ours, torch_logits(sd, video)) <= 1e-5


@pytest.mark.slow
@needs_torch
def test_pyth_new_heads(tmp_path):
  sd = reference_timesformer.random_state_dict(torch.Generator().manual_seed(3))
  _, params = pretrained.load_timesformer_pyth(
      write_pyth(tmp_path, sd), num_heads=4, heads={"k400": 7, "ssv2": 5})
  np.testing.assert_array_equal(params["heads"]["k400"]["kernel"],
                                sd["head.weight"].numpy().T)
  assert params["heads"]["ssv2"]["kernel"].shape == (32, 5)


@needs_torch
def test_pyth_bad_files(tmp_path):
  sd = reference_timesformer.random_state_dict(torch.Generator().manual_seed(4))
  bad = dict(sd)
  bad["blocks.0.attn.qkv.weight"] = bad["blocks.0.attn.qkv.weight"][:10]
  with pytest.raises(CheckpointError, match=r"'blocks.0.attn.qkv.weight' has "
                     r"shape \(10, 32\); expected \(96, 32\)"):
    pretrained.load_timesformer_pyth(write_pyth(tmp_path, bad), num_heads=4)
  extra = dict(sd, **{"blocks.0.extra_layer.weight": torch.zeros(3)})
  with pytest.raises(CheckpointError, match="keys not understood.*extra_layer"):
    pretrained.load_timesformer_pyth(write_pyth(tmp_path, extra), num_heads=4)
  missing = {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}
  with pytest.raises(CheckpointError, match="missing key 'blocks.1.mlp.fc2.bias'"):
    pretrained.load_timesformer_pyth(write_pyth(tmp_path, missing), num_heads=4)
  with pytest.raises(ValueError, match="not divisible by num_heads 5"):
    pretrained.load_timesformer_pyth(write_pyth(tmp_path, sd), num_heads=5)
  garbage = tmp_path / "garbage.pyth"
  garbage.write_bytes(b"\x00\x01 not a pickle")
  with pytest.raises(CheckpointError, match="could not be read by torch.load"):
    pretrained.load_timesformer_pyth(str(garbage))


def test_pyth_without_torch_explains_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install 'cover-jax\[torch\]'"):
    pretrained.load_timesformer_pyth(str(tmp_path / "any.pyth"))


@pytest.mark.slow
@needs_torch
def test_bf16_model_from_checkpoint_close_to_fp32(tmp_path):
  sd = reference_timesformer.random_state_dict(torch.Generator().manual_seed(5))
  path = write_pyth(tmp_path, sd)
  model, params = pretrained.load_timesformer_pyth(path, num_heads=4)
  bf16, _ = pretrained.load_timesformer_pyth(path, num_heads=4,
                                              dtype=jnp.bfloat16)
  video = np.random.default_rng(5).standard_normal((2, 4, 12, 12, 3))
  full = forward(model, params, video, "timesformer")
  half = forward(bf16, params, video, "timesformer")
  assert half.dtype == jnp.float32
  assert bf16.dtype == jnp.bfloat16
  assert rel_err(half, full) < 0.05
  assert rel_err(half, full) > 1e-4  # bf16 rounding shows: it was used


@pytest.mark.slow
def test_vit_override_adding_a_layer_the_checkpoint_lacks(tmp_path, vit):
  path = write_npz(tmp_path, reference_vit.vit_npz_arrays(vit, "original"))
  with pytest.raises(CheckpointError, match="missing key 'pre_logits/kernel'"):
    pretrained.load_vit_npz(path, num_frames=4, image_size=16,
                             heads={"imagenet": 10}, representation_size=16)
