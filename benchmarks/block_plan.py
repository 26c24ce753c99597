"""Where a TimeSformer block's time goes, by the TPU compiler's estimate.

`--mode=plan` compiles a whole training step: 10-20 minutes for L/16 at
16x448 on a 2-core host, and one number. This script compiles one block and
its parts (forward and backward, against a random cotangent, bf16 compute,
float32 parameters) for one chip of a TPU topology in seconds each, and
prints per part the compiler's step-time estimate (`optimal_seconds`), its
FLOPs and bytes accessed, the analytic FLOPs (3x forward, as
cover_jax.models.flops counts them) and the modelled MFU. It is the loop for
changing the model's layout: edit, rerun, compare. These are the compiler's
estimates, not measurements.

    pip install -e ".[tpu]"
    python benchmarks/block_plan.py                          # L/16, 16x448, v5p
    python benchmarks/block_plan.py --variant=B/16 --frames=8 --size=224
    python benchmarks/block_plan.py --parts=block --remat=dots_saveable
    python benchmarks/block_plan.py --json=out.json

Per-chip work is one video (`--videos`); a data-parallel step on N chips
does this on each.
"""

import argparse
import functools
import json
import time

from cover_jax.tools import plan

plan.prepare_host("v5p:2x2x1")

# pylint: disable=wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp

from cover_jax.models import timesformer
# pylint: enable=wrong-import-position

PARTS = ("block", "spatial_attention", "temporal_attention", "mlp")


class Part(nn.Module):
  """One part of a divided space-time block on tokens [b, t, 1 + s, d]."""
  part: str
  num_heads: int
  mlp_dim: int
  remat: str | None

  @nn.compact
  def __call__(self, x):
    batch, time_, length, width = x.shape
    bf16 = jnp.bfloat16
    attention = functools.partial(timesformer.Attention,
                                  num_heads=self.num_heads, dtype=bf16)
    tokens = x.reshape(-1, width)
    if self.part == "block":
      block = timesformer.Block
      if self.remat:
        block = nn.remat(block,
                         policy=getattr(jax.checkpoint_policies, self.remat))
      return block(self.num_heads, self.mlp_dim, gelu_approximate=True,
                   dtype=bf16)(x, 0.0)[0]
    if self.part == "spatial_attention":
      return attention()(tokens, (batch * time_, length, 1))
    if self.part == "temporal_attention":
      return attention()(tokens, (batch, time_, length))
    if self.part == "mlp":
      return timesformer.Mlp(self.mlp_dim, gelu_approximate=True,
                             dtype=bf16)(tokens)
    raise ValueError(f"unknown part {self.part!r}; one of {PARTS}")


def analytic_flops(part, *, videos, frames, length, width, mlp_dim):
  """Forward + backward (3x forward) FLOPs of `part`, 2 per multiply-add."""
  n = videos * frames * length
  spatial = 4 * n * width * width + 2 * videos * frames * length**2 * width
  temporal = 4 * n * width * width + 2 * videos * length * frames**2 * width
  mlp = 2 * n * width * mlp_dim
  macs = dict(spatial_attention=spatial, temporal_attention=temporal,
              mlp=mlp, block=spatial + temporal + n * width * width + mlp)
  return 3 * 2 * macs[part]


def estimate(part, device, *, videos, frames, length, width, num_heads,
             mlp_dim, remat, peak):
  """The compiler's figures for `part`'s forward and backward on `device`."""
  module = Part(part, num_heads, mlp_dim, remat)
  on_device = jax.sharding.SingleDeviceSharding(device)
  x = jax.ShapeDtypeStruct((videos, frames, length, width), jnp.bfloat16)
  params = jax.eval_shape(lambda: timesformer.unboxed(
      module.init(jax.random.PRNGKey(0), jnp.zeros(x.shape, x.dtype))))
  y = jax.eval_shape(module.apply, params, x)

  def forward_backward(params, x, d_y):
    _, vjp = jax.vjp(module.apply, params, x)
    return vjp(d_y)

  args = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_device),
      (params, x, y))
  start = time.time()
  compiled = jax.jit(forward_backward).lower(*args).compile()
  cost = plan.cost_analysis(compiled)
  seconds = float(cost["optimal_seconds"])
  analytic = analytic_flops(part, videos=videos, frames=frames,
                            length=length, width=width, mlp_dim=mlp_dim)
  return dict(part=part, remat=remat, estimate_ms=seconds * 1e3,
              compiler_gflop=cost["flops"] / 1e9,
              analytic_gflop=analytic / 1e9,
              bytes_accessed_gb=cost.get("bytes accessed", 0.0) / 1e9,
              temporaries_mib=plan.memory(compiled)["temporaries"] / 2**20,
              modelled_mfu=analytic / seconds / peak if seconds > 0 else None,
              compile_s=time.time() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topology", default="v5p:2x2x1")
  parser.add_argument("--variant", default="L/16")
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--size", type=int, default=448)
  parser.add_argument("--videos", type=int, default=1)
  parser.add_argument("--parts", default=",".join(PARTS))
  parser.add_argument("--remat", default=None,
                      help="a jax.checkpoint_policies name, for the block")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  fields = timesformer.variant(args.variant)
  device = plan.topology_devices(args.topology)[0]
  target = plan.chip([device])
  length = 1 + (args.size // fields["patch_size"]) ** 2
  print(f"{args.variant} {args.frames}x{args.size}, {args.videos} video(s) "
        f"per chip, one {target['kind']} chip; the TPU compiler's estimates")
  rows = []
  for part in args.parts.split(","):
    row = estimate(part, device, videos=args.videos, frames=args.frames,
                   length=length, width=fields["width"],
                   num_heads=fields["num_heads"], mlp_dim=fields["mlp_dim"],
                   remat=args.remat if part == "block" else None,
                   peak=target["peak_flops"])
    rows.append(row)
    print(f"  {part:19s} {row['estimate_ms']:7.3f} ms  MFU "
          f"{row['modelled_mfu']:.3f}  compiler/analytic FLOPs "
          f"{row['compiler_gflop'] / row['analytic_gflop']:.3f}  "
          f"{row['bytes_accessed_gb']:6.2f} GB accessed  "
          f"temporaries {row['temporaries_mib']:6.0f} MiB", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(args=vars(args), chip=target, rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
