"""--mode=plan (cover_jax/tools/plan.py) on a tiny config: numbers against the
compiler's own analysis and the analytic FLOPs, on fake CPU devices and, with
libtpu installed, on a v5p:2x2x1 topology; a too-large batch gets the nearest
settings that fit, also when the compiler itself runs out of memory."""

import json
import re

import jax
from ml_collections import ConfigDict
import pytest

from configs import base, cover_mini
from cover_jax import sharding
from cover_jax.models import flops
from cover_jax.tools import plan
from cover_jax.training import optimizer, train

HAS_LIBTPU = plan.libtpu_installed()
# pylint: disable=protected-access
# The search's next accumulation from the rows so far, and the candidates.
needed_accumulation = plan._needed_accumulation
accumulations = plan._accumulations
# pylint: enable=protected-access


def tiny_config(batch_size=16):
  """cover_mini's datasets with a one-block TimeSformer of 2x16 and SGD
  (small compiles)."""
  config = cover_mini.get_config()
  with config.unlocked():
    config.model = ConfigDict(dict(
        variant_name=None, width=32, depth=1, num_heads=2, mlp_dim=64,
        patch_size=8, num_frames=2, image_size=16,
        attention_type="divided_space_time", remat_policy=None,
        scan_layers=False))
  config.input.num_frames, config.input.crop_size = 2, 16
  config.input.video_share = 0.5
  config.batch_size = batch_size
  config.optimizer = base.optimizer()
  return config


def independent_lowering(config, devices):
  """The training step lowered here from train.py's pieces, not plan's."""
  mesh = sharding.make_mesh(devices=devices)
  model = train.model_from_config(config)
  # Sizes unknown (the mini sets): an epoch of one step, as plan takes it.
  tx, schedule = optimizer.make(config, 1)
  _, abstract, shardings = train.state_layout(model, tx, mesh)
  heads = [train.Head("digits_appearance", "video", 1.0),
           train.Head("digits_image", "image", 0.5),
           train.Head("digits_motion", "video", 1.0)]
  half = config.batch_size // 2  # video_share 0.5
  batch = {part: {"frames": jax.ShapeDtypeStruct(
      (half, frames, 16, 16, 3), "uint8",
      sharding=sharding.batch_sharding(mesh, 5)),
                  "label": jax.ShapeDtypeStruct(
                      (half,), "int32", sharding=sharding.batch_sharding(mesh, 1)),
                  "dataset": jax.ShapeDtypeStruct(
                      (half,), "int32", sharding=sharding.batch_sharding(mesh, 1))}
           for part, frames in (("video", 2), ("image", 1))}
  step = jax.jit(train.make_train_step(model, tx, schedule, heads,
                                       mean=config.input.mean,
                                       std=config.input.std),
                 in_shardings=(shardings, jax.tree.map(lambda x: x.sharding,
                                                       batch)),
                 out_shardings=(shardings, None), donate_argnums=0)
  with sharding.use(mesh):
    return step.lower(abstract, batch), model, abstract


def planned(monkeypatch, config, devices):
  """plan.compile_step(config, devices), and the step it lowered (compiled: its
  compile() returns the executable plan's compile made)."""
  lowered, real = [], plan.lower_step

  def lower_step(*args, **kwargs):
    out = real(*args, **kwargs)
    lowered.append(out[0])
    return out
  monkeypatch.setattr(plan, "lower_step", lower_step)
  report = plan.compile_step(config, devices)
  monkeypatch.setattr(plan, "lower_step", real)
  (step,) = lowered
  return report, step


def check_against_compiler(report, plan_step, config, devices):
  """The report's numbers against the compiler's analysis of the training
  step built from train.py's pieces: plan lowered that very program (the
  same StableHLO, text for text), so its compile is that program's compile
  (a second compile of it, slow for a TPU, would give the same analysis)."""
  lowered, model, abstract = independent_lowering(config, devices)
  assert plan_step.as_text() == lowered.as_text()
  compiled = plan_step.compile()
  m = compiled.memory_analysis()
  b = report["bytes_per_chip"]
  assert b["temporaries"] == m.temp_size_in_bytes
  assert b["arguments"] == m.argument_size_in_bytes
  assert b["total"] == (m.argument_size_in_bytes + m.output_size_in_bytes -
                        m.alias_size_in_bytes + m.temp_size_in_bytes +
                        m.generated_code_size_in_bytes)
  # Data-parallel: every chip holds all parameters (float32) and 1/n batch
  # (uint8 frames, int32 labels and dataset ids).
  count = sum(x.size for x in jax.tree.leaves(abstract["params"]))
  assert b["parameters"] == 4 * count
  half = config.batch_size // 2
  assert b["batch"] == (half * (2 + 1) * 16 * 16 * 3 * 1 + 2 * half * 2 * 4
                        ) // len(devices)
  analytic = (flops.train_step_flops(model, batch=half) +
              flops.train_step_flops(model, batch=half, num_frames=1))
  assert report["flops"]["analytic_per_step"] == analytic
  cost = compiled.cost_analysis()
  assert report["flops"]["compiler_per_step"] == pytest.approx(
      cost["flops"] * len(devices))
  # Norms, softmax and the optimizer are not in the count: small but real.
  assert 1.0 < report["flops"]["ratio"] < 2.0


@pytest.mark.slow
def test_cpu_plan_matches_the_compiler(monkeypatch):
  config = tiny_config()
  devices = plan.topology_devices("cpu:8")
  report, step = planned(monkeypatch, config, devices)
  assert report["batch"]["split"] == {"video": 8, "image": 8}
  assert report["chips"] == 8 and report["mesh"]["data"] == 8
  assert report["fits"] is None  # no HBM on CPU: memory only
  assert report["compiler_estimate"]["step_seconds"] is None
  assert "fake CPU devices" in plan.format_plan(report)
  check_against_compiler(report, step, config, devices)


@pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu is not installed (pip '
                    'install -e ".[tpu]"): no TPU topology to compile for')
@pytest.mark.slow
def test_tpu_plan_matches_the_compiler(monkeypatch):
  config = tiny_config()
  # v5p: the compiler estimates a step time there (not on v4 or v5e).
  devices = plan.topology_devices("v5p:2x2x1")
  report, step = planned(monkeypatch, config, devices)
  assert report["chip"]["generation"] == "v5p"
  assert report["hbm_bytes"] == 95 * plan.GiB and report["fits"]
  check_against_compiler(report, step, config, devices)
  est = report["compiler_estimate"]
  assert est["step_seconds"] > 0
  assert est["mfu"] == pytest.approx(report["flops"]["analytic_per_step"] /
                                     est["step_seconds"] / (459e12 * 4))
  # v4 as JAX runs it: one device per chip (megacore), 2x2x1 = 4 chips.
  assert len(plan.topology_devices("v4:2x2x1")) == 4
  with pytest.raises(ValueError, match="not a TPU topology"):
    plan.topology_devices("v9z:1x1")


def refuse_accumulation_1(monkeypatch, error):
  """Lower as plan does, but a step without accumulation fails to compile
  with `error`: the TPU compiler's refusal, stood in for on CPU."""
  real = plan.lower_step

  def refuse():
    raise error

  def lower_step(config, devices):
    lowered, *rest = real(config, devices)
    if config.optimizer.get("accumulation_steps", 1) == 1:
      lowered = type("Refused", (), dict(compile=staticmethod(refuse)))
    return (lowered, *rest)
  monkeypatch.setattr(plan, "lower_step", lower_step)


@pytest.mark.slow
def test_too_large_batch_gets_the_nearest_fit(monkeypatch, tmp_path):
  """Both kinds of "does not fit" in one search: the compiler refuses the
  config's step (out of memory), then a candidate compiles but its memory
  analysis exceeds the budget."""
  config = tiny_config(batch_size=2048)
  devices = plan.topology_devices("cpu:8")
  # The whole batch at once needs ~9 MiB, two micro-batches ~5, four ~3.
  budget = int(4.8 * 2 ** 20)
  message = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of "
             "memory in memory space hbm. Used 8.00M of 4.80M hbm. Exceeded "
             "hbm capacity by 3.20M.")
  refuse_accumulation_1(monkeypatch, jax.errors.JaxRuntimeError(message))
  lines = []
  result = plan.run(config, devices, hbm_bytes=budget, log=lines.append)
  (tmp_path / "plan.json").write_text(json.dumps(plan.to_json(result)))
  saved = json.loads((tmp_path / "plan.json").read_text())  # as main.py
  assert saved["plan"]["fits"] is False
  assert saved["plan"]["compiler_out_of_memory"] == dict(
      message=message, required_bytes=8 * 2 ** 20, available_bytes=budget)
  b = saved["plan"]["bytes_per_chip"]
  assert b["total"] == 8 * 2 ** 20
  assert b["temporaries"] == b["total"] - (b["parameters"] +
                                           b["optimizer_state"] + b["batch"])
  rows = [(r["settings"]["accumulation_steps"], r["fits"],
           r["compiler_out_of_memory"] is not None)
          for r in saved["search"]["rows"]]
  assert rows == [(1, False, True), (2, False, False), (4, True, False)]
  nearest = result["search"]["nearest"]
  assert nearest["bytes_per_chip"]["total"] <= budget
  changed = {k for k, v in nearest["settings"].items()
             if v != plan.knobs(config, 8)[k]}
  assert changed == {"accumulation_steps"}  # one knob: the nearest
  text = "\n".join(lines)
  assert ("the compiler ran out of memory: the step needs 8.0 MiB, 4.8 MiB "
          "HBM available  -> DOES NOT FIT") in text
  assert "nearest that fits: --config.optimizer.accumulation_steps=4" in text


@pytest.mark.slow
def test_out_of_memory_without_a_figure_says_so(monkeypatch):
  config = tiny_config()
  devices = plan.topology_devices("cpu:8")
  refuse_accumulation_1(monkeypatch, jax.errors.JaxRuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while compiling the program."))
  report = plan.compile_step(config, devices)
  assert report["fits"] is False
  assert report["compiler_out_of_memory"]["required_bytes"] is None
  assert report["bytes_per_chip"]["total"] is None
  assert ("the compiler ran out of memory and gave no figure of what the step "
          "needs: RESOURCE_EXHAUSTED: Out of memory while compiling") in (
              plan.format_plan(report))
  # Without figures the search tries 4x the accumulation.
  assert needed_accumulation([report], [1, 2, 4, 8]) == 4
  # Any other compile error is the error, not a plan.
  refuse_accumulation_1(monkeypatch, jax.errors.JaxRuntimeError(
      "INVALID_ARGUMENT: Mosaic failed to compile TPU kernel."))
  with pytest.raises(jax.errors.JaxRuntimeError, match="Mosaic failed"):
    plan.compile_step(config, devices)


@pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu is not installed (pip '
                    'install -e ".[tpu]"): no TPU topology to compile for')
@pytest.mark.slow
def test_tpu_compiler_out_of_memory_is_a_plan_that_does_not_fit():
  # A million tiny clips: the compiler refuses in seconds.
  config = tiny_config(batch_size=2 ** 20)
  report = plan.compile_step(config, plan.topology_devices("v5e:2x2"))
  oom = report["compiler_out_of_memory"]
  assert report["fits"] is False and oom["message"].startswith(
      "RESOURCE_EXHAUSTED")
  # libtpu's figures in its own words, binary units.
  required, available = [float(x) * plan.GiB for x in re.findall(
      r"\(([\d.]+)G\)", oom["message"])]
  assert oom["required_bytes"] == int(required) > oom["available_bytes"]
  assert oom["available_bytes"] == int(available) == int(15.75 * plan.GiB)
  assert report["flops"]["compiler_per_step"] is None
  text = plan.format_plan(report)
  assert (f"the compiler ran out of memory: the step needs "
          f"{required / plan.GiB:.2f} GiB, 15.75 GiB HBM available  -> DOES "
          f"NOT FIT") in text
  # The search starts from the compiler's figures: activations a little over
  # the HBM, so two micro-batches.
  assert needed_accumulation(
      [report], accumulations(config, (4, 1, 1))) == 2
  json.dumps(plan.to_json(report))


def test_both_names_of_no_remat_are_one_search_candidate():
  config = tiny_config()
  with config.unlocked():
    config.model.remat_policy = "everything_saveable"
  assert plan.knobs(config, 8)["remat_policy"] is None
  assert plan.with_knobs(config, plan.knobs(config, 8)).model.remat_policy is None


def test_tpu_topology_without_libtpu_names_the_extra(monkeypatch):
  monkeypatch.setattr(plan, "libtpu_installed", lambda: False)
  with pytest.raises(RuntimeError, match=r'pip install -e "\.\[tpu\]"'):
    plan.topology_devices("v5p:4x4x4")


def test_a_search_with_no_fit_names_the_flags_it_does_not_move():
  text = plan.format_search({"base": {}, "rows": [], "fastest": None,
                             "nearest": None})
  assert text.splitlines()[-3:] == [
      "fastest that fits: none of the candidates",
      "nearest that fits: none of the candidates",
      "the search keeps the batch and the slice: try a smaller "
      "--config.batch_size or a larger --topology"]
