"""The training loop: smoke run, restore onto another device count, loss
weighting, non-finite losses, config errors. (Signals:
tests/stop_request_test.py; SIGKILL: tests/stages_test.py.)"""

import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cover_jax.models import create, init_params
from cover_jax.training import checkpointing
from cover_jax.training import train
from cover_jax.training.event_writer import read_scalars
from tests import tiny_runs


@pytest.mark.slow
def test_smoke_run_trains_checkpoints_and_evaluates(digits_dir, tmp_path,
                                                    monkeypatch):
  config = tiny_runs.tiny_config(digits_dir, num_train_steps=2)
  # The training pipeline is closed before the final evaluation starts.
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  closes, closed_at_evaluation = [], []
  for_train, real_evaluate = train.inp.make.for_train, evaluate.evaluate

  def recorded_for_train(*args, **kwargs):
    it = for_train(*args, **kwargs)
    close = it.close
    it.close = lambda: closes.append(1) or close()
    return it

  def recorded_evaluate(*args, **kwargs):
    closed_at_evaluation.append(len(closes))
    return real_evaluate(*args, **kwargs)

  monkeypatch.setattr(train.inp.make, "for_train", recorded_for_train)
  monkeypatch.setattr(evaluate, "evaluate", recorded_evaluate)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert closed_at_evaluation == [1], closed_at_evaluation
  assert set(results) >= {"digits_image", "digits_appearance",
                          "digits_motion"}
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints")
                 if d.isdigit())
  assert steps[-1] == 2
  params = tiny_runs.final_params(str(tmp_path))
  assert params["heads"]["digits_motion"]["kernel"].shape == (16, 8)
  # Trained: every head and the backbone moved from the seed's init.
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  before = jax.device_get(init_params(train.model_from_config(config),
                                            init_rng))
  assert (jax.tree_util.tree_structure(params) ==
          jax.tree_util.tree_structure(before))
  for name in ("digits_image", "digits_appearance", "digits_motion"):
    assert not np.allclose(params["heads"][name]["kernel"],
                           before["heads"][name]["kernel"]), name
  # All but the temporal branch before temporal_fc: that starts at zero, so
  # nothing before it has a gradient until it has moved (step 1's warm-up
  # learning rate is 0: one real update).
  unchanged = {jax.tree_util.keystr(path) for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(before))
               if np.array_equal(a, b)}
  assert all(k.startswith(("['encoderblock_0']['temporal_attention']",
                           "['encoderblock_0']['temporal_norm']"))
             for k in unchanged), unchanged
  # Evaluated: every test set whole (359 examples), real top-1s, as the
  # eval JSON of step 2 records them.
  for name, metrics in results.items():
    assert metrics["examples"] == 359, name
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0, name
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0, name
  written = evaluate.read_json(str(tmp_path))
  assert written == {"step": 2, "results": results}
  # TensorBoard, read back from the event files: one training summary of
  # steps 1-2 (log_every_steps=2), and the evaluation, at step 2.
  names = ("digits_image", "digits_appearance", "digits_motion")
  logged = {tag: read_scalars(str(tmp_path), tag) for tag in (
      ["train/loss", "train/grad_norm", "train/learning_rate",
       "train/skipped_steps", "train/steps_per_sec",
       "train/input_wait_fraction"] +
      [f"train/{n}/{m}" for n in names for m in ("loss", "top1")] +
      [f"eval/{n}/{m}" for n in names for m in ("top1", "top5", "loss")])}
  assert all(list(values) == [2] for values in logged.values()), logged
  at_2 = {tag: values[2] for tag, values in logged.items()}
  # The rate of the summary's last step (its index is 1), warm-up not over.
  examples = sum(s.num_examples for s in train.inp.make.sources(
      config, "train_split"))
  warmup_steps = round(config.optimizer.warmup_epochs *
                       math.ceil(examples / config.batch_size))
  assert at_2["train/learning_rate"] == pytest.approx(
      config.optimizer.learning_rates[0] / warmup_steps)
  assert at_2["train/learning_rate"] > 0 and at_2["train/skipped_steps"] == 0
  assert at_2["train/steps_per_sec"] > 0 and at_2["train/grad_norm"] > 0
  assert 0 < at_2["train/input_wait_fraction"] < 1
  for name, classes in zip(names, (10, 10, 8)):
    # Near chance after one small step: cross-entropy about log(classes).
    assert at_2[f"train/{name}/loss"] == pytest.approx(np.log(classes),
                                                       rel=0.2), name
    assert 0 <= at_2[f"train/{name}/top1"] <= 1
    for metric in ("top1", "top5", "loss"):
      assert at_2[f"eval/{name}/{metric}"] == pytest.approx(
          results[name][metric], rel=1e-6)
  # The loss is the weighted sum of the datasets' (weights 0.5, 1, 1).
  assert at_2["train/loss"] == pytest.approx(
      0.5 * at_2["train/digits_image/loss"] +
      at_2["train/digits_appearance/loss"] + at_2["train/digits_motion/loss"],
      rel=0.02)
  # Started again: nothing left to do; the saved evaluation comes back
  # without a restore, an input pipeline or a step being built, and the
  # same checkpoint is kept.
  def refuse(*args, **kwargs):
    raise AssertionError("a finished run restored or built something")

  for module, name in ((checkpointing, "restore"), (train, "step_from_config"),
                       (train.inp.make, "for_train")):
    monkeypatch.setattr(module, name, refuse)
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again == results
  tiny_runs.assert_same_params(tiny_runs.final_params(str(tmp_path)), params)


def record_evaluations(monkeypatch) -> list:
  """evaluate.evaluate replaced by a stand-in (fast) that records (step,
  reverse, params on the host) of each call."""
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  calls = []

  def record(model, params, config, *, step, reverse=False, **kwargs):
    del model, config, kwargs
    calls.append((step, reverse, jax.device_get(params)))
    return {"digits_motion" + ("/reversed" if reverse else ""): {
        "top1": 0.0, "top5": 0.0, "loss": 0.0, "examples": 1}}

  monkeypatch.setattr(evaluate, "evaluate", record)
  return calls


@pytest.mark.slow
def test_linear_probe_moves_only_heads_evaluated_on_current_params(
    digits_dir, tmp_path, monkeypatch):
  """One run of 4 steps, optimizer.trainable="heads", eval_every_steps=2,
  eval_reverse. Linear probe: the backbone is the seed's init, every head
  (video and image) trained. Evaluation during training: steps 2 and 4
  evaluated, each with and without reversed frames, once, on the parameters
  of that step (as checkpointed then; they differ between the two)."""
  calls = record_evaluations(monkeypatch)
  config = tiny_runs.tiny_config(digits_dir, num_train_steps=4,
                                 eval_every_steps=2, eval_reverse=True,
                                 **{"optimizer.trainable": "heads"})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert [(s, r) for s, r, _ in calls] == [(2, False), (2, True), (4, False),
                                           (4, True)]
  assert set(results) == {"digits_motion", "digits_motion/reversed"}
  for step, _, params in calls:
    tiny_runs.assert_same_params(params, checkpointing.read_params(
        os.path.join(tmp_path, "checkpoints", str(step))))
  assert not np.array_equal(calls[0][2]["heads"]["digits_motion"]["kernel"],
                            calls[2][2]["heads"]["digits_motion"]["kernel"])
  after = tiny_runs.final_params(str(tmp_path))
  model = train.model_from_config(config)
  # Same init (same seed and split): backbone untouched, heads trained.
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  before = jax.device_get(init_params(model, init_rng))
  tiny_runs.assert_same_params(
      {k: v for k, v in after.items() if k != "heads"},
      {k: v for k, v in before.items() if k != "heads"})
  assert set(after["heads"]) == {"digits_image", "digits_appearance",
                                 "digits_motion"}
  for name, head in after["heads"].items():
    for leaf in ("kernel", "bias"):
      assert not np.array_equal(head[leaf], before["heads"][name][leaf]), (
          name, leaf)


def test_restore_onto_fewer_devices(digits_dir, tiny_run):
  """The 8-device (data=8) run tiny_run (tests/conftest.py) onto 4."""
  config = tiny_runs.tiny_config(digits_dir)
  saved = tiny_runs.final_params(tiny_run)
  model = train.model_from_config(config)
  tx, _ = train.optimizer.make(config, 10)
  mesh = train.sharding.make_mesh(data=2, fsdp=2,
                                  devices=jax.devices()[:4])
  _, abstract, _ = train.state_layout(model, tx, mesh)
  mngr = checkpointing.manager(os.path.join(tiny_run, "checkpoints"))
  state, data = checkpointing.restore(mngr, abstract)
  kernel = state["params"]["encoderblock_0"]["mlp"]["Dense_0"]["kernel"]
  assert len(kernel.sharding.device_set) == 4
  tiny_runs.assert_same_params(jax.device_get(state["params"]), saved)
  assert data["step"] == 5 and data["process_count"] == 1


@pytest.mark.slow
def test_loss_weights_each_dataset_by_its_own_examples():
  rng = np.random.default_rng(0)
  heads = [train.Head("a", "video", 1.0), train.Head("b", "video", 0.5),
           train.Head("c", "image", 0.25)]
  logits = {"a": rng.normal(size=(6, 3)), "b": rng.normal(size=(6, 5)),
            "c": rng.normal(size=(6, 2))}
  labels = np.array([0, 4, 2, 1, 3, 0])
  ids = np.array([0, 1, 0, 1, 1, 0])
  counts = {"a": 3.0, "b": 3.0}

  @jax.jit  # one compile, not op-by-op dispatch
  def sums_and_loss(logits, labels, ids):
    sums = train.dataset_sums(logits, labels, ids, heads, "video")
    return sums, train.weighted_loss(sums, counts, heads[:2])
  sums, loss = sums_and_loss(
      {k: jnp.asarray(v) for k, v in logits.items()}, jnp.asarray(labels),
      jnp.asarray(ids))
  assert set(sums) == {"a", "b"}

  def ce(z, y):
    z = z - z.max()
    return np.log(np.exp(z).sum()) - z[y]
  expected = (1.0 * np.mean([ce(logits["a"][i], labels[i]) for i in (0, 2, 5)])
              + 0.5 * np.mean([ce(logits["b"][i], labels[i])
                               for i in (1, 3, 4)]))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  correct_a = sum(np.argmax(logits["a"][i]) == labels[i] for i in (0, 2, 5))
  assert float(sums["a"]["correct"]) == correct_a


@pytest.mark.parametrize("reduction", ["weighted_sum", "weighted_average"])
def test_loss_reduction_is_the_papers_sum_or_appendix_a_average(reduction):
  """Sum: w_a CE_a + w_b CE_b (paper eq. 4); average: the same over the
  weights of the datasets in the batch (appendix A); c has no example."""
  heads = [train.Head("a", "video", 1.0), train.Head("b", "image", 0.5),
           train.Head("c", "video", 0.25)]
  sums = {"a": {"loss_sum": jnp.float32(6.0)},
          "b": {"loss_sum": jnp.float32(3.0)},
          "c": {"loss_sum": jnp.float32(0.0)}}
  counts = {"a": 3.0, "b": 2.0, "c": 0.0}
  loss = train.weighted_loss(sums, counts, heads, reduction)
  weighted_sum = 1.0 * 6.0 / 3 + 0.5 * 3.0 / 2
  expected = {"weighted_sum": weighted_sum,
              "weighted_average": weighted_sum / (1.0 + 0.5)}[reduction]
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_unknown_loss_reduction_is_refused():
  with pytest.raises(ValueError, match="loss_reduction must be one of"):
    train.make_train_step(None, None, None, [], mean=tiny_runs.MEAN,
                          std=tiny_runs.STD, loss_reduction="mean")


def nonfinite_config(digits_dir, **overrides):
  """Learning rate 1e30 from step 1: step 1 is finite, a later one is not.
  A checkpoint every step, written before the next step runs."""
  return tiny_runs.tiny_config(digits_dir, num_train_steps=4,
                               **{"optimizer.learning_rates": (1e30, 1e30),
                        "optimizer.grad_clip_norm": None,
                        "optimizer.warmup_epochs": 0.0,
                        "checkpoint.every_steps": 1, "checkpoint.keep": 10,
                        "checkpoint.async_save": False, **overrides})



@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_dataset(digits_dir, tmp_path,
                                                     monkeypatch):
  """Step 3's digits_motion rows labelled 99, beyond its 8 classes: a NaN
  cross-entropy on that dataset only, from the tiny config's own step (no
  step of its own to compile, unlike a diverging learning rate). The run
  stops naming step 3 and digits_motion, and keeps no checkpoint at or
  after it: with logs only at the end, each save must itself check the
  steps since the last log."""
  config = tiny_runs.tiny_config(
      digits_dir, num_train_steps=4, log_every_steps=100,
      **{"checkpoint.every_steps": 1, "checkpoint.keep": 10,
         "checkpoint.async_save": False})
  motion = [s.name for s in train.inp.make.sources(
      config, "train_split")].index("digits_motion")  # its "dataset" id
  corrupted = []

  class BadLabels:
    def __init__(self, it):
      self.it, self.batches = it, 0

    def __next__(self):
      batch = next(self.it)
      self.batches += 1
      if self.batches == 3:
        video = batch["video"]
        rows = np.asarray(video["dataset"]) == motion
        corrupted.append(int(rows.sum()))
        batch = {**batch, "video": {**video, "label": np.where(
            rows, 99, video["label"]).astype(video["label"].dtype)}}
      return batch

    def __getattr__(self, name):  # state(), close(), corrupt_skipped()
      return getattr(self.it, name)

  for_train = train.inp.make.for_train
  monkeypatch.setattr(train.inp.make, "for_train",
                      lambda *args, **kwargs: BadLabels(for_train(*args,
                                                                  **kwargs)))
  workdir = str(tmp_path / "stop")
  with pytest.raises(train.NonFiniteLoss, match=r"Non-finite loss at step 3 "
                     r"\(dataset: digits_motion; .*config.nonfinite='skip'"):
    train.train_and_evaluate(config, workdir)
  assert len(corrupted) == 1 and corrupted[0] > 0
  assert tiny_runs.saved_steps(workdir) == [1, 2]


@pytest.mark.slow
def test_input_wait_fraction_is_the_time_spent_waiting_for_batches(
    digits_dir, tmp_path, monkeypatch, capsys):
  """An iterator slowed by 0.5 s per batch in the second of three log
  intervals (steps 3-4), the third lengthened by 1 s outside input: each
  interval's train/input_wait_fraction equals the time spent in next() and
  to_global, timed here, over the wall time between the log points, and the
  slowed interval's is near 1."""
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
  delay = 0.5
  waits, logs = [], []  # (start, seconds) of each call; end of each summary

  def timed(fn, sleep_on=()):
    def call(*args, **kwargs):
      start = time.perf_counter()
      if len(waits) // 2 + 1 in sleep_on:  # the batch of that step
        time.sleep(delay)
      out = fn(*args, **kwargs)
      waits.append((start, time.perf_counter() - start))
      return out
    return call

  class Slowed:
    def __init__(self, it):
      self.it = it
      self.next = timed(lambda: next(it), sleep_on=(3, 4))

    def __next__(self):
      return self.next()

    def __getattr__(self, name):  # state(), close()
      return getattr(self.it, name)

  for_train, summarize = train.inp.make.for_train, train.summarize
  monkeypatch.setattr(train.inp.make, "for_train",
                      lambda *args, **kwargs: Slowed(for_train(*args,
                                                               **kwargs)))
  monkeypatch.setattr(train.inp, "to_global", timed(train.inp.to_global))

  def summarized(*args):
    if len(logs) == 2:  # the last interval: 1 s more of no input wait, so
      time.sleep(1.0)  # that a few ms of scheduling noise stay < 0.02
    out = summarize(*args)
    logs.append(time.perf_counter())
    return out
  monkeypatch.setattr(train, "summarize", summarized)
  config = tiny_runs.tiny_config(digits_dir, **{"checkpoint.every_steps": 100})
  workdir = str(tmp_path)
  # The loop's timer and the ones here differ by the threads that take the
  # GIL between them: switch threads every 0.1 ms, not 5.
  switch_interval = sys.getswitchinterval()
  sys.setswitchinterval(1e-4)
  try:
    train.train_and_evaluate(config, workdir)
  finally:
    sys.setswitchinterval(switch_interval)
  logged = read_scalars(workdir, "train/input_wait_fraction")
  assert sorted(logged) == [2, 4, 6] and len(logs) == 3 and len(waits) == 12
  for (begin, end), step in zip(zip(logs, logs[1:]), (4, 6)):
    waited = sum(seconds for start, seconds in waits if begin <= start < end)
    assert logged[step] == pytest.approx(waited / (end - begin), abs=0.02)
  assert 0.8 < logged[4] <= 1 and 0 <= logged[2] <= 1 and 0 <= logged[6] <= 1
  assert f"input wait {logged[4]:.0%}" in capsys.readouterr().out


@pytest.mark.slow
def test_non_finite_steps_are_skipped_and_counted(digits_dir, tmp_path,
                                                  monkeypatch):
  """nonfinite="skip": the run finishes and is evaluated once, at its end,
  on its last (finite) parameters (evaluation itself: the smoke test); a
  step is counted skipped in TensorBoard (logged every step) exactly when it
  left the parameters as they were, and step 1 (finite) is not."""
  calls = record_evaluations(monkeypatch)
  config = nonfinite_config(digits_dir, nonfinite="skip", eval_every_steps=0,
                            log_every_steps=1)
  workdir = str(tmp_path)
  results = train.train_and_evaluate(config, workdir)
  assert [(s, r) for s, r, _ in calls] == [(4, False)]
  assert set(results) == {"digits_motion"}
  assert tiny_runs.saved_steps(workdir) == [1, 2, 3, 4]
  tiny_runs.assert_same_params(calls[0][2], checkpointing.read_params(
      os.path.join(workdir, "checkpoints", "4")))
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  params = [jax.device_get(init_params(train.model_from_config(config),
                                             init_rng))]
  params += [checkpointing.read_params(os.path.join(workdir, "checkpoints",
                                                    str(s)))
             for s in (1, 2, 3, 4)]
  assert all(np.isfinite(x).all() for p in params for x in jax.tree.leaves(p))
  skipped = read_scalars(workdir, "train/skipped_steps")
  assert sorted(skipped) == [1, 2, 3, 4]
  assert skipped[1] == 0 and sum(skipped.values()) >= 1
  for s in (1, 2, 3, 4):
    unchanged = all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(params[s]), jax.tree.leaves(params[s - 1])))
    assert unchanged == (skipped[s] == 1), s


def test_config_errors_come_before_compute(digits_dir, tmp_path):
  config = tiny_runs.tiny_config(digits_dir)
  config.heads.digits_motion = 9
  with pytest.raises(ValueError, match=r"config.heads.digits_motion = 9, but "
                     r"dataset 'digits_motion' has 8 classes"):
    train.train_and_evaluate(config, str(tmp_path))
  config = tiny_runs.tiny_config(digits_dir, batch_size=12)
  with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
    train.train_and_evaluate(config, str(tmp_path))


def test_learning_rate_at_epoch_boundaries():
  schedule = train.optimizer.learning_rate_schedule(
      (5e-3, 5e-4, 5e-5), (10, 14), steps_per_epoch=100)
  assert float(schedule(999)) == pytest.approx(5e-3)
  assert float(schedule(1000)) == pytest.approx(5e-4)
  assert float(schedule(1399)) == pytest.approx(5e-4)
  assert float(schedule(1400)) == pytest.approx(5e-5)
  assert float(schedule(1999)) == pytest.approx(5e-5)
  warm = train.optimizer.learning_rate_schedule((0.1, 0.01), (2,), 10,
                                                warmup_epochs=0.5)
  assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.1)
  assert float(warm(20)) == pytest.approx(0.01)
  with pytest.raises(ValueError, match="3 learning rates need 2 boundaries"):
    train.optimizer.learning_rate_schedule((1, 2, 3), (1,), 10)


@pytest.mark.slow
def test_transfer_from_our_checkpoint_keeps_backbone_adds_fresh_head(
    digits_dir, tiny_run, tmp_path, monkeypatch):
  """linear_probe.py:digits_motion from tiny_run: the run's start (what
  checkpointing.init_params_from gave it, recorded) is tiny_run's backbone
  and the run's own fresh probe head; after 2 steps only that head moved;
  the probe head is evaluated on digits_motion's whole test set."""
  source_run = tiny_run  # tests/conftest.py: a co-training run
  trained = tiny_runs.final_params(source_run)
  from configs import args  # pylint: disable=import-outside-toplevel
  config = args.load(os.path.join(tiny_runs.ROOT, "configs",
                                  "linear_probe.py:digits_motion"))
  config.data_dir = digits_dir
  config.model.update(tiny_runs.TINY)
  config.update(dict(batch_size=16, eval_batch_size=128, eval_reverse=False,
                     num_train_steps=2, log_every_steps=2))
  config.init_from = source_run
  seen = []
  real = checkpointing.init_params_from

  def recorded(path, model, fresh, *args, **kwargs):
    fresh = jax.device_get(fresh)
    out = real(path, model, fresh, *args, **kwargs)
    seen.append((path, fresh, jax.device_get(out[0]), out[1]))
    return out
  monkeypatch.setattr(checkpointing, "init_params_from", recorded)
  results = train.train_and_evaluate(config, str(tmp_path / "probe"))
  [(path, fresh, params, note)] = seen
  assert path == source_run
  assert "new heads, initialised fresh: digits_motion_probe" in note
  tiny_runs.assert_same_params(
      {k: v for k, v in params.items() if k != "heads"},
      {k: v for k, v in trained.items() if k != "heads"})
  assert list(params["heads"]) == ["digits_motion_probe"]
  np.testing.assert_array_equal(
      params["heads"]["digits_motion_probe"]["kernel"],
      fresh["heads"]["digits_motion_probe"]["kernel"])
  assert results["digits_motion_probe"]["examples"] == 359
  probed = tiny_runs.final_params(str(tmp_path / "probe"))
  tiny_runs.assert_same_params(
      {k: v for k, v in probed.items() if k != "heads"},
      {k: v for k, v in trained.items() if k != "heads"})
  assert not np.array_equal(probed["heads"]["digits_motion_probe"]["kernel"],
                            fresh["heads"]["digits_motion_probe"]["kernel"])
  # A same-named head of another size is refused, naming the fix.
  config.heads = {"digits_motion_probe": 8}
  mismatched = dict(trained, heads={"digits_motion_probe": {
      "kernel": np.zeros((16, 5), np.float32),
      "bias": np.zeros((5,), np.float32)}})
  with pytest.raises(ValueError, match="Head 'digits_motion_probe' has"):
    checkpointing.merge_heads(mismatched, fresh, "init_from x")


@pytest.mark.slow
def test_step_loss_and_update_match_an_independent_computation():
  """The jitted step on a raw batch (6 a + 2 b videos, 4 c images) of
  uint8 pixels, with 1 and 4 micro-batches: its loss and SGD update against
  w_d-weighted per-dataset mean cross-entropies computed here from the
  model's logits on frames normalised here ((x / 255 - mean) / std, in
  float64), and jax.grad of that; and gradient accumulation equals the
  whole batch (the same loss and parameters as with 1). The step counts
  each dataset's examples itself: b is in rows 0 and 4 only, so of the 4
  micro-batches (micro-batch m holds rows m, m + 4) the first holds no a,
  the others no b, and each one image: per-micro-batch counts would be
  caught as well."""
  classes = {"a": 3, "b": 5, "c": 4}
  model = create(classes, num_frames=4, image_size=16, **tiny_runs.TINY)
  heads = [train.Head("a", "video", 1.0), train.Head("b", "video", 0.5),
           train.Head("c", "image", 0.5)]
  lr = 1.0  # a large step: old - new recovers lr * grad to float precision
  tx = optax.sgd(lr)  # no momentum: the update is -lr * grad
  rng = np.random.default_rng(0)
  video_ids = np.array([1, 0, 0, 0, 1, 0, 0, 0])
  video_labels = np.array([4, 2, 0, 1, 3, 1, 2, 0])  # b's 4, 3: beyond a's
  image_labels = np.array([3, 1, 0, 2])
  batch = {
      "video": {"frames": rng.integers(0, 256, (8, 4, 16, 16, 3), np.uint8),
                "label": video_labels, "dataset": video_ids},
      "image": {"frames": rng.integers(0, 256, (4, 1, 16, 16, 3), np.uint8),
                "label": image_labels, "dataset": np.full(4, 2)}}
  mean, std = np.array(tiny_runs.MEAN), np.array(tiny_runs.STD)
  normalised = {part: ((batch[part]["frames"] / 255.0 - mean) /
                       std).astype(np.float32) for part in batch}
  batch = jax.tree.map(jnp.asarray, batch)
  # Random parameters of the model's shapes (no init to compile), none zero:
  # unlike init's zero temporal_fc, every leaf has a gradient to check.
  params = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(0.0, 0.2, x.shape).astype(x.dtype)),
      jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0))))
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": tx.init(params), "rng": jax.random.PRNGKey(1)}

  def mean_ce(logits, labels, rows):  # -log softmax at the label, averaged
    log_p = jax.nn.log_softmax(logits[rows], axis=-1)
    return -jnp.mean(log_p[np.arange(len(rows)), labels[rows]])

  def reference_loss(p):
    video = model.apply({"params": p}, normalised["video"], train=False)
    image = model.apply({"params": p}, normalised["image"], train=False)
    return (1.0 * mean_ce(video["a"], video_labels, np.flatnonzero(
        video_ids == 0))
            + 0.5 * mean_ce(video["b"], video_labels, np.array([0, 4]))
            + 0.5 * mean_ce(image["c"], image_labels, np.arange(4)))

  expected_loss, grads = jax.jit(jax.value_and_grad(reference_loss))(params)
  flat_old = jax.tree_util.tree_leaves_with_path(params)
  flat_grads = jax.tree.leaves(grads)
  whole = None  # (params, loss) with 1 micro-batch
  for accumulation_steps in (1, 4):
    step = jax.jit(train.make_train_step(
        model, tx, lambda s: lr, heads, mean=tiny_runs.MEAN, std=tiny_runs.STD,
        accumulation_steps=accumulation_steps))
    new_state, metrics = step(state, batch)
    loss = float(metrics["loss"])
    assert loss == pytest.approx(float(expected_loss), rel=1e-5)
    assert {k: float(v["count"]) for k, v in metrics["datasets"].items()} == {
        "a": 6.0, "b": 2.0, "c": 4.0}, accumulation_steps
    flat_new = jax.tree.leaves(new_state["params"])
    assert len(flat_old) == len(flat_new) == len(flat_grads)
    for (path, old), new, grad in zip(flat_old, flat_new, flat_grads):
      np.testing.assert_allclose(
          np.asarray(old) - np.asarray(new), lr * np.asarray(grad),
          rtol=1e-3, atol=2e-6,
          err_msg=f"{accumulation_steps} {jax.tree_util.keystr(path)}")
    if whole is None:
      whole = flat_new, loss
      continue
    assert loss == pytest.approx(whole[1], rel=1e-5)
    for x, y in zip(flat_new, whole[0]):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  # Every head learns from its own examples.
  for name in classes:
    assert np.abs(grads["heads"][name]["kernel"]).max() > 1e-3


def test_evaluation_prints_a_table_and_where_the_json_is(
    monkeypatch, capsys, tmp_path):
  """run_evaluation prints top-1, top-5 and reversed top-1 per dataset, not
  the results' JSON (that is in eval/)."""
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel

  def fake(*args, reverse=False, **kwargs):
    del args, kwargs
    suffix = "/reversed" if reverse else ""
    return {f"ssv2{suffix}": dict(top1=0.25 if reverse else 0.5,
                                  top5=0.875, loss=1.0, examples=8),
            **({} if reverse else {"imagenet": dict(
                top1=0.75, top5=1.0, loss=0.5, examples=16)})}
  monkeypatch.setattr(evaluate, "evaluate", fake)
  train.run_evaluation(None, None, ConfigDict({"eval_reverse": True}), None,
                       None, 7, str(tmp_path))
  assert capsys.readouterr().out == (
      f"Evaluation at step 7 (all metrics: {tmp_path}/eval/step_7.json):\n"
      "dataset                    top-1   top-5  reversed  examples\n"
      "ssv2                       0.500   0.875     0.250         8\n"
      "imagenet                   0.750   1.000         -        16\n")
