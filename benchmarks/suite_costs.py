"""Where the test suite's CPU goes: the fixed costs its processes pay.

Prints the CPU seconds (user + system) of
- imports: numpy, numpy with ml_dtypes, `import tensorflow`, and the
  training modules, in a fresh process;
- main.py's tiny run (`tests.tiny_runs.command`, one eval view) as a
  subprocess, on 8 and on 1 fake devices, with an empty compilation cache
  and again with the warm one;
- in one process, as a pytest worker runs them: the tiny in-process run
  (`train.train_and_evaluate(tests.tiny_runs.tiny_config(...))`) with its
  evaluation, with `evaluate.evaluate` stubbed, and again; and building the
  3 eval pipelines and reading their first batch (`inp.make.for_eval`).

    python benchmarks/suite_costs.py                      # builds the digits
    python benchmarks/suite_costs.py --data_dir=/tmp/digits   # reuses them

Nothing else should run meanwhile: the figures are CPU time, but the
machine's two cores are shared.
"""

import argparse
import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import distributed  # pylint: disable=wrong-import-position  (no JAX)

IMPORTS = {
    "import numpy": "import numpy",
    "import numpy, ml_dtypes": "import numpy, ml_dtypes",
    "import tensorflow": "import tensorflow",
    "import the training modules":
        "from cover_jax.training import stages, train, evaluate",
}


def env(devices: int, cache: str) -> dict:
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
              XLA_FLAGS=distributed.xla_flags(devices),
              JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def child_cpu(cmd, environ) -> float:
  """CPU seconds of `cmd` run to its end; raises if it fails."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  out = subprocess.run(cmd, env=environ, cwd=ROOT, capture_output=True,
                       text=True, check=False)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if out.returncode:
    raise RuntimeError(f"{cmd[:3]} failed:\n{out.stderr[-3000:]}")
  return (after.ru_utime + after.ru_stime -
          before.ru_utime - before.ru_stime)


def build_digits(data_dir: str) -> None:
  from data import registry  # pylint: disable=import-outside-toplevel
  for name in registry.BUILT_ON_FIRST_USE:
    registry.load_builder(name, data_dir)


def in_process(data_dir: str) -> None:
  """The worker side (this script with --in_process): XLA_FLAGS are set."""
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel
  from cover_jax import sharding  # pylint: disable=import-outside-toplevel
  from cover_jax.training import evaluate, train  # pylint: disable=import-outside-toplevel
  from tests import tiny_runs  # pylint: disable=import-outside-toplevel
  real = evaluate.evaluate
  for evaluated in (True, False, True, False, True):
    evaluate.evaluate = real if evaluated else (lambda *a, **k: {})
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own lines
      train.train_and_evaluate(tiny_runs.tiny_config(data_dir),
                               tempfile.mkdtemp())
    print(f"  in-process tiny run, "
          f"{'with its evaluation' if evaluated else 'evaluation stubbed'}: "
          f"{time.process_time() - start:.1f} CPU s", flush=True)
  evaluate.evaluate = real
  config = tiny_runs.tiny_config(data_dir)
  mesh = sharding.make_mesh(**config.mesh)
  for _ in range(3):
    start = time.process_time()
    for source in inp.make.sources(config, "eval_split"):
      stream = inp.make.for_eval(config, source, mesh=mesh)
      next(iter(stream))
      stream.close()
    print(f"  3 eval pipelines built, first batch read: "
          f"{time.process_time() - start:.2f} CPU s", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", help="the built-in digits datasets "
                      "(built there when missing; default: a temp dir)")
  parser.add_argument("--devices", type=int, nargs="+", default=[8, 1])
  parser.add_argument("--in_process", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  data_dir = args.data_dir or tempfile.mkdtemp()
  if args.in_process:
    return in_process(data_dir)
  build_digits(data_dir)
  from tests import tiny_runs  # pylint: disable=import-outside-toplevel
  for label, statement in IMPORTS.items():
    cpu = child_cpu([sys.executable, "-c", statement],
                    env(8, tempfile.mkdtemp()))
    print(f"{label}: {cpu:.1f} CPU s", flush=True)
  for devices in args.devices:
    print(f"{devices} fake devices:", flush=True)
    cache = tempfile.mkdtemp()
    for state in ("empty cache", "warm cache"):
      cmd = tiny_runs.command(tempfile.mkdtemp(), data_dir,
                              **{"input.eval_views": 1})
      print(f"  main.py tiny run, {state}: "
            f"{child_cpu(cmd, env(devices, cache)):.1f} CPU s", flush=True)
    subprocess.run([sys.executable, __file__, "--in_process",
                    f"--data_dir={data_dir}"], env=env(devices, cache),
                   cwd=ROOT, check=True)


if __name__ == "__main__":
  main()
