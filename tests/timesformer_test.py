"""TimeSformer model: shapes, equivalences between its execution modes, errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from cover_jax.models import (TimeSformer, abstract_variables, init_params,
                              scan_params, unboxed, unscan_params, variant)
from cover_jax.models import timesformer

# Two blocks: enough for blocks to differ (scan order, per-block masks,
# stochastic-depth rates 0 and the full rate); each block costs compile time.
SMALL = dict(width=32, depth=2, num_heads=4, mlp_dim=64, patch_size=4,
             num_frames=4, image_size=16)
HEADS = {"kinetics": 7, "imagenet": 5}


def perturbed(params, seed=1, scale=0.05):
  """Parameters with every leaf non-zero (the init zeroes temporal_fc).
  numpy's generator: jax.random would compile a program per leaf shape."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(
          x.shape), x.dtype),  # numpy's sum: jax's compiles one per shape
      params)


@pytest.fixture(scope="module")
def model():
  return TimeSformer(heads=HEADS, **SMALL)


def shapes_like(model):
  """Ones for LayerNorm scales, zeros elsewhere, in the tree of `model`'s
  parameters (eval_shape: nothing compiled); `perturbed` then gives
  parameters distributed as the perturbed initialisation."""
  shapes = unboxed(abstract_variables(model))["params"]
  return jax.tree_util.tree_map_with_path(
      lambda path, s: np.full(s.shape, path[-1].key == "scale", s.dtype),
      shapes)


@pytest.fixture(scope="module")
def video():
  return jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 16, 16, 3)),
                     jnp.float32)


@pytest.fixture(scope="module")
def params(model):
  """Distributed as the perturbed initialisation, without compiling init
  (its random draws make it the dearest program of the file; each xdist
  worker would compile it for this fixture)."""
  return perturbed(shapes_like(model))


_JITTED = {}


def _cached(kind, model, make, **kwargs):
  """One jitted function per (kind, model, kwargs) for the whole module:
  every test of a model reuses its traced and compiled programs."""
  key = (kind, repr(model), tuple(sorted(kwargs.items())))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(make())
  return _JITTED[key]


def apply(model, params, video, rngs=None, **kwargs):
  """model.apply as one compiled program (op by op, every call of a forward
  pass compiles hundreds of small ones); rngs are an argument, not a
  constant, so that seeds share the program."""
  fn = _cached("apply", model, lambda: lambda p, v, r: model.apply(
      {"params": p}, v, rngs=r, **kwargs), **kwargs)
  return fn(params, video, rngs)


def _loss(model, p, video):
  out = model.apply({"params": p}, video)
  return sum(jnp.sum(jnp.sin(v)) for v in out.values()), out


def loss_grads(model, params, video):
  """((loss, logits), gradients) of a loss of every head's logits, in one
  compiled program per model."""
  fn = _cached("loss_grads", model, lambda: jax.value_and_grad(
      functools.partial(_loss, model), has_aux=True))
  return fn(params, video)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.slow
def test_output_is_one_logits_array_per_head(model, params, video):
  out = apply(model, params, video)
  assert set(out) == set(HEADS)
  for name, classes in HEADS.items():
    assert out[name].shape == (2, classes) and out[name].dtype == jnp.float32


@pytest.mark.slow
def test_images_are_one_frame_videos_through_the_same_parameters(
    model, params, video):
  out = apply(model, params, video[:, :1])
  assert out["imagenet"].shape == (2, 5)
  # No parameter exists only for images: the image pass uses a subset.
  names = {"/".join(str(k.key) for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]}
  assert not any("image" in n and "heads/" not in n for n in names)


def test_variants():
  assert variant("L/16") == dict(width=1024, depth=24, num_heads=16,
                                 mlp_dim=4096, patch_size=16)
  assert variant("B/16")["width"] == 768 and variant("H/14")["patch_size"] == 14
  with pytest.raises(ValueError, match="Unknown TimeSformer variant 'X/16'"):
    variant("X/16")


def test_parameter_count_of_b16_matches_timesformer():
  """TimeSformer-B/16 (8x224, 400 classes) has 121.4M parameters."""
  model = TimeSformer(heads={"k400": 400}, **variant("B/16"))
  shapes = abstract_variables(model)
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
  official = (3 * 768 * 256 + 768 + 768 + 197 * 768 + 8 * 768  # embeddings
              + 12 * (2 * (3 * 768 * 768 + 3 * 768 + 768 * 768 + 768)  # attns
                      + 768 * 768 + 768  # temporal_fc
                      + 3 * 2 * 768  # norms
                      + 2 * 768 * 3072 + 3072 + 768)  # mlp
              + 2 * 768 + 768 * 400 + 400)
  assert count == official


@pytest.mark.slow
def test_scan_equals_loop_values_and_gradients(model, params, video):
  scanned = model.clone(scan_layers=True)
  sparams = scan_params(params)
  assert sparams["encoderblock"]["mlp"]["Dense_0"]["kernel"].shape == (2, 32, 64)
  (_, out_loop), g_loop = loss_grads(model, params, video)
  (_, out_scan), g_scan = loss_grads(scanned, sparams, video)
  for name in HEADS:
    np.testing.assert_allclose(out_scan[name], out_loop[name],
                               rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               g_loop, unscan_params(g_scan))
  roundtrip = unscan_params(sparams)
  jax.tree.map(np.testing.assert_array_equal, roundtrip, params)


# Both policies on loop blocks, and scanned blocks (nn.remat inside nn.scan,
# without prevent_cse) under one: the policy is passed to nn.remat the same
# way for both layouts.
@pytest.mark.parametrize("scan,policy", [
    (False, "nothing_saveable"), (False, "dots_with_no_batch_dims_saveable"),
    (True, "nothing_saveable")])
@pytest.mark.slow
def test_remat_equals_no_remat(model, params, video, policy, scan):
  plain = model.clone(scan_layers=scan)
  remat = model.clone(scan_layers=scan, remat_policy=policy)
  p = scan_params(params) if scan else params
  # The plain model's program is test_scan_equals_loop's (compiled once).
  (loss1, out1), g1 = loss_grads(plain, p, video)
  (loss2, out2), g2 = loss_grads(remat, p, video)
  np.testing.assert_allclose(loss2, loss1, rtol=1e-6)
  for name in HEADS:
    np.testing.assert_allclose(out2[name], out1[name], rtol=1e-6)
  # Recomputing reassociates float32 sums: allow a few ulps of the
  # gradients' scale (the key biases' gradients are zero up to that noise:
  # softmax ignores a shift shared by all keys).
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=4e-7 * scale), g1, g2)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["everything_saveable", "nothing_saveable"])
def test_remat_checkpoints_only_what_it_recomputes(model, params, video,
                                                    policy):
  # everything_saveable recomputes nothing: it must not cost the barriers
  # of a checkpoint either (prevent_cse: optimization_barrier).
  loss = lambda p: apply(model.clone(remat_policy=policy), p, video)[
      "kinetics"].sum()
  hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
  assert ("optimization_barrier" in hlo) == (policy == "nothing_saveable")


def apply_capturing(model, params, video):
  """(logits, intermediates) of one compiled forward pass."""
  return apply(model, params, video, capture_intermediates=True,
               mutable="intermediates")


@pytest.mark.slow
def test_bf16_compute_close_to_fp32(model, params, video):
  half = model.clone(dtype=jnp.bfloat16)
  out16, captured = apply_capturing(half, params, video)
  out32 = apply(model, params, video)
  for name in HEADS:
    assert out16[name].dtype == jnp.float32
    assert rel_err(out16[name], out32[name]) < 0.05
    # Not fp32 in disguise: bf16 rounding shows in the logits.
    assert rel_err(out16[name], out32[name]) > 1e-4
  blocks = captured["intermediates"]["encoderblock_0"]
  assert blocks["mlp"]["Dense_0"]["__call__"][0].dtype == jnp.bfloat16
  # Parameters stay fp32 when only the compute dtype changes (init's dtypes,
  # from its abstract evaluation).
  p16 = abstract_variables(half)
  assert {x.dtype for x in jax.tree.leaves(p16)} == {jnp.dtype(jnp.float32)}


@pytest.mark.slow
def test_heads_compute_in_float32_under_bf16(model, params, video):
  """The bf16 feature times the fp32 kernel, in fp32: the logits equal an
  independent float64 matmul to fp32 rounding (a bf16 matmul is ~1e-2 off)."""
  half = model.clone(dtype=jnp.bfloat16)
  out, captured = apply_capturing(half, params, video)
  feature = captured["intermediates"]["encoder_norm"]["__call__"][0]
  assert feature.dtype == jnp.bfloat16
  feature = np.asarray(feature, np.float64)
  for name in HEADS:
    head = jax.tree.map(lambda x: np.asarray(x, np.float64),
                        params["heads"][name])
    expected = feature @ head["kernel"] + head["bias"]
    assert out[name].dtype == jnp.float32
    np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_every_parameter_receives_a_gradient(model, params, video):
  # The gradients of test_scan_equals_loop's loss (one program for both).
  _, grads = loss_grads(model, params, video)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_new_model_starts_as_its_image_model(model, video):
  """temporal_fc starts at zero, so frames only interact through the class
  token: shuffling the frames changes nothing at initialisation."""
  params = init_params(model, jax.random.PRNGKey(0))
  assert not params["encoderblock_0"]["temporal_fc"]["kernel"].any()
  out = apply(model, params, video)["kinetics"]
  shuffled = apply(model, params, video[:, ::-1])["kinetics"]
  np.testing.assert_allclose(out, shuffled, rtol=1e-5, atol=1e-6)


def test_frame_order_matters_once_temporal_layers_are_trained(
    model, params, video):
  out = apply(model, params, video)["kinetics"]
  reversed_ = apply(model, params, video[:, ::-1])["kinetics"]
  assert np.abs(out - reversed_).max() > 1e-3


@pytest.mark.slow
def test_dropout_and_stochastic_depth_are_random_only_in_training(
    model, params, video):
  noisy = model.clone(dropout_rate=0.1, stochastic_depth_rate=0.5)
  eval_out = apply(noisy, params, video)["kinetics"]
  np.testing.assert_allclose(eval_out, apply(model, params, video)["kinetics"],
                             rtol=1e-6)
  train = lambda seed: apply(noisy, params, video, train=True,
                             rngs={"dropout": jax.random.PRNGKey(seed)})
  a, b, a2 = train(0), train(1), train(0)
  assert np.abs(a["kinetics"] - b["kinetics"]).max() > 1e-4
  np.testing.assert_array_equal(a["kinetics"], a2["kinetics"])
  # Scanned blocks (their eval output: test_scan_equals_loop_values_and_
  # gradients): random in training, each block drawing its own masks.
  scanned = noisy.clone(scan_layers=True)
  masks = {}

  def record_masks(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dropout) and context.module.rate > 0:
      path = "/".join(context.module.scope.path)
      jax.debug.callback(lambda m, p=path: masks.setdefault(p, []).append(
          np.asarray(m)), out == 0, ordered=True)
    return out

  with nn.intercept_methods(record_masks):  # traced here: a program of its own
    s_a = jax.jit(lambda p, v, r: scanned.apply({"params": p}, v, train=True,
                                                rngs=r))(
        scan_params(params), video, {"dropout": jax.random.PRNGKey(0)})
    s_a = s_a["kinetics"]
  assert np.isfinite(s_a).all() and np.abs(s_a - eval_out).max() > 1e-4
  in_blocks = {p: m for p, m in masks.items() if "encoderblock" in p}
  assert len(in_blocks) == 4  # temporal, spatial attention; MLP twice
  for path, per_block in in_blocks.items():
    assert len(per_block) == SMALL["depth"], path
    for i in range(SMALL["depth"]):
      assert 0.05 < per_block[i].mean() < 0.15, path  # rate 0.1
      for j in range(i):
        assert not np.array_equal(per_block[i], per_block[j]), (path, i, j)


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_stochastic_depth_drops_whole_branches_per_example(params, scan):
  """A branch dropped with probability 1 leaves its block an identity."""
  # Rates grow linearly from 0: block 0 is always kept, block 1 always dropped.
  out, without = _second_block_at_rate(params, 1.0, batch=2, scan=scan)
  np.testing.assert_allclose(out, np.broadcast_to(without, out.shape),
                             rtol=1e-5, atol=1e-6)


def _second_block_at_rate(params, rate, batch, scan=False):
  """(logits of identical videos through 2 equal blocks, the second at
  stochastic-depth `rate` in training; logits of the 1-block model), from
  the first block of `params`."""
  model = TimeSformer(heads=HEADS, **dict(SMALL, depth=1))
  params = {k: v for k, v in params.items()
            if not k.startswith("encoderblock_") or k == "encoderblock_0"}
  video = jnp.ones((batch, 4, 16, 16, 3))
  two = model.clone(depth=2, stochastic_depth_rate=rate, scan_layers=scan)
  p2 = dict(params, encoderblock_1=params["encoderblock_0"])
  out = apply(two, scan_params(p2) if scan else p2, video, train=True,
              rngs={"dropout": jax.random.PRNGKey(0)})["kinetics"]
  return out, apply(model, params, video[:1])["kinetics"][0]


class _DropPath(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x):
    return timesformer._drop_path(x, self.rate, False, self)  # pylint: disable=protected-access


def test_stochastic_depth_mask_is_per_example():
  """Rate 0.5: each example's branch is kept whole (scaled by 1/0.5) or
  dropped whole, independently of the other examples."""
  x = jnp.ones((64, 3, 5, 4))
  y = np.asarray(jax.jit(lambda x, r: _DropPath(0.5).apply({}, x, rngs=r))(
      x, {"dropout": jax.random.PRNGKey(0)}))
  per_example = y.reshape(64, -1)
  kept = (per_example == 2.0).all(axis=1)
  dropped = (per_example == 0.0).all(axis=1)
  assert (kept | dropped).all()
  assert 16 < kept.sum() < 48  # both, in about equal numbers


@pytest.mark.slow
def test_stochastic_depth_at_half_rate_drops_some_examples_keeps_others(
    params):
  """Identical examples through a block at rate 0.5: those whose three
  branches all drew "drop" equal the model without that block, the others
  do not (masks are per example, not per batch)."""
  # Block 0 has rate 0 (always kept); block 1 rate 0.5.
  out, without = _second_block_at_rate(params, 0.5, batch=32)
  skipped = np.isclose(out, without, rtol=1e-5, atol=1e-6).all(axis=1)
  assert 0 < skipped.sum() < len(out)  # ~1/8 of the examples
  assert len(np.unique(np.round(np.asarray(out), 5), axis=0)) > 2


@pytest.mark.slow
def test_space_only_is_a_per_frame_vit_averaged_over_frames(video):
  model = TimeSformer(heads=HEADS, attention_type="space_only", **SMALL)
  params = perturbed(shapes_like(model))  # init's tree (abstract_variables)
  assert "time_embedding" not in params
  assert "temporal_attention" not in params["encoderblock_0"]
  out = apply(model, params, video)["kinetics"]
  np.testing.assert_allclose(out, apply(model, params, video[:, ::-1])["kinetics"],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_other_resolution_and_frame_count_resample_embeddings(
    model, params):
  """A model sized for 24 px / 6 frames whose embeddings were resampled by
  hand gives the same logits as the 16 px / 4 frame model fed 24 px, 6 frames."""
  big = model.clone(image_size=24, num_frames=6)
  grid = np.asarray(params["pos_embedding"][1:]).reshape(4, 4, -1)
  pos6 = np.stack([np.stack([_lerp2(grid, r * 3 / 5, c * 3 / 5)
                             for c in range(6)]) for r in range(6)])
  time = np.asarray(params["time_embedding"])
  time6 = np.stack([_lerp1(time, t * 3 / 5) for t in range(6)])
  big_params = dict(params, pos_embedding=np.concatenate(
      [params["pos_embedding"][:1], pos6.reshape(36, -1)]), time_embedding=time6)
  video = jnp.asarray(np.random.default_rng(3).standard_normal((1, 6, 24, 24, 3)),
                      jnp.float32)
  np.testing.assert_allclose(apply(model, params, video)["kinetics"],
                             apply(big, big_params, video)["kinetics"],
                             rtol=1e-5, atol=1e-5)


def _lerp1(x, pos):
  lo = int(np.floor(pos))
  hi = min(lo + 1, len(x) - 1)
  return x[lo] + (x[hi] - x[lo]) * (pos - lo)


def _lerp2(grid, r, c):
  return _lerp1(np.stack([_lerp1(grid[:, j], r) for j in range(grid.shape[1])]), c)


@pytest.mark.slow
def test_pre_logits_layer():
  model = TimeSformer(heads=HEADS, representation_size=24, **SMALL)
  # init's shapes, by its abstract evaluation (no compile).
  params = unboxed(abstract_variables(model))["params"]
  assert params["pre_logits"]["kernel"].shape == (32, 24)
  assert params["heads"]["kinetics"]["kernel"].shape == (24, 7)


@pytest.mark.parametrize("shape,match", [
    ((2, 16, 16, 3), r"expects video float \[batch, frames, height, width, 3\].*"
     r"got shape \(2, 16, 16, 3\)"),
    ((2, 4, 16, 16, 1), r"got shape \(2, 4, 16, 16, 1\)"),
    ((2, 4, 18, 16, 3), "18x16 is not a multiple of the patch size 4"),
])
def test_bad_input_shapes(model, params, shape, match):
  with pytest.raises(ValueError, match=match):
    apply(model, params, jnp.zeros(shape))


@pytest.mark.parametrize("fields,match", [
    (dict(num_heads=5), "width 32 is not divisible by num_heads 5"),
    (dict(image_size=18), "image_size 18 is not a multiple of patch_size 4"),
    (dict(attention_type="joint"), "attention_type 'joint' is not one of"),
    (dict(attention_implementation="cudnn"), "needs dtype bfloat16 or float16"),
    (dict(remat_policy="sometimes"), "remat_policy 'sometimes' is not"),
    (dict(posemb_interpolation="cubic"), "posemb_interpolation 'cubic'"),
    (dict(heads={}), "needs at least one head"),
    (dict(heads={"a": 0}), "Head 'a' has 0 classes"),
])
def test_bad_configs(fields, match):
  model = TimeSformer(**{"heads": HEADS, **SMALL, **fields})
  with pytest.raises(ValueError, match=match):
    model.validate()


def test_scan_converters_refuse_the_wrong_layout(params):
  with pytest.raises(ValueError, match="already unscanned"):
    unscan_params(params)
  with pytest.raises(ValueError, match="already scanned"):
    scan_params(scan_params(params))


def test_gelu_matches_the_exact_and_tanh_formulas():
  x = jnp.linspace(-8, 8, 1001)
  x64 = np.asarray(x, np.float64)
  exact = 0.5 * x64 * (1 + scipy.special.erf(x64 / np.sqrt(2)))
  tanh = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) *
                                  (x64 + 0.044715 * x64**3)))
  np.testing.assert_allclose(timesformer.gelu(x, False), exact, atol=1e-6)
  np.testing.assert_allclose(timesformer.gelu(x, True), tanh, atol=1e-6)
  # The two forms differ: each test above can tell them apart.
  assert np.abs(exact - tanh).max() > 1e-4
  np.testing.assert_allclose(timesformer.gelu(x, False),
                             jax.nn.gelu(x, approximate=False), atol=1e-6)
