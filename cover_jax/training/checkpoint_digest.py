"""Checkpoint digests: each file of a saved step, its size and sha256.

Orbax stores arrays as OCDBT+zstd with no content digest, so a flipped byte
can restore as other values without an error. Once orbax has committed a
step, `write` lists every file under the step directory with its size and
sha256 in MANIFEST (a small JSON file in the step directory); `verify` reads
the files back and compares before the step is trusted.

Files added to the step directory after the digest are ignored: orbax reads
only the files it wrote, and those are all listed.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json

from etils import epath

from cover_jax import storage

MANIFEST = "cover_digest.json"
_FORMAT = "cover-jax checkpoint digest 1"
# Streamed in chunks: a checkpoint's files can be larger than host memory.
_CHUNK = 8 << 20
# hashlib releases the GIL on large buffers: files are read (on gs://,
# downloaded) and hashed in parallel.
_THREADS = 8


class Mismatch(Exception):
  """A step whose files are not those its digest lists."""

  def __init__(self, file: str, reason: str, tag: str):
    super().__init__(f"{file}: {reason}")
    self.file, self.reason, self.tag = file, reason, tag


def _files(directory: epath.Path, prefix: str = "") -> list[str]:
  """Paths of every file under `directory`, relative to it."""
  found = []
  for path in directory.iterdir():  # typed paths on every filesystem
    if path.is_dir():
      found += _files(path, f"{prefix}{path.name}/")
    elif prefix or path.name != MANIFEST:
      found.append(prefix + path.name)
  return found


def _size_and_sha256(path: epath.Path) -> tuple[int, str] | None:
  """(size, sha256) of the file at `path`; None if there is none."""
  sha, size = hashlib.sha256(), 0
  try:
    with path.open("rb") as f:
      while chunk := f.read(_CHUNK):
        sha.update(chunk)
        size += len(chunk)
  except FileNotFoundError:
    return None
  return size, sha.hexdigest()


def _digests(step_dir: epath.Path, files: list[str]) -> list:
  with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
    return list(pool.map(lambda f: _size_and_sha256(step_dir / f), files))


def write(step_dir: epath.Path) -> None:
  """Writes MANIFEST {relative path: [size, sha256]} of `step_dir`'s files.

  Call once the step is final (orbax committed it), from one process.
  """
  files = sorted(_files(step_dir))
  manifest = {"format": _FORMAT, "algorithm": "sha256",
              "files": dict(zip(files, _digests(step_dir, files)))}
  text = json.dumps(manifest, indent=1, sort_keys=True)
  target = step_dir / MANIFEST
  if storage.is_uri(step_dir):  # an object appears whole or not at all
    target.write_text(text)
  else:  # a run killed mid-write must not leave half a manifest
    partial = step_dir / (MANIFEST + ".partial")
    partial.write_text(text)
    partial.replace(target)


def verify(step_dir: epath.Path) -> bool:
  """Whether `step_dir` has a digest (False: saved without one, unchecked).

  Raises Mismatch naming the first file that is missing, of another size or
  of other content than the digest says, or the digest itself if unreadable.
  """
  target = step_dir / MANIFEST
  if not target.exists():
    return False
  try:
    manifest = json.loads(target.read_text())
    listed = {f: (int(size), str(sha))
              for f, (size, sha) in manifest["files"].items()}
    if manifest["format"] != _FORMAT:
      raise ValueError(f"format {manifest['format']!r}")
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise Mismatch(MANIFEST, f"the digest is not readable ({e})",
                   "manifest") from e
  files = sorted(listed)
  for f, found in zip(files, _digests(step_dir, files)):
    if found is None:
      raise Mismatch(f, "missing (listed in the digest)", "missing")
    size, sha = found
    if size != listed[f][0]:
      raise Mismatch(f, f"{size} bytes, {listed[f][0]} when saved", "size")
    if sha != listed[f][1]:
      raise Mismatch(f, "content differs from the saved sha256", "digest")
  return True
