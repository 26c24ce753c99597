"""--mode=plan (cover_jax/plan.py) on a tiny config: numbers against the
compiler's own analysis and the analytic FLOPs, on fake CPU devices and, with
libtpu installed, on a v5p:2x2x1 topology; a too-large batch gets the nearest
settings that fit."""

import json

import jax
from ml_collections import ConfigDict
import pytest

from configs import base, cover_mini
from cover_jax import optimizer, plan, sharding, train
from cover_jax.models import flops

HAS_LIBTPU = plan.libtpu_installed()


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


def independent_compile(config, devices):
  """The training step compiled here from train.py's pieces, not plan's."""
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
    return step.lower(abstract, batch).compile(), model, abstract


def check_against_compiler(report, config, devices):
  compiled, model, abstract = independent_compile(config, devices)
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


def test_cpu_plan_matches_the_compiler():
  config = tiny_config()
  devices = plan.topology_devices("cpu:8")
  report = plan.plan(config, devices)
  assert report["batch"]["split"] == {"video": 8, "image": 8}
  assert report["chips"] == 8 and report["mesh"]["data"] == 8
  assert report["fits"] is None  # no HBM on CPU: memory only
  assert report["compiler_estimate"]["step_seconds"] is None
  assert "fake CPU devices" in plan.format_plan(report)
  check_against_compiler(report, config, devices)


@pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu is not installed (pip '
                    'install -e ".[tpu]"): no TPU topology to compile for')
def test_tpu_plan_matches_the_compiler():
  config = tiny_config()
  # v5p: the compiler estimates a step time there (not on v4 or v5e).
  devices = plan.topology_devices("v5p:2x2x1")
  report = plan.plan(config, devices)
  assert report["chip"]["generation"] == "v5p"
  assert report["hbm_bytes"] == 95 * plan.GiB and report["fits"]
  check_against_compiler(report, config, devices)
  est = report["compiler_estimate"]
  assert est["step_seconds"] > 0
  assert est["mfu"] == pytest.approx(report["flops"]["analytic_per_step"] /
                                     est["step_seconds"] / (459e12 * 4))
  # v4 as JAX runs it: one device per chip (megacore), 2x2x1 = 4 chips.
  assert len(plan.topology_devices("v4:2x2x1")) == 4
  with pytest.raises(ValueError, match="not a TPU topology"):
    plan.topology_devices("v9z:1x1")


def test_too_large_batch_gets_the_nearest_fit():
  config = tiny_config(batch_size=2048)
  devices = plan.topology_devices("cpu:8")
  budget = 8 * 2 ** 20  # the whole batch at once needs ~10 MiB
  lines = []
  result = plan.run(config, devices, hbm_bytes=budget, log=lines.append)
  assert result["plan"]["fits"] is False
  nearest = result["search"]["nearest"]
  assert nearest["fits"] and nearest["bytes_per_chip"]["total"] <= budget
  changed = {k for k, v in nearest["settings"].items()
             if v != plan.knobs(config, 8)[k]}
  assert changed == {"accumulation_steps"}  # one knob: the nearest
  text = "\n".join(lines)
  assert "DOES NOT FIT" in text
  flag = (f"--config.optimizer.accumulation_steps="
          f"{nearest['settings']['accumulation_steps']}")
  assert f"nearest that fits: {flag}" in text
  json.dumps(plan.to_json(result))  # what main.py writes


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
