"""The EMA of the parameters (cover_jax/training/ema.py): the closed form of
the average, TensorFlow's warm-up, off by default (no state entry, the same
step), carried through checkpoints bit for bit, evaluated beside the raw
weights, and used by predict / export / init_from.

One run of the tiny config (`ema_run`, evaluation stubbed out, a checkpoint
every step) serves the loop's tests."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cover_jax.models import create, init_params
from cover_jax.training import checkpointing
from cover_jax.training import ema
from cover_jax.training import evaluate
from cover_jax.training import train
from cover_jax.training.event_writer import read_scalars
from tests import tiny_runs

DECAY = 0.2  # with the warm-up: decays 0.1, 2/11, 0.2, 0.2 over 4 steps
STEPS = 4


def warmup_decays(decay, steps):
  """TensorFlow's num_updates form, computed here."""
  return [min(decay, (1 + t) / (10 + t)) for t in range(steps)]


def closed_form(sequence, decays):
  """EMA of p_0..p_n in float64: prod_j d_j p_0 + sum_k (1 - d_k)
  prod_{j>k} d_j p_k (with one decay: d^n p_0 + sum (1 - d) d^(n-k) p_k)."""
  n = len(decays)
  out = np.prod(decays) * np.asarray(sequence[0], np.float64)
  for k in range(1, n + 1):
    out = out + (1 - decays[k - 1]) * np.prod(decays[k:]) * np.asarray(
        sequence[k], np.float64)
  return out


def test_update_is_the_closed_form_with_and_without_warmup():
  rng = np.random.default_rng(0)
  sequence = [{"w": rng.normal(size=(3, 4)).astype(np.float32),
               "b": rng.normal(size=(4,)).astype(np.float32)}
              for _ in range(6)]
  for warmup, decays in ((False, [0.9] * 5), (True, warmup_decays(0.9, 5))):
    average = sequence[0]
    for t, params in enumerate(sequence[1:]):
      average = ema.update(average, params, t, 0.9, warmup)
    for key in ("w", "b"):
      assert average[key].dtype == np.float32
      np.testing.assert_allclose(
          average[key], closed_form([p[key] for p in sequence], decays),
          rtol=1e-5, atol=1e-6, err_msg=f"warmup={warmup} {key}")


def test_warmup_is_tensorflows_num_updates_form():
  for t in (0, 1, 5, 89, 90, 1000):
    assert float(ema.decay_at(t, 0.99, warmup=True)) == pytest.approx(
        min(0.99, (1 + t) / (10 + t)), rel=1e-6), t
    assert float(ema.decay_at(t, 0.99)) == pytest.approx(0.99)
  assert float(ema.decay_at(0, 0.99, warmup=True)) == pytest.approx(0.1)


def test_off_by_default_and_on_sharded_like_params(tmp_path):
  """The base config's ema_decay is 0: the state has no "ema_params"; on,
  it has them, with the parameters' shapes and shardings."""
  mesh = train.sharding.make_mesh(data=4, fsdp=2)
  shapes = {}
  for decay in (0.0, 0.999):
    config = tiny_runs.tiny_config(str(tmp_path), ema_decay=decay)
    model = train.model_from_config(config)
    shapes[decay] = train.step_from_config(config, model, [], 10, mesh)
  from configs import base  # pylint: disable=import-outside-toplevel
  assert base.config().ema_decay == 0.0
  assert ema.PARAMS not in shapes[0.0].abstract
  on = shapes[0.999]
  assert set(on.abstract) == set(shapes[0.0].abstract) | {ema.PARAMS}
  assert (jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding),
                       on.abstract[ema.PARAMS]) ==
          jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding),
                       on.abstract["params"]))
  with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
    ema.enabled(tiny_runs.tiny_config(str(tmp_path), ema_decay=1.0))


@pytest.mark.slow
def test_step_keeps_the_closed_form_and_the_same_params_as_without():
  """A tiny model's jitted step, 3 times with and without the EMA (decay
  0.75, no warm-up): the same parameters and metrics bit for bit, and the
  EMA after each step is the closed form of the parameters recorded."""
  model = create({"a": 3}, num_frames=2, image_size=16, **tiny_runs.TINY)
  heads = [train.Head("a", "video", 1.0)]
  tx = optax.sgd(0.5)
  rng = np.random.default_rng(0)
  batch = {"video": {
      "frames": jnp.asarray(rng.integers(0, 256, (4, 2, 16, 16, 3),
                                         np.uint8)),
      "label": jnp.asarray([0, 1, 2, 1]), "dataset": jnp.zeros(4, jnp.int32)}}
  params = init_params(model, jax.random.PRNGKey(0))
  states, steps = {}, {}
  for decay in (0.0, 0.75):
    states[decay] = {"step": jnp.zeros((), jnp.int32), "params": params,
                     "opt_state": tx.init(params),
                     "rng": jax.random.PRNGKey(1)}
    if decay:
      states[decay][ema.PARAMS] = params
    steps[decay] = jax.jit(train.make_train_step(
        model, tx, lambda s: 0.5, heads, mean=tiny_runs.MEAN,
        std=tiny_runs.STD, ema_decay=decay))
  recorded = [jax.device_get(params)]
  for n in range(1, 4):
    outputs = {d: steps[d](states[d], batch) for d in steps}
    (off, off_metrics), (on, on_metrics) = outputs[0.0], outputs[0.75]
    assert ema.PARAMS not in off
    tiny_runs.assert_same_params(jax.device_get(off["params"]),
                                 jax.device_get(on["params"]))
    tiny_runs.assert_same_params(jax.device_get(off_metrics),
                                 jax.device_get(on_metrics))
    recorded.append(jax.device_get(on["params"]))
    for (path, got), *sequence in zip(
        jax.tree_util.tree_leaves_with_path(jax.device_get(on[ema.PARAMS])),
        *map(jax.tree.leaves, recorded)):
      np.testing.assert_allclose(got, closed_form(sequence, [0.75] * n),
                                 rtol=1e-5, atol=1e-6,
                                 err_msg=f"{n} {jax.tree_util.keystr(path)}")
    states = {0.0: off, 0.75: on}
  kernel = recorded[-1]["heads"]["a"]["kernel"]
  assert np.abs(kernel - recorded[0]["heads"]["a"]["kernel"]).max() > 1e-2
  assert np.abs(kernel - jax.device_get(
      states[0.75][ema.PARAMS])["heads"]["a"]["kernel"]).max() > 1e-3


def ema_config(digits_dir, **overrides):
  fields = {"num_train_steps": STEPS, "ema_decay": DECAY, "ema_warmup": True,
            "eval_every_steps": 2, "eval_reverse": True,
            # Large steps from step 1: the average lags the parameters.
            "optimizer.learning_rates": (0.05, 0.005),
            "optimizer.warmup_epochs": 0.0,
            "checkpoint.every_steps": 1, "checkpoint.keep": 10,
            "checkpoint.async_save": False}
  return tiny_runs.tiny_config(digits_dir, **{**fields, **overrides})


def fake_evaluations(patch) -> list:
  """evaluate.evaluate stubbed (fast): records (step, reverse, ema, params
  on the host) and answers with the keys the real one would."""
  calls = []

  def record(model, params, config, *, step, reverse=False, ema=False,
             **kwargs):
    del model, config, kwargs
    calls.append((step, reverse, ema, jax.device_get(params)))
    return {evaluate.section_name("digits_motion", reverse, ema): {
        "top1": 0.5, "top5": 1.0, "loss": 1.0, "examples": 8}}
  patch.setattr(evaluate, "evaluate", record)
  return calls


@pytest.fixture(scope="module")
def ema_run(digits_dir, tmp_path_factory):
  """(workdir, evaluation calls, results) of STEPS straight steps."""
  workdir = str(tmp_path_factory.mktemp("ema_run"))
  with pytest.MonkeyPatch.context() as patch:
    calls = fake_evaluations(patch)
    results = train.train_and_evaluate(ema_config(digits_dir), workdir)
  return workdir, calls, results


def saved(workdir, step):
  return checkpointing.read_weights(os.path.join(workdir, "checkpoints",
                                                 str(step)))


def test_the_loops_ema_is_the_closed_form_of_its_checkpoints(
    digits_dir, ema_run):
  """The training loop's EMA at every step against the closed form of the
  step's parameters (p_0: the seed's init), with the warm-up's decays."""
  workdir, _, _ = ema_run
  config = ema_config(digits_dir)
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  sequence = [jax.device_get(init_params(train.model_from_config(config),
                                         init_rng))]
  decays = warmup_decays(DECAY, STEPS)
  assert decays[1] < decays[2] == DECAY  # both branches of the min
  for step in range(1, STEPS + 1):
    params, averaged = saved(workdir, step)
    sequence.append(params)
    flat = jax.tree_util.tree_leaves_with_path(averaged)
    assert len(flat) == len(jax.tree.leaves(params))
    for (path, got), *history in zip(flat, *map(jax.tree.leaves, sequence)):
      np.testing.assert_allclose(got, closed_form(history, decays[:step]),
                                 rtol=1e-5, atol=1e-7,
                                 err_msg=f"{step} {jax.tree_util.keystr(path)}")
  head = "heads", "digits_motion", "kernel"
  last = lambda tree: tree[head[0]][head[1]][head[2]]  # noqa: E731
  assert np.abs(last(params) - last(averaged)).max() > 1e-2  # it lags


def test_evaluation_reports_raw_and_ema_weights(ema_run):
  """Steps 2 and 4, each raw and EMA, plain and reversed, on that step's
  checkpointed weights; the results and the printed table hold both."""
  workdir, calls, results = ema_run
  assert [(s, r, e) for s, r, e, _ in calls] == [
      (s, r, e) for s in (2, 4) for e in (False, True) for r in (False, True)]
  for step, _, averaged, params in calls:
    tiny_runs.assert_same_params(params, saved(workdir, step)[averaged])
  assert set(results) == {"digits_motion", "digits_motion/reversed",
                          "digits_motion/ema", "digits_motion/ema/reversed"}
  table = train.results_table({
      "a": dict(top1=0.5, top5=1.0, examples=8),
      "a/reversed": dict(top1=0.25, top5=1.0, examples=8),
      "a/ema": dict(top1=0.75, top5=1.0, examples=8),
      "a/ema/reversed": dict(top1=0.125, top5=1.0, examples=8)})
  assert table.splitlines()[1:] == [
      "a                          0.500   1.000     0.250         8",
      "a/ema                      0.750   1.000     0.125         8"]


@pytest.mark.slow
def test_resume_is_bit_exact(digits_dir, ema_run, tmp_path, monkeypatch):
  """STEPS / 2 steps, then the same workdir resumed to STEPS: the EMA (and
  the parameters) of the straight run, bit for bit."""
  fake_evaluations(monkeypatch)
  workdir = str(tmp_path)
  train.train_and_evaluate(ema_config(digits_dir,
                                      num_train_steps=STEPS // 2), workdir)
  train.train_and_evaluate(ema_config(digits_dir), workdir)
  for got, want in zip(saved(workdir, STEPS), saved(ema_run[0], STEPS)):
    tiny_runs.assert_same_params(got, want)
  # Resumed without its EMA: refused, naming the fix (before any compute).
  with pytest.raises(ValueError, match=r"saved with an EMA of the parameters"
                     r" \(ema_params\), but this config has ema_decay 0"):
    train.train_and_evaluate(ema_config(digits_dir, ema_decay=0.0,
                                        num_train_steps=STEPS + 2), workdir)


def test_inference_and_init_from_take_the_ema(digits_dir, ema_run):
  """predict / features / export (inference_params) apply the EMA and say
  so; init_from a run of ours loads its EMA and says so."""
  workdir = ema_run[0]
  config = ema_config(digits_dir)
  model = train.model_from_config(config)
  params, origin, step = checkpointing.inference_params(config, workdir,
                                                        model)
  raw, averaged = saved(workdir, STEPS)
  assert step == STEPS
  assert origin.startswith(f"the EMA weights (ema_params) of the checkpoint "
                           f"at step {STEPS} in ")
  tiny_runs.assert_same_params(params, averaged)
  fresh = jax.tree.map(np.zeros_like, raw)
  loaded, note = checkpointing.init_params_from(workdir, model, fresh)
  assert note.startswith("initialised from the EMA weights (ema_params) of "
                         "cover-jax checkpoint")
  tiny_runs.assert_same_params(loaded, averaged)
  assert not np.array_equal(averaged["embedding"]["kernel"],
                            raw["embedding"]["kernel"])


@pytest.mark.slow
def test_eval_mode_writes_both_sets_to_json_and_tensorboard(
    digits_dir, ema_run, tmp_path, capsys):
  """--mode=eval of the EMA run (copied), really evaluated (1 view): both
  weights' sections in the JSON and TensorBoard, different losses."""
  import shutil  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  shutil.copytree(ema_run[0], workdir)
  shutil.rmtree(os.path.join(workdir, "eval"), ignore_errors=True)
  config = ema_config(digits_dir, eval_reverse=False,
                      **{"input.eval_views": 1})
  results = train.evaluate_checkpoint(config, workdir)
  names = ("digits_image", "digits_appearance", "digits_motion")
  assert set(results) == set(names) | {f"{n}/ema" for n in names}
  assert evaluate.read_json(workdir)["results"] == results
  for name in names:
    assert results[f"{name}/ema"]["examples"] == 359
    assert results[f"{name}/ema"]["loss"] != results[name]["loss"]
    assert read_scalars(workdir, f"eval/{name}/ema/loss")[STEPS] == (
        pytest.approx(results[f"{name}/ema"]["loss"], rel=1e-6))
  out = capsys.readouterr().out
  assert "(its parameters and their EMA, ema_params)" in out
  assert "digits_motion/ema " in out
