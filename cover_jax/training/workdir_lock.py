"""One run per workdir: WORKDIR/run.lock, held while a run trains.

Two runs in one workdir overwrite each other's checkpoints (orbax takes no
lock): one hangs in its save, or both lose every step. Training takes the
lock before it writes anything and deletes it at exit; a second launch stops
at once with a line naming the holder. The lock is a small JSON record (host,
process, start time, a run id, a lease). Its holder renews the lease from a
daemon thread; a lock left by a killed run is taken over at once where the
holder is provably gone (this host, and its process is not running: the pid
is free, or reused by a process that started at another time), otherwise
once its lease has run out (the expiry is the holder's wall clock, read by
the taker's: hosts are assumed NTP-synchronised).

Every change is a compare-and-swap, so two runs racing for one lock (a
fresh one or the same stale one) cannot both win: on GCS with generation
preconditions (ifGenerationMatch), locally under an flock on
WORKDIR/run.lock.guard (released by the kernel when its process dies), the
record itself written whole before it appears (link or rename of a synced
temporary file). Other URI schemes (s3://) get no lock, with a warning.

With several processes (jax.distributed), process 0 holds the lock for the
run and the others learn its outcome, so that all of them stop together.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator
from urllib.parse import quote

from absl import logging

from cover_jax import storage

LOCK_NAME = "run.lock"
# A killed run's lock on another host is taken over this long after its last
# renewal (config.checkpoint.lock_lease_seconds); renewed every sixth of it.
DEFAULT_LEASE_SECONDS = 180.0
_RENEWALS_PER_LEASE = 6
_MESSAGE_BYTES = 2048  # the refusal, sent from process 0 to the others


class WorkdirLockError(RuntimeError):
  """The workdir's lock could not be taken."""


class WorkdirInUse(WorkdirLockError):
  """Another run holds the workdir."""


class WorkdirLockLost(WorkdirLockError):
  """This run's lock was taken over (its lease ran out while it ran)."""


# ----------------------------------------------------------------------------
# Who holds a lock, and whether it is provably gone.
# ----------------------------------------------------------------------------

def _read_first(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return None


def process_start(pid: int) -> str | None:
  """When process `pid` started (clock ticks since boot, /proc/PID/stat's
  22nd field), or None if there is no such process (or no /proc)."""
  stat = _read_first(f"/proc/{pid}/stat")
  if stat is None:
    return None
  # The command name (field 2) may hold spaces: count from after its ')'.
  return stat.rsplit(")", 1)[1].split()[19]


def machine() -> dict:
  """What makes a pid meaningful: host name, kernel boot and pid namespace
  (containers on one host may share a name but not their pids)."""
  try:
    namespace = os.readlink("/proc/self/ns/pid")
  except OSError:
    namespace = None
  return {"host": socket.gethostname(),
          "boot_id": _read_first("/proc/sys/kernel/random/boot_id"),
          "pid_namespace": namespace}


def _utc(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(
      seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclasses.dataclass(frozen=True)
class Holder:
  """The run a lock record names."""
  run_id: str
  host: str
  boot_id: str | None
  pid_namespace: str | None
  pid: int
  process_start: str | None
  process_count: int
  started: float  # seconds since the epoch
  expires: float

  @classmethod
  def parse(cls, data: bytes) -> Holder:
    """The holder in a lock record; ValueError if it is not one."""
    try:
      record = json.loads(data)
      return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"not a lock record ({type(e).__name__}: {e})") from e

  def to_bytes(self) -> bytes:
    return json.dumps(dataclasses.asdict(self), indent=1).encode()

  def gone(self) -> bool:
    """True only where the holder's process is provably not running: on
    this machine, its pid free or taken by a process started at another
    time."""
    here = machine()
    if (self.host, self.boot_id, self.pid_namespace) != (
        here["host"], here["boot_id"], here["pid_namespace"]):
      return False
    if here["boot_id"] is None:  # no /proc: only the pid can tell
      try:
        os.kill(self.pid, 0)
      except ProcessLookupError:
        return True
      except PermissionError:
        pass
      return False
    return process_start(self.pid) != self.process_start

  def describe(self) -> str:
    processes = (f" (process 0 of {self.process_count})"
                 if self.process_count > 1 else "")
    return (f"process {self.pid} on host {self.host}{processes}, started "
            f"{_utc(self.started)} (run {self.run_id})")


def this_run(run_id: str, lease_seconds: float, started: float,
             process_count: int) -> Holder:
  """The record of this process holding a lock until now + lease."""
  here = machine()
  return Holder(run_id=run_id, host=here["host"], boot_id=here["boot_id"],
                pid_namespace=here["pid_namespace"], pid=os.getpid(),
                process_start=process_start(os.getpid()),
                process_count=process_count, started=started,
                expires=time.time() + lease_seconds)


# ----------------------------------------------------------------------------
# Stores: read, and compare-and-swap (version None: create).
# ----------------------------------------------------------------------------

class LocalStore:
  """The lock as a file; each change under an flock of a guard file."""

  def __init__(self, path: str):
    self.path = path
    self._guard_path = path + ".guard"

  @contextlib.contextmanager
  def _guard(self):
    with open(self._guard_path, "a") as guard:
      try:
        fcntl.flock(guard, fcntl.LOCK_EX)
      except OSError as e:  # e.g. NFS without a lock manager
        logging.warning("No flock on %s (%s): two runs taking over one "
                        "stale lock at once might both win.",
                        self._guard_path, e)
      yield  # closing the file releases the flock

  def read(self) -> tuple[bytes | None, bytes | None]:
    """(the record, its version: here the bytes themselves), or Nones."""
    try:
      with open(self.path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      return None, None
    return data, data

  def swap(self, data: bytes, version: bytes | None) -> bytes | None:
    """Writes `data` if the lock is still at `version` (None: absent);
    returns the new version, or None if the lock had changed."""
    with self._guard():
      if self.read()[1] != version:
        return None
      temporary = f"{self.path}.{uuid.uuid4().hex}.tmp"
      with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # never an empty lock after a power cut
      try:
        if version is None:
          os.link(temporary, self.path)  # fails if it exists, guard or not
        else:
          os.replace(temporary, self.path)
      except FileExistsError:
        return None
      finally:
        with contextlib.suppress(FileNotFoundError):
          os.remove(temporary)
      return data

  def delete(self, version: bytes) -> None:
    """Removes the lock if it is still at `version`."""
    with self._guard():
      if self.read()[1] == version:
        os.remove(self.path)


class GcsStore:
  """The lock as a GCS object, changed with generation preconditions
  through gcsfs's session (its credentials; STORAGE_EMULATOR_HOST)."""

  def __init__(self, uri: str):
    import fsspec  # pylint: disable=import-outside-toplevel
    self.bucket, _, self.key = uri.removeprefix("gs://").partition("/")
    self.fs = fsspec.filesystem("gs")

  def read(self) -> tuple[bytes | None, str | None]:
    """(the record, its generation), or Nones."""
    try:
      headers, data = self.fs.call("GET", "b/{}/o/{}", self.bucket,
                                   self.key, alt="media")
    except FileNotFoundError:
      return None, None
    return data, headers["X-Goog-Generation"]

  def swap(self, data: bytes, version: str | None) -> str | None:
    """Writes `data` if the object is still at generation `version` (None:
    absent); returns the new generation, or None if it had changed."""
    metadata = json.dumps({"name": self.key,
                           "contentType": "application/json"})
    # A multipart upload (as gcsfs's own small writes; the emulator checks
    # preconditions on these), with the precondition gcsfs cannot pass.
    body = (b"--==0==\nContent-Type: application/json; charset=UTF-8\n\n" +
            metadata.encode() +
            b"\n--==0==\nContent-Type: application/json\n\n" + data +
            b"\n--==0==--")
    try:
      result = self.fs.call(
          "POST", f"{self.fs._location}/upload/storage/v1/b/"  # pylint: disable=protected-access
          f"{quote(self.bucket)}/o", uploadType="multipart",
          ifGenerationMatch=version or "0", data=body, json_out=True,
          headers={"Content-Type": 'multipart/related; boundary="==0=="'})
    except FileExistsError:  # 412: precondition failed
      return None
    self.fs.invalidate_cache(f"{self.bucket}/{self.key}")
    return result["generation"]

  def delete(self, version: str) -> None:
    """Removes the object if it is still at generation `version`."""
    with contextlib.suppress(FileNotFoundError, FileExistsError):
      self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key,
                   ifGenerationMatch=version)
    self.fs.invalidate_cache(f"{self.bucket}/{self.key}")


def store_for(workdir: str) -> LocalStore | GcsStore | None:
  """The store of WORKDIR/run.lock (its folder created), or None where
  there is no atomic create (URI schemes other than gs://)."""
  path = storage.resolve(workdir) / LOCK_NAME
  if not storage.is_uri(workdir):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return LocalStore(os.fspath(path))
  if str(path).startswith("gs://"):
    return GcsStore(str(path))
  logging.warning("No lock on %s: nothing stops a second run there.", path)
  return None


# ----------------------------------------------------------------------------
# The lock.
# ----------------------------------------------------------------------------

class WorkdirLock:
  """This process's hold on one workdir: acquire, renew, release."""

  def __init__(self, workdir: str, store, lease_seconds: float,
               process_count: int = 1):
    self.workdir = workdir
    self.store = store
    self.lease_seconds = float(lease_seconds)
    self.process_count = process_count
    self.run_id = uuid.uuid4().hex[:12]
    self.started = time.time()
    self.lost: str | None = None  # why, once another run took it
    self._version = None
    self._mutex = threading.Lock()  # renewals (a thread) against release
    self._stop = threading.Event()
    self._renewer: threading.Thread | None = None

  def _record(self) -> bytes:
    return this_run(self.run_id, self.lease_seconds, self.started,
                    self.process_count).to_bytes()

  def _swap(self, version) -> bool:
    """Writes a fresh record over `version`; True if it is now ours (also
    when a retried request had already written it)."""
    data = self._record()
    new = self.store.swap(data, version)
    if new is None:
      current, new = self.store.read()
      if current != data:
        return False
    self._version = new
    return True

  def acquire(self) -> None:
    """Takes the lock (over a stale one), or raises WorkdirInUse."""
    for _ in range(5):  # each retry follows a change by another run
      data, version = self.store.read()
      if data is None:
        if self._swap(None):
          return
        continue
      try:
        holder = Holder.parse(data)
      except ValueError as e:
        raise WorkdirInUse(
            f"{self._where()} holds something else than a lock ({e}): "
            f"delete it if no run uses this workdir.") from None
      gone = holder.gone()
      if gone or holder.expires < time.time():
        if self._swap(version):
          logging.warning("Took over %s from %s: %s.", self._where(),
                          holder.describe(), "its process is gone" if gone
                          else f"its lease ran out at {_utc(holder.expires)}")
          return
        continue
      raise WorkdirInUse(self._refusal(holder))
    raise WorkdirInUse(f"{self._where()} kept changing: several runs are "
                       f"starting in this workdir; start one.")

  def _where(self) -> str:
    return str(storage.resolve(self.workdir) / LOCK_NAME)

  def _refusal(self, holder: Holder) -> str:
    here = machine()
    if (holder.host, holder.boot_id, holder.pid_namespace) == (
        here["host"], here["boot_id"], here["pid_namespace"]):
      fix = (f"Wait for it to end or stop it (kill {holder.pid}), or pass "
             f"another --workdir.")
    else:  # its process cannot be seen from here: the lease tells
      fix = (f"Wait for it to end or stop it, or pass another --workdir; if "
             f"that run is gone, its lease runs out at "
             f"{_utc(holder.expires)} (in {holder.expires - time.time():.0f} "
             f"s): run this command again then.")
    return (f"Workdir {self.workdir} is in use by another run: "
            f"{holder.describe()}. {fix}")

  def renew(self) -> None:
    """Extends the lease; marks the lock lost if another run took it."""
    with self._mutex:
      if self.lost or self._version is None:
        return
      if not self._swap(self._version):
        data, _ = self.store.read()
        try:
          holder = Holder.parse(data).describe() if data else "nobody"
        except ValueError:
          holder = "something else"
        self.lost = (f"{self._where()} was taken over by {holder} while this "
                     f"run held it (renewals failed for longer than the "
                     f"lease, {self.lease_seconds:.0f} s)")
        logging.error("%s: this run stops at its next checkpoint.", self.lost)

  def _renew_periodically(self) -> None:
    while not self._stop.wait(self.lease_seconds / _RENEWALS_PER_LEASE):
      try:
        self.renew()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Could not renew %s (%s: %s); retrying.",
                        self._where(), type(e).__name__, e)

  def start_renewing(self) -> None:
    self._renewer = threading.Thread(target=self._renew_periodically,
                                     name="workdir-lock", daemon=True)
    self._renewer.start()

  def release(self) -> None:
    """Stops renewing and deletes the lock if it is still this run's."""
    self._stop.set()
    if self._renewer is not None:
      self._renewer.join()
    with self._mutex:
      try:
        if self._version is not None and not self.lost:
          self.store.delete(self._version)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Could not delete %s (%s: %s): the next run takes "
                        "it over once its lease has run out.", self._where(),
                        type(e).__name__, e)
      self._version = None


# ----------------------------------------------------------------------------
# Held per process: re-entrant (main.py, then each stage), all processes.
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class _Hold:
  lock: WorkdirLock | None  # None on processes other than 0, or no store
  depth: int


_HELD: dict[str, _Hold] = {}


def _key(workdir: str) -> str:
  return str(storage.resolve(workdir))


def _agree(error: WorkdirLockError | None) -> WorkdirLockError | None:
  """Process 0's error (or None) on every process."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return error
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  kinds = (WorkdirInUse, WorkdirLockError)
  buffer = np.zeros(_MESSAGE_BYTES, np.uint8)  # [kind + 1, text...]
  if error is not None:
    text = str(error).encode()[:_MESSAGE_BYTES - 1]
    buffer[0] = kinds.index(type(error)) + 1
    buffer[1:1 + len(text)] = np.frombuffer(text, np.uint8)
  buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  if not buffer[0]:
    return None
  return kinds[buffer[0] - 1](
      bytes(buffer[1:]).rstrip(b"\0").decode(errors="replace"))


def acquire(workdir: str, lease_seconds: float | None = None) -> None:
  """Holds `workdir` for this run (again, if this process already does);
  raises WorkdirInUse, on every process, if another run holds it, or
  WorkdirLockError if the lock cannot be read or written."""
  import jax  # pylint: disable=import-outside-toplevel
  key = _key(workdir)
  if key in _HELD:
    _HELD[key].depth += 1
    return
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      store = store_for(key)
      if store is not None:
        lock = WorkdirLock(key, store, lease_seconds or DEFAULT_LEASE_SECONDS,
                           jax.process_count())
        lock.acquire()
    except WorkdirInUse as e:
      error = e
    except Exception as e:  # pylint: disable=broad-except
      error = WorkdirLockError(
          f"Cannot take the lock {key}/{LOCK_NAME} ({type(e).__name__}: "
          f"{e}): give a --workdir this host may write (gs://: an existing "
          f"bucket, and credentials allowed to write it).")
  error = _agree(error)
  if error is not None:
    raise error
  if lock is not None:
    lock.start_renewing()
  _HELD[key] = _Hold(lock, 1)


def release(workdir: str) -> None:
  """Ends one `acquire` of `workdir`; the last deletes the lock."""
  key = _key(workdir)
  hold = _HELD.get(key)
  if hold is None:
    return
  hold.depth -= 1
  if hold.depth == 0:
    del _HELD[key]
    if hold.lock is not None:
      hold.lock.release()


@contextlib.contextmanager
def held(workdir: str, lease_seconds: float | None = None) -> Iterator[None]:
  """`workdir` held by this run inside the block (released on errors)."""
  acquire(workdir, lease_seconds)
  try:
    yield
  finally:
    release(workdir)


def hold_until_exit(workdir: str, lease_seconds: float | None = None) -> None:
  """`acquire`, released when the interpreter exits (also after an
  exception): for main.py, which holds the workdir for the whole run."""
  acquire(workdir, lease_seconds)
  atexit.register(release, workdir)


def check_held(workdir: str) -> None:
  """Raises WorkdirLockLost if another run took this run's lock (a run
  calls it before each save, so as not to write into the other's
  checkpoints)."""
  hold = _HELD.get(_key(workdir))
  if hold is not None and hold.lock is not None and hold.lock.lost:
    raise WorkdirLockLost(hold.lock.lost + ": this run stopped; its "
                          "checkpoints up to now are kept.")
