"""Workdir, checkpoint and data paths on any filesystem: local disk, gs://.

Every read and write of a run's workdir, `resume_from`, `init_from` and
data_dir goes through `etils.epath` (tf.io.gfile or fsspec for URIs) or
orbax/tensorstore, which take the same URIs. `os.path` would turn "gs://b/run" into the local
directory "$PWD/gs:/b/run": each host of a pod slice would checkpoint to its
own disk, and a preempted VM would come back to nothing.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
from typing import Sequence

from etils import epath

# "gs://", "s3://", ...: a filesystem other than this host's own.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ACCESS_HINT = ("check the path, and that this host may read it (gs://: the "
                "VM's service account or `gcloud auth application-default "
                "login`)")


def use_gcs_emulator_if_set() -> None:
  """Reaches a GCS emulator (STORAGE_EMULATOR_HOST) through gcsfs quietly.

  gcsfs's default filesystem asks GCS's gRPC storage-control API for each
  bucket's layout. An emulator has neither that API nor credentials: every
  listing would log "Could not determine bucket type ... default
  credentials were not found" (or, anonymous, wait 60 s per bucket for the
  gRPC call). For an emulator, gcsfs's plain HTTP filesystem, anonymous;
  real GCS (no STORAGE_EMULATOR_HOST) keeps gcsfs's defaults and the VM's
  own credentials. Called on import; again by whoever sets the variable
  later (tests).
  """
  if not os.environ.get("STORAGE_EMULATOR_HOST"):
    return
  import fsspec  # pylint: disable=import-outside-toplevel
  from gcsfs import core  # pylint: disable=import-outside-toplevel
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, core.GCSFileSystem, clobber=True)
  fsspec.config.conf.setdefault("gcs", {}).setdefault("token", "anon")


use_gcs_emulator_if_set()


def is_uri(path: str | os.PathLike) -> bool:
  """Whether `path` names a remote filesystem ("gs://bucket/run")."""
  return bool(_URI.match(os.fspath(path)))


def resolve(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path: URIs as given, local paths absolute, `~`
  expanded (so a relative workdir stays valid if the process changes
  directory)."""
  text = os.fspath(path)
  if is_uri(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def exists(path: epath.Path, what: str) -> bool:
  """`path.exists()`, raising an error naming `what`, the path and the fix
  when it cannot be read (no credentials, no such bucket, permissions)."""
  try:
    return path.exists()
  except Exception as e:  # tf.io.gfile and fsspec raise many kinds
    raise unreadable(path, what, e) from e


def list_dir(path: epath.Path, what: str) -> list[str]:
  """Names in directory `path` ([] when it does not exist), errors as
  `exists`."""
  try:
    return [p.name for p in path.iterdir()] if path.is_dir() else []
  except Exception as e:  # pylint: disable=broad-except
    raise unreadable(path, what, e) from e


def unreadable(path: epath.Path, what: str, error: Exception) -> OSError:
  """The error for `what` at `path` that could not be read."""
  return OSError(f"{what} {path} could not be read ({type(error).__name__}: "
                 f"{error}): {_ACCESS_HINT}.")


_WRITE_HINT = ("gs://: an existing bucket, and the VM's service account or "
               "`gcloud auth application-default login` allowed to write it")


def write_text(path: epath.Path, text: str, what: str) -> None:
  """Writes `text` to `path` (parents created), errors naming the fix."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  except Exception as e:  # pylint: disable=broad-except
    raise OSError(f"Cannot write {path} in {what} ({type(e).__name__}: {e}):"
                  f" give a directory this host may write ({_WRITE_HINT})."
                  ) from e


def upload_tree(source: str | os.PathLike, target: epath.Path,
                last: Sequence[str] = (), workers: int = 8) -> tuple[int, int]:
  """Copies the local directory `source` to `target` (e.g. gs://...);
  returns (files copied, files already there).

  Resumable: a file already at `target` with the same size is not copied
  again (an object store writes an object whole or not at all). The files
  named in `last` (relative paths) are copied after all others, so that
  they mark a complete copy.
  """
  source = os.fspath(source)
  files = sorted(os.path.relpath(os.path.join(folder, name), source)
                 for folder, _, names in os.walk(source) for name in names)
  first = [f for f in files if f not in last]
  copied = 0
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for batch in (first, [f for f in last if f in files]):
      copied += sum(pool.map(
          lambda name: _upload_file(os.path.join(source, name),
                                    target / name), batch))
  return copied, len(files) - copied


def _upload_file(source: str, target: epath.Path) -> bool:
  """Copies `source` to `target` unless it is there already, same size."""
  try:
    if target.exists() and target.stat().length == os.path.getsize(source):
      return False
    if not is_uri(target):  # object stores have no folders to make
      target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as reader, target.open("wb") as writer:
      shutil.copyfileobj(reader, writer, 16 << 20)
    return True
  except Exception as e:  # pylint: disable=broad-except
    raise OSError(f"Cannot upload {source} to {target} ({type(e).__name__}: "
                  f"{e}): check that this host may write there "
                  f"({_WRITE_HINT}); the same command resumes the upload."
                  ) from e
