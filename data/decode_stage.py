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
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
from typing import Callable, Iterable, Iterator, Sequence

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
      context = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(
          num_workers, mp_context=context) as pool:
        for _ in _bounded_map(pool, _decode_to_cache, jobs,
                              num_workers * _QUEUED_PER_WORKER):
          progress.update()
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


def _bounded_map(pool: concurrent.futures.Executor, fn: Callable,
                 jobs: Iterable, max_queued: int) -> Iterator:
  """`pool.map` in completion order, with at most `max_queued` jobs queued."""
  pending = set()
  for job in jobs:
    if len(pending) >= max_queued:
      done, pending = concurrent.futures.wait(
          pending, return_when=concurrent.futures.FIRST_COMPLETED)
      yield from (future.result() for future in done)
    pending.add(pool.submit(fn, job))
  for future in concurrent.futures.as_completed(pending):
    yield future.result()
