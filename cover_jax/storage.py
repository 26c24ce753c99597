"""Workdir and checkpoint paths on any filesystem: local disk, gs://, s3://.

Every read and write of a run's workdir, `resume_from` and `init_from` goes
through `etils.epath` (tf.io.gfile or fsspec for URIs) or orbax/tensorstore,
which take the same URIs. `os.path` would turn "gs://b/run" into the local
directory "$PWD/gs:/b/run": each host of a pod slice would checkpoint to its
own disk, and a preempted VM would come back to nothing.
"""

from __future__ import annotations

import os
import re

from etils import epath

# "gs://", "s3://", ...: a filesystem other than this host's own.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ACCESS_HINT = ("check the path, and that this host may read it (gs://: the "
                "VM's service account or `gcloud auth application-default "
                "login`)")


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


def write_text(path: epath.Path, text: str, what: str) -> None:
  """Writes `text` to `path` (parents created), errors naming the fix."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  except Exception as e:  # pylint: disable=broad-except
    raise OSError(f"Cannot write {path} in {what} ({type(e).__name__}: {e}):"
                  f" give a directory this host may write (gs://: an "
                  f"existing bucket, and the VM's service account or "
                  f"`gcloud auth application-default login` allowed to "
                  f"write it).") from e
