"""Process-level settings of the host that make XLA CPU steps fast.

XLA's CPU runtime allocates each step's temporary buffer (hundreds of MB for a
training step) on a worker thread. glibc serves a request that large from a
fresh `mmap` and unmaps it when freed, so every step touches every page of it
again, a page fault per page per step. Keeping all threads on the main heap with `mmap` off and
trimming off (mallopt's -1) lets the memory be reused across steps.

Opt-in for training (config.retain_freed_host_memory, default False): the
setting is process-wide, and with one arena the input pipeline's tf.data
threads contend with XLA's for the heap: the step gets cheaper but the
input pipeline beside it slower, so on the mini config it can cost more
than it saves (benchmarks/host_memory.py measures both; benchmarks/RESULTS.md,
"Input wait and the host allocator"). It pays where the XLA:CPU step is
nearly all of the host's work: benchmarks/train_step.py applies it.
"""

import ctypes
import ctypes.util
import logging

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_host_memory() -> bool:
  """Makes glibc keep freed memory mapped for reuse; True if applied.

  Call it once at program start, before anything starts JAX's runtime (the
  first computation or `jax.devices()`): threads that have already allocated
  keep their own heaps, so applied later it changes nothing. main.py does when config.retain_freed_host_memory is True.
  A no-op returning False where the C library is not glibc. Costs: the
  process keeps its peak heap size until it exits, and other threads'
  allocations (tf.data's) are slower.
  """
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    logging.info("No glibc mallopt; host allocator left as it is.")
    return False
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


def cpu_model() -> str:
  """The CPU's model name, as /proc/cpuinfo gives it (benchmarks print it
  with their figures)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name"))
  except (OSError, StopIteration):
    return "unknown CPU"
