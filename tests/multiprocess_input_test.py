"""Two JAX processes (jax.distributed on 127.0.0.1) assemble one global batch.

Each process reads its own shard of every dataset and feeds its 4 local
devices; the global array must be process 0's local batch followed by
process 1's, each exactly what a single process computes for that shard.
"""

import sys

import numpy as np

from cover_jax import input as inp
from tests import distributed
from tests import pipeline_test


def worker(data_dir: str, port: int, process_id: int, out: str) -> None:
  """One of the two processes: global batch via jax.distributed, to `out`."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from cover_jax import sharding  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id)
  assert jax.process_count() == 2 and jax.local_device_count() == 4
  mesh = sharding.make_mesh(data=-1)
  it = make_iterator(data_dir, jax.process_index(), jax.process_count())
  for _ in range(2):
    batch = inp.to_global(next(it), mesh)
  assert batch["video"]["frames"].shape[0] == 8
  gathered = multihost_utils.process_allgather(batch, tiled=True)
  if process_id == 0:
    np.savez(out, **{f"{part}/{key}": value for part, leaves in
                     gathered.items() for key, value in leaves.items()})
  it.close()
  jax.distributed.shutdown()


def make_iterator(data_dir, process_index, process_count):
  sources = [pipeline_test.source(data_dir, "video_large", name="large"),
             pipeline_test.source(data_dir, "image")]
  return inp.TrainIterator(sources, pipeline_test.PREP, flips=[True, True],
                           global_batch=16, granule=8, seed=1,
                           process_index=process_index,
                           process_count=process_count)


def test_global_batch_from_two_processes(synthetic_dir, tmp_path):
  out = str(tmp_path / "global.npz")
  distributed.run_two_processes(__file__, synthetic_dir, out)
  got = np.load(out)
  # What each process read, computed here one shard at a time.
  expected = []
  for p in range(2):
    it = make_iterator(synthetic_dir, p, 2)
    next(it)
    expected.append(next(it))
    it.close()
  for part in ("video", "image"):
    for key in ("frames", "label", "dataset"):
      want = np.concatenate([e[part][key] for e in expected])
      np.testing.assert_array_equal(got[f"{part}/{key}"], want)
  # The two processes read different examples (disjoint shards).
  assert not np.array_equal(expected[0]["video"]["frames"],
                            expected[1]["video"]["frames"])


if __name__ == "__main__":
  worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
