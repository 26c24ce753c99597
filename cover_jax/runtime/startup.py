"""A process's start-up: the platform JAX runs on, jax.distributed, SIGTERM.

The platform. With libtpu installed (the `tpu` extra, for --mode=plan) JAX
tries its TPU backend first on any host. On a host without TPU chips that
fails, but not cleanly: libtpu starts, prints a TPU_WORKER_HOSTNAMES error,
and takes /tmp/libtpu_lockfile, so that of two processes on one host only the
first even gets that far. `choose_platform` keeps the TPU backend out where
there are no chips: --platform=auto (the default) picks tpu where chips are
present, else a GPU where one is visible and jax[cuda12] is installed, else
the CPU. An explicit JAX_PLATFORMS always wins.

SIGTERM. jax.distributed.initialize starts JAX's preemption notifier, which
catches SIGTERM and only records it, for the training loop to act on at its
next step (train.Preemption). Until that loop runs (data checks, restore,
compiling) a SIGTERM did nothing: a stuck start-up could not be stopped.
`start_distributed` gives SIGTERM its default action (end the process: there
is nothing to save yet), `sigterm_to_training` hands it back to the
notifier when the loop begins, and `sigterm_ends_process` takes it again
when the loop ends (stop_request.StopRequest does both).
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import signal

# --platform's choices; "gpu" is JAX's "cuda" (jax[cuda12]).
PLATFORMS = ("auto", "cpu", "gpu", "tpu")
_JAX_NAME = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}
_INSTALL = {"gpu": 'pip install -e ".[cuda]"', "tpu": 'pip install -e ".[tpu]"'}


class PlatformError(ValueError):
  """The platform asked for cannot run on this host."""


# ----------------------------------------------------------------------------
# What this host has.
# ----------------------------------------------------------------------------

def tpu_chips_present() -> bool:
  """Whether TPU chips are attached: JAX's own PCI check, or the device
  files TPU VMs have (/dev/accel* on v4 and v5p, /dev/vfio/N on v5e, v6e)."""
  from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel
  if hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0:
    return True
  return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def nvidia_gpu_visible() -> bool:
  """Whether an NVIDIA GPU is visible (the device files JAX checks)."""
  from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel
  return hardware_utils.has_visible_nvidia_gpu()


def installed(platform: str) -> bool:
  """Whether JAX's backend for `platform` ("cpu", "gpu", "tpu") is here."""
  if platform == "gpu":  # jax[cuda12]'s PJRT plugin
    try:
      return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:  # no jax_plugins package at all
      return False
  if platform == "tpu":
    return importlib.util.find_spec("libtpu") is not None
  return True


# ----------------------------------------------------------------------------
# The platform.
# ----------------------------------------------------------------------------

def choose_platform(requested: str, jax_platforms: str | None, *,
                    tpu_chips: bool, gpu_visible: bool,
                    installed_platforms: set[str]) -> str:
  """The JAX_PLATFORMS value a run uses.

  Args:
    requested: --platform: "auto" or one of "cpu", "gpu", "tpu".
    jax_platforms: the user's JAX_PLATFORMS (None or "" if unset): it wins.
    tpu_chips, gpu_visible: what this host has.
    installed_platforms: the platforms whose JAX backend is installed.

  Raises:
    PlatformError: naming what is missing and what to do.
  """
  if requested not in PLATFORMS:
    raise PlatformError(f"--platform={requested}: choose one of "
                        f"{', '.join(PLATFORMS)}.")
  if jax_platforms:
    if requested != "auto" and _JAX_NAME[requested] not in (
        jax_platforms.split(",")):
      raise PlatformError(
          f"--platform={requested} but JAX_PLATFORMS={jax_platforms}: the "
          f"environment variable wins; unset it or drop --platform.")
    return jax_platforms
  if requested == "auto":
    if tpu_chips and "tpu" in installed_platforms:
      return "tpu,cpu"
    if gpu_visible and "gpu" in installed_platforms:
      return "cuda,cpu"
    return "cpu"
  if requested != "cpu":
    if requested not in installed_platforms:
      raise PlatformError(f"--platform={requested}: JAX's {requested} "
                          f"backend is not installed: {_INSTALL[requested]}.")
    if requested == "tpu" and not tpu_chips:
      raise PlatformError("--platform=tpu: this host has no TPU chips "
                          "(no /dev/accel*, /dev/vfio/N or TPU PCI device); "
                          "use --platform=cpu or run on a TPU VM.")
    if requested == "gpu" and not gpu_visible:
      raise PlatformError("--platform=gpu: this host has no visible NVIDIA "
                          "GPU (/dev/nvidia0); use --platform=cpu or run on "
                          "a GPU host.")
  # CPU devices beside the accelerator's, as JAX gives by default.
  return ",".join(dict.fromkeys([_JAX_NAME[requested], "cpu"]))


def set_platform(requested: str | None) -> str:
  """Chooses the platform for this host (choose_platform; None: "auto") and
  tells JAX before any backend starts; returns the JAX_PLATFORMS value."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  chosen = choose_platform(
      requested or "auto", os.environ.get("JAX_PLATFORMS"),
      tpu_chips=tpu_chips_present(), gpu_visible=nvidia_gpu_visible(),
      installed_platforms={p for p in ("gpu", "tpu") if installed(p)})
  if xla_bridge.backends_are_initialized():  # main.main called in a process
    running = jax.config.jax_platforms  # that already uses JAX (tests)
    if running != chosen:
      raise RuntimeError(f"JAX already runs on {running!r}, not {chosen!r}: "
                         f"choose the platform before anything uses JAX.")
    return chosen
  os.environ["JAX_PLATFORMS"] = chosen  # and for any child process
  jax.config.update("jax_platforms", chosen)
  return chosen


# ----------------------------------------------------------------------------
# jax.distributed and SIGTERM.
# ----------------------------------------------------------------------------

# Environment variables that mean "one of several processes" to jax.distributed.
_CLUSTER_HINTS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                  "OMPI_COMM_WORLD_SIZE")
# struct sigaction, kept opaque (152 bytes on x86-64 and arm64 glibc).
_SIGACTION_BYTES = 512
_notifier_action: ctypes.Array | None = None


def start_distributed(coordinator_address: str | None = None,
                      num_processes: int | None = None,
                      process_id: int | None = None) -> bool:
  """jax.distributed.initialize when this is one process of several (the
  address given, or a cluster JAX detects: TPU, SLURM, Open MPI); returns
  whether it ran. SIGTERM then still ends the process until training starts
  (sigterm_to_training)."""
  import jax  # pylint: disable=import-outside-toplevel
  if coordinator_address:
    jax.distributed.initialize(coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif (any(k in os.environ for k in _CLUSTER_HINTS) or
        int(os.environ.get("SLURM_NTASKS", "1")) > 1):
    jax.distributed.initialize()
  else:
    return False
  sigterm_ends_process()
  return True


def sigterm_ends_process() -> None:
  """Sets SIGTERM's default action, keeping the handler JAX's preemption
  notifier installed (a C function Python's signal module cannot return)
  for `sigterm_to_training`."""
  global _notifier_action
  libc = ctypes.CDLL(None, use_errno=True)
  saved = ctypes.create_string_buffer(_SIGACTION_BYTES)
  if libc.sigaction(signal.SIGTERM, None, saved) != 0:
    raise OSError(ctypes.get_errno(), "sigaction(SIGTERM) failed")
  _notifier_action = saved
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


def sigterm_to_training() -> None:
  """Gives SIGTERM back to JAX's preemption notifier (the training loop
  stops at its next step); a no-op unless start_distributed took it."""
  global _notifier_action
  if _notifier_action is None:
    return
  libc = ctypes.CDLL(None, use_errno=True)
  if libc.sigaction(signal.SIGTERM, _notifier_action, None) != 0:
    raise OSError(ctypes.get_errno(), "sigaction(SIGTERM) failed")
  _notifier_action = None
