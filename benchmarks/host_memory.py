"""Does `cover_jax.runtime.allocator.retain_freed_host_memory()` cost input throughput?

The setting (M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1) makes XLA's
CPU step faster (benchmarks/train_step.py) but applies to the whole process:
the tf.data threads that decode and crop the clips then share one malloc
arena with XLA's threads. This script trains the mini config
(configs/cover_mini.py, co-training stage, from scratch, no evaluation) in
fresh subprocesses, since mallopt is process-wide and cannot be undone, with
and without the setting, in `--rounds` rounds (the order alternating), and
prints medians of:

  - steps/s of the training loop (train.train_and_evaluate as main.py runs
    it), and its train/input_wait_fraction (the share of the loop's wall
    time spent in next() and to_global);
  - the step alone: the same loop fed one batch over and over for the first
    `--fixed_steps` steps (the pipeline idle, its buffer full): ms per step;
  - TrainIterator's clips per CPU second while the step runs beside it: the
    clips of the steps after `--fixed_steps`, over the CPU time of tf.data's
    threads (all but the main thread and XLA's) plus the main thread's own
    CPU time inside next() (per-thread times from /proc/self/task);
  - the same iterator alone, before training (clips per CPU second of the
    process: no step running);
  - CPU ms per training step of XLA's threads and of the whole process.

    python benchmarks/host_memory.py             # 3 rounds, ~10 min on 2 cores
    python benchmarks/host_memory.py --quick     # 1 round, fewer steps
    python benchmarks/host_memory.py --main_job  # the whole mini job instead

`--main_job` runs `main.py --config=configs/cover_mini.py` (both stages, as
the README's command; with `--retain`, `--config.retain_freed_host_memory=
True`) and prints its time and each stage's train/input_wait_fraction over
its log intervals. The datasets are
built on first use into `--data_dir` and reused. Figures from earlier runs
are in benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cover_jax.runtime import allocator  # pylint: disable=wrong-import-position
from cover_jax.training.event_writer import read_scalars  # pylint: disable=wrong-import-position

SETTINGS = ("retained", "default")  # retain_freed_host_memory() or not
# Threads of XLA's CPU runtime (its Eigen pool is "tf_XLAEigen"). tf.data's
# threads carry no name of their own: they have the main thread's ("python").
XLA_THREADS = ("XLA", "tf_XLA", "pjrt", "tf_pjrt")


# -- Per-thread CPU time -------------------------------------------------------


def thread_cpu() -> dict:
  """{thread id: (name, CPU seconds)} of this process's live threads."""
  out = {}
  tick = os.sysconf("SC_CLK_TCK")
  for tid in os.listdir("/proc/self/task"):
    base = f"/proc/self/task/{tid}"
    try:
      with open(f"{base}/comm") as f:
        name = f.read().strip()
      try:
        with open(f"{base}/schedstat") as f:  # nanoseconds on the CPU
          seconds = int(f.read().split()[0]) / 1e9
      except (OSError, ValueError, IndexError):
        with open(f"{base}/stat") as f:  # clock ticks
          fields = f.read().rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
    except OSError:  # the thread ended meanwhile
      continue
    out[int(tid)] = (name, seconds)
  return out


def snapshot() -> tuple:
  """(wall, process CPU, per-thread CPU, system CPU seconds, minor page
  faults) now."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return (time.perf_counter(), time.process_time(), thread_cpu(),
          usage.ru_stime, usage.ru_minflt)


def split_cpu(before: dict, after: dict) -> dict:
  """CPU seconds between two snapshots: the main thread, XLA's threads,
  the input pipeline's (unnamed: the main thread's name) and the rest."""
  out = {"main": 0.0, "xla": 0.0, "input": 0.0, "other": 0.0, "by_name": {}}
  main_name = after[os.getpid()][0]
  for tid, (name, seconds) in after.items():
    spent = seconds - before.get(tid, (name, 0.0))[1]
    kind = ("main" if tid == os.getpid() else
            "input" if name == main_name else
            "xla" if name.startswith(XLA_THREADS) else "other")
    out[kind] += spent
    out["by_name"][name] = out["by_name"].get(name, 0.0) + spent
  return out


# -- The child: one training run in one allocator setting ----------------------


class Measured:
  """The training iterator: its first batch repeated for the first `fixed`
  steps (the step alone; CPU time counted after the first `warm`), then its
  own batches, whose clips and input CPU time it counts until it is
  closed."""

  def __init__(self, it, fixed: int, warm: int):
    self.it, self.fixed, self.warm, self.calls = it, fixed, warm, 0
    self.batch, self.alone, self.start, self.end = None, None, None, None
    self.main_cpu, self.clips = 0.0, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.calls += 1
    if self.calls == 1:
      self.batch = next(self.it)
    if self.calls == self.warm + 1:
      self.alone = snapshot()
    if self.calls <= self.fixed:
      return self.batch
    if self.start is None:
      self.start = snapshot()
    cpu = time.thread_time()
    batch = next(self.it)
    self.main_cpu += time.thread_time() - cpu
    self.clips += sum(len(part["label"]) for part in batch.values())
    return batch

  def state(self):
    return self.it.state()

  def close(self):
    self.end = snapshot()
    self.it.close()

  def figures(self) -> dict:
    (wall0, cpu0, threads0, sys0, faults0) = self.start
    (wall1, cpu1, threads1, sys1, faults1) = self.end
    wall_a, cpu_a, threads_a, sys_a, faults_a = self.alone
    alone_steps = self.fixed - self.warm
    cpu = split_cpu(threads0, threads1)
    input_cpu = cpu["input"] + self.main_cpu
    steps = self.calls - self.fixed
    return dict(clips=self.clips, steps=steps, input_cpu_seconds=input_cpu,
                clips_per_input_cpu_second=self.clips / input_cpu,
                xla_cpu_ms_per_step=1e3 * cpu["xla"] / steps,
                cpu_ms_per_step=1e3 * (cpu1 - cpu0) / steps,
                system_cpu_ms_per_step=1e3 * (sys1 - sys0) / steps,
                page_faults_per_step=(faults1 - faults0) / steps,
                step_alone_page_faults=(faults0 - faults_a) / alone_steps,
                xla_cpu_seconds=cpu["xla"], main_cpu_seconds=cpu["main"],
                thread_cpu_seconds=cpu["by_name"],
                cores_busy=(cpu1 - cpu0) / (wall1 - wall0),
                step_alone_cpu_ms=1e3 * (cpu0 - cpu_a) / alone_steps,
                step_alone_xla_cpu_ms=1e3 * split_cpu(
                    threads_a, threads0)["xla"] / alone_steps,
                step_alone_cores_busy=(cpu0 - cpu_a) / (wall0 - wall_a))


def iterator_alone(make, seconds: float) -> float:
  """Clips per CPU second of the process of a fresh training iterator, no
  step running, after a warm-up of `seconds` / 2."""
  it = make()
  try:
    def run(length):
      wall, cpu, clips = time.perf_counter(), time.process_time(), 0
      while time.perf_counter() - wall < length:
        clips += sum(len(p["label"]) for p in next(it).values())
      return clips / (time.process_time() - cpu)
    run(seconds / 2)
    return run(seconds)
  finally:
    it.close()


def child(args) -> dict:
  applied = args.child == "retained" and allocator.retain_freed_host_memory()
  if args.child == "retained" and not applied:
    raise SystemExit("retain_freed_host_memory() did not apply (no glibc?)")
  from absl import logging  # pylint: disable=import-outside-toplevel
  from cover_jax.cli import log_noise  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)
  log_noise.quiet()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")
  from configs import cover_mini  # pylint: disable=import-outside-toplevel
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  from cover_jax.training import train  # pylint: disable=import-outside-toplevel

  config = cover_mini.get_config()
  config.data_dir = args.data_dir
  config.num_train_steps = args.fixed_steps + args.steps
  config.log_every_steps = args.log_every
  config.checkpoint.every_steps = 10**9  # one save, after the timed steps
  config.checkpoint.async_save = False
  config.eval_every_steps = 0
  evaluate.evaluate = lambda *a, **k: {}  # the timing is of training only
  make = train.inp.make.for_train
  alone = iterator_alone(lambda: make(config), args.alone_seconds)
  measured = []

  def for_train(*a, **k):
    measured.append(Measured(make(*a, **k), args.fixed_steps,
                             args.log_every))
    return measured[0]
  train.inp.make.for_train = for_train
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    rate = read_scalars(workdir, "train/steps_per_sec")
    wait = read_scalars(workdir, "train/input_wait_fraction")
  # Interval 1 holds the compile; the fixed batch until fixed_steps.
  fixed = [s for s in rate if args.log_every < s <= args.fixed_steps]
  real = [s for s in rate if s > args.fixed_steps]
  return dict(
      setting=args.child, applied=applied, wall_seconds=wall,
      steps_per_second=statistics.median(rate[s] for s in real),
      input_wait_fraction=statistics.median(wait[s] for s in real),
      input_wait_fraction_max=max(wait[s] for s in real),
      step_alone_ms=1e3 / statistics.median(rate[s] for s in fixed),
      fixed_batch_input_wait_fraction=statistics.median(
          wait[s] for s in fixed),
      iterator_alone_clips_per_cpu_second=alone,
      **measured[0].figures())


# -- The parent ----------------------------------------------------------------


def run_child(setting: str, args) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={setting}",
         f"--data_dir={args.data_dir}", f"--steps={args.steps}",
         f"--fixed_steps={args.fixed_steps}", f"--log_every={args.log_every}",
         f"--alone_seconds={args.alone_seconds}"]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  if done.returncode:
    raise SystemExit(f"{setting} run failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


ROWS = (  # (key, label, format)
    ("steps_per_second", "training steps/s", "{:.2f}"),
    ("input_wait_fraction", "input wait fraction (median interval)",
     "{:.3f}"),
    ("input_wait_fraction_max", "input wait fraction (worst interval)",
     "{:.3f}"),
    ("step_alone_ms", "step alone, ms (fixed batch)", "{:.1f}"),
    ("step_alone_cpu_ms", "step alone, process CPU ms", "{:.1f}"),
    ("step_alone_cores_busy", "step alone, cores busy", "{:.2f}"),
    ("clips_per_input_cpu_second", "TrainIterator clips/CPU-s beside the step",
     "{:.0f}"),
    ("iterator_alone_clips_per_cpu_second", "TrainIterator clips/CPU-s alone",
     "{:.0f}"),
    ("xla_cpu_ms_per_step", "XLA threads' CPU ms per step (training)",
     "{:.1f}"),
    ("cpu_ms_per_step", "process CPU ms per step (training)", "{:.1f}"),
    ("system_cpu_ms_per_step", "of which system CPU ms", "{:.1f}"),
    ("page_faults_per_step", "minor page faults per step (training)",
     "{:.0f}"),
    ("step_alone_page_faults", "minor page faults per step alone", "{:.0f}"),
    ("cores_busy", "cores busy while training", "{:.2f}"),
)


def compare(args):
  build_datasets(args.data_dir)
  runs = {s: [] for s in SETTINGS}
  for r in range(args.rounds):
    order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
    for setting in order:
      result = run_child(setting, args)
      runs[setting].append(result)
      print(f"round {r + 1} {setting:8s} " + "  ".join(
          f"{key} {fmt.format(result[key])}" for key, _, fmt in ROWS) +
            f"  ({result['wall_seconds']:.0f} s)", flush=True)
  print(f"\nmedians over {args.rounds} round(s) ({args.fixed_steps} steps on a"
        f" fixed batch, then {args.steps} on the pipeline; log every "
        f"{args.log_every}):")
  print(f"  {'':44s}{'retained':>10s}{'default':>10s}{'ratio':>8s}")
  for key, label, fmt in ROWS:
    a, b = (statistics.median(x[key] for x in runs[s]) for s in SETTINGS)
    print(f"  {label:44s}{fmt.format(a):>10s}{fmt.format(b):>10s}"
          f"{a / b if b else float('nan'):8.3f}")
  return runs


def main_job(args):
  """The README's main job; each stage's input wait over its intervals."""
  build_datasets(args.data_dir)
  with tempfile.TemporaryDirectory() as workdir:
    start, before = time.perf_counter(), os.times()
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"),
         f"--config={os.path.join(ROOT, 'configs', 'cover_mini.py')}",
         f"--workdir={workdir}", f"--config.data_dir={args.data_dir}",
         f"--config.retain_freed_host_memory={args.retain}"],
        cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT))
    wall, cpu = time.perf_counter() - start, os.times()
    if done.returncode:
      raise SystemExit(f"main.py failed:\n{done.stderr[-3000:]}")
    print(f"main.py (retain_freed_host_memory={args.retain}): {wall:.0f} s "
          f"wall, "
          f"{cpu.children_user - before.children_user:.0f} s user + "
          f"{cpu.children_system - before.children_system:.0f} s system CPU")
    stages = {}
    for stage, folder in (("pretrain", os.path.join(workdir, "pretrain")),
                          ("co-training", workdir)):
      wait = read_scalars(folder, "train/input_wait_fraction")
      rate = read_scalars(folder, "train/steps_per_sec")
      steps = sorted(wait)
      rest = [wait[s] for s in steps[1:]]
      stages[stage] = dict(intervals=len(steps), first=wait[steps[0]],
                           median=statistics.median(rest), max=max(rest),
                           steps_per_second=statistics.median(
                               rate[s] for s in steps[1:]))
      print(f"{stage:12s} {len(steps)} log intervals: input wait fraction "
            f"first (compile) {wait[steps[0]]:.3f}, then median "
            f"{stages[stage]['median']:.4f}, max {stages[stage]['max']:.4f}; "
            f"{stages[stage]['steps_per_second']:.2f} steps/s (median)")
  return dict(wall_seconds=wall, stages=stages)


def build_datasets(data_dir: str):
  """The mini datasets, built into data_dir on first use (~30 s)."""
  from data import registry  # pylint: disable=import-outside-toplevel
  for name in registry.BUILT_ON_FIRST_USE:
    registry.load_builder(name, data_dir)


def machine() -> str:
  return f"{allocator.cpu_model()}, {os.cpu_count()} cores"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=os.path.join(
      tempfile.gettempdir(), "cover_jax_host_memory"),
                      help="the mini datasets; built on first use, reused")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=200,
                      help="steps timed on the input pipeline")
  parser.add_argument("--fixed_steps", type=int, default=75,
                      help="steps on one repeated batch first (step alone)")
  parser.add_argument("--log_every", type=int, default=25)
  parser.add_argument("--alone_seconds", type=float, default=3.0,
                      help="the iterator alone, timed this long")
  parser.add_argument("--quick", action="store_true",
                      help="1 round of 50 + 100 steps, iterator alone 2 s")
  parser.add_argument("--main_job", action="store_true",
                      help="run the whole mini job (main.py) instead")
  parser.add_argument("--retain", action="store_true",
                      help="--main_job with config.retain_freed_host_memory")
  parser.add_argument("--json", default=None, help="also write figures here")
  parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args)))
    return
  if args.quick:
    args.rounds, args.steps, args.fixed_steps = 1, 100, 50
    args.alone_seconds = 2.0
  if args.fixed_steps % args.log_every or args.fixed_steps < 2 * args.log_every:
    raise SystemExit("--fixed_steps must be a multiple of --log_every, at "
                     "least twice it.")
  print(f"machine: {machine()}; {time.strftime('%Y-%m-%d')}", flush=True)
  start = time.perf_counter()
  results = main_job(args) if args.main_job else compare(args)
  print(f"total: {time.perf_counter() - start:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(machine=machine(), args=vars(args), results=results), f,
                indent=2)


if __name__ == "__main__":
  main()
