"""One run per workdir (cover_jax/training/workdir_lock.py): refusal naming the
holder, takeover of a dead or expired holder's lock (exactly one winner of a
race), release at exit, on a local disk and on GCS (the emulator), and
main.py refusing a held workdir before it builds anything."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import pytest

from cover_jax import storage
from cover_jax.training import workdir_lock
from tests.tiny_runs import ROOT, command


def local_lock(workdir, lease=60.0):
  return workdir_lock.WorkdirLock(
      str(workdir), workdir_lock.store_for(str(workdir)), lease)


def gcs_lock(uri, lease=60.0):
  return workdir_lock.WorkdirLock(uri, workdir_lock.store_for(uri), lease)


@pytest.fixture
def gcs_workdir(gcs_emulator, monkeypatch):
  """gs://bucket/run on the emulator, reached through gcsfs."""
  monkeypatch.setenv("EPATH_USE_TF", "false")
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
  storage.use_gcs_emulator_if_set()
  return "gs://bucket/run"


def write_holder(lock, **fields):
  """Puts a record of another run (this run's, with `fields`) in place."""
  record = dataclasses.replace(workdir_lock.this_run(
      "other", 60.0, time.time() - 3600, 1), **fields)
  assert lock.store.swap(record.to_bytes(), lock.store.read()[1]) is not None
  return record


def holder_in(lock):
  return workdir_lock.Holder.parse(lock.store.read()[0])


def dead_pid():
  process = subprocess.Popen(["true"])
  process.wait()
  return process.pid


@pytest.fixture(params=["local", "gcs"])
def make_lock(request, tmp_path):
  """A function making locks on one workdir, local or on the emulator."""
  if request.param == "local":
    return lambda lease=60.0: local_lock(tmp_path / "run", lease)
  uri = request.getfixturevalue("gcs_workdir")
  return lambda lease=60.0: gcs_lock(uri, lease)


def test_second_run_is_refused_with_the_holder_and_the_fix(make_lock):
  first, second = make_lock(), make_lock()
  first.acquire()
  record = holder_in(first)
  assert (record.run_id, record.pid) == (first.run_id, os.getpid())
  with pytest.raises(workdir_lock.WorkdirInUse, match=re.escape(
      f"is in use by another run: process {os.getpid()} on host "
      f"{record.host}, started ")) as refused:
    second.acquire()
  assert f"(run {first.run_id}). Wait for it to end or stop it (kill " \
         f"{os.getpid()}), or pass another --workdir." in str(refused.value)
  assert holder_in(first).run_id == first.run_id  # untouched
  first.release()
  assert first.store.read() == (None, None)
  second.acquire()  # free again
  assert holder_in(second).run_id == second.run_id
  second.release()


def test_lock_of_a_dead_process_on_this_host_is_taken_at_once(make_lock):
  lock = make_lock()
  write_holder(lock, pid=dead_pid(), expires=time.time() + 3600)
  lock.acquire()
  assert holder_in(lock).run_id == lock.run_id
  lock.release()


def test_reused_pid_is_told_apart_by_its_start_time(make_lock):
  """A live process with the holder's pid but another start time is not
  the holder: the pid was reused after the holder died."""
  lock = make_lock()
  write_holder(lock, process_start="1", expires=time.time() + 3600)
  lock.acquire()
  assert holder_in(lock).run_id == lock.run_id
  lock.release()


def test_lock_of_another_host_is_taken_only_once_its_lease_ran_out(
    make_lock):
  lock = make_lock()
  write_holder(lock, host="elsewhere", pid=dead_pid(),
               expires=time.time() + 120)
  with pytest.raises(workdir_lock.WorkdirInUse, match=(
      r"process \d+ on host elsewhere, started .*Wait for it to end or stop "
      r"it, or pass another --workdir; if that run is gone, its lease runs "
      r"out at .* UTC \(in 1[12]\d s\): run this command again then\.")):
    lock.acquire()
  assert holder_in(lock).run_id == "other"
  write_holder(lock, host="elsewhere", expires=time.time() - 1)
  lock.acquire()
  assert holder_in(lock).run_id == lock.run_id
  lock.release()


def test_two_takeovers_of_one_stale_lock_exactly_one_wins(make_lock):
  first, second = make_lock(), make_lock()
  write_holder(first, host="elsewhere", expires=time.time() - 1)
  _, stale = first.store.read()
  # Both judged the same record stale; both try to replace it.
  assert [first._swap(stale), second._swap(stale)] == [True, False]  # pylint: disable=protected-access
  assert holder_in(first).run_id == first.run_id
  with pytest.raises(workdir_lock.WorkdirInUse, match=first.run_id):
    second.acquire()
  first.release()


def test_renewal_extends_the_lease_and_notices_a_takeover(make_lock):
  holder = make_lock(lease=60.0)
  holder.acquire()
  before = holder_in(holder).expires
  holder.renew()
  assert holder_in(holder).expires > before and not holder.lost
  # Its lease ran out (renewals stopped for longer than it) and another run
  # took the lock: the holder finds out at its next renewal.
  write_holder(holder, run_id=holder.run_id, expires=time.time() - 1)
  taker = make_lock()
  taker.acquire()
  holder.renew()
  assert "was taken over by process" in holder.lost
  holder.release()  # the taker's lock stays
  assert holder_in(taker).run_id == taker.run_id
  taker.release()


def test_held_is_reentrant_and_released_on_exceptions(tmp_path):
  workdir = str(tmp_path / "run")
  lock_file = tmp_path / "run" / workdir_lock.LOCK_NAME
  with pytest.raises(ValueError, match="stage failed"):
    with workdir_lock.held(workdir):
      with workdir_lock.held(workdir):  # the stage inside main.py's hold
        run_id = json.loads(lock_file.read_text())["run_id"]
      assert json.loads(lock_file.read_text())["run_id"] == run_id
      with pytest.raises(workdir_lock.WorkdirInUse):
        local_lock(workdir).acquire()
      raise ValueError("stage failed")
  assert not lock_file.exists()
  workdir_lock.check_held(workdir)  # not held: nothing to say


def test_unwritable_workdir_is_an_error_naming_the_lock_and_the_fix(
    tmp_path):
  (tmp_path / "file").write_text("")
  workdir = tmp_path / "file" / "run"
  with pytest.raises(workdir_lock.WorkdirLockError, match=re.escape(
      f"Cannot take the lock {workdir}/run.lock (NotADirectoryError: ")) as e:
    workdir_lock.acquire(str(workdir))
  assert str(e.value).endswith("): give a --workdir this host may write "
                               "(gs://: an existing bucket, and credentials "
                               "allowed to write it).")
  assert str(workdir) not in workdir_lock._HELD  # pylint: disable=protected-access


def test_lost_lock_stops_the_run_at_its_next_check(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.held(workdir, lease_seconds=60.0):
    hold = workdir_lock._HELD[workdir]  # pylint: disable=protected-access
    write_holder(hold.lock, host="elsewhere")
    hold.lock.renew()
    with pytest.raises(workdir_lock.WorkdirLockLost, match=(
        r"run.lock was taken over by process \d+ on host elsewhere.*: this "
        r"run stopped; its checkpoints up to now are kept\.")):
      workdir_lock.check_held(workdir)
  assert json.loads((tmp_path / "run" / "run.lock").read_text())[
      "host"] == "elsewhere"


@pytest.mark.slow
def test_lock_held_until_exit_is_released_by_an_exiting_process(tmp_path):
  workdir = str(tmp_path / "run")
  script = ("import sys; from cover_jax.training import workdir_lock\n"
            "workdir_lock.hold_until_exit(sys.argv[1])\n"
            "assert workdir_lock.store_for(sys.argv[1]).read()[0]\n"
            "raise RuntimeError('crashed')\n")
  done = subprocess.run([sys.executable, "-c", script, workdir], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  assert "RuntimeError: crashed" in done.stderr and done.returncode == 1
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))


@pytest.mark.slow
def test_main_stops_at_once_on_a_held_workdir(tmp_path):
  """The second launch of a command: one line naming the holder, nothing
  written, no dataset built."""
  workdir, data_dir = tmp_path / "run", tmp_path / "data"
  data_dir.mkdir()
  holder = local_lock(workdir)
  holder.acquire()
  done = subprocess.run(command(str(workdir), str(data_dir)), cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  holder.release()
  assert done.returncode == 1, done.stderr[-3000:]
  last = done.stderr.strip().splitlines()[-1]
  assert re.fullmatch(
      rf"main.py: error: Workdir {re.escape(str(workdir))} is in use by "
      rf"another run: process {os.getpid()} on host \S+, started .* UTC "
      rf"\(run {holder.run_id}\)\. Wait for it to end or stop it \(kill "
      rf"{os.getpid()}\), or pass another --workdir\.", last), last
  assert sorted(os.listdir(workdir)) == ["run.lock.guard"]
  assert not os.listdir(data_dir)
