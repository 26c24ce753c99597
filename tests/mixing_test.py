"""Label smoothing, mixup and cutmix per dataset (cover_jax/training/mixing.py)
and in the training step: against numpy computations, pixel counts and the
step's integer-label loss with everything off."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import args
from cover_jax.training import mixing
from cover_jax.training import train
from cover_jax.training.event_writer import read_scalars
from tests import tiny_runs

MEAN, STD = tiny_runs.MEAN, tiny_runs.STD
# Two datasets in one part, mixed in the batch's rows, and one alone.
IDS = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 2, 0])
HEIGHT, WIDTH = 12, 20  # not square: rows and columns are told apart


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_one_hot_is_timms(smoothing):
  k = 7
  labels = jnp.array([0, 3, 6])
  targets = np.asarray(mixing.smoothed_one_hot(labels, k, smoothing))
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  for row, label in zip(targets, [0, 3, 6]):
    assert row[label] == pytest.approx(1 - smoothing + smoothing / k)
    np.testing.assert_allclose(np.delete(row, label), smoothing / k,
                               rtol=1e-6)


def test_smoothed_cross_entropy_is_the_formula():
  """-((1 - s) log p_y + s/K sum_k log p_k), in float64 numpy."""
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (5, 6)).astype(np.float32)
  labels = np.array([0, 5, 2, 2, 1])
  s, k = 0.2, 6
  got = jax.jit(lambda x, y: mixing.soft_cross_entropy(
      x, mixing.smoothed_one_hot(y, k, s)))(logits, labels)
  x = logits.astype(np.float64)
  log_p = x - x.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  want = -((1 - s) * log_p[np.arange(5), labels] + s / k * log_p.sum(-1))
  np.testing.assert_allclose(got, want, rtol=1e-5)


draw = jax.jit(mixing.draw, static_argnums=(2, 3, 4))


def mixed_of(seed, options, ids=IDS):
  return jax.device_get(draw(jax.random.PRNGKey(seed), jnp.asarray(ids),
                             tuple(options), HEIGHT, WIDTH))


@pytest.mark.parametrize("seed", range(8))
def test_partners_are_of_the_same_dataset_and_a_permutation(seed):
  partner = np.asarray(jax.jit(mixing.partners)(jax.random.PRNGKey(seed),
                                                jnp.asarray(IDS)))
  np.testing.assert_array_equal(IDS[partner], IDS)  # never another dataset
  assert sorted(partner) == list(range(len(IDS)))  # each pasted into one
  alone = IDS == 2
  np.testing.assert_array_equal(partner[alone], np.flatnonzero(alone))
  assert np.all(partner[~alone] != np.flatnonzero(~alone))  # no self-pairs


def test_pairing_changes_with_the_key():
  pairings = {tuple(np.asarray(mixing.partners(jax.random.PRNGKey(s),
                                               jnp.asarray(IDS))))
              for s in range(6)}
  assert len(pairings) > 1


@pytest.mark.parametrize("seed", range(6))
def test_mixed_targets_sum_to_one_within_their_own_dataset(seed):
  """Datasets 0 (3 classes) and 1 (5 classes) in one part, both mixing:
  each example's target is lam smooth(y) + (1 - lam) smooth(y[partner])
  with its partner of its own dataset, and sums to one; the dataset that
  does not mix keeps its own smoothed label."""
  s = 0.1
  options = [mixing.Options(label_smoothing=s, mixup_alpha=0.8,
                            cutmix_alpha=1.0),
             mixing.Options(label_smoothing=s, mixup_alpha=0.4),
             mixing.OFF]
  classes = [3, 5, 4]
  labels = np.array([2, 4, 3, 0, 1, 0, 2, 1, 2, 1, 3, 0])
  mixed = mixed_of(seed, options)
  assert np.all(IDS[mixed.partner] == IDS)
  for d, k in enumerate(classes):
    rows = np.flatnonzero(IDS == d)
    safe = np.where(IDS == d, labels, 0)
    got = np.asarray(mixing.targets(jnp.asarray(safe), k, s if d < 2 else 0,
                                    mixed))[rows]
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    own = np.eye(k)[labels[rows]] * (1 - s) + s / k if d < 2 else \
        np.eye(k)[labels[rows]]
    other = np.eye(k)[labels[mixed.partner[rows]]] * (1 - s) + s / k
    lam = mixed.lam[rows][:, None]
    np.testing.assert_allclose(got, lam * own + (1 - lam) * other,
                               rtol=1e-5, atol=1e-7)
    assert len(set(mixed.lam[rows])) == 1  # timm's batch mode per dataset
  assert np.all(mixed.lam[IDS == 2] == 1.0)


def constant_frames(frames_per_clip=3):
  """Example i is the constant i + 1 on every pixel of every frame."""
  values = np.arange(1, len(IDS) + 1, dtype=np.float32)
  return np.broadcast_to(values[:, None, None, None, None],
                         (len(IDS), frames_per_clip, HEIGHT, WIDTH, 3)).copy()


@pytest.mark.parametrize("seed", range(10))
def test_cutmix_weight_is_the_pasted_area_on_every_frame(seed):
  """Paste constant clips into each other and count the pixels that
  changed: 1 - lam of every frame, the same pixels on every frame, a
  rectangle."""
  options = (mixing.Options(cutmix_alpha=1.0),) * 2 + (mixing.OFF,)
  mixed = mixed_of(seed, options)
  frames = constant_frames()
  out = np.asarray(jax.jit(mixing.apply)(mixed, frames,
                                         frames[mixed.partner]))
  for i in range(len(IDS)):
    pasted = out[i, ..., 0] != frames[i, 0, 0, 0, 0]  # [T, H, W]
    for t in range(1, pasted.shape[0]):
      np.testing.assert_array_equal(pasted[t], pasted[0])
    np.testing.assert_array_equal(out[i][pasted],
                                  frames[mixed.partner[i], 0, 0, 0, 0])
    fraction = pasted[0].sum() / (HEIGHT * WIDTH)
    assert mixed.lam[i] == pytest.approx(1 - fraction, abs=1e-6), i
    rows, cols = np.flatnonzero(pasted[0].any(1)), np.flatnonzero(
        pasted[0].any(0))
    if len(rows):
      assert pasted[0].sum() == len(rows) * len(cols) == (
          (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))


def test_cutmix_boxes_vary_and_get_clipped():
  """Over keys: boxes of several sizes, some cut by the frame's edge (the
  weight is of the clipped box: timm's correct_lam)."""
  lams, clipped = set(), 0
  for seed in range(30):
    box, lam = jax.jit(mixing.cutmix_box, static_argnums=(2, 3))(
        jax.random.PRNGKey(seed), 0.5, HEIGHT, WIDTH)
    top, bottom, left, right = np.asarray(box)
    assert 0 <= top <= bottom <= HEIGHT and 0 <= left <= right <= WIDTH
    assert float(lam) == pytest.approx(
        1 - (bottom - top) * (right - left) / (HEIGHT * WIDTH))
    lams.add(round(float(lam), 6))
    clipped += float(lam) > 0.5 + 1e-6
  # sqrt(0.5) of 12 x 20: 8 x 14 unclipped, 1 - 112/240 < 0.5.
  assert clipped and len(lams) > 3


@pytest.mark.parametrize("seed", range(4))
def test_mixup_frames_are_the_weighted_sum_with_the_partner(seed):
  options = (mixing.Options(mixup_alpha=0.4),) * 2 + (mixing.OFF,)
  mixed = mixed_of(seed, options)
  frames = np.random.default_rng(seed).normal(
      size=(len(IDS), 2, HEIGHT, WIDTH, 3)).astype(np.float32)
  out = np.asarray(jax.jit(mixing.apply)(mixed, frames,
                                         frames[mixed.partner]))
  lam = mixed.lam[:, None, None, None, None]
  np.testing.assert_allclose(out, lam * frames + (1 - lam) * frames[
      mixed.partner], rtol=1e-5, atol=1e-6)
  assert np.all(mixed.lam[IDS < 2] < 1)
  np.testing.assert_array_equal(out[IDS == 2], frames[IDS == 2])


@pytest.mark.slow  # four programs with Beta draws to compile
def test_mix_prob_and_switch_prob():
  """mix_prob 0: nothing changes; switch_prob 1 / 0: always cutmix /
  mixup; mix_prob 0.5 mixes about half the draws."""
  frames = constant_frames(1)
  never = mixed_of(0, [mixing.Options(mixup_alpha=1.0, mix_prob=0.0)] * 3)
  assert np.all(never.lam == 1.0)
  np.testing.assert_array_equal(
      mixing.apply(never, frames, frames[never.partner]), frames)
  for switch, cut in ((1.0, True), (0.0, False)):
    m = mixed_of(1, [mixing.Options(mixup_alpha=1.0, cutmix_alpha=1.0,
                                    switch_prob=switch)] * 3)
    assert np.all(m.cut == cut)
  half = [mixed_of(s, [mixing.Options(mixup_alpha=1.0, mix_prob=0.5)] * 3
                   ).lam[0] < 1 for s in range(60)]
  assert 15 <= sum(half) <= 45


def test_dominant_label_is_the_larger_share():
  labels = jnp.array([0, 1, 2, 3])
  mixed = mixing.Mixed(partner=jnp.array([1, 0, 3, 2]),
                       lam=jnp.array([0.7, 0.3, 0.5, 1.0]),
                       cut=jnp.zeros(4, bool), box=jnp.zeros((4, 4), int))
  np.testing.assert_array_equal(mixing.dominant_labels(labels, mixed),
                                [0, 0, 2, 3])


def test_options_from_entries_and_errors():
  assert mixing.from_entry("a", {}) == mixing.OFF
  assert mixing.from_entry("a", {"mixup_alpha": 0.8}).mixes
  for field, value in (("label_smoothing", 1.0), ("mixup_alpha", -1),
                       ("mix_prob", 1.5), ("switch_prob", -0.1)):
    with pytest.raises(ValueError, match=f"config.datasets.a.{field}"):
      mixing.from_entry("a", {field: value})


@pytest.mark.parametrize("name", [
    "cover_mini.py", "cover_b16_i21k.py:k700", "cover_l16_jft.py",
    "cover_l16_i21k.py", "timesformer_b16_k400.py", "transfer_finetune.py",
    "linear_probe.py:digits_motion", "vit_mini.py"])
def test_every_config_trains_with_the_options_off(name):
  config = args.load(f"{args.CONFIG_DIR}/{name}", lock=True)
  for dataset, entry in config.datasets.items():
    assert set(mixing.FIELDS) <= set(entry)
    assert mixing.from_entry(dataset, entry) == mixing.OFF


def test_the_command_line_sets_them():
  argv = ["main.py", f"--config={args.CONFIG_DIR}/cover_mini.py",
          "--config.datasets.digits_motion.mixup_alpha=0.8",
          "--config.datasets.digits_image.label_smoothing=0.1"]
  datasets = tiny_runs.command_line_config(argv).datasets
  assert mixing.from_entry("m", datasets.digits_motion) == mixing.Options(
      mixup_alpha=0.8)
  assert mixing.from_entry("i", datasets.digits_image).label_smoothing == 0.1


# ----------------------------------------------------------------------------
# The training step, with a linear model: milliseconds to compile.
# ----------------------------------------------------------------------------

CLASSES = {"a": 3, "b": 5, "c": 4}
TX = optax.sgd(0.5)


class LinearModel:
  """Per head: the clip's mean pixel (3 channels) times a [3, K] kernel,
  plus the mean of the pixels' squares (mixing them is not linear)."""

  def apply(self, variables, frames, train, rngs):
    del train, rngs
    p = variables["params"]
    mean = frames.mean(axis=(1, 2, 3))
    square = (frames ** 2).mean(axis=(1, 2, 3))
    return {n: mean @ p[n]["w"] + square @ p[n]["v"] for n in CLASSES}


def step_inputs():
  rng = np.random.default_rng(0)
  params = {n: {"w": jnp.asarray(rng.normal(size=(3, k)), jnp.float32),
                "v": jnp.asarray(rng.normal(size=(3, k)), jnp.float32)}
            for n, k in CLASSES.items()}
  tx = TX
  state = {"step": jnp.asarray(3, jnp.int32), "params": params,
           "opt_state": tx.init(params), "rng": jax.random.PRNGKey(7)}
  video_ids = np.array([1, 0, 0, 0, 1, 0, 1, 0])
  batch = {
      "video": {"frames": rng.integers(0, 256, (8, 2, 8, 8, 3), np.uint8),
                "label": np.array([4, 2, 0, 1, 3, 1, 0, 0]),
                "dataset": video_ids},
      "image": {"frames": rng.integers(0, 256, (4, 1, 8, 8, 3), np.uint8),
                "label": np.array([3, 1, 0, 2]), "dataset": np.full(4, 2)}}
  return tx, state, jax.tree.map(jnp.asarray, batch)


def heads_with(**options):
  parts = {"a": "video", "b": "video", "c": "image"}
  weights = {"a": 1.0, "b": 0.5, "c": 0.5}
  return [train.Head(n, parts[n], weights[n],
                     mixing.Options(**options.get(n, {}))) for n in CLASSES]


@functools.lru_cache
def jitted_step(heads, accumulation_steps):  # one compile per test setup
  return jax.jit(train.make_train_step(
      LinearModel(), TX, lambda s: 0.5, list(heads), mean=MEAN, std=STD,
      accumulation_steps=accumulation_steps))


def run_step(heads, state, batch, accumulation_steps=1):
  return jax.device_get(jitted_step(tuple(heads), accumulation_steps)(
      state, batch))


def test_with_every_option_off_the_step_is_the_integer_label_step():
  """The loss, each dataset's sums and the update against the step as it
  was before mixing (integer-label cross-entropy), written out here."""
  tx, state, batch = step_inputs()
  heads = heads_with()

  def old_loss(params):  # the pre-mixing loss_fn, written out
    sums = {}
    for part in sorted(batch):
      frames = train.pixels.normalize(batch[part]["frames"], MEAN, STD)
      logits = LinearModel().apply({"params": params}, frames, True, None)
      for index, head in enumerate(heads):
        if head.part != part:
          continue
        ids, labels = batch[part]["dataset"], batch[part]["label"]
        mask = (ids == index).astype(jnp.float32)
        safe = jnp.where(mask > 0, labels, 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits[head.name], safe)
        sums[head.name] = {"loss_sum": jnp.sum(ce * mask)}
    counts = {h.name: jnp.sum(batch[h.part]["dataset"] == i).astype(
        jnp.float32) for i, h in enumerate(heads)}
    return sum(h.loss_weight * sums[h.name]["loss_sum"] /
               jnp.maximum(counts[h.name], 1.0) for h in heads), sums

  @jax.jit
  def old_step(params):
    (loss, sums), grads = jax.value_and_grad(old_loss, has_aux=True)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return loss, sums, optax.apply_updates(params, updates)

  loss, sums, params = jax.device_get(old_step(state["params"]))
  new_state, metrics = run_step(heads, state, batch)
  # To float32 rounding: XLA fuses the step's larger program (gradient
  # norm, metrics) in its own order.
  assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
  for name in CLASSES:
    assert metrics["datasets"][name]["loss_sum"] == pytest.approx(
        sums[name]["loss_sum"], rel=1e-6)
  for want, got in zip(jax.tree.leaves(params),
                       jax.tree.leaves(new_state["params"])):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_label_smoothing_in_the_step_is_the_formula():
  tx, state, batch = step_inputs()
  s = 0.2
  _, metrics = run_step(heads_with(a={"label_smoothing": s}), state, batch)
  p = jax.device_get(state["params"])
  frames = (np.asarray(batch["video"]["frames"]) / 255.0 - MEAN) / STD
  logits = (frames.mean((1, 2, 3)) @ p["a"]["w"] +
            (frames ** 2).mean((1, 2, 3)) @ p["a"]["v"])
  rows = np.flatnonzero(np.asarray(batch["video"]["dataset"]) == 0)
  log_p = logits[rows] - np.log(np.exp(logits[rows]).sum(-1, keepdims=True))
  labels = np.asarray(batch["video"]["label"])[rows]
  want = -((1 - s) * log_p[np.arange(len(rows)), labels] +
           s / 3 * log_p.sum(-1)).sum()
  assert float(metrics["datasets"]["a"]["loss_sum"]) == pytest.approx(
      want, rel=1e-4)


MIXING_A = heads_with(a={"mixup_alpha": 1.0, "cutmix_alpha": 1.0})


def test_mixing_one_dataset_leaves_the_others_loss_bit_for_bit():
  """a mixes (video part); b (same part) and c (image part) are as
  without mixing: no b example is mixed with an a example."""
  tx, state, batch = step_inputs()
  _, plain = run_step(heads_with(), state, batch)
  _, mixed = run_step(MIXING_A, state, batch)
  for name in ("b", "c"):
    assert mixed["datasets"][name] == plain["datasets"][name]
  assert mixed["datasets"]["a"]["loss_sum"] != plain["datasets"]["a"][
      "loss_sum"]


@pytest.mark.parametrize("accumulation_steps", [
    1, pytest.param(2, marks=pytest.mark.slow)])  # another compile
def test_mixing_is_a_function_of_the_seed_and_step(accumulation_steps):
  tx, state, batch = step_inputs()
  heads = MIXING_A if accumulation_steps == 1 else heads_with(
      a={"mixup_alpha": 1.0}, b={"cutmix_alpha": 1.0},
      c={"mixup_alpha": 0.5, "label_smoothing": 0.1})

  def loss(**changes):
    _, m = run_step(heads, {**state, **changes}, batch, accumulation_steps)
    assert np.isfinite(m["loss"])
    return m["loss"]
  first = loss()
  assert loss() == first
  assert loss(step=jnp.asarray(4, jnp.int32)) != first
  assert loss(rng=jax.random.PRNGKey(8)) != first


def test_mini_run_with_mixing_trains(digits_dir, tmp_path, monkeypatch):
  """tiny_config with mixup, cutmix and label smoothing on its three
  datasets: a few steps, finite losses logged."""
  config = tiny_runs.tiny_config(digits_dir, **{
      "num_train_steps": 4, "datasets.digits_motion.mixup_alpha": 0.8,
      "datasets.digits_appearance.cutmix_alpha": 1.0,
      "datasets.digits_appearance.mixup_alpha": 0.8,
      "datasets.digits_image.label_smoothing": 0.1})
  monkeypatch.setattr(train.evaluate, "evaluate", lambda *a, **k: {})
  train.train_and_evaluate(config, str(tmp_path))
  losses = read_scalars(str(tmp_path), "train/loss")
  assert sorted(losses) == [2, 4]
  assert all(math.isfinite(v) for v in losses.values())
  for name in config.datasets:
    assert read_scalars(str(tmp_path), f"train/{name}/top1")
