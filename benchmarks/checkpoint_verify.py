"""What do checkpoint digests cost (cover_jax/training/checkpoint_digest.py)?

Saves and restores two states with our manager (digest written once orbax
commits; verified before each restore) and with a plain orbax
CheckpointManager of the same options (neither), each `--rounds` times,
alternating, in a fresh directory under `--dir`, and prints the medians:

  - the mini config's training state (configs/cover_mini.py: params and
    AdamW moments, as train.py saves it);
  - a synthetic pytree of `--synthetic_mib` MiB of random float32 (random:
    zstd cannot shrink it, as trained weights).

Save times are synchronous (save + wait_until_finished: with async saves the
digest is computed in orbax's finalize thread, beside training); restore
times are a new manager's restore of the latest step. Digest write and
verify alone are timed too, and sha256 over the same bytes in memory.

    python benchmarks/checkpoint_verify.py                 # 3 rounds, 1 GiB
    python benchmarks/checkpoint_verify.py --synthetic_mib=64 --rounds=1

Figures from earlier runs are in benchmarks/RESULTS.md.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from cover_jax.training import checkpoint_digest
from cover_jax.training import checkpointing
# pylint: enable=wrong-import-position


def mini_state():
  """The mini config's training state (train.py's layout), on the host."""
  from configs import cover_mini  # pylint: disable=import-outside-toplevel
  from cover_jax.training import optimizer, train  # pylint: disable=import-outside-toplevel
  from cover_jax import sharding  # pylint: disable=import-outside-toplevel
  config = cover_mini.get_config()
  mesh = sharding.make_mesh(**config.mesh)
  model = train.model_from_config(config)
  tx, _ = optimizer.make(config, steps_per_epoch=100)
  init, _, shardings = train.state_layout(model, tx, mesh)
  return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))


def synthetic_state(mib: int):
  """{"params": 64 MiB random float32 arrays} totalling `mib` MiB."""
  rng = np.random.default_rng(0)
  per = 16 << 20  # float32 values per array: 64 MiB
  total = mib << 18  # float32 values
  sizes = [per] * (total // per) + ([total % per] if total % per else [])
  return {"params": {f"w{i}": jax.device_put(
      rng.standard_normal(n, dtype=np.float32)) for i, n in enumerate(sizes)},
          "step": jax.device_put(np.int32(1))}


def nbytes(state) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(state))


def plain_manager(directory):
  """orbax alone, the options of checkpointing.manager (sync)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=2,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=(checkpointing.STATE,
                                           checkpointing.DATA))


def one_round(state, directory, digests: bool) -> dict:
  """Seconds: save (sync) and restore, with or without digests."""
  shutil.rmtree(directory, ignore_errors=True)
  make = ((lambda: checkpointing.manager(directory, keep=2, async_save=False))
          if digests else (lambda: plain_manager(directory)))
  mngr = make()
  start = time.perf_counter()
  checkpointing.save(mngr, 1, state, {"step": 1})
  mngr.wait_until_finished()
  saved = time.perf_counter() - start
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  mngr = make()
  start = time.perf_counter()
  if digests:
    restored, _ = checkpointing.restore(mngr, abstract)
  else:
    restored = mngr.restore(1, args=ocp.args.Composite(**{
        checkpointing.STATE: ocp.args.StandardRestore(abstract),
        checkpointing.DATA: ocp.args.JsonRestore()}))[checkpointing.STATE]
  jax.block_until_ready(restored)
  result = {"save": saved, "restore": time.perf_counter() - start}
  if digests:
    step_dir = epath.Path(directory) / "1"
    start = time.perf_counter()
    checkpoint_digest.verify(step_dir)
    result["verify alone"] = time.perf_counter() - start
    start = time.perf_counter()
    checkpoint_digest.write(step_dir)
    result["digest write alone"] = time.perf_counter() - start
    result["checkpoint bytes"] = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(step_dir) for f in files)
  return result


def in_memory_sha256(state) -> float:
  start = time.perf_counter()
  for x in jax.tree.leaves(state):
    hashlib.sha256(np.asarray(x).tobytes()).hexdigest()
  return time.perf_counter() - start


def report(name, state, rounds, base):
  directory = os.path.join(base, name)
  runs = {True: [], False: []}
  for r in range(rounds):
    for digests in ((True, False) if r % 2 == 0 else (False, True)):
      runs[digests].append(one_round(state, directory, digests))
  med = lambda rows, k: statistics.median(row[k] for row in rows)
  size = med(runs[True], "checkpoint bytes")
  print(f"\n{name}: state {nbytes(state) / 2**20:.0f} MiB, checkpoint "
        f"{size / 2**20:.0f} MiB; medians of {rounds} round(s), seconds")
  print(f"{'':22}{'digests':>10}{'orbax alone':>13}{'extra':>9}")
  for key in ("save", "restore"):
    a, b = med(runs[True], key), med(runs[False], key)
    print(f"{key:22}{a:>10.3f}{b:>13.3f}{a - b:>+9.3f}")
  for key in ("digest write alone", "verify alone"):
    t = med(runs[True], key)
    print(f"{key:22}{t:>10.3f}   ({size / 2**20 / t:.0f} MiB/s)")
  t = in_memory_sha256(state)
  print(f"{'sha256 in memory':22}{t:>10.3f}   "
        f"({nbytes(state) / 2**20 / t:.0f} MiB/s, one thread)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--synthetic_mib", type=int, default=1024)
  parser.add_argument("--dir", default=None,
                      help="where to write (default: a temporary folder)")
  args = parser.parse_args()
  base = args.dir or tempfile.mkdtemp(prefix="checkpoint_verify_")
  print(f"jax {jax.__version__}, orbax {ocp.__version__}, "
        f"{os.cpu_count()} CPUs, in {base}")
  report("mini config", mini_state(), args.rounds, base)
  report(f"synthetic {args.synthetic_mib} MiB",
         synthetic_state(args.synthetic_mib), args.rounds, base)
  if not args.dir:
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
  main()
