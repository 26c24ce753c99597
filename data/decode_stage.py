"""The parallel, resumable decode stage of the source-file builders.

Decoding (minutes to days) is separated from writing the dataset: every
source file is decoded once, by a pool of worker processes, into a cache file
of JPEG frames (or the reason it failed). Cache files are written atomically
(temporary file, then rename), so a killed `prepare` restarted with the same
command decodes only what is not cached yet. A cache file is keyed by the
source's path, size and modification time and the decode settings: a file
replaced since, or a new short side, is decoded again.

Workers are started with "spawn", never "fork": the parent has TensorFlow
loaded, which is not fork-safe. This module and `decode` do not import it.

A worker that dies (FFmpeg crashed on a file, or the system killed it for
memory) costs only that file: see `_decode_in_workers`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

import numpy as np
import tqdm

from data import decode

# The media kinds, spelled as `features.VIDEO` and `features.IMAGE` (not
# imported from there: that module loads TensorFlow).
VIDEO = "video"
IMAGE = "image"
# Jobs queued per worker: enough to keep workers busy, few enough that the
# queue of a 500k-file dataset does not fill memory.
_QUEUED_PER_WORKER = 4
# The problem recorded for a file whose decoding kills its worker process.
WORKER_DIED = ("decoding it killed the worker process (a crash in FFmpeg, or "
               "out of memory)")


@dataclasses.dataclass(frozen=True)
class Decoding:
  """What a source file becomes: `media` (VIDEO or IMAGE) frames, resized to
  `short_side`, videos resampled to `fps` (None: the source rate)."""
  media: str
  short_side: int
  fps: float | None = None

  def __post_init__(self):
    if self.media not in (VIDEO, IMAGE):
      raise ValueError(f"media must be {VIDEO!r} or {IMAGE!r}, "
                       f"not {self.media!r}.")


@dataclasses.dataclass(frozen=True)
class CacheEntry:
  """A cache entry. No frames: the file was skipped, `problem` says why.
  Frames and a problem: a truncated video, kept."""
  frames: list[bytes]
  problem: str = ""


@dataclasses.dataclass(frozen=True)
class StageCounts:
  """How many sources this run decoded, and how many were already cached."""
  decoded: int
  from_cache: int


def cache_file(cache_dir: str, path: str, decoding: Decoding) -> str:
  """Where the decoded frames of the source file `path` are cached."""
  stat = os.stat(path)
  key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{decoding}"
  digest = hashlib.sha1(key.encode()).hexdigest()
  # 256 subfolders: no folder holds hundreds of thousands of files.
  return os.path.join(cache_dir, digest[:2], digest + ".npz")


def decode_all(paths: Sequence[str], cache_dir: str, decoding: Decoding, *,
               num_workers: int, desc: str = "Decoding"
               ) -> tuple[list[str], StageCounts]:
  """Decodes every source file not cached yet; returns the cache files.

  Args:
    paths: existing source files.
    cache_dir: the cache folder (created if absent).
    decoding: the decode settings.
    num_workers: worker processes; 0 decodes in this process (debugging).
    desc: the progress bar's title.

  Returns:
    The cache file of each path, in order, and the counts.
  """
  files = [cache_file(cache_dir, p, decoding) for p in paths]
  jobs = [(p, f, decoding) for p, f in zip(paths, files)
          if not os.path.exists(f)]
  progress = tqdm.tqdm(total=len(jobs), desc=desc, unit=" files",
                       disable=not jobs)
  with progress:
    if num_workers == 0:
      for _ in map(_decode_to_cache, jobs):
        progress.update()
    else:
      _decode_in_workers(jobs, num_workers, progress)
  return files, StageCounts(decoded=len(jobs),
                            from_cache=len(files) - len(jobs))


def read(path: str) -> CacheEntry:
  """The cache entry in the file `path` (written by `decode_all`)."""
  with np.load(path) as entry:
    data, sizes = entry["data"], entry["sizes"]
    problem = str(entry["problem"])
  ends = np.cumsum(sizes)
  return CacheEntry(
      [data[a:b].tobytes() for a, b in zip(ends - sizes, ends)], problem)


def _decode_to_cache(job: tuple[str, str, Decoding]) -> None:
  """Decodes one source file into its cache file (in a worker process)."""
  path, target, decoding = job
  try:
    if decoding.media == VIDEO:
      video = decode.decode_video(path, decoding.short_side, decoding.fps)
      entry = CacheEntry(video.frames, video.truncated or "")
    else:
      entry = CacheEntry([decode.decode_image(path, decoding.short_side)])
  except decode.DecodeError as e:
    entry = CacheEntry([], e.reason)
  _write(entry, target)


def _write(entry: CacheEntry, target: str):
  """Writes `entry` to `target` atomically: a kill leaves no partial file."""
  os.makedirs(os.path.dirname(target), exist_ok=True)
  temporary = f"{target}.{os.getpid()}.tmp"
  with open(temporary, "wb") as f:
    # Frames concatenated with their sizes: no pickle, one read per entry.
    np.savez(f, data=np.frombuffer(b"".join(entry.frames), np.uint8),
             sizes=np.array([len(x) for x in entry.frames], np.int64),
             problem=np.array(entry.problem))
  os.replace(temporary, target)


def _decode_in_workers(jobs: list, num_workers: int, progress: tqdm.tqdm):
  """Decodes `jobs` in spawned worker processes, whatever kills some.

  A worker that dies breaks its pool, and every job in flight is lost with
  it, not only the one that killed it. Lost jobs are decoded again one at a
  time, each alone in a fresh worker: a job that kills that one too is
  recorded as failed (`WORKER_DIED`), so that a resumed run skips it, and
  the others go on in a fresh pool.
  """
  todo = jobs
  while todo:
    lost, todo = _run_pool(todo, num_workers,
                           num_workers * _QUEUED_PER_WORKER, progress)
    while lost:
      # Alone in its worker, a job that kills it is to blame.
      blamed, lost = _run_pool(lost, 1, 1, progress)
      for _, target, _ in blamed:
        if not _worker_runs():
          raise RuntimeError(
              "Decode worker processes die even with nothing to decode: "
              "check that they can start (memory, the Python environment).")
        _write(CacheEntry([], WORKER_DIED), target)
        progress.update()


def _run_pool(jobs: Sequence, num_workers: int, max_queued: int,
              progress: tqdm.tqdm) -> tuple[list, Sequence]:
  """Decodes `jobs` in a fresh pool, at most `max_queued` submitted at once,
  until they are done or a worker dies.

  Returns:
    The jobs lost when a worker died (running or queued in the pool) and the
    jobs not submitted yet; both empty if no worker died.
  """
  pending = {}
  with _pool(num_workers) as pool:
    for index, job in enumerate(jobs):
      lost = (_collect(pending, concurrent.futures.FIRST_COMPLETED, progress)
              if len(pending) >= max_queued else [])
      if lost or not _submitted(pool, pending, job):
        # A worker died: the other jobs of the pool end too, now.
        lost += _collect(pending, concurrent.futures.ALL_COMPLETED, progress)
        return lost, jobs[index:]
    return _collect(pending, concurrent.futures.ALL_COMPLETED, progress), []


def _submitted(pool: concurrent.futures.Executor, pending: dict,
               job: tuple[str, str, Decoding]) -> bool:
  """Submits `job`, adding its future to `pending`; False if the pool is
  broken (a worker died since the last jobs ended)."""
  try:
    pending[pool.submit(_decode_to_cache, job)] = job
  except BrokenProcessPool:
    return False
  return True


def _collect(pending: dict, return_when: str, progress: tqdm.tqdm) -> list:
  """Waits for `pending` {future: job} to end as `concurrent.futures.wait`
  does and removes those that did; returns the jobs a dead worker lost."""
  done, _ = concurrent.futures.wait(pending, return_when=return_when)
  lost = []
  for future in done:
    job = pending.pop(future)
    if isinstance(future.exception(), BrokenProcessPool):
      lost.append(job)
    else:
      future.result()  # Raises any other error of the worker.
      progress.update()
  return lost


def _worker_runs() -> bool:
  """Whether a fresh worker runs a job that decodes nothing: if not, workers
  die whatever they decode, and no file is to blame."""
  with _pool(1) as pool:
    try:
      pool.submit(abs, 0).result()
    except BrokenProcessPool:
      return False
  return True


def _pool(num_workers: int) -> concurrent.futures.ProcessPoolExecutor:
  return concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=multiprocessing.get_context("spawn"))
