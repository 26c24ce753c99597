"""A config's plan with fewer blocks: the per-chip work of the real step.

`--mode=plan` on cover_l16_jft compiles 24 unrolled blocks (9-20 minutes on
a 2-core host). The step time grows linearly in the depth, so two plans at
depths 2 and 4 of the same slice and batch give the time per block (the
slope, gradient all-reduce included) and the rest (the intercept) in 2-4
minutes each; the full step is intercept + 24 x slope. Same function as
`--mode=plan` (cover_jax.tools.plan.compile_step), the config's everything but the depth;
prints one JSON line per plan. The compiler's estimates, not measurements.

    python benchmarks/plan_proxy.py --config=configs/cover_l16_jft.py \
        --topology=v5p:4x4x4 --depths=2,4 --set model.remat_policy=dots_saveable

`--chips=N` plans for the topology's first N chips alone (a data-parallel
mesh of N), e.g. `--topology=v5p:2x2x1 --chips=1 --batch_size=2`: the same
work per chip as 64 chips at batch 128, without the gradient all-reduce.
"""

import argparse
import json

from configs import args as config_args
from cover_jax.tools import plan


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/cover_l16_jft.py",
                      help="path[:arg], as main.py's --config")
  parser.add_argument("--topology", default="v5p:4x4x4")
  parser.add_argument("--depths", default="2,4")
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--chips", type=int, default=None,
                      help="plan for the first N chips (mesh data=N)")
  parser.add_argument("--set", action="append", default=[],
                      metavar="FIELD=VALUE", help="e.g. model.remat_policy="
                      "everything_saveable (text fields)")
  args = parser.parse_args()
  plan.prepare_host(args.topology)
  devices = plan.topology_devices(args.topology)[:args.chips]
  rows = []
  for depth in (int(d) for d in args.depths.split(",")):
    config = config_args.load(args.config)
    config.model.depth = depth  # a new field: the variant's depth otherwise
    if args.batch_size:
      config.batch_size = args.batch_size
    if args.chips:
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = len(devices), 1, 1
    config.update_from_flattened_dict({
        field: None if value == "None" else value
        for field, value in (item.split("=", 1) for item in args.set)})
    p = plan.compile_step(config, devices)
    row = dict(depth=depth, topology=args.topology, chips=len(devices),
               settings=args.set,
               batch_size=config.batch_size,
               total_gib=p["bytes_per_chip"]["total"] / 2**30,
               step_s=p["compiler_estimate"]["step_seconds"],
               mfu=p["compiler_estimate"]["mfu"],
               flops_ratio=p["flops"]["ratio"],
               compile_s=p["compile_seconds"])
    rows.append(row)
    print(json.dumps(row), flush=True)
  if len(rows) >= 2 and all(r["step_s"] for r in rows):
    a, b = rows[0], rows[-1]
    slope = (b["step_s"] - a["step_s"]) / (b["depth"] - a["depth"])
    print(json.dumps(dict(seconds_per_block=slope,
                          seconds_outside_blocks=a["step_s"] -
                          slope * a["depth"])))


if __name__ == "__main__":
  main()
