"""Analytic FLOPs against XLA's own count and the TimeSformer paper."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from cover_jax.models import TimeSformer, abstract_variables, flops, variant


def xla_forward_flops(model, batch):
  params = nn.unbox(abstract_variables(model))["params"]
  video = jax.ShapeDtypeStruct(
      (batch, model.num_frames, model.image_size, model.image_size, 3),
      jnp.float32)
  compiled = jax.jit(lambda p, v: model.apply({"params": p}, v)).lower(
      params, video).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return analysis["flops"]


@pytest.mark.parametrize("fields,frames,size", [
    (dict(variant("B/16"), depth=2), 8, 224),
    (dict(variant("S/16"), depth=2), 8, 112),
    (dict(variant("B/16"), depth=2, attention_type="space_only"), 8, 224),
    (dict(variant("L/16"), depth=1, representation_size=512), 16, 448),
])
@pytest.mark.slow
def test_analytic_flops_match_xla_within_3_percent(fields, frames, size):
  model = TimeSformer(heads={"k400": 400, "ssv2": 174}, num_frames=frames,
                      image_size=size, **fields)
  ours = flops.forward_flops(model, batch=2)
  assert abs(xla_forward_flops(model, 2) / ours - 1) <= 0.03


def test_timesformer_b16_is_0_59_tflops_for_three_views():
  """The TimeSformer paper's 0.59 "TFLOPs" (multiply-adds), 1x3 views, 8x224."""
  model = TimeSformer(heads={"k400": 400}, **variant("B/16"))
  assert 3 * flops.forward_macs(model) / 1e12 == pytest.approx(0.59, rel=0.01)
  assert flops.forward_flops(model) == 2 * flops.forward_macs(model)
  assert flops.train_step_flops(model, batch=4) == 3 * flops.forward_flops(
      model, batch=4)


def test_flops_of_other_input_sizes():
  model = TimeSformer(heads={"k400": 400}, **variant("B/16"))
  assert flops.forward_macs(model, num_frames=16, image_size=448) > 8 * (
      flops.forward_macs(model))
  # Images are 1-frame videos: about 1/8 of the 8-frame cost, less temporal work.
  image = flops.forward_macs(model, num_frames=1)
  assert 0.1 < image / flops.forward_macs(model) < 0.125
