"""Third-party start-up noise kept out of a run's default output.

TensorFlow (only the data pipeline uses it) prints its oneDNN and CPU-feature
lines from C++ when it is imported, and TFDS logs absl WARNINGs (the
`TensorInfo.dtype` deprecation, version folders) that are about TFDS, not
the run. Orbax logs a failed background save as errors with tracebacks, from
each of its threads, while the run reports it itself in one line (the file
and the OS's error: checkpointing.SaveFailed); the writes of that save still
in flight then complete into the asyncio loop orbax has closed, and
tensorstore reports each as an unraisable `Event loop is closed`. `quiet`
hides them; main.py calls it unless --verbosity is given, so `--verbosity=0`
shows everything again.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

# Modules whose warnings and absl WARNING logs are about themselves.
_NOISY = ("tensorflow", "tensorflow_datasets")
# Warnings of other packages that say nothing to a user: orbax reading a
# checkpoint saved without its optional metadata file.
_NOISY_MESSAGES = ("Metadata file does not exist",)
# Orbax's errors of a failed background save, which the run reports.
_ORBAX = "orbax"
_REPORTED_BY_THE_RUN = ("raised an exception", "Failed to run",
                        "Save Finalize thread")


class _DropNoisyWarnings(logging.Filter):
  """Drops records at WARNING or below logged from a noisy package, and
  orbax's errors of a failed background save."""

  def filter(self, record: logging.LogRecord) -> bool:
    parts = record.pathname.replace("\\", "/").split("/")
    if record.levelno > logging.WARNING:
      return not (_ORBAX in parts and any(
          text in record.getMessage() for text in _REPORTED_BY_THE_RUN))
    if any(text in record.getMessage() for text in _NOISY_MESSAGES):
      return False
    return not any(name in parts for name in _NOISY)


def _late_write_after_a_failed_save(unraisable) -> bool:
  """A tensorstore write finishing into the event loop orbax closed when
  its save failed: nobody is waiting for it."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and
          str(error) == "Event loop is closed"):
    return False
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return bool(frames) and frames[0].name == "call_soon_threadsafe"


def _drop_late_writes(previous):
  """sys.unraisablehook without those reports; `previous` shows the rest."""
  def hook(unraisable):
    if not _late_write_after_a_failed_save(unraisable):
      previous(unraisable)
  hook.drops_late_writes = True
  return hook


def quiet() -> None:
  """Hides the noise; call before TensorFlow is imported.

  (Its C++ log level is read once, at import.)
  """
  # 2: C++ errors only (the cpu_feature_guard line is INFO). TensorFlow
  # prints its oneDNN line unless oneDNN is off; the input pipeline has no
  # op oneDNN rewrites (matmuls, convolutions), so its batches are the same.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  for module in _NOISY:
    warnings.filterwarnings("ignore", category=DeprecationWarning,
                            module=module + r"(\.|$)")
  # absl's logger, and TensorFlow's own (its deprecation notices).
  for logger in (logging.getLogger("absl"), logging.getLogger("tensorflow")):
    if not any(isinstance(f, _DropNoisyWarnings) for f in logger.filters):
      logger.addFilter(_DropNoisyWarnings())
  if not getattr(sys.unraisablehook, "drops_late_writes", False):
    sys.unraisablehook = _drop_late_writes(sys.unraisablehook)
