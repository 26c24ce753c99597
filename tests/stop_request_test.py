"""SIGTERM and Ctrl-C at any moment (cover_jax/runtime/stop_request.py), and a save
that fails (cover_jax/training/checkpointing.py): in-process runs of the tiny config
signalled from inside the moment under test, and main.py in a subprocess for
the exit status, the one line and a second Ctrl-C. (Two processes:
tests/multihost_train_test.py.)"""

import errno
import os
import resource
import signal
import subprocess
import time

import pytest

from cover_jax import input as inp
from cover_jax.runtime import stop_request
from cover_jax.training import checkpoint_digest
from cover_jax.training import checkpointing
from cover_jax.training import evaluate
from cover_jax.training import stages
from cover_jax.training import train
from tests import tiny_runs


def signal_on_first_call(monkeypatch, module, name, signum, *, after=True):
  """Makes module.name send `signum` to this process on its first call
  (after the real call returns, or before it)."""
  real = getattr(module, name)
  calls = []

  def patched(*args, **kwargs):
    first = not calls
    calls.append(1)
    if first and not after:
      os.kill(os.getpid(), signum)
    out = real(*args, **kwargs)
    if first and after:
      os.kill(os.getpid(), signum)
    return out

  monkeypatch.setattr(module, name, patched)
  return calls


def record_evaluations(monkeypatch, field):
  """evaluate.evaluate, still run, records its `field` argument per call."""
  real, seen = evaluate.evaluate, []
  monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: seen.append(
      k[field]) or real(*a, **k))
  return seen


def checkpoint_steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def assert_all_verify(workdir):
  for step in checkpoint_steps(workdir):
    step_dir = checkpointing.epath.Path(workdir) / "checkpoints" / str(step)
    assert checkpoint_digest.verify(step_dir)  # raises on any difference


@pytest.mark.slow
def test_sigint_during_a_save_stops_after_it_and_resumes_exactly(
    digits_dir, tiny_run, tmp_path, monkeypatch):
  """Ctrl-C while step 2 is being saved: the save completes, the run stops
  there (status 130, the handlers given back); resumed, it ends with the
  parameters of the run never interrupted (tiny_run)."""
  monkeypatch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
  config = tiny_runs.tiny_config(
      digits_dir, num_train_steps=5,
      **{"checkpoint.every_steps": 1, "checkpoint.keep": 3,
         "checkpoint.async_save": False})
  workdir = str(tmp_path)
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  saves = signal_on_first_call(monkeypatch, checkpointing, "save",
                               signal.SIGINT, after=False)
  with pytest.raises(stop_request.Stopped) as stopped:
    train.train_and_evaluate(config, workdir)
  assert (stopped.value.step, stopped.value.signal_name) == (1, "SIGINT")
  assert stopped.value.exit_status == 130
  assert str(stopped.value) == ("Stopped at step 1 (SIGINT): checkpoint "
                                "saved; run the same command to continue.")
  assert len(saves) == 1 and checkpoint_steps(workdir) == [1]
  assert_all_verify(workdir)
  assert (signal.getsignal(signal.SIGINT),
          signal.getsignal(signal.SIGTERM)) == before
  train.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == [3, 4, 5]
  tiny_runs.assert_same_params(tiny_runs.final_params(workdir),
                                tiny_runs.final_params(tiny_run))


@pytest.mark.slow
def test_sigterm_during_an_evaluation_saves_that_step_and_evaluates_it_on_resume(
    digits_dir, tmp_path, monkeypatch):
  """eval_every_steps=2, checkpoints every 3: SIGTERM as step 2's
  evaluation starts stops it before its first batch, saves step 2 (not a
  checkpoint step) and writes no results; the resumed run evaluates step 2
  first, then trains to the end."""
  config = tiny_runs.tiny_config(
      digits_dir, num_train_steps=4, eval_every_steps=2,
      **{"checkpoint.every_steps": 3, "input.eval_views": 1})
  workdir = str(tmp_path)
  signal_on_first_call(monkeypatch, inp.make, "for_eval", signal.SIGTERM)
  with pytest.raises(stop_request.Stopped) as stopped:
    train.train_and_evaluate(config, workdir)
  assert (stopped.value.step, stopped.value.signal_name) == (2, "SIGTERM")
  assert stopped.value.exit_status == 0
  assert "at step 2 during the evaluation of digits_appearance" in str(
      stopped.value)
  assert checkpoint_steps(workdir) == [2]
  assert not os.path.exists(os.path.join(workdir, "eval"))
  monkeypatch.undo()
  steps = record_evaluations(monkeypatch, "step")
  results = train.train_and_evaluate(config, workdir)
  assert steps == [2, 4]
  assert evaluate.read_json(workdir, 2)["step"] == 2
  assert results == evaluate.saved_results(config, workdir, 4)
  # Finished: started again, it trains and evaluates nothing.
  assert train.train_and_evaluate(config, workdir) == results
  assert steps == [2, 4]


@pytest.mark.slow
def test_signals_in_stage_one_and_between_the_stages_are_honoured(
    digits_dir, tmp_path, monkeypatch):
  """SIGTERM during stage 1's final evaluation stops the run before stage 2
  (it used to start stage 2 and train to the end); Ctrl-C as stage 1
  returns stops it between the stages; the third launch skips the finished
  stage 1 (its evaluation read back) and trains stage 2."""
  config = tiny_runs.tiny_config(
      digits_dir, **{"pretrain.num_train_steps": 2,
                     "pretrain.log_every_steps": 1,
                     "pretrain.eval_batch_size": 128,
                     "input.eval_views": 1})
  workdir = str(tmp_path)
  stage_dir = os.path.join(workdir, stages.PRETRAIN_DIR)
  signal_on_first_call(monkeypatch, inp.make, "for_eval", signal.SIGTERM)
  with pytest.raises(stop_request.Stopped) as stopped:
    stages.train_and_evaluate(config, workdir)
  assert str(stopped.value).startswith(
      "Stopped at step 2 in stage 1 during the evaluation of digits_image "
      "(SIGTERM)")
  assert checkpoint_steps(stage_dir) == [2]
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  monkeypatch.undo()
  stage_calls = signal_on_first_call(monkeypatch, train, "train_and_evaluate",
                                     signal.SIGINT)
  with pytest.raises(stop_request.Stopped) as stopped:
    stages.train_and_evaluate(config, workdir)
  assert str(stopped.value).startswith("Stopped between the stages (SIGINT)")
  assert len(stage_calls) == 1  # stage 2 never started
  assert evaluate.read_json(stage_dir, 2)["step"] == 2
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  monkeypatch.undo()
  evaluated = record_evaluations(monkeypatch, "workdir")
  stages.train_and_evaluate(config, workdir)
  assert evaluated == [workdir]  # stage 1 not evaluated again
  assert checkpoint_steps(workdir)[-1] == config.num_train_steps


@pytest.mark.slow
def test_a_failed_asynchronous_save_stops_the_run_at_the_next_step(
    digits_dir, tmp_path, monkeypatch):
  """The background part of step 4's save fails (its digest cannot be
  written: no space): the next step raises SaveFailed naming the file and
  the OS's error; step 2 stays intact and no step past it is saved."""
  monkeypatch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
  config = tiny_runs.tiny_config(digits_dir, num_train_steps=8)
  workdir = str(tmp_path)
  real = checkpoint_digest.write
  target = os.path.join(workdir, "checkpoints", "4",
                        checkpoint_digest.MANIFEST)

  def write(step_dir):
    if step_dir.name == "4":
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)
    return real(step_dir)

  monkeypatch.setattr(checkpoint_digest, "write", write)
  with pytest.raises(checkpointing.SaveFailed) as failed:
    train.train_and_evaluate(config, workdir)
  assert str(failed.value) == (
      f"Saving the checkpoint of step 4 to {target} failed: No space left "
      f"on device (errno 28). The checkpoints saved before it are intact "
      f"(latest: step 2): free space or fix the cause, then run the same "
      f"command to resume.")
  # Stopped before the next save: nothing past step 4 was started.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2",
                                                                       "4"]
  assert checkpoint_digest.verify(
      checkpointing.epath.Path(workdir) / "checkpoints" / "2")


# ----------------------------------------------------------------------------
# main.py: exit status, one line, a second Ctrl-C, a full disk.
# ----------------------------------------------------------------------------

def _start(cmd, **kwargs):
  return subprocess.Popen(cmd, cwd=tiny_runs.ROOT,
                          env=dict(os.environ, PYTHONPATH=tiny_runs.ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kwargs)


def _wait_for_line(proc, prefix):
  for line in proc.stdout:
    if line.startswith(prefix):
      return line
  raise AssertionError(f"no line {prefix!r}: {proc.communicate()[1][-3000:]}")


@pytest.mark.slow
def test_main_sigterm_then_ctrl_c_once_then_twice_then_to_the_end(
    digits_dir, tiny_run, tmp_path):
  """main.py co-training (from init_from: stage 1's signals are
  test_signals_in_stage_one_...): SIGTERM saves and exits 0; the same
  command resumes there, and Ctrl-C saves and exits 130; again, Ctrl-C twice
  stops at once (status 130) keeping what was saved; again, it trains to the
  end."""
  workdir = str(tmp_path)
  steps = 40  # far more than the steps a signal takes to be acted on
  cmd = tiny_runs.command(workdir, digits_dir, num_train_steps=steps,
                          init_from=tiny_run,
                          **{"checkpoint.every_steps": 1000,
                              "input.eval_views": 1})
  saved, stops = 0, []
  for signal_name, status in (("SIGTERM", 0), ("SIGINT", 130)):
    proc = _start(cmd)
    _wait_for_line(proc, "Start: initialised from" if not saved else
                   f"Start: resumed from this workdir's checkpoint at step "
                   f"{saved}")
    _wait_for_line(proc, "step ")
    proc.send_signal(getattr(signal, signal_name))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("Stopped at step ") and last.endswith(
        f"({signal_name}): checkpoint saved; run the same command to "
        f"continue."), out
    assert saved < int(last.split()[3]) < steps
    saved = int(last.split()[3])
    stops.append(saved)
    assert checkpoint_steps(workdir) == stops  # keep=3
    assert_all_verify(workdir)
  # Ctrl-C twice: the process ends at once (status 130, no checkpoint of
  # this session); the checkpoint saved before is intact.
  proc = _start(cmd)
  _wait_for_line(proc, f"Start: resumed from this workdir's checkpoint at "
                       f"step {saved}")
  _wait_for_line(proc, "step ")
  proc.send_signal(signal.SIGINT)
  time.sleep(0.05)
  start = time.monotonic()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  assert time.monotonic() - start < 10
  assert proc.returncode == 130, err[-3000:]
  assert "Ctrl-C again: stopped at once; the checkpoints saved before are " \
         "kept." in err and "Stopped at step" not in out, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert saved in checkpoint_steps(workdir)
  assert_all_verify(workdir)
  # And to the end, from the newest checkpoint.
  out = tiny_runs.run(cmd)
  assert out.returncode == 0, out.stderr[-3000:]
  assert tiny_runs.resumed_at(out.stdout)[-1] == saved, out.stdout
  assert f"step {steps}/{steps}" in out.stdout
  assert f"Evaluation at step {steps}" in out.stdout


@pytest.mark.slow
def test_main_full_disk_is_one_line_naming_the_file_and_the_os_error(
    digits_dir, tiny_run, tmp_path):
  """The file-size limit of the running process lowered below a checkpoint's
  data file once step 50 is saved: the OS refuses the write (EFBIG, as a
  full disk refuses with ENOSPC); the run stops with one line."""
  workdir = str(tmp_path)
  cmd = tiny_runs.command(workdir, digits_dir, num_train_steps=400,
                          init_from=tiny_run,
                          **{"checkpoint.every_steps": 50,
                             "log_every_steps": 50, "input.eval_views": 1})
  proc = _start(cmd)
  _wait_for_line(proc, "Start: initialised from")
  step_2 = os.path.join(workdir, "checkpoints", "50")
  while not os.path.exists(os.path.join(step_2, checkpoint_digest.MANIFEST)):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  biggest = max(os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(step_2) for f in files)
  events = max(os.path.getsize(os.path.join(workdir, f))
               for f in os.listdir(workdir) if f.startswith("events"))
  limit = (biggest + events) // 2
  assert events + 4096 < limit < biggest
  resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert "Stopped" not in out
  lines = [l for l in err.splitlines() if l.strip()]
  assert lines[-1].startswith(
      f"main.py: error: Saving the checkpoint of step 100 to "
      f"{os.path.join(workdir, 'checkpoints', '100.orbax-checkpoint-tmp')}"), err
  assert ": File too large (errno 27). The checkpoints saved before it are " \
         "intact (latest: step 50)" in lines[-1]
  assert checkpoint_steps(workdir) == [50]
  assert_all_verify(workdir)
