"""Third-party start-up noise kept out of a run's default output.

TensorFlow (only the data pipeline uses it) prints its oneDNN and CPU-feature
lines from C++ when it is imported, and TFDS logs absl WARNINGs (the
`TensorInfo.dtype` deprecation, version folders) that are about TFDS, not
the run. Orbax logs a failed background save as errors with tracebacks, from
each of its threads, while the run reports it itself in one line (the file
and the OS's error: checkpointing.SaveFailed). `quiet` hides them; main.py calls it unless --verbosity is given,
so `--verbosity=0` shows everything again.
"""

from __future__ import annotations

import logging
import os
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
