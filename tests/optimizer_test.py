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

from cover_jax.models import create, unboxed
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
