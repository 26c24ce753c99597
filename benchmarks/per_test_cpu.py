"""CPU seconds of each test: its worker's own and its subprocesses'.

A pytest plugin: around each test, `resource.getrusage` of the worker
(RUSAGE_SELF) and of the children it waited for (RUSAGE_CHILDREN: main.py
runs, jax.distributed pairs, killed ones included) go to a TSV per worker
in $PER_TEST_CPU_DIR. Run as a script, it sums those files.

    PYTHONPATH=benchmarks PER_TEST_CPU_DIR=/tmp/cpu \\
        .venv/bin/python -m pytest -q -n 2 -p per_test_cpu tests
    python benchmarks/per_test_cpu.py /tmp/cpu
"""

import collections
import glob
import os
import resource
import sys
import time

import pytest


def _cpu() -> tuple[float, float]:
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return (own.ru_utime + own.ru_stime,
          children.ru_utime + children.ru_stime)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  (own, children), start = _cpu(), time.time()
  yield
  own_after, children_after = _cpu()
  folder = os.environ.get("PER_TEST_CPU_DIR", "/tmp/per_test_cpu")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f"{os.getpid()}.tsv"), "a") as f:
    f.write(f"{own_after - own:.2f}\t{children_after - children:.2f}\t"
            f"{time.time() - start:.2f}\t{item.nodeid}\n")


def main(folder: str) -> None:
  rows = []
  for path in glob.glob(os.path.join(folder, "*.tsv")):
    with open(path) as f:
      for line in f:
        own, children, wall, test = line.rstrip("\n").split("\t")
        rows.append((float(own), float(children), float(wall), test))
  print(f"{len(rows)} tests: {sum(r[0] for r in rows):.0f} CPU s in the "
        f"workers, {sum(r[1] for r in rows):.0f} in their subprocesses")
  files = collections.defaultdict(lambda: [0.0, 0.0])
  for own, children, _, test in rows:
    files[test.split("::")[0]][0] += own
    files[test.split("::")[0]][1] += children
  print("worker  children  file")
  for name, (own, children) in sorted(files.items(),
                                      key=lambda x: -sum(x[1]))[:20]:
    print(f"{own:6.1f} {children:9.1f}  {name}")
  print("worker  children  wall  test")
  for own, children, wall, test in sorted(rows, key=lambda r: -r[0] - r[1]
                                          )[:20]:
    print(f"{own:6.1f} {children:9.1f} {wall:5.1f}  {test}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/per_test_cpu")
