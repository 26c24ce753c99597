"""CPU seconds of every Python process a command starts (the test suite's
workers and the main.py runs they launch), grouped by what they run.

A `sitecustomize.py` put in the venv's site-packages for the duration of the
command records each process's `os.times()` at exit; processes that end by
SIGKILL or `os._exit` are not seen (main.py's killed runs, a second Ctrl-C).

    python benchmarks/process_times.py -- .venv/bin/python -m pytest -q -n 2 tests
"""

import collections
import os
import subprocess
import sys
import sysconfig
import tempfile

HOOK = '''import atexit, os, sys
def _record():
    t = os.times()
    with open({log!r}, "a") as f:
        f.write(f"{{t.user + t.system:.2f}}\\t{{' '.join(sys.argv)[:300]}}\\n")
atexit.register(_record)
'''


def kind(argv: str) -> str:
  script = argv.split()[0] if argv else "?"
  if script.endswith("pytest/__main__.py"):
    return "pytest's controller"
  if script == "-c":
    return "python -c (pytest's workers, spawned helpers)"
  return os.path.basename(script)  # main.py, a test module run as a worker


def main() -> None:
  command = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
  if not command:
    sys.exit(__doc__)
  hook = os.path.join(sysconfig.get_paths()["purelib"], "sitecustomize.py")
  if os.path.exists(hook):
    sys.exit(f"{hook} exists: this script will not replace it.")
  log = tempfile.mktemp(suffix=".tsv")
  with open(hook, "w") as f:
    f.write(HOOK.format(log=log))
  try:
    status = subprocess.call(command)
  finally:
    os.remove(hook)
  totals, counts = collections.Counter(), collections.Counter()
  with open(log) as f:
    for line in f:
      cpu, argv = line.rstrip("\n").split("\t", 1)
      totals[kind(argv)] += float(cpu)
      counts[kind(argv)] += 1
  print(f"CPU s of the processes seen (all: {sum(totals.values()):.0f}):")
  for name, cpu in totals.most_common():
    print(f"{cpu:8.1f}  {counts[name]:4d} processes  {name}")
  sys.exit(status)


if __name__ == "__main__":
  main()
