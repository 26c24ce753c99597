"""Start-up (cover_jax/runtime/startup.py): the platform a run picks, and SIGTERM
before training handles it.

conftest.py sets JAX_PLATFORMS=cpu, which hides what a host without TPUs
but with libtpu installed does: the multi-process test unsets it.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cover_jax.runtime import startup
from tests import distributed

ROOT = distributed.ROOT
NO_HARDWARE = dict(tpu_chips=False, gpu_visible=False)


def choose(requested, jax_platforms=None, *, installed=("tpu",), **host):
  return startup.choose_platform(
      requested, jax_platforms, installed_platforms=set(installed),
      **{**NO_HARDWARE, **host})


# ----------------------------------------------------------------------------
# The choice.
# ----------------------------------------------------------------------------

def test_auto_keeps_libtpu_out_where_there_are_no_tpu_chips():
  assert choose("auto") == "cpu"
  assert choose("auto", installed=()) == "cpu"
  assert choose("auto", tpu_chips=True) == "tpu,cpu"
  assert choose("auto", tpu_chips=True, installed=()) == "cpu"


def test_auto_takes_a_visible_gpu_when_jax_cuda_is_installed():
  assert choose("auto", gpu_visible=True, installed=("gpu", "tpu")) == (
      "cuda,cpu")
  assert choose("auto", gpu_visible=True) == "cpu"  # no jax[cuda12]
  assert choose("auto", gpu_visible=True, tpu_chips=True,
                installed=("gpu", "tpu")) == "tpu,cpu"


def test_jax_platforms_wins():
  assert choose("auto", "tpu", tpu_chips=False) == "tpu"
  assert choose("cpu", "cpu") == "cpu"
  assert choose("gpu", "cuda,cpu") == "cuda,cpu"
  with pytest.raises(startup.PlatformError,
                     match=r"--platform=tpu but JAX_PLATFORMS=cpu: the "
                           r"environment variable wins; unset it"):
    choose("tpu", "cpu", tpu_chips=True)


def test_an_explicit_platform_the_host_cannot_run_names_the_fix():
  assert choose("cpu", tpu_chips=True) == "cpu"
  assert choose("tpu", tpu_chips=True) == "tpu,cpu"
  with pytest.raises(startup.PlatformError,
                     match=r"--platform=tpu: this host has no TPU chips"):
    choose("tpu")
  with pytest.raises(startup.PlatformError,
                     match=r"--platform=gpu: JAX's gpu backend is not "
                           r"installed: pip install -e \"\.\[cuda\]\""):
    choose("gpu", gpu_visible=True)
  with pytest.raises(startup.PlatformError,
                     match=r"--platform=gpu: this host has no visible NVIDIA"):
    choose("gpu", installed=("gpu",))
  with pytest.raises(startup.PlatformError, match=r"choose one of auto, cpu"):
    choose("cuda")


@pytest.mark.slow
def test_main_refuses_a_platform_jax_platforms_contradicts(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "main.py", "--config=configs/cover_mini.py",
       f"--workdir={tmp_path}", "--mode=describe", "--platform=tpu"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert out.stderr.strip().endswith(
      "main.py: error: --platform=tpu but JAX_PLATFORMS=cpu: the environment "
      "variable wins; unset it or drop --platform."), out.stderr[-2000:]


# ----------------------------------------------------------------------------
# Two processes with JAX_PLATFORMS unset.
# ----------------------------------------------------------------------------

# Says at exit whether libtpu was loaded into the process.
_REPORT_LIBTPU = """
import atexit
def _report():
  with open("/proc/self/maps") as f:
    print("libtpu loaded:", "libtpu" in f.read(), flush=True)
atexit.register(_report)
"""


@pytest.mark.slow
def test_two_processes_without_jax_platforms_run_on_the_cpu(tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(_REPORT_LIBTPU)
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env.update(PYTHONPATH=f"{site}:{ROOT}",
             XLA_FLAGS=distributed.xla_flags(2))
  port = distributed.free_port()
  procs = [subprocess.Popen(
      # K400 is not prepared in no_data: describe reports that, at once.
      [sys.executable, "main.py", "--config=configs/timesformer_b16_k400.py",
       f"--workdir={tmp_path / 'run'}", "--mode=describe",
       f"--config.data_dir={tmp_path / 'no_data'}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    logs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
    assert "libtpu loaded: False" in log, log[-3000:]
    assert "TPU_WORKER_HOSTNAMES" not in log
    report = json.loads(log[log.index("{\n"):log.index("\n}\n") + 2])
    assert report["devices"] == {"platform": "cpu", "processes": 2,
                                 "count": 4}


# ----------------------------------------------------------------------------
# SIGTERM.
# ----------------------------------------------------------------------------

def _start_one_process(tmp_path, then: str) -> subprocess.Popen:
  """A process that starts jax.distributed as main.py does (one process of
  one), runs `then`, and prints "ready" before waiting."""
  code = textwrap.dedent(f"""
      import time
      from cover_jax.runtime import startup
      assert startup.start_distributed("127.0.0.1:{distributed.free_port()}",
                                       num_processes=1, process_id=0)
      """) + textwrap.dedent(then)
  script = tmp_path / "worker.py"
  script.write_text(code)
  proc = subprocess.Popen(
      [sys.executable, str(script)], cwd=ROOT, text=True,
      env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT)
  for line in proc.stdout:
    if line.strip() == "ready":
      return proc
  proc.wait(timeout=10)
  raise AssertionError(f"no 'ready' (status {proc.returncode})")


@pytest.mark.slow
def test_sigterm_ends_a_process_in_start_up_and_after_training(tmp_path):
  # jax.distributed's preemption notifier swallows SIGTERM: without the
  # guard, this process would sleep on. A run of several processes hands
  # SIGTERM to the notifier for its loop and takes it back after.
  proc = _start_one_process(tmp_path, """
      from cover_jax.runtime import stop_request
      stop_request._several_processes = lambda: True
      with stop_request.StopRequest():
        pass
      print("ready", flush=True)
      time.sleep(120)
      """)
  proc.send_signal(signal.SIGTERM)
  try:
    assert proc.wait(timeout=30) == -signal.SIGTERM
  finally:
    proc.kill()


@pytest.mark.slow
def test_training_gets_sigterm_back_for_its_sync_point(tmp_path):
  proc = _start_one_process(tmp_path, """
      from jax.experimental import multihost_utils
      startup.sigterm_to_training()
      print("ready", flush=True)
      for step in range(1200):
        if multihost_utils.reached_preemption_sync_point(step):
          print("stopped at a sync point", flush=True)
          break
        time.sleep(0.1)
      """)
  proc.send_signal(signal.SIGTERM)
  try:
    out = proc.communicate(timeout=60)[0]
  finally:
    proc.kill()
  assert proc.returncode == 0, out[-2000:]
  assert "stopped at a sync point" in out
