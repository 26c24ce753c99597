"""TensorBoard event files written through etils.epath (local disk and gs://),
and their scalars read back.

clu's default writer goes through tf.summary and TF's own filesystems, whose
GCS client has its endpoints compiled in: it cannot be tested against an
emulator, and tensorflow-io's modular GCS plugin (0.37.1) does not load in
TF 2.21. This writer produces the same event files (TensorBoard's record
format and scalar/text summaries) and writes them with epath, like the rest
of the workdir (cover_jax/storage.py).

When events reach the file: at `flush()` (the training loop flushes at
every checkpoint, evaluation flushes after writing its results), and at a
write `flush_secs` after the last flush. An object in a bucket cannot be
appended to, so on gs:// each flush replaces the whole object, as TF's own
GCS writer does; a local file is appended to. A killed run loses the events
since its last flush, which are past its last checkpoint: the resumed run
logs those steps again.

A training session's file starts with a SessionLog START just after the
step it resumes from: TensorBoard drops what a killed session logged past
that checkpoint, so no step shows twice. (The default, Rust, loader keeps the
newest point per step anyway; `--load_fast=false` and EventAccumulator need
the marker.)
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import socket
import threading
import time
from typing import Any, Mapping

from clu import asynclib
from clu.metric_writers import async_writer
from clu.metric_writers import interface
from clu.metric_writers import logging_writer
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer import record_writer

from cover_jax import storage

FLUSH_SECS = 60.0
_file_ids = itertools.count()  # two writers in one second: two files


def create(workdir: str, *, just_logging: bool, resumes_at: int | None,
           flush_secs: float = FLUSH_SECS) -> interface.MetricWriter:
  """clu's default writer (absl logging, asynchronous) with events in
  `workdir` through EventFileWriter; only logging where `just_logging`
  (processes other than 0). `resumes_at`: as EventFileWriter's."""
  writers = [logging_writer.LoggingWriter()]
  if not just_logging:
    writers.append(EventFileWriter(workdir, resumes_at=resumes_at,
                                   flush_secs=flush_secs))
  return _AsyncMultiWriter(writers)


class EventsNotWritten(OSError):
  """An event file could not be written (names the file and the reason)."""


@contextlib.contextmanager
def _own_errors():
  try:
    yield
  except asynclib.AsyncError as e:
    cause = e
    while isinstance(cause, asynclib.AsyncError) and cause.__cause__:
      cause = cause.__cause__
    raise cause from None


class _AsyncMultiWriter(async_writer.AsyncMultiWriter):
  """clu's AsyncMultiWriter, raising a failed write's own error (an OSError
  naming the file and the OS's reason) rather than clu's AsyncError around
  it, whose advice (run without the AsyncWriter) does not apply here."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    with _own_errors():
      super().write_scalars(step, scalars)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    with _own_errors():
      super().write_texts(step, texts)

  def flush(self) -> None:
    with _own_errors():
      super().flush()

  def close(self) -> None:
    with _own_errors():
      super().close()


class EventFileWriter(interface.MetricWriter):
  """One TensorBoard event file, named as TF names them, in `logdir`.

  resumes_at: the step a training session starts from (its checkpoint's, 0
    when fresh): the file marks a restart after it. None for a writer adding
    to a run (evaluating a checkpoint).
  """

  def __init__(self, logdir: str, *, resumes_at: int | None,
               flush_secs: float = FLUSH_SECS):
    directory = storage.resolve(logdir)
    directory.mkdir(parents=True, exist_ok=True)
    self._path = directory / (
        f"events.out.tfevents.{int(time.time()):010d}."
        f"{socket.gethostname()}.{os.getpid()}.{next(_file_ids)}.v2")
    self._whole_object = storage.is_uri(logdir)  # no append on object stores
    self._written = bytearray()  # what the object holds, if whole_object
    self._pending = io.BytesIO()  # records since the last flush
    self._records = record_writer.RecordWriter(self._pending)
    self._lock = threading.Lock()  # writes from clu's thread, flush from ours
    self._flush_secs = flush_secs
    self._last_flush = time.monotonic()
    self._add(event_pb2.Event(wall_time=time.time(),
                              file_version="brain.Event:2"))
    if resumes_at is not None:
      self._add(event_pb2.Event(
          wall_time=time.time(), step=resumes_at + 1,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self.flush()  # TensorBoard lists the run from its start

  def _add(self, event: event_pb2.Event) -> None:
    with self._lock:
      self._records.write(event.SerializeToString())

  def _add_summary(self, step: int, summary: summary_pb2.Summary) -> None:
    self._add(event_pb2.Event(wall_time=time.time(), step=step,
                              summary=summary))
    if time.monotonic() - self._last_flush >= self._flush_secs:
      self.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    summary = summary_pb2.Summary()
    for tag, value in scalars.items():
      summary.value.extend(scalar_summary.scalar_pb(tag, value).value)
    self._add_summary(step, summary)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    summary = summary_pb2.Summary()
    for tag, text in texts.items():
      summary.value.extend(text_summary.text_pb(tag, text).value)
    self._add_summary(step, summary)

  def _unsupported(self, *args, **kwargs):
    raise NotImplementedError(
        "cover_jax.training.event_writer writes scalars and texts only.")

  write_summaries = write_images = write_videos = write_audios = _unsupported
  write_histograms = write_hparams = _unsupported

  def flush(self) -> None:
    """Makes every event written so far readable in the file."""
    with self._lock:
      new = self._pending.getvalue()
      self._pending.seek(0)
      self._pending.truncate()
      self._last_flush = time.monotonic()
      if not new:
        return
      try:
        if self._whole_object:
          self._path.write_bytes(bytes(self._written + new))
        else:
          with self._path.open("ab") as f:
            f.write(new)
      except Exception as e:  # pylint: disable=broad-except
        self._pending.write(new)  # kept for the next flush
        raise EventsNotWritten(f"Cannot write TensorBoard events to {self._path} "
                      f"({type(e).__name__}: {e}): free space, or check "
                      f"that this host may write the workdir") from e
      if self._whole_object:
        self._written += new

  def close(self) -> None:
    self.flush()


def read_scalars(workdir: str, tag: str) -> dict[int, float]:
  """{step: value} of the scalar `tag` ("train/steps_per_sec") in the event
  files directly in `workdir` (tf.io.gfile: local paths and gs://)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for path in tf.io.gfile.glob(os.path.join(workdir, "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tf.make_ndarray(value.tensor))
  return out
