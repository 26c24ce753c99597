"""Training across processes is training on one: 2 jax.distributed processes
x 4 CPU devices end where 1 process x 8 devices ends, stopped by Ctrl-C,
killed, and resumed onto a mesh whose tensor groups span both processes (and
on 1 process); init_from places a checkpoint's parameters across processes;
processes sharing a batch shard load the same rows.

The workers (this file run as a script) call the real loop,
`train.train_and_evaluate`, on the tiny mini config of tests/tiny_runs.py.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cover_jax import input as inp
from cover_jax import sharding
from cover_jax.runtime import stop_request
from cover_jax.training import checkpointing
from cover_jax.training import evaluate
from cover_jax.training import optimizer
from cover_jax.training import train
from tests import distributed
from tests import tiny_runs

# Attention heads and MLP divisible by 8: the tensor axis can span 8 devices.
WIDE_HEADS = dict(num_heads=8)
# 8 rows of each of the 3 datasets: no rounding of the split to a mesh's
# batch shards, so runs on different meshes see the same batches.
BATCH_SIZE = 24
HEADS = ["digits_image", "digits_appearance", "digits_motion"]
RESUME_MARK = "Start: resumed from this workdir's checkpoint at step "


def config_for(data_dir, mesh, **overrides):
  overrides = {**{f"model.{k}": v for k, v in WIDE_HEADS.items()},
               **overrides}
  config = tiny_runs.tiny_config(data_dir, batch_size=BATCH_SIZE,
                                 **overrides)
  config.mesh.update(dict(zip(("data", "fsdp", "tensor"), mesh)))
  config.checkpoint.async_save = False
  config.log_every_steps = 1
  config.input.eval_views = 1  # evaluation is not what is tested here
  return config


# ----------------------------------------------------------------------------
# The worker: one of two processes.
# ----------------------------------------------------------------------------

def worker(port: int, process_id: int, spec_json: str) -> None:
  """Trains `spec` (data_dir, workdir, mesh, overrides) as process_id of 2."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id)
  assert jax.process_count() == 2 and jax.local_device_count() == 4
  spec = json.loads(spec_json)
  print(f"process {jax.process_index()} pid {os.getpid()}", flush=True)
  config = config_for(spec["data_dir"], spec["mesh"], **spec["overrides"])
  mesh = sharding.make_mesh(**config.mesh)
  if jax.process_index() == 0:  # what the mesh spreads over the processes
    print("shards " + json.dumps(
        [sharding.process_batch_shards(mesh, p) for p in range(2)]),
          flush=True)
    print("tensor groups span processes: " + str(any(
        len({d.process_index for d in group}) > 1 for group in
        mesh.devices.reshape(-1, mesh.shape["tensor"]))), flush=True)
  if spec.get("signal_at_evaluation") and jax.process_index() == 0:
    _signal_when_evaluation_starts(getattr(signal,
                                           spec["signal_at_evaluation"]))
  try:
    train.train_and_evaluate(config, spec["workdir"])
  except stop_request.Stopped as stopped:
    print(f"process {jax.process_index()}: {stopped}", flush=True)
    jax.distributed.shutdown()
    sys.exit(stopped.exit_status)
  if spec.get("round_trip_fsdp"):
    _round_trip_over_fsdp(config, spec["workdir"])
  if spec.get("check_init_from"):
    _init_from_across_processes(config, spec["check_init_from"],
                                spec["workdir"] + "_init")
  jax.distributed.shutdown()


def _signal_when_evaluation_starts(signum: int) -> None:
  """This process signals itself as its first evaluation opens its data."""
  real = inp.make.for_eval

  def for_eval(*args, **kwargs):
    inp.make.for_eval = real
    stream = real(*args, **kwargs)
    os.kill(os.getpid(), signum)
    return stream

  inp.make.for_eval = for_eval


def _round_trip_over_fsdp(config, workdir: str) -> None:
  """Parameters spread over the processes by fsdp come back whole."""
  mesh = sharding.make_mesh(data=1, fsdp=8, tensor=1)
  model = train.model_from_config(config)
  params = checkpointing.read_params(os.path.join(workdir, "checkpoints"))
  placed = sharding.put(params, sharding.param_shardings(model, mesh))
  kernel = placed["encoderblock_0"]["mlp"]["Dense_0"]["kernel"]
  assert not kernel.is_fully_addressable  # rows on both processes
  back = sharding.to_host(placed)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  print("fsdp round trip: equal", flush=True)


def state_layout(config):
  """(model, train.state_layout on config's mesh)."""
  model = train.model_from_config(config)
  tx, _ = optimizer.make(config, steps_per_epoch=10)
  return model, train.state_layout(model, tx,
                                   sharding.make_mesh(**config.mesh))


def _init_from_across_processes(config, init: str, empty_workdir: str) -> None:
  """train.restore_or_init with init_from, on this run's mesh (its tensor
  groups spanning both processes): the checkpoint's parameters, exactly."""
  config = config.copy_and_resolve_references()
  config.init_from = init
  model, (init_fn, abstract, shardings) = state_layout(config)
  mngr = checkpointing.manager(os.path.join(empty_workdir, "checkpoints"),
                               keep=1)
  state, data_state, note = train.restore_or_init(
      config, mngr, model, init_fn, abstract, shardings, [])
  kernel = state["params"]["encoderblock_0"]["mlp"]["Dense_0"]["kernel"]
  assert not kernel.is_fully_addressable and data_state is None
  got = sharding.to_host(state["params"])
  want = checkpointing.read_params(init)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  print(f"init_from across processes: equal ({note})", flush=True)


def launch(tmp_path, name, data_dir, mesh, *, kill_at=None,
           statuses=(0, 0), **overrides):
  """Runs the two workers; returns their outputs.

  kill_at: SIGKILL both when process 0 prints a line starting with it.
  statuses: the exit statuses expected otherwise.
  """
  workdir = str(tmp_path / name)
  spec = json.dumps(dict(data_dir=data_dir, workdir=workdir, mesh=mesh,
                         overrides=overrides.pop("config", {}), **overrides))
  port = distributed.free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=distributed.ROOT,
             XLA_FLAGS=distributed.xla_flags(4))
  procs = [subprocess.Popen(
      [sys.executable, __file__, str(port), str(i), spec], env=env,
      cwd=distributed.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  lines = []
  for line in procs[0].stdout:
    lines.append(line)
    if kill_at and line.startswith(kill_at):
      for p in procs:
        p.send_signal(signal.SIGKILL)
      break
  logs = ["".join(lines) + procs[0].communicate(timeout=300)[0],
          procs[1].communicate(timeout=300)[0]]
  if not kill_at:
    for p, log, status in zip(procs, logs, statuses):
      assert p.returncode == status, log[-3000:]
  else:
    assert any(l.startswith(kill_at) for l in lines), logs[0][-3000:]
  return logs


def pid_of(log: str, process: int) -> int:
  return int(re.search(rf"^process {process} pid (\d+)$", log, re.M)[1])


def assert_close_params(got, want):
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  flat_want = jax.tree_util.tree_leaves_with_path(want)
  assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
  for (path, a), (_, b) in zip(flat_got, flat_want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def saved_data_state(workdir, step):
  return json.loads((checkpointing.epath.Path(workdir) / "checkpoints" /
                     str(step) / checkpointing.DATA / "metadata").read_text())


# ----------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------

def test_micro_batches_spread_over_every_batch_shard():
  mesh = sharding.make_mesh(data=4, fsdp=2)
  rows = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)
  batch = jax.device_put(rows, sharding.batch_sharding(mesh, 2))
  with sharding.use(mesh):
    micro = jax.jit(lambda x: train.micro_batches(x, 2))(batch)
  # Micro-batch a: rows a, a + 2, ...; its rows on all 8 batch shards.
  np.testing.assert_array_equal(np.asarray(micro[1]), rows[1::2])
  assert micro.sharding.spec == jax.sharding.PartitionSpec(
      None, ("data", "fsdp"))

  def accumulate(x):  # a scan over the micro-batches, as the step runs it
    return jax.lax.scan(lambda c, m: (c + jnp.sum(m ** 2), None), 0.,
                        train.micro_batches(x, 2))[0]
  with sharding.use(mesh):
    hlo = jax.jit(accumulate).lower(batch).compile().as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo


def test_data_state_is_global_and_refuses_another_mixture():
  saved = checkpointing.data_state({"step": 5, "consumed": {"a": 3, "b": 7}},
                                   ["a", "b"])
  want = {"step": 5, "consumed": {"a": 3, "b": 7}}
  assert checkpointing.resumed_data_state(saved, ["b", "a"]) == want
  with pytest.raises(ValueError, match=r"this config trains on \['a'\]: use "
                     r"init_from \(weights only\) to change the mixture"):
    checkpointing.resumed_data_state(saved, ["a"])


@pytest.fixture(scope="module")
def one_process_run(digits_dir, tmp_path_factory):
  """1 process x 8 devices, mesh data=2, fsdp=2, tensor=2, straight through
  (its evaluation stubbed out: only its checkpoints are compared)."""
  workdir = str(tmp_path_factory.mktemp("one_process"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
    train.train_and_evaluate(config_for(digits_dir, (2, 2, 2)), workdir)
  return workdir


@pytest.mark.slow
def test_two_processes_train_as_one_after_ctrl_c_kill_and_a_new_mesh(
    digits_dir, one_process_run, tmp_path):
  """2 processes x 4 devices, mesh data=2, fsdp=2, tensor=2, evaluating every
  2 steps, checkpointing every 3: Ctrl-C to process 0 as step 2's
  evaluation starts stops both at one safe point, step 2 saved; the same
  command, killed mid-training after step 4 is logged (its checkpoint may or
  may not be complete); then to the end on mesh data=1, fsdp=1, tensor=8
  (every tensor group spans both processes, both hold the one batch shard):
  the parameters of one process that never stopped, on 8 devices; the
  2-process checkpoint of step 2 restores on one process as its own."""
  want = tiny_runs.final_params(one_process_run)
  config = {"eval_every_steps": 2, "checkpoint.every_steps": 3}
  first = launch(tmp_path, "two", digits_dir, (2, 2, 2), statuses=(130, 0),
                 signal_at_evaluation="SIGINT", config=config)
  assert "shards [[0, 1], [2, 3]]" in first[0]  # data spans the processes
  for process, log in enumerate(first):
    cause = ("SIGINT" if process == 0 else
             "a signal to another process of the run")
    # Both at one safe point: an evaluation batch, or the next step's start.
    assert re.search(rf"^process {process}: Stopped at step 2( during the "
                     rf"evaluation of \w+)? \({re.escape(cause)}\)", log,
                     re.M), log[-3000:]
  workdir = str(tmp_path / "two")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  killed = launch(tmp_path, "two", digits_dir, (2, 2, 2), kill_at="step 4/6",
                  config=config)
  assert os.path.exists(os.path.join(workdir, "eval", "step_2.json"))
  last, other = launch(tmp_path, "two", digits_dir, (1, 1, 8), config=config,
                       round_trip_fsdp=True, check_init_from=os.path.join(
                           one_process_run, "checkpoints", "2"))
  assert "shards [[0], [0]]" in last
  assert "tensor groups span processes: True" in last
  resumed = [l for l in last.splitlines() if l.startswith(RESUME_MARK)]
  assert resumed and int(resumed[0][len(RESUME_MARK):]) in (2, 3), last
  assert_close_params(tiny_runs.final_params(workdir), want)
  assert "fsdp round trip: equal" in last
  assert re.search(r"^init_from across processes: equal \(initialised from "
                   r"cover-jax checkpoint", last, re.M), last[-3000:]
  # The data position is global: the same integers as one process saved.
  got = saved_data_state(workdir, 6)
  ref = saved_data_state(one_process_run, 6)
  assert got["process_count"] == 2 and ref["process_count"] == 1
  assert (got["step"], got["consumed"]) == (ref["step"], ref["consumed"])
  # Only process 0 writes TensorBoard events (their names hold the pid) and
  # prints; process 1 only logs.
  events = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
  writers = {pid_of(logs[0], 0) for logs in (first, killed, (last,))}
  assert sorted(int(re.search(r"\.(\d+)\.\d+\.v2$", e)[1])
                for e in events) == sorted(writers), (events, writers)
  assert "Evaluation at step" not in other and pid_of(other, 1)
  # The 2-process checkpoint of step 2 restores on 1 process as the state
  # (parameters, momentum, step) and data position one process saved.
  _, (_, abstract, _) = state_layout(config_for(digits_dir, (2, 2, 2)))
  two, one = (checkpointing.restore(checkpointing.manager(
      os.path.join(w, "checkpoints")), abstract, 2)
              for w in (workdir, one_process_run))
  assert_close_params(sharding.to_host(two[0]), sharding.to_host(one[0]))
  assert (checkpointing.resumed_data_state(two[1], HEADS) ==
          checkpointing.resumed_data_state(one[1], HEADS))


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
