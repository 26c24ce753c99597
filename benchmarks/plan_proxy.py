"""A config's plan with fewer blocks: the per-chip work of the real step.

`--mode=plan` on cover_l16_jft compiles 24 unrolled blocks (9-20 minutes on
a 2-core host). The step time grows linearly in the depth, so two plans at
depths 2 and 4 of the same slice and batch give the time per block (the
slope, gradient all-reduce included) and the rest (the intercept) in 2-4
minutes each; the full step is intercept + 24 x slope. Same function as
`--mode=plan` (cover_jax.plan.plan), the config's everything but the depth;
prints one JSON line per plan. The compiler's estimates, not measurements.

    python benchmarks/plan_proxy.py --config=configs/cover_l16_jft.py \
        --topology=v5p:4x4x4 --depths=2,4 --set model.remat_policy=dots_saveable
"""

import argparse
import importlib.util
import json

from cover_jax import plan

# pylint: disable=wrong-import-position


def load_config(path: str, arg: str | None):
  spec = importlib.util.spec_from_file_location("proxy_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def set_field(config, dotted: str, value: str):
  node = config
  *path, last = dotted.split(".")
  for name in path:
    node = node[name]
  node[last] = value if value != "None" else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/cover_l16_jft.py")
  parser.add_argument("--arg", default=None, help="the config's argument")
  parser.add_argument("--topology", default="v5p:4x4x4")
  parser.add_argument("--depths", default="2,4")
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--set", action="append", default=[],
                      metavar="FIELD=VALUE", help="e.g. model.remat_policy="
                      "everything_saveable (text fields)")
  args = parser.parse_args()
  plan.prepare_host(args.topology)
  devices = plan.topology_devices(args.topology)
  rows = []
  for depth in (int(d) for d in args.depths.split(",")):
    config = load_config(args.config, args.arg)
    with config.unlocked():
      config.model.depth = depth
      if args.batch_size:
        config.batch_size = args.batch_size
      for item in args.set:
        set_field(config, *item.split("=", 1))
    p = plan.plan(config, devices)
    row = dict(depth=depth, topology=args.topology, settings=args.set,
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
