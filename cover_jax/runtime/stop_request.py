"""Stopping a run on SIGTERM or Ctrl-C, whenever the signal comes.

A scheduler's SIGTERM (preemption) and a user's Ctrl-C (SIGINT) both ask the
run to stop: it saves the state of its last finished step, prints one line and
exits (status 0 after SIGTERM, 130 after SIGINT). The signal handler only
records the request; the run acts on it at its next safe point: every training
step, every evaluation batch, and between the two stages. So a signal that
arrives during a save, an evaluation, a stage's start-up or its compilation is
honoured, never dropped. A second Ctrl-C ends the process at once (status
130), even while the main thread waits in C++ where no Python handler runs (a
thread watches signal.set_wakeup_fd): finished checkpoints are untouched and
the save in flight, if any, is left unfinished, which orbax ignores.

Several processes must stop at the same safe point, or the ones still running
wait forever in a collective. There JAX's preemption sync manager (started by
jax.distributed.initialize) decides: a SIGTERM on any process reaches all of
them through the coordination service, and they agree on the first safe point
every one of them can still reach. SIGINT is handed to it as a SIGTERM. Its
protocol counts calls, so `StopRequest.reached` is called at every safe point
by every process in the same order, across stages.
"""

from __future__ import annotations

import os
import signal
import threading

import jax

from cover_jax.runtime import startup

EXIT_STATUS = {"SIGTERM": 0, "SIGINT": 130}


class Stopped(Exception):
  """The run stopped on a signal, its last finished step saved."""

  def __init__(self, signal_name: str | None, step: int | None = None,
               where: str = ""):
    super().__init__(signal_name, step, where)
    self.signal_name = signal_name
    self.step = step
    self.where = where

  @property
  def exit_status(self) -> int:
    return EXIT_STATUS.get(self.signal_name, 0)

  def __str__(self) -> str:
    cause = self.signal_name or "a signal to another process of the run"
    at = f" at step {self.step}" if self.step is not None else ""
    return (f"Stopped{at}{self.where} ({cause}): checkpoint saved; run the "
            f"same command to continue.")


class StopRequest:
  """SIGTERM and SIGINT handlers for the life of a run (a context manager).

  `reached()` says, at a safe point, whether to stop there; `check()` raises
  Stopped instead. Outside the main thread no handler can be installed: then
  only another process's SIGTERM (through JAX) stops the run.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._stopping = False
    self._calls = 0
    self._previous: dict[int, object] = {}
    self._wakeup: int | None = None  # the wakeup fd before ours
    self._sigterm_to_jax = False

  def __enter__(self) -> StopRequest:
    if threading.current_thread() is not threading.main_thread():
      return self
    if _several_processes():
      startup.sigterm_to_training()  # JAX's notifier takes SIGTERM
      self._sigterm_to_jax = True
    else:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM,
                                                     self._on_signal)
    self._previous[signal.SIGINT] = signal.signal(signal.SIGINT,
                                                  self._on_signal)
    read, write = os.pipe()
    os.set_blocking(write, False)
    self._wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=_exit_on_second_sigint, args=(read,),
                     name="second-ctrl-c", daemon=True).start()
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    if self._sigterm_to_jax:  # no loop acts on it now: SIGTERM ends us
      startup.sigterm_ends_process()
      self._sigterm_to_jax = False
    if self._wakeup is not None:  # the read end is the watcher's to close
      os.close(signal.set_wakeup_fd(self._wakeup))  # the watcher sees EOF
      self._wakeup = None

  def _on_signal(self, signum, frame) -> None:
    del frame
    first = self.signal_name is None
    if first:
      self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT and first:
      os.write(2, b"\nCtrl-C: saving a checkpoint, then stopping; Ctrl-C "
               b"again stops at once (saved checkpoints are kept, one being "
               b"saved is lost).\n")
      if _several_processes():
        os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier

  def reached(self) -> bool:
    """Whether the run stops at this safe point (sticky once true)."""
    self._calls += 1
    if not self._stopping:
      if _several_processes():
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        self._stopping = multihost_utils.reached_preemption_sync_point(
            self._calls)
      else:
        self._stopping = self.signal_name is not None
    return self._stopping

  def check(self, where: str = "") -> None:
    """Raises Stopped (without a step) if the run stops here."""
    if self.reached():
      raise Stopped(self.signal_name, where=where)


def _exit_on_second_sigint(read: int) -> None:
  """Reads the signal numbers CPython's C handler writes to the wakeup fd
  (one per delivery); ends the process at the second SIGINT."""
  seen = 0
  with os.fdopen(read, "rb", buffering=0) as pipe:
    while byte := pipe.read(1):
      seen += byte[0] == signal.SIGINT
      if seen == 2:
        os.write(2, b"Ctrl-C again: stopped at once; the checkpoints saved "
                 b"before are kept.\n")
        os._exit(EXIT_STATUS["SIGINT"])  # pylint: disable=protected-access


def _several_processes() -> bool:
  return jax.process_count() > 1
