"""Runs a test module's worker in two jax.distributed processes on 127.0.0.1."""

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process: `devices` fake CPU devices, and LLVM's
  optimisations off (the tests' programs are tiny: compiling them, not
  running them, takes the suite's time; results may differ from an optimised
  build in the last bits, so tests compare within one build or to a
  tolerance)."""
  return (f"--xla_force_host_platform_device_count={devices} "
          "--xla_backend_optimization_level=0")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(script: str, data_dir: str, out: str) -> None:
  """`python script DATA_DIR PORT PROCESS_ID OUT` twice, 4 CPU devices each.

  Raises AssertionError with the log of a process that failed.
  """
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=xla_flags(4))
  workers = [subprocess.Popen(
      [sys.executable, script, data_dir, str(port), str(i), out],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
  logs = [w.communicate(timeout=300)[0].decode() for w in workers]
  for w, log in zip(workers, logs):
    assert w.returncode == 0, log[-3000:]
