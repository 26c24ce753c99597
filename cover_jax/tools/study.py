"""The paper's analyses at small scale on the built-in data, in one command.

    python -m cover_jax.tools.study --out=docs/study

For every seed: the image pretraining stage (cover_mini.py's, derived as
main.py derives it: cover_jax/training/stages.py), then
every run below from that same start, through the same training code as
main.py (configs/cover_mini.py with its config arguments), then the linear
probes. Writes OUT/results.json (every run's config and evaluation, and the
mean and spread over seeds) and OUT/*.png. Runs resume or are skipped when
OUT/runs already holds them, so a killed study continues where it stopped.

Protocol (fixed before any result was seen, and the same for every run):
  - the regime the paper is about, video data scarcer than image data: the
    video sets at 25% of their training digits (`video25`: 720 videos each)
    against all 2876 images; the test sets are whole;
  - every run trains the same number of epochs (passes over each of its
    datasets: the paper's protocol, so a co-trained run takes more steps),
    at the same batch, the learning rate dropped tenfold at 70% of them;
  - seeds vary the heads' initialisation, the data order and the pretraining.

Runs, as the paper's tables:
  Table 2  reversed frames at test time: every run is also evaluated so;
  Table 5  each video set alone, the video sets co-trained, videos + images;
  Table 6  image loss weight 0 (the image set dropped), 0.25, 0.5, 0.75, 1;
  3.2      a linear probe on digits_motion of the frozen backbone of
           digits_appearance alone, of appearance + images, and of the full
           co-training (which saw digits_motion).

    python -m cover_jax.tools.study --recipes --out=docs/study

compares instead the fine-tuning options of configs/recipes.py, each alone
and all together (`strong`), and multi-clip testing, with the plain
co-training run (the same run as Table 5's videos + images, shared through
OUT/runs): OUT/recipes.json, recipes.md, recipes.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from typing import Sequence

from absl import app, flags, logging
import numpy as np

REGIME = "video25"
RUNS = {  # name -> cover_mini.py argument
    "appearance_alone": f"{REGIME},no_digits_motion,no_images",
    "motion_alone": f"{REGIME},no_digits_appearance,no_images",
    "videos": f"{REGIME},image_weight=0",
    "videos_images_w0.25": f"{REGIME},image_weight=0.25",
    "videos_images": REGIME,  # w_image = 0.5, CoVeR's
    "videos_images_w0.75": f"{REGIME},image_weight=0.75",
    "videos_images_w1": f"{REGIME},image_weight=1",
    "appearance_images": f"{REGIME},no_digits_motion",
}
# name -> (run of RUNS, run whose number of steps it trains).
# Motion only: the set whose co-training gain is the question (each control
# costs as much as a co-training run).
CONTROLS = {"motion_alone_equal_steps": ("motion_alone", "videos_images")}
PROBE_TARGET = "digits_motion"
PROBES = ("appearance_alone", "appearance_images", "videos_images")
IMAGE_WEIGHTS = {"videos": 0.0, "videos_images_w0.25": 0.25,
                 "videos_images": 0.5, "videos_images_w0.75": 0.75,
                 "videos_images_w1": 1.0}
# `--recipes`: each fine-tuning option of configs/recipes.py alone, then all
# of them (`strong`), against the plain co-training run (RUNS's
# videos_images, shared with the tables above), every run from the same image
# stage at the same budget. Values are `strong`'s. name -> (cover_mini.py
# argument, config fields set; "datasets.*." sets a field of every dataset).
PLAIN = "videos_images"
RECIPE_RUNS = {
    "label_smoothing": (REGIME, {"datasets.*.label_smoothing": 0.1}),
    "mixup": (REGIME, {"datasets.*.mixup_alpha": 0.8}),
    "cutmix": (REGIME, {"datasets.*.cutmix_alpha": 1.0}),
    "randaugment": (REGIME, {"input.randaugment": "rand-m7-n4-mstd0.5-inc1"}),
    "layer_decay": (REGIME, {"optimizer.layer_decay": 0.75}),
    "stochastic_depth": (REGIME, {"model.stochastic_depth_rate": 0.1}),
    # Not in `strong` (VideoMAE keeps none): an average over about the last
    # thousand steps, a good part of a run of 1-2 thousand.
    "ema": (REGIME, {"ema_decay": 0.999, "ema_warmup": True}),
    "strong": (f"{REGIME},strong", {}),
}
# Multi-clip testing needs no training: the plain run's last weights
# evaluated with `strong`'s 5 clips x 3 crops (the plain run: 1 x 3).
RECIPE_EVALS = {"plain_5x3_views": (PLAIN, {"input.eval_clips": 5,
                                            "input.eval_views": 3})}
LR_DROP_AT = 0.7  # of the epochs
# Every run of the study checkpoints at one interval (its runs last minutes;
# a killed study loses at most this many steps of one run).
CHECKPOINT_EVERY_STEPS = 500


@dataclasses.dataclass(frozen=True)
class Budget:
  """Epochs of each kind of run: passes over each dataset of its mixture
  (None: the config's own schedule)."""
  pretrain: float | None
  train: float
  probe: float


def with_epochs(config, epochs: float | None):
  """`config` set to train `epochs` epochs, the lr dropped at LR_DROP_AT
  (None: as the config says).

  An epoch is one pass over the mixture, so each dataset is seen `epochs`
  times whatever else is in the mixture (the paper's protocol: 20 epochs
  for every run, alone or co-trained; a co-trained run takes more steps).
  """
  if epochs is not None:
    # Whole epochs as int: the configs' num_epochs may be typed int.
    config.num_epochs = int(epochs) if float(epochs).is_integer() else epochs
    config.num_train_steps = None
    config.optimizer.boundaries_epochs = (LR_DROP_AT * epochs,)
  return config


def set_fields(config, fields: dict) -> None:
  """Sets config fields by dotted name; "datasets.*.<field>" sets it in
  every dataset's entry."""
  for key, value in fields.items():
    *path, last = key.split(".")
    targets = [config]
    for part in path:
      targets = ([t[name] for t in targets for name in t] if part == "*"
                 else [t[part] for t in targets])
    for target in targets:
      if last not in target:
        raise KeyError(f"{key}: the config has no field {last!r} there.")
      target[last] = value


def study_config(path_and_arg: str, *, seed: int, epochs: float | None,
                 data_dir: str | None, init_from: str | None = None,
                 stage: str | None = None, fields: dict | None = None):
  """A config of the study: a config file with its argument, seeded, with
  `fields` set (set_fields); with stage="pretrain", that config's
  pretraining stage."""
  from configs import args  # pylint: disable=import-outside-toplevel
  from cover_jax.training import stages  # pylint: disable=import-outside-toplevel
  config = args.load(path_and_arg)
  config.seed = seed
  config.data_dir = data_dir
  if stage == "pretrain":
    config.init_from = None
    config = stages.pretrain_config(config)
  else:
    config.pretrain = None  # the study runs (and shares) the image stage
    config.init_from = init_from
  config.input.seed = seed
  config.checkpoint.every_steps = CHECKPOINT_EVERY_STEPS
  set_fields(config, fields or {})
  return with_epochs(config, epochs)


@dataclasses.dataclass(frozen=True)
class Job:
  """One run of the study: a config file with its argument, and its start."""
  name: str
  seed: int
  config: str  # "configs/x.py[:arg]"
  epochs: float
  workdir: str  # relative to OUT/runs
  init_from: str | None = None  # a workdir of the study, relative too
  steps_of: str | None = None  # train as many steps as this job's config
  # "pretrain": the config's pretraining stage; "eval": init_from's last
  # weights evaluated, nothing trained.
  stage: str | None = None
  fields: tuple[tuple[str, object], ...] = ()  # config fields set


def _pretrain_job(seed: int, budget: Budget) -> Job:
  """The seed's image stage, the start of every run of that seed."""
  return Job("image_pretrain", seed, "configs/cover_mini.py", budget.pretrain,
             os.path.join(f"seed{seed}", "image_pretrain"), stage="pretrain")


def all_jobs(seeds: Sequence[int], budget: Budget, *,
             controls: bool = False) -> list[Job]:
  """Every run of the study, in an order that makes each start before use.

  `controls` adds CONTROLS: single-dataset runs given as many steps as a
  co-training run, which separates what co-training adds from what its
  extra steps add.
  """
  jobs = []
  for seed in seeds:
    base = f"seed{seed}"
    jobs.append(_pretrain_job(seed, budget))
    pretrain = jobs[-1].workdir
    for name, arg in RUNS.items():
      jobs.append(Job(name, seed, f"configs/cover_mini.py:{arg}",
                      budget.train, os.path.join(base, name), pretrain))
    for source in PROBES:
      jobs.append(Job(f"probe_{PROBE_TARGET}_from_{source}", seed,
                      f"configs/linear_probe.py:{PROBE_TARGET}",
                      budget.probe, os.path.join(base, f"probe_from_{source}"),
                      os.path.join(base, source)))
    for name, (alone, like) in (CONTROLS.items() if controls else ()):
      jobs.append(Job(name, seed, f"configs/cover_mini.py:{RUNS[alone]}",
                      budget.train, os.path.join(base, name), pretrain,
                      steps_of=f"configs/cover_mini.py:{RUNS[like]}"))
  return jobs


def recipe_jobs(seeds: Sequence[int], budget: Budget) -> list[Job]:
  """The `--recipes` comparison: per seed the image stage, the plain run
  (the same job as all_jobs's), each of RECIPE_RUNS and RECIPE_EVALS."""
  jobs = []
  for seed in seeds:
    base = f"seed{seed}"
    jobs.append(_pretrain_job(seed, budget))
    pretrain = jobs[-1].workdir
    runs = {PLAIN: (RUNS[PLAIN], {}), **RECIPE_RUNS}
    for name, (arg, fields) in runs.items():
      jobs.append(Job(name, seed, f"configs/cover_mini.py:{arg}",
                      budget.train, os.path.join(base, name), pretrain,
                      fields=tuple(fields.items())))
    for name, (run_name, fields) in RECIPE_EVALS.items():
      jobs.append(Job(name, seed, f"configs/cover_mini.py:{runs[run_name][0]}",
                      budget.train, os.path.join(base, name),
                      os.path.join(base, run_name), stage="eval",
                      fields=tuple(fields.items())))
  return jobs


def steps_per_epoch(config) -> int:
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel
  from cover_jax.training import optimizer  # pylint: disable=import-outside-toplevel
  return optimizer.steps_per_epoch(sum(
      s.num_examples for s in inp.make.sources(config, "train_split")),
                                   config.batch_size)


def num_steps(config) -> int:
  """The steps `config` trains, counted as the training loop counts them."""
  from cover_jax.training import train  # pylint: disable=import-outside-toplevel
  return train.train_steps(config, steps_per_epoch(config))


def job_config(job: Job, runs_dir: str, data_dir: str | None):
  config = study_config(
      job.config, seed=job.seed, epochs=job.epochs, data_dir=data_dir,
      init_from=job.init_from and os.path.join(runs_dir, job.init_from),
      stage=job.stage if job.stage == "pretrain" else None,
      fields=dict(job.fields))
  if job.steps_of:
    steps = num_steps(study_config(job.steps_of, seed=job.seed,
                                   epochs=job.epochs, data_dir=data_dir))
    config.num_train_steps = steps
    config.optimizer.boundaries_epochs = (
        LR_DROP_AT * steps / steps_per_epoch(config),)
  return config


def finished_results(config, workdir: str) -> dict | None:
  """The final evaluation of a run that already ended, else None.

  Study runs evaluate only at their end (eval_every_steps 0), so an
  evaluation file means the run is complete.
  """
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  if config.eval_every_steps:
    return None
  try:
    return evaluate.read_json(workdir)["results"]
  except FileNotFoundError:
    return None


def run_jobs(jobs: Sequence[Job], runs_dir: str, data_dir: str | None, *,
             report_path: str | None = None,
             only_finished: bool = False) -> list[dict]:
  """Runs each job, or reads it back when it finished in runs_dir or is in
  the report at `report_path` with the same config (a committed report
  carries its runs to another machine, where more seeds can be added); one
  record per job: its config, steps, minutes and final evaluation.
  only_finished: runs nothing; the jobs not finished have no record."""
  from cover_jax.training import train  # pylint: disable=import-outside-toplevel
  reported = {}
  if report_path and os.path.exists(report_path):
    with open(report_path) as f:
      reported = {(r["name"], r["seed"]): r for r in json.load(f)["runs"]}
  records = []
  for job in jobs:
    config = job_config(job, runs_dir, data_dir)
    config_json = json.loads(config.to_json_best_effort())
    workdir = os.path.join(runs_dir, job.workdir)
    start = time.time()
    earlier = reported.get((job.name, job.seed))
    if earlier and _same_run(earlier["config"], config_json):
      print(f"== {job.name} (seed {job.seed}): in {report_path}", flush=True)
      records.append(earlier)
      continue
    results = finished_results(config, workdir)
    if results is None and only_finished:
      print(f"== {job.name} (seed {job.seed}): not run (--only_finished)",
            flush=True)
      continue
    print(f"== {job.name} (seed {job.seed})"
          f"{': finished earlier' if results else ''}", flush=True)
    if results is None:
      results = (train.evaluate_checkpoint(config, workdir)
                 if job.stage == "eval" else
                 train.train_and_evaluate(config, workdir))
    records.append(dict(name=job.name, seed=job.seed, workdir=job.workdir,
                        steps=0 if job.stage == "eval" else num_steps(config),
                        minutes=(time.time() - start) / 60, results=results,
                        config=config_json, commit=_commit()))
  return records


def _same_run(recorded: dict, config_json: dict) -> bool:
  """Whether a recorded run's config is this job's, wherever each machine
  keeps the datasets (data_dir is where the data is read, not what)."""
  return ({k: v for k, v in recorded.items() if k != "data_dir"} ==
          {k: v for k, v in config_json.items() if k != "data_dir"})


def _commit() -> str | None:
  """The checkout's commit, which a record read back keeps (a code change
  that leaves the config as it was does not make a run again)."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))
                          ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _report(records: list[dict], seeds: Sequence[int], budget: Budget,
            **protocol) -> dict:
  return dict(machine=f"{platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} CPUs",
              minutes=sum(r["minutes"] for r in records),
              protocol=dict(regime=REGIME, seeds=list(seeds),
                            budget=dataclasses.asdict(budget),
                            lr_drop_at=LR_DROP_AT, **protocol),
              summary=summarize(records), runs=records)


def _write(report: dict, path: str) -> None:
  with open(path, "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)


def run(out: str, seeds: Sequence[int], budget: Budget,
        data_dir: str | None, *, controls: bool = False) -> dict:
  """Runs (or resumes) the paper's tables, then writes OUT/results.json and
  the plots. A run that already finished in OUT/runs is read back."""
  records = run_jobs(all_jobs(seeds, budget, controls=controls),
                     os.path.join(out, "runs"), data_dir,
                     report_path=os.path.join(out, "results.json"))
  report = _report(records, seeds, budget, runs=RUNS,
                   image_weights=IMAGE_WEIGHTS, probe_target=PROBE_TARGET,
                   probe_sources=list(PROBES),
                   controls=CONTROLS if controls else {})
  _write(report, os.path.join(out, "results.json"))
  from cover_jax.tools import study_plots  # pylint: disable=import-outside-toplevel
  study_plots.plot_all(report, out)
  return report


def run_recipes(out: str, seeds: Sequence[int], budget: Budget,
                data_dir: str | None, *, only_finished: bool = False) -> dict:
  """Runs (or resumes) the fine-tuning options' comparison (recipe_jobs),
  then writes OUT/recipes.json, recipes.md and recipes.png (only_finished:
  of the runs finished so far, running none)."""
  records = run_jobs(recipe_jobs(seeds, budget), os.path.join(out, "runs"),
                     data_dir, report_path=os.path.join(out, "recipes.json"),
                     only_finished=only_finished)
  report = _report(records, seeds, budget, plain=PLAIN,
                   recipe_runs=RECIPE_RUNS, recipe_evals=RECIPE_EVALS)
  _write(report, os.path.join(out, "recipes.json"))
  from cover_jax.tools import study_plots  # pylint: disable=import-outside-toplevel
  study_plots.plot_recipes(report, out)
  return report


def summarize(records: list[dict]) -> dict:
  """{run name: {result key: {mean, std, n, values}}} over seeds (top-1)."""
  table: dict = {}
  for r in records:
    for key, metrics in r["results"].items():
      table.setdefault(r["name"], {}).setdefault(key, []).append(
          metrics["top1"])
  return {name: {key: dict(mean=float(np.mean(v)), std=float(np.std(v)),
                           n=len(v), values=v)
                 for key, v in keys.items()}
          for name, keys in table.items()}


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined when run, not on import)."""
  flags.DEFINE_string("out", "docs/study", "Where results.json, the plots and "
                      "the runs (OUT/runs) go.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each is a full repeat.")
  flags.DEFINE_float("pretrain_epochs", None, "Epochs of the image stage "
                     "(None: vit_mini.py's schedule, as the main job's).")
  flags.DEFINE_float("train_epochs", 12, "Epochs of every other run.")
  flags.DEFINE_float("probe_epochs", 3, "Epochs of every linear probe.")
  flags.DEFINE_string("data_dir", None, "Datasets (None: ~/tensorflow_datasets;"
                      " the mini ones are built on first use).")
  flags.DEFINE_bool("controls", False, "Also the equal-steps controls "
                    "(CONTROLS: single-dataset runs as long as co-training).")
  flags.DEFINE_bool("recipes", False, "Instead of the paper's tables, each "
                    "fine-tuning option against the plain run (RECIPE_RUNS): "
                    "OUT/recipes.json, recipes.md, recipes.png.")
  flags.DEFINE_bool("only_finished", False, "With --recipes: write the "
                    "report of the runs finished so far, running none (the "
                    "rest are added when the study runs again).")
  flags.DEFINE_bool("replot", False, "Only redraw the plots and the tables "
                    "from OUT/results.json (and OUT/recipes.json).")


def main(argv):
  del argv
  if FLAGS.replot:
    from cover_jax.tools import study_plots  # pylint: disable=import-outside-toplevel
    for name, plot in (("results.json", study_plots.plot_all),
                       ("recipes.json", study_plots.plot_recipes)):
      path = os.path.join(FLAGS.out, name)
      if os.path.exists(path):
        with open(path) as f:
          print("\n".join(plot(json.load(f), FLAGS.out)))
    return
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")
  start = time.time()
  seeds = [int(s) for s in FLAGS.seeds]
  budget = Budget(FLAGS.pretrain_epochs, FLAGS.train_epochs,
                  FLAGS.probe_epochs)
  if FLAGS.recipes:
    report = run_recipes(FLAGS.out, seeds, budget, FLAGS.data_dir,
                         only_finished=FLAGS.only_finished)
  else:
    report = run(FLAGS.out, seeds, budget, FLAGS.data_dir,
                 controls=FLAGS.controls)
  print(json.dumps(report["summary"], indent=1))
  name = "recipes.json" if FLAGS.recipes else "results.json"
  print(f"Study done in {(time.time() - start) / 60:.1f} min: "
        f"{os.path.join(FLAGS.out, name)}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
