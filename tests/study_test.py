"""The study (cover_jax/tools/study.py): its runs are the paper's tables, every run
gets the same steps and schedule, and its summary and plots are right."""

import json
import os

from absl import flags
import matplotlib.image
import numpy as np
import pytest

from configs import args
from cover_jax import input as inp
from cover_jax.tools import study
from cover_jax.tools import study_plots
from cover_jax.training import optimizer
from cover_jax.training import stages

BUDGET = study.Budget(pretrain=None, train=12.0, probe=3.0)  # as flags give


@pytest.fixture(scope="module")
def jobs():
  return {(j.name, j.seed): j for j in study.all_jobs([0, 1], BUDGET)}


def test_importing_the_study_defines_no_flags():
  assert "replot" not in flags.FLAGS  # only `python -m` defines them


def test_plan_is_the_papers_tables_for_every_seed(jobs):
  names = {name for name, _ in jobs}
  assert {"image_pretrain", "appearance_alone", "motion_alone", "videos",
          "videos_images"} <= names  # Table 5
  assert {n for n in names if n.startswith("probe_")} == {
      f"probe_digits_motion_from_{s}" for s in study.PROBES}
  for seed in (0, 1):
    pretrain = jobs["image_pretrain", seed]
    assert pretrain.workdir == f"seed{seed}/image_pretrain"
    for name in study.RUNS:  # every run starts from its seed's image stage
      assert jobs[name, seed].init_from == pretrain.workdir
      assert jobs[name, seed].epochs == BUDGET.train
    probe = jobs["probe_digits_motion_from_appearance_alone", seed]
    assert probe.init_from == jobs["appearance_alone", seed].workdir
    assert probe.epochs == BUDGET.probe


@pytest.mark.slow
def test_study_configs_fix_epochs_schedule_seed_and_mixture(jobs,
                                                            digits_dir):
  configs = {name: study.job_config(jobs[name, 1], "/runs", digits_dir)
             for name in ("videos", "videos_images_w0.25", "motion_alone",
                          "probe_digits_motion_from_videos_images")}
  for name, config in configs.items():
    assert config.seed == config.input.seed == 1
    assert config.pretrain is None
    epochs = BUDGET.probe if name.startswith("probe") else BUDGET.train
    assert config.num_epochs == epochs and config.num_train_steps is None
    # The lr drops tenfold at 70% of the epochs, whatever the mixture's size.
    sources = inp.make.sources(config, "train_split")
    per_epoch = optimizer.steps_per_epoch(
        sum(s.num_examples for s in sources), config.batch_size)
    _, schedule = optimizer.make(config, per_epoch)
    drop = int(round(0.7 * epochs * per_epoch))
    lr = config.optimizer.learning_rates[0]
    assert float(schedule(drop - 1)) == pytest.approx(lr)
    assert float(schedule(drop)) == pytest.approx(lr / 10)
  assert configs["videos"].init_from == "/runs/seed1/image_pretrain"
  pretrain = study.job_config(jobs["image_pretrain", 1], "/runs", digits_dir)
  assert pretrain.num_epochs == 32  # vit_mini.py's own, as the main job's
  assert pretrain.optimizer.boundaries_epochs == (24,)
  # The image stage is the one main.py derives from cover_mini.py (the run's
  # model, space only), seeded as the run.
  main_job = args.load("configs/cover_mini.py")
  main_job.seed, main_job.data_dir = 1, digits_dir
  stage = stages.pretrain_config(main_job)
  stage.input.seed = 1
  stage.checkpoint.every_steps = study.CHECKPOINT_EVERY_STEPS
  assert pretrain.to_dict() == stage.to_dict()
  assert pretrain.model.attention_type == "space_only"
  assert all(c.checkpoint.every_steps == study.CHECKPOINT_EVERY_STEPS
             for c in configs.values())
  assert configs["videos_images_w0.25"].datasets.digits_image.loss_weight == (
      0.25)
  assert list(configs["motion_alone"].heads) == ["digits_motion"]
  # Table 6's weight 0 drops the image set: every batch is all videos, not
  # half images weighted 0 (and the video sets are the scarce train25).
  videos = configs["videos"]
  assert "digits_image" not in videos.datasets
  assert videos.datasets.digits_motion.dataset == "digits_motion/train25"
  it = inp.make.for_train(videos)
  try:
    assert it.global_batch_sizes == {"video": videos.batch_size, "image": 0}
    assert set(next(it)) == {"video"}
  finally:
    it.close()
  with_images = inp.make.for_train(configs["videos_images_w0.25"])
  try:
    # In proportion to size: 2 x 720 videos against 2876 images.
    assert with_images.global_batch_sizes == {"video": 11, "image": 21}
  finally:
    with_images.close()


def _fake_records():
  rng = np.random.default_rng(0)
  records = []
  for name in list(study.RUNS) + [f"probe_digits_motion_from_{s}"
                                  for s in study.PROBES]:
    for seed in (0, 1, 2):
      keys = (["digits_motion_probe"] if name.startswith("probe") else
              ["digits_appearance", "digits_motion", "digits_image",
               "digits_motion/reversed", "digits_appearance/reversed"])
      records.append(dict(name=name, seed=seed, results={
          k: {"top1": float(rng.uniform())} for k in keys}))
  return records


def test_summary_is_mean_and_spread_over_seeds_and_plots_are_written(
    tmp_path):
  records = _fake_records()
  summary = study.summarize(records)
  values = [r["results"]["digits_motion"]["top1"] for r in records
            if r["name"] == "videos"]
  cell = summary["videos"]["digits_motion"]
  assert cell["values"] == values and cell["n"] == 3
  assert cell["mean"] == pytest.approx(sum(values) / 3)
  assert cell["std"] == pytest.approx(
      (sum((v - sum(values) / 3) ** 2 for v in values) / 3) ** 0.5)
  # The report as read back: summary keys sorted, runs in the order run.
  report = dict(summary=dict(sorted(summary.items())), runs=records,
                protocol=dict(image_weights=study.IMAGE_WEIGHTS,
                              probe_target="digits_motion",
                              probe_sources=list(study.PROBES)))
  paths = study_plots.plot_all(report, str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == [
      "probe.png", "table2_reversal.png", "table5_cotraining.png",
      "table6_image_weight.png"]
  table = (tmp_path / "results.md").read_text().splitlines()
  videos_row = next(r for r in table if r.startswith("| videos |"))
  header = [c.strip() for c in table[0].strip("|").split("|")]
  cells = [c.strip() for c in videos_row.strip("|").split("|")]
  assert cells[header.index("digits_motion")] == (
      f"{cell['mean']:.3f} ± {cell['std']:.3f}")
  assert cells[header.index("seeds")] == "3"
  assert [r.split("|")[1].strip() for r in table[2:]] == list(
      dict.fromkeys(r["name"] for r in records))
  for path in paths:
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # something is drawn


@pytest.mark.slow
def test_controls_train_as_many_steps_as_co_training(digits_dir, tmp_path):
  jobs = {j.name: j for j in study.all_jobs([0], BUDGET, controls=True)}
  assert set(study.CONTROLS) <= set(jobs)
  control = study.job_config(jobs["motion_alone_equal_steps"], "/runs",
                             digits_dir)
  cotrain = study.job_config(jobs["videos_images"], "/runs", digits_dir)
  alone = study.job_config(jobs["motion_alone"], "/runs", digits_dir)
  assert list(control.heads) == ["digits_motion"]
  # 12 epochs of 720 + 720 + 2876 examples at 32 a step; 12 of 720 alone.
  assert study.num_steps(cotrain) == 12 * 135
  assert study.num_steps(alone) == 12 * 23
  assert study.num_steps(control) == study.num_steps(cotrain)
  _, schedule = optimizer.make(control, study.steps_per_epoch(control))
  drop = int(round(0.7 * 12 * 135))
  assert float(schedule(drop - 1)) == pytest.approx(1e-3)
  assert float(schedule(drop)) == pytest.approx(1e-4)
  # A run that has its final evaluation is read back, not run again.
  assert study.finished_results(control, str(tmp_path)) is None
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  evaluate.write_json(str(tmp_path), 7, {"digits_motion": {"top1": 0.5}})
  assert study.finished_results(control, str(tmp_path)) == {
      "digits_motion": {"top1": 0.5}}


def _flat(config) -> dict:
  """{dotted field: value} of a config."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(f"{prefix}{key}.", value)
      else:
        out[f"{prefix}{key}"] = value
  walk("", config.to_dict())
  return out


def test_recipe_runs_each_differ_from_the_plain_run_by_their_fields_only():
  """Every option's config is the plain co-training run's with exactly its
  fields changed (per-dataset ones in every dataset); `strong` is
  configs/recipes.py's; the multi-clip job evaluates the plain run's
  weights with 5 x 3 views and trains nothing."""
  jobs = {(j.name, j.seed): j for j in study.recipe_jobs([0, 2], BUDGET)}
  plain_job = jobs[study.PLAIN, 2]
  # The same run as the paper tables' co-training run, so shared.
  assert plain_job == {(j.name, j.seed): j for j in study.all_jobs(
      [2], BUDGET)}[study.PLAIN, 2]
  plain = _flat(study.job_config(plain_job, "/runs", None))
  datasets = study.job_config(plain_job, "/runs", None).datasets
  assert len(datasets) == 3
  for name, (_, fields) in study.RECIPE_RUNS.items():
    job = jobs[name, 2]
    assert job.init_from == "seed2/image_pretrain" and job.stage is None
    got = _flat(study.job_config(job, "/runs", None))
    changed = {k: v for k, v in got.items() if plain.get(k) != v}
    want = {}
    for key, value in fields.items():
      for dataset in (datasets if "*" in key else [None]):
        want[key.replace("*", dataset) if dataset else key] = value
    if name == "strong":
      from configs import recipes  # pylint: disable=import-outside-toplevel
      config = study.job_config(plain_job, "/runs", None)
      recipes.apply(config, "strong")
      want = {k: v for k, v in _flat(config).items() if plain.get(k) != v}
      assert "input.randaugment" in want and len(want) > 10
    assert changed == want, name
  [(eval_name, (run, fields))] = study.RECIPE_EVALS.items()
  evaluation = jobs[eval_name, 0]
  assert evaluation.stage == "eval" and run == study.PLAIN
  assert evaluation.init_from == jobs[study.PLAIN, 0].workdir
  config = study.job_config(evaluation, "/runs", None)
  assert config.init_from == "/runs/seed0/videos_images"
  assert (config.input.eval_clips, config.input.eval_views) == (5, 3)


def test_set_fields_names_a_field_the_config_lacks():
  config = study.study_config("configs/cover_mini.py", seed=0, epochs=1,
                              data_dir=None)
  study.set_fields(config, {"datasets.*.label_smoothing": 0.2})
  assert {d.label_smoothing for d in config.datasets.values()} == {0.2}
  with pytest.raises(KeyError, match="datasets.*.label_smoothin: the config "
                     "has no field 'label_smoothin' there"):
    study.set_fields(config, {"datasets.*.label_smoothin": 0.1})


def test_recipes_table_puts_plain_first_and_ema_weights_on_a_row(tmp_path):
  rng = np.random.default_rng(1)
  records = []
  for name in ["image_pretrain", "mixup", study.PLAIN, "ema"]:
    keys = ["digits_appearance", "digits_motion", "digits_image"]
    if name == "ema":
      keys += [f"{k}/ema" for k in keys]
    for seed in (0, 1) if name != "mixup" else (0, 1, 2):
      records.append(dict(name=name, seed=seed, results={
          k: {"top1": float(rng.uniform())} for k in keys}))
  summary = study.summarize(records)
  paths = study_plots.plot_recipes(
      dict(summary=summary, protocol=dict(plain=study.PLAIN)), str(tmp_path))
  table = (tmp_path / "recipes.md").read_text().splitlines()
  assert [r.split("|")[1].strip() for r in table[2:]] == [
      study.PLAIN, "mixup", "ema", "ema (EMA weights)"]
  ema_row = [c.strip() for c in table[-1].strip("|").split("|")]
  cell = summary["ema"]["digits_motion/ema"]
  header = [c.strip() for c in table[0].strip("|").split("|")]
  assert ema_row[header.index("digits_motion")] == (
      f"{cell['mean']:.3f} ± {cell['std']:.3f}")
  # How many seeds each row averages: mixup has a third.
  assert [r.split("|")[2].strip() for r in table[2:]] == ["2", "3", "2", "2"]
  pixels = matplotlib.image.imread(paths[0])
  assert pixels.shape[1] > 600 and pixels[..., :3].std() > 0.05


def test_runs_in_the_report_with_the_same_config_are_not_run_again(
    tmp_path, monkeypatch):
  """run_jobs reads a job back from the committed report when its config is
  the same (more seeds on another machine, whose datasets are elsewhere),
  and runs it when it differs."""
  from cover_jax.training import train  # pylint: disable=import-outside-toplevel
  plain = next(j for j in study.recipe_jobs([0], BUDGET)
               if j.name == study.PLAIN)
  runs = str(tmp_path / "runs")
  same = json.loads(study.job_config(plain, runs, None).to_json_best_effort())
  elsewhere = dict(same, data_dir="/another/machine/tfds")
  other = dict(same, seed=99)
  report = tmp_path / "recipes.json"
  trained = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: (
      trained.append(workdir) or {"digits_motion": {"top1": 0.25}}))
  monkeypatch.setattr(study, "num_steps", lambda config: 7)
  for config, want_trained in ((same, []), (elsewhere, []),
                               (other, [f"{runs}/seed0/{plain.name}"])):
    trained.clear()
    kept = dict(name=plain.name, seed=0, config=config, results={
        "digits_motion": {"top1": 0.5}})
    report.write_text(json.dumps({"runs": [kept]}))
    records = study.run_jobs([plain], runs, None, report_path=str(report))
    assert trained == want_trained
    assert records[0]["results"]["digits_motion"]["top1"] == (
        0.5 if not want_trained else 0.25)


def test_only_finished_runs_nothing_and_reports_what_finished(tmp_path,
                                                              monkeypatch):
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  from cover_jax.training import train  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: 1 / 0)
  monkeypatch.setattr(study, "num_steps", lambda config: 7)
  jobs = [j for j in study.recipe_jobs([0], BUDGET)
          if j.name in (study.PLAIN, "mixup")]
  runs = str(tmp_path / "runs")
  evaluate.write_json(os.path.join(runs, jobs[1].workdir), 9,
                      {"digits_motion": {"top1": 0.75}})
  records = study.run_jobs(jobs, runs, None, only_finished=True)
  assert [(r["name"], r["results"]["digits_motion"]["top1"])
          for r in records] == [(jobs[1].name, 0.75)]
