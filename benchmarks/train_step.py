"""Speed of a TimeSformer training step, against this machine's matmul rate.

A step is forward, backward and an SGD-momentum update, jitted with the
state donated. The script prints, per configuration, the step time, the
analytic FLOPs of the step (3x the forward count of cover_jax.models.flops)
and their rate, and divides that rate by the fp32 rate of one large `a @ b`
measured just before (on CPU; five rounds, medians), or by the device's peak
(MFU, on GPU).

    python benchmarks/train_step.py                  # the two CPU configs
    python benchmarks/train_step.py --preset=gpu     # B/16 and L/16, bf16, 8x224
    python benchmarks/train_step.py --json=out.json  # also write the figures
    python benchmarks/train_step.py --default_allocator  # without host tuning

Figures from earlier runs are in benchmarks/RESULTS.md.
"""

import argparse
import json
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cover_jax.models import TimeSformer, flops, init_params, variant
from cover_jax.runtime import allocator

# name -> (model fields, batch)
PRESETS = {
    "cpu": [
        ("d384x4 8x112", dict(width=384, depth=4, num_heads=6, mlp_dim=1536,
                              patch_size=16, num_frames=8, image_size=112), 4),
        ("d768x2 8x224", dict(width=768, depth=2, num_heads=12, mlp_dim=3072,
                              patch_size=16, num_frames=8, image_size=224), 2),
    ],
    # Each with both attention paths: XLA (cover_jax/models/attention.py)
    # and cuDNN's fused kernel.
    "gpu": [
        (f"{v} 8x224 {impl}", dict(variant(v), num_frames=8, image_size=224,
                                   attention_implementation=impl), batch)
        for v, batch in (("B/16", 32), ("L/16", 16))
        for impl in ("xla", "cudnn")
    ],
}
# Dense bf16 peak FLOP/s of accelerators we report MFU for.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def time_call(fn, *args, repeats: int):
  """(median seconds, host page faults per call) of `fn(*args)`."""
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  return float(np.median(times)), faults / repeats


def matmul_reference(n: int):
  """A function measuring the FLOP/s of one fp32 `n x n @ n x n` product."""
  a = jnp.asarray(np.random.randn(n, n), jnp.float32)
  b = jnp.asarray(np.random.randn(n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  return lambda: 2 * n**3 / time_call(matmul, a, b, repeats=3)[0]


def make_train_step(model, optimizer):
  def loss_fn(params, video, labels):
    logits = model.apply({"params": params}, video, train=True)["bench"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def train_step(params, opt_state, video, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, video, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(train_step, donate_argnums=(0, 1))


def bench_config(name, fields, batch, dtype, rounds, reference):
  """Step time and its FLOP rate over `reference()`, measured back to back in
  `rounds` rounds (the machine's speed drifts; ratios of neighbours do not)."""
  model = TimeSformer(heads={"bench": 400}, dtype=dtype, **fields)
  params = init_params(model, jax.random.PRNGKey(0))
  optimizer = optax.sgd(5e-3, momentum=0.9)
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.standard_normal(
      (batch, model.num_frames, model.image_size, model.image_size, 3)),
                      jnp.float32)
  labels = jnp.asarray(rng.integers(0, 400, batch), jnp.int32)
  step = make_train_step(model, optimizer)
  state = {"params": params, "opt": opt_state}

  def run():
    state["params"], state["opt"], loss = step(state["params"], state["opt"],
                                               video, labels)
    return loss

  # Compilation, then the host heap growing to its steady size.
  for _ in range(3):
    jax.block_until_ready(run())
  step_flops = flops.train_step_flops(model, batch=batch)
  seconds, references, faults = [], [], []
  for _ in range(rounds):
    references.append(reference())
    s, f = time_call(run, repeats=3)
    seconds.append(s)
    faults.append(f)
  fractions = [step_flops / s / r for s, r in zip(seconds, references)]
  return dict(config=name, batch=batch, dtype=jnp.dtype(dtype).name,
              step_seconds=float(np.median(seconds)),
              page_faults_per_step=float(np.median(faults)),
              step_tflop=step_flops / 1e12,
              tflops_per_second=step_flops / float(np.median(seconds)) / 1e12,
              reference_tflops=float(np.median(references)) / 1e12,
              fraction_of_reference=float(np.median(fractions)),
              fractions=fractions)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                      help="default: gpu on a GPU, else cpu")
  parser.add_argument("--dtype", default=None,
                      help="compute dtype; float32 on CPU, bfloat16 on GPU")
  parser.add_argument("--rounds", type=int, default=5,
                      help="rounds of (reference, 3 steps); medians reported")
  parser.add_argument("--matmul_size", type=int, default=4096)
  parser.add_argument("--json", default=None, help="also write figures here")
  parser.add_argument("--default_allocator", action="store_true",
                      help="leave glibc's allocator as it is "
                           "(see cover_jax/runtime/allocator.py)")
  args = parser.parse_args()
  # Before anything starts JAX's runtime threads.
  memory_setting = "glibc default"
  if not args.default_allocator and allocator.retain_freed_host_memory():
    memory_setting = "freed memory retained (cover_jax.runtime.allocator)"
  args.preset = args.preset or ("gpu" if jax.default_backend() == "gpu"
                                else "cpu")
  dtype = jnp.dtype(args.dtype or ("bfloat16" if args.preset == "gpu"
                                   else "float32"))

  device = jax.devices()[0]
  machine = (f"{device.device_kind} ({jax.default_backend()}), "
             f"{jax.local_device_count()} device(s); host {platform.processor() or platform.machine()}")
  if jax.default_backend() == "cpu":
    reference = matmul_reference(args.matmul_size)
    reference_name = f"fp32 {args.matmul_size}^3 matmul, measured before each round"
  else:
    kind = next((k for k in PEAK_FLOPS if k in device.device_kind), None)
    if kind is None:
      raise SystemExit(f"No peak FLOP/s known for {device.device_kind!r}; add "
                       "it to PEAK_FLOPS in benchmarks/train_step.py.")
    reference = lambda: PEAK_FLOPS[kind]
    reference_name = f"{kind} dense bf16 peak"
  print(f"machine: {machine}; allocator: {memory_setting}")
  print(f"reference: {reference_name}")

  results = []
  for name, fields, batch in PRESETS[args.preset]:
    r = bench_config(name, fields, batch, dtype, args.rounds, reference)
    results.append(r)
    print(f"{name:20s} batch {batch:3d} {r['dtype']:8s} "
          f"step {r['step_seconds'] * 1e3:9.1f} ms  "
          f"{r['step_tflop']:8.4f} TFLOP/step  "
          f"{r['tflops_per_second']:7.3f} TFLOP/s  "
          f"reference {r['reference_tflops']:.3f} TFLOP/s  "
          f"{r['fraction_of_reference']:.3f} of it "
          f"(rounds: {', '.join(f'{x:.3f}' for x in r['fractions'])})  "
          f"{r['page_faults_per_step']:.0f} page faults/step")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(machine=machine, allocator=memory_setting,
                     reference=reference_name, results=results), f, indent=2)


if __name__ == "__main__":
  main()
