"""The optimizer: the paper's learning-rate schedule in every config that
claims it, and weight decay on kernels only (by parameter name)."""

import importlib.util
import os

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cover_jax.models import create, scan_params, unboxed, unscan_params
from cover_jax.training import optimizer

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs")
# Every config that follows paper 4.1's schedule: 20 epochs, 5e-3, 5e-4 from
# epoch 11, 5e-5 from epoch 15 (epochs counted from 1).
PAPER_SCHEDULE_CONFIGS = ["cover_l16_jft.py", "cover_l16_i21k.py",
                          "cover_b16_i21k.py", "transfer_finetune.py",
                          "linear_probe.py"]
STEPS_PER_EPOCH = 37  # any count; odd so that no boundary is a round number


def load(name):
  """`get_config()` of configs/<name>, as --config=configs/<name> does."""
  spec = importlib.util.spec_from_file_location(
      "config_" + name[:-3], os.path.join(CONFIGS, name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def schedule_of(name, steps_per_epoch=STEPS_PER_EPOCH):
  opt = load(name).optimizer
  schedule = optimizer.learning_rate_schedule(
      opt.learning_rates, opt.boundaries_epochs, steps_per_epoch,
      opt.warmup_epochs)
  return lambda step: float(schedule(step))


def first_step(epoch, steps_per_epoch=STEPS_PER_EPOCH):
  """The first step of `epoch`, epochs counted from 1 as the papers do."""
  return (epoch - 1) * steps_per_epoch


@pytest.mark.parametrize("name", PAPER_SCHEDULE_CONFIGS)
def test_paper_configs_drop_the_rate_at_epochs_11_and_15(name):
  lr = schedule_of(name)
  assert lr(0) == pytest.approx(5e-3)
  assert lr(first_step(11) - 1) == pytest.approx(5e-3)  # last of epoch 10
  assert lr(first_step(11)) == pytest.approx(5e-4)
  assert lr(first_step(15) - 1) == pytest.approx(5e-4)  # last of epoch 14
  assert lr(first_step(15)) == pytest.approx(5e-5)
  assert lr(first_step(21) - 1) == pytest.approx(5e-5)  # last of epoch 20


def test_timesformer_baseline_drops_after_11_and_14_finished_epochs():
  """TimeSformer's own recipe (PySlowFast STEPS [0, 11, 14], 15 epochs):
  the same reading, boundaries in epochs done, so 5e-3 for 11 epochs."""
  lr = schedule_of("timesformer_b16_k400.py")
  assert lr(first_step(12) - 1) == pytest.approx(5e-3)  # last of epoch 11
  assert lr(first_step(12)) == pytest.approx(5e-4)
  assert lr(first_step(15) - 1) == pytest.approx(5e-4)
  assert lr(first_step(15)) == pytest.approx(5e-5)


# ----------------------------------------------------------------------------
# Weight decay.
# ----------------------------------------------------------------------------

TINY = dict(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4,
            num_frames=2, image_size=8, representation_size=8)


@pytest.fixture(scope="module")
def boxed():
  """The parameters as flax's init boxes them (train.py initialises the
  optimizer on these), shapes only: nothing is compiled."""
  model = create({"video": 5, "image": 3}, **TINY)
  return jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 2, 8, 8, 3))))["params"]


@pytest.fixture(scope="module")
def params(boxed):
  """Unboxed parameters of those shapes, every leaf non-zero (init zeroes
  biases and the time embedding), so that decay would show on any of them."""
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda x: (rng.uniform(0.5, 1.5, x.shape) *
                 rng.choice([-1.0, 1.0], x.shape)).astype(x.dtype),
      unboxed(boxed))


def named_leaves(tree):
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_weight_decay_mask_selects_kernels_by_name(params):
  mask = named_leaves(optimizer.kernel_mask(params))
  decayed = {name for name, on in mask.items() if on}
  assert decayed == {name for name in mask if name.endswith("/kernel")}
  # The ones a rank test gets wrong: 2-D q/k/v biases and the embeddings.
  assert "encoderblock_0/temporal_attention/query/bias" in mask
  assert params["encoderblock_0"]["temporal_attention"]["query"][
      "bias"].ndim == 2
  for name in ("cls", "pos_embedding", "time_embedding",
               "encoderblock_0/temporal_attention/query/bias",
               "encoderblock_0/spatial_attention/value/bias",
               "encoderblock_1/mlp_norm/scale", "encoder_norm/bias",
               "embedding/bias", "heads/video/bias"):
    assert not mask[name], name
  for name in ("embedding/kernel", "encoderblock_0/temporal_fc/kernel",
               "encoderblock_1/spatial_attention/out/kernel",
               "encoderblock_0/mlp/Dense_0/kernel", "pre_logits/kernel",
               "heads/video/kernel", "heads/image/kernel"):
    assert mask[name], name


def test_weight_decay_mask_reads_boxed_parameters(boxed, params):
  """train.py initialises the optimizer on flax's boxed parameters: the
  mask of those is that of the unboxed ones."""
  assert any(isinstance(x, nn.Partitioned) for x in jax.tree.leaves(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
  unboxed_mask = named_leaves(optimizer.kernel_mask(params))
  boxed_mask = optimizer.kernel_mask(boxed)
  assert [bool(x) for x in jax.tree.leaves(boxed_mask)] == list(
      unboxed_mask.values())


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_moves_only_kernels_without_gradient(params, name):
  config = ml_collections.ConfigDict(dict(optimizer=dict(
      name=name, learning_rates=(0.1,), boundaries_epochs=(),
      weight_decay=0.5)))
  tx, _ = optimizer.make(config, steps_per_epoch=10)

  @jax.jit  # one compile, not op-by-op dispatch
  def one_step(params):
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    return jax.tree.map(lambda p, u: p + u, params, updates)
  after = named_leaves(jax.device_get(one_step(params)))
  before = named_leaves(params)
  for leaf in ("cls", "pos_embedding", "time_embedding", "embedding/bias",
               "encoderblock_0/temporal_attention/key/bias",
               "encoderblock_0/spatial_norm/scale", "heads/video/bias"):
    np.testing.assert_array_equal(after[leaf], before[leaf], err_msg=leaf)
  for leaf in ("embedding/kernel", "encoderblock_0/temporal_attention/key/"
               "kernel", "heads/video/kernel"):
    assert np.all(np.abs(after[leaf]) < np.abs(before[leaf])), leaf


# ----------------------------------------------------------------------------
# The update rules, against hand-written formulas.
# ----------------------------------------------------------------------------

LR = 0.1
TWO_LEAVES = {"dense": {"kernel": np.array([[1.0, -2.0], [0.5, 3.0]],
                                           np.float32),
                        "bias": np.array([0.25, -1.0], np.float32)}}


def updates_of(grads_per_step, **fields):
  """The updates `optimizer.make` gives for successive gradients (params
  fixed at TWO_LEAVES; a constant rate)."""
  config = ml_collections.ConfigDict(dict(optimizer=dict(
      learning_rates=(LR,), boundaries_epochs=(), **fields)))
  tx, _ = optimizer.make(config, steps_per_epoch=10)
  state = tx.init(TWO_LEAVES)
  out = []
  for grads in grads_per_step:
    updates, state = tx.update(grads, state, TWO_LEAVES)
    out.append(jax.tree.map(np.asarray, updates))
  return out


def grads_like(scale, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: (scale * rng.standard_normal(p.shape)).astype(
      np.float32), TWO_LEAVES)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_and_nesterov_follow_pytorch(nesterov):
  """PyTorch's SGD: b_1 = g_1, b_t = mu b_{t-1} + g_t; the step is lr b_t,
  or lr (g_t + mu b_t) with Nesterov."""
  mu, (g1, g2) = 0.9, (grads_like(1.0, 0), grads_like(1.0, 1))
  got = updates_of([g1, g2], name="sgd", momentum=mu, nesterov=nesterov)
  for leaf in ("kernel", "bias"):
    a, b = g1["dense"][leaf], g2["dense"][leaf]
    b1, b2 = a, mu * a + b
    step1, step2 = (a + mu * b1, b + mu * b2) if nesterov else (b1, b2)
    np.testing.assert_allclose(got[0]["dense"][leaf], -LR * step1, rtol=1e-6)
    np.testing.assert_allclose(got[1]["dense"][leaf], -LR * step2, rtol=1e-6)


def test_sgd_weight_decay_is_l2_on_kernels_before_momentum():
  """PyTorch's weight_decay: g + wd p enters the momentum, kernels only."""
  mu, wd, (g1, g2) = 0.9, 0.01, (grads_like(1.0, 0), grads_like(1.0, 1))
  got = updates_of([g1, g2], name="sgd", momentum=mu, weight_decay=wd)
  for leaf, decay in (("kernel", wd), ("bias", 0.0)):
    p = TWO_LEAVES["dense"][leaf]
    a, b = (g["dense"][leaf] + decay * p for g in (g1, g2))
    np.testing.assert_allclose(got[1]["dense"][leaf], -LR * (mu * a + b),
                               rtol=1e-6)


def test_adamw_is_adam_with_decoupled_decay_on_kernels():
  """Adam (b1 0.9, b2 0.999, eps 1e-8, bias-corrected moments) plus
  lr * wd * p on kernels, outside the moments: the mini configs' rule."""
  wd, grads = 0.01, [grads_like(1.0, 0), grads_like(0.1, 1), grads_like(3, 2)]
  got = updates_of(grads, name="adamw", weight_decay=wd)
  for leaf, decay in (("kernel", wd), ("bias", 0.0)):
    p = TWO_LEAVES["dense"][leaf]
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
      g = g["dense"][leaf].astype(np.float64)
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
      m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.999 ** t)
      want = -LR * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * p)
      np.testing.assert_allclose(got[t - 1]["dense"][leaf], want, rtol=1e-4,
                                 err_msg=f"{leaf} step {t}")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_gradients_are_clipped_by_their_global_norm(name):
  """grad_clip_norm=1: a gradient of global norm 10 acts as itself / 10; one
  of norm 0.5 as itself. Two steps, so that Adam (invariant to the scale of
  a first gradient alone) sees the ratio of the two."""
  def with_norm(grads, norm):
    now = np.sqrt(sum(np.sum(g ** 2) for g in jax.tree.leaves(grads)))
    return jax.tree.map(lambda g: g * (norm / now), grads)
  big, small = with_norm(grads_like(1.0, 0), 10.0), with_norm(
      grads_like(1.0, 1), 0.5)
  clipped = updates_of([big, small], name=name, momentum=0.9,
                       grad_clip_norm=1.0)
  as_given = updates_of([jax.tree.map(lambda g: g / 10.0, big), small],
                        name=name, momentum=0.9)
  unclipped = updates_of([big, small], name=name, momentum=0.9)
  for x, y in zip(jax.tree.leaves(clipped), jax.tree.leaves(as_given)):
    np.testing.assert_allclose(x, y, rtol=1e-5)
  # Not a vacuous check: unclipped, the second step differs.
  for x, z in zip(jax.tree.leaves(clipped[1]), jax.tree.leaves(unclipped[1])):
    assert np.abs(x - z).max() > 1e-3

# ----------------------------------------------------------------------------
# Layer-wise learning-rate decay.
# ----------------------------------------------------------------------------

DECAY = 0.5
DEEP = dict(TINY, depth=3)
# By hand, d = 0.5 and depth 3: d ** (depth + 1 - layer id), layer id 0 the
# embeddings, 1..3 the blocks, 4 the final norm, pre-logits and heads.
SCALE_TABLE = {"embedding": 0.0625, "cls": 0.0625, "pos_embedding": 0.0625,
               "time_embedding": 0.0625, "encoderblock_0": 0.125,
               "encoderblock_1": 0.25, "encoderblock_2": 0.5,
               "encoder_norm": 1.0, "pre_logits": 1.0, "heads": 1.0}


def table_scale(name):
  """SCALE_TABLE's factor of a loop-layout leaf "top/.../leaf"."""
  return SCALE_TABLE[name.split("/")[0]]


def random_like(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (rng.uniform(0.5, 1.5, x.shape) * rng.choice(
      [-1.0, 1.0], x.shape)).astype(x.dtype), tree)


@pytest.fixture(scope="module")
def deep():
  """Random non-zero parameters and two gradients of a depth-3 model, in
  the loop layout and (scan_params: the blocks stacked) the scanned one."""
  model = create({"video": 5, "image": 3}, **DEEP)
  shapes = unboxed(jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 2, 8, 8, 3))))["params"])
  loop = [random_like(shapes, seed) for seed in range(3)]
  return {False: loop,
          True: [jax.device_get(scan_params(t)) for t in loop]}


def decay_config(**fields):
  return ml_collections.ConfigDict(dict(optimizer=dict(
      learning_rates=(LR,), boundaries_epochs=(), **fields)))


def updates_for(params, grads_per_step, **fields):
  """The updates of `optimizer.make` over successive gradients (one
  compile of the update for all steps)."""
  tx, _ = optimizer.make(decay_config(**fields), steps_per_epoch=10)
  update, state, out = jax.jit(tx.update), jax.jit(tx.init)(params), []
  for grads in grads_per_step:
    updates, state = update(grads, state, params)
    out.append(jax.device_get(updates))
  return out


def test_layer_scales_match_the_table_in_the_loop_layout(deep):
  params = deep[False][0]
  assert set(params) == set(SCALE_TABLE)  # every top-level name in the table
  scales = named_leaves(optimizer.layer_scales(params, DECAY))
  assert set(scales) == set(named_leaves(params))
  for name, scale in scales.items():
    assert np.shape(scale) == (), name
    assert float(scale) == table_scale(name), name


def test_layer_scales_are_a_per_block_vector_in_the_scanned_layout(deep):
  params = deep[True][0]
  scales = optimizer.layer_scales(params, DECAY)
  assert (jax.tree.structure(scales["encoderblock"]) ==
          jax.tree.structure(params["encoderblock"]))
  for scale, leaf in zip(jax.tree.leaves(scales["encoderblock"]),
                         jax.tree.leaves(params["encoderblock"])):
    # [depth, 1, ...]: one factor per block, broadcast over the rest.
    assert scale.shape == (3,) + (1,) * (leaf.ndim - 1)
    np.testing.assert_array_equal(scale.reshape(-1), [0.125, 0.25, 0.5])
  for name in set(params) - {"encoderblock"}:
    for scale in jax.tree.leaves(scales[name]):
      assert float(scale) == SCALE_TABLE[name], name


def test_layer_scales_read_boxed_shapes(boxed):
  """train.py initialises the optimizer on flax's boxed parameters."""
  scales = optimizer.layer_scales(boxed, DECAY)
  assert float(jax.tree.leaves(scales["cls"])[0]) == 0.125  # depth 2: d^3
  assert float(jax.tree.leaves(scales["encoderblock_1"])[0]) == 0.5


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sgd_steps_are_lr_times_scale_times_momentum(deep, scan_layers):
  """Two momentum-SGD steps with weight decay and layer_decay 0.5: on every
  leaf -lr x table scale x (mu b_1 + g_2 + wd p), b_1 = g_1 + wd p (L2 on
  kernels), PyTorch's update with a per-layer lr, in float64 here. The
  scanned layout's updates, unstacked, equal these block by block."""
  mu, wd = 0.9, 0.01
  params, g1, g2 = deep[scan_layers]
  got = updates_for(params, [g1, g2], name="sgd", momentum=mu,
                    weight_decay=wd, layer_decay=DECAY)
  if scan_layers:
    got = [unscan_params(u) for u in got]
  p, g1, g2 = (named_leaves(t) for t in deep[False])
  assert all(set(named_leaves(u)) == set(p) for u in got)
  for name in p:
    l2 = wd * p[name].astype(np.float64) if name.endswith("/kernel") else 0.0
    b1 = g1[name] + l2
    b2 = mu * b1 + g2[name] + l2
    for step, direction in enumerate((b1, b2)):
      np.testing.assert_allclose(
          named_leaves(got[step])[name], -LR * table_scale(name) * direction,
          rtol=1e-5, atol=1e-7, err_msg=f"{name} step {step + 1}")


def test_adamw_decoupled_decay_is_scaled_with_the_lr(deep):
  """BEiT's param groups scale AdamW's lr, decay included: the first step
  is -lr x scale x (g / (|g| + eps) + wd p) (kernels decayed)."""
  wd = 0.1
  params, grads, _ = deep[True]
  (updates,) = updates_for(params, [grads], name="adamw", weight_decay=wd,
                           layer_decay=DECAY)
  updates = named_leaves(unscan_params(updates))
  p, g, _ = (named_leaves(t) for t in deep[False])
  for name, u in updates.items():
    decay = wd * p[name] if name.endswith("/kernel") else 0.0
    want = -LR * table_scale(name) * (
        g[name] / (np.abs(g[name]) + 1e-8) + decay)
    np.testing.assert_allclose(u, want, rtol=1e-4, atol=1e-7, err_msg=name)


@pytest.mark.slow
def test_scanned_and_loop_models_take_the_same_decayed_step(deep):
  """One SGD step on a tiny depth-3 TimeSformer's own gradients, scan on
  and off, the same weights: with layer_decay 0.5 the two layouts' updates
  agree block by block, and each leaf's is its table scale times the
  undecayed update."""
  video = jnp.asarray(np.random.default_rng(4).normal(
      size=(2, 2, 8, 8, 3)).astype(np.float32))
  results = {}
  for scan in (False, True):
    model = create({"video": 5, "image": 3}, scan_layers=scan, **DEEP)
    txs = {key: optimizer.make(decay_config(layer_decay=d), 10)[0]
           for key, d in (("off", None), ("decay", DECAY))}

    @jax.jit
    def updates(params, model=model, txs=txs):
      def loss(p):
        logits = model.apply({"params": p}, video)
        return (jnp.sum(jax.nn.log_softmax(logits["video"])[:, 1]) +
                jnp.sum(logits["image"] ** 2))
      grads = jax.grad(loss)(params)
      return {key: tx.update(grads, tx.init(params), params)[0]
              for key, tx in txs.items()}
    for key, u in jax.device_get(updates(deep[scan][0])).items():
      results[scan, key] = named_leaves(unscan_params(u) if scan else u)
  for name, u in results[False, "decay"].items():
    np.testing.assert_allclose(results[True, "decay"][name], u, rtol=1e-5,
                               atol=1e-8, err_msg=name)
    np.testing.assert_allclose(u, table_scale(name) * results[False, "off"][
        name], rtol=1e-6, atol=1e-9, err_msg=name)
    assert np.any(u != 0), name  # no vacuous leaf


@pytest.fixture(scope="module")
def plain_updates(deep):
  """Two momentum-SGD steps without the field: today's optimizer."""
  params, g1, g2 = deep[True]
  return updates_for(params, [g1, g2])


@pytest.mark.parametrize("off", [dict(layer_decay=None),
                                 dict(layer_decay=1.0)])
def test_layer_decay_off_leaves_the_optimizer_as_it_was(deep, plain_updates,
                                                        off):
  """None (the default) or 1: bit-identical updates and the same optimizer
  state as a config without the field."""
  params, g1, g2 = deep[True]
  got = updates_for(params, [g1, g2], **off)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(plain_updates),
                  strict=True):
    np.testing.assert_array_equal(x, y)
  tx_off, _ = optimizer.make(decay_config(**off), steps_per_epoch=10)
  tx_plain, _ = optimizer.make(decay_config(), steps_per_epoch=10)
  assert (jax.tree.structure(tx_off.init(params)) ==
          jax.tree.structure(tx_plain.init(params)))


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_layer_decay_out_of_range_is_refused(bad):
  with pytest.raises(ValueError, match=r"config\.optimizer\.layer_decay must "
                     r"be in \(0, 1\]"):
    optimizer.make(decay_config(layer_decay=bad), steps_per_epoch=10)


def test_layer_decay_refuses_a_parameter_it_cannot_place(deep):
  params = dict(deep[False][0], adapter={"w": np.ones(2)})
  with pytest.raises(ValueError, match="no layer for parameter 'adapter'"):
    optimizer.layer_scales(params, DECAY)


def test_linear_probe_with_layer_decay_moves_only_the_heads(deep):
  """trainable="heads" with layer_decay: the backbone's updates are zero,
  the heads' -lr x 1 x g (momentum SGD's first step)."""
  params, grads, _ = deep[True]
  (got,) = updates_for(params, [grads], layer_decay=DECAY, trainable="heads")
  g = named_leaves(grads)
  for name, u in named_leaves(got).items():
    want = -LR * g[name] if name.startswith("heads/") else 0.0 * g[name]
    np.testing.assert_allclose(u, want, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", PAPER_SCHEDULE_CONFIGS +
                         ["timesformer_b16_k400.py"])
def test_paper_configs_have_no_layer_decay(name):
  assert load(name).optimizer.layer_decay is None
