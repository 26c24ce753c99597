"""Two JAX processes (jax.distributed on 127.0.0.1) assemble one global batch,
then evaluate (one pair of processes for both).

Each process loads the rows of the batch shards its 4 devices hold; the
global array must be exactly the batch one process computes for the whole
mesh: the global batch of a step does not depend on the number of processes.
Evaluation across the two processes scores every example once
(tests/eval_reference.py's tiny model and synthetic clips).
"""

import json
import os
import sys

import numpy as np
import pytest

from cover_jax import input as inp
from tests import distributed
from tests import eval_reference
from tests import synthetic_data



def worker(data_dir: str, port: int, process_id: int, out: str) -> None:
  """One of the two processes: global batch via jax.distributed, to
  `out`/global.npz; then evaluates, process 0 writing the JSON in `out`."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from cover_jax import sharding  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id)
  assert jax.process_count() == 2 and jax.local_device_count() == 4
  mesh = sharding.make_mesh(data=-1)
  it = make_iterator(data_dir, sharding.process_batch_shards(mesh))
  for _ in range(2):
    batch = inp.to_global(next(it), mesh)
  assert batch["video"]["frames"].shape[0] == 8
  gathered = multihost_utils.process_allgather(batch, tiled=True)
  if process_id == 0:
    np.savez(os.path.join(out, "global.npz"),
             **{f"{part}/{key}": value for part, leaves in
                gathered.items() for key, value in leaves.items()})
  it.close()
  # Evaluation: the model's parameters are numpy, the same in both
  # processes; 7 clips in one batch of 8: process 0 reads 4, process 1 3 and
  # a pad.
  from cover_jax.training import evaluate as ev  # pylint: disable=import-outside-toplevel
  model, params = eval_reference.model_and_params()
  results = ev.evaluate(model, params,
                        eval_reference.synthetic_config(data_dir),
                        names=["clips"], mesh=sharding.make_mesh(), step=1,
                        workdir=out)
  with open(os.path.join(out, f"process_{process_id}.json"), "w") as f:
    json.dump(results, f)
  jax.distributed.shutdown()


def make_iterator(data_dir, shards=None):
  sources = [synthetic_data.source(data_dir, "video_large", name="large"),
             synthetic_data.source(data_dir, "image")]
  return inp.TrainIterator(sources, synthetic_data.PREP, flips=[True, True],
                           global_batch=16, granule=8, seed=1, shards=shards)


@pytest.mark.slow
def test_global_batch_and_evaluation_from_two_processes(synthetic_dir,
                                                        tmp_path):
  out = str(tmp_path)
  distributed.run_two_processes(__file__, synthetic_dir, out)
  got = np.load(tmp_path / "global.npz")
  # The batch one process computes for all 8 shards.
  it = make_iterator(synthetic_dir)
  next(it)
  expected = next(it)
  it.close()
  for part in ("video", "image"):
    for key in ("frames", "label", "dataset"):
      np.testing.assert_array_equal(got[f"{part}/{key}"],
                                    expected[part][key])
  # The two processes loaded different examples (their own shards).
  half = len(expected["video"]["frames"]) // 2
  assert not np.array_equal(expected["video"]["frames"][:half],
                            expected["video"]["frames"][half:])
  # Evaluation: every process gets the global results, those of numpy on
  # one device, every example scored once.
  from cover_jax.training import evaluate as ev  # pylint: disable=import-outside-toplevel
  model, params = eval_reference.model_and_params()
  scores = eval_reference.numpy_scores(
      model, params, eval_reference.synthetic_config(synthetic_dir), "clips")
  for p in range(2):
    with open(tmp_path / f"process_{p}.json") as f:
      assert json.load(f)["clips"] == pytest.approx(scores, rel=1e-5)
  assert ev.read_json(out, 1)["results"]["clips"]["examples"] == 7
  assert sorted(os.listdir(tmp_path / "eval")) == ["latest.json",
                                                   "step_1.json"]


if __name__ == "__main__":
  worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
