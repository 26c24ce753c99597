"""The decode stage survives worker processes that die on a file."""
# pylint: disable=protected-access

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from data import decode_stage
from tests import media_files

_decode_to_cache = decode_stage._decode_to_cache


def _decode_or_die(job):
  """`decode_stage._decode_to_cache`, run in a worker, where a file named for
  a signal kills the worker: "SIGSEGV.mp4" as a crash in FFmpeg does,
  "SIGKILL.mp4" as the system's out-of-memory killer does.

  Tests put it in place of `_decode_to_cache` in the parent process: the
  pool pickles functions by name, so the spawned workers import and run it
  from this module, with no test hook in the production code.
  """
  name = os.path.splitext(os.path.basename(job[0]))[0]
  if name.startswith("SIG"):
    os.kill(os.getpid(), signal.Signals[name])
  _decode_to_cache(job)


@pytest.mark.slow
@pytest.mark.parametrize("killer", ["SIGSEGV", "SIGKILL"])
def test_a_file_that_kills_its_worker_fails_alone(tmp_path, monkeypatch,
                                                  killer):
  names = ["a", "b", killer, "c", "d"]
  paths = [media_files.write_video(tmp_path / f"{name}.mp4", 2)
           for name in names]
  monkeypatch.setattr(decode_stage, "_decode_to_cache", _decode_or_die)
  decoding = decode_stage.Decoding("video", short_side=16)
  run = lambda: decode_stage.decode_all(paths, tmp_path / "cache", decoding,
                                        num_workers=2)
  files, counts = run()
  assert counts == decode_stage.StageCounts(decoded=5, from_cache=0)
  entries = [decode_stage.read(f) for f in files]
  assert [e.problem for e in entries] == [
      "", "", decode_stage.WORKER_DIED, "", ""]
  assert [len(e.frames) for e in entries] == [2, 2, 0, 2, 2]
  # Recorded like any failure: a resumed run does not try it again.
  assert run()[1] == decode_stage.StageCounts(decoded=0, from_cache=5)


def test_workers_that_die_whatever_they_run_stop_the_stage(tmp_path,
                                                           monkeypatch):
  path = media_files.write_video(tmp_path / "SIGKILL.mp4", 2)
  monkeypatch.setattr(decode_stage, "_decode_to_cache", _decode_or_die)
  # As if no worker could even start: then no file is to blame.
  monkeypatch.setattr(decode_stage, "_worker_runs", lambda: False)
  decoding = decode_stage.Decoding("video", short_side=16)
  with pytest.raises(RuntimeError, match="die even with nothing to decode"):
    decode_stage.decode_all([path], tmp_path / "cache", decoding,
                            num_workers=1)
  assert not os.path.exists(
      decode_stage.cache_file(tmp_path / "cache", path, decoding))


def test_a_broken_pool_takes_no_more_jobs(tmp_path):
  # A worker can die after the pool's last jobs ended fine: submitting then
  # fails, and ends the pool as a lost job does.
  with decode_stage._pool(1) as pool:
    with pytest.raises(BrokenProcessPool):
      pool.submit(os._exit, 1).result()
    pending = {}
    job = (str(tmp_path / "v.mp4"), str(tmp_path / "v.npz"),
           decode_stage.Decoding("video", short_side=16))
    assert not decode_stage._submitted(pool, pending, job)
    assert not pending
