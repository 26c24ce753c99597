"""The study's plots (cover_jax/tools/study.py): mean and spread over seeds.

Every bar or point is the mean test top-1 over seeds; error bars are the
standard deviation, and each seed's value is drawn as a dot.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

VIDEOS = ("digits_appearance", "digits_motion")
SHORT = {"digits_appearance": "appearance (Kinetics role)",
         "digits_motion": "motion (SSv2 role)",
         "digits_image": "image (ImageNet role)"}


def _cell(summary, run, key):
  return summary.get(run, {}).get(key)


def _bars(ax, groups, series, summary):
  """Grouped bars: groups on x, one bar per (label, cell) series, one colour
  per series."""
  width = 0.8 / len(series)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for j, (label, cell_of) in enumerate(series):
    for i, group in enumerate(groups):
      cell = cell_of(group)
      if cell is None:
        continue
      x = i + (j - (len(series) - 1) / 2) * width
      ax.bar(x, cell["mean"], width, yerr=cell["std"], capsize=3,
             color=colors[j % len(colors)],
             label=None if label in ax.get_legend_handles_labels()[1]
             else label)
      ax.plot([x] * len(cell["values"]), cell["values"], "k.", ms=3)
  ax.set_xticks(range(len(groups)), [SHORT.get(g, g) for g in groups])
  ax.set_ylabel("test top-1")
  ax.set_ylim(0, 1.05)
  ax.legend(fontsize=8, loc="best", framealpha=0.9)


COLUMNS = ("digits_appearance", "digits_appearance/reversed",
           "digits_motion", "digits_motion/reversed", "digits_image",
           "digits_motion_probe")


def markdown_table(summary: dict) -> str:
  """Every run's test top-1, mean +- std over its seeds (how many: the
  `seeds` column), as a Markdown table."""
  columns = [c for c in COLUMNS if any(c in keys for keys in
                                       summary.values())]
  rows = ["| run | seeds | " + " | ".join(columns) + " |",
          "|---|---|" + "---|" * len(columns)]
  for name, keys in summary.items():
    cells = [f"{keys[c]['mean']:.3f} ± {keys[c]['std']:.3f}" if c in keys
             else "" for c in columns]
    seeds = max(cell["n"] for cell in keys.values())
    rows.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
  return "\n".join(rows) + "\n"


def plot_all(report: dict, out: str) -> list[str]:
  """Writes the four figures and results.md into `out`; returns the
  figures' paths."""
  summary = report["summary"]
  paths = []
  # In the order the runs ran (the JSON's keys are sorted), also on --replot.
  order = list(dict.fromkeys(r["name"] for r in report.get("runs", ())))
  rows = {name: summary[name] for name in order if name in summary}
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown_table({**rows, **summary}))

  def save(fig, name):
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

  # Table 2: frames in order and reversed, in the co-training run.
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  _bars(ax, list(VIDEOS), [
      ("frames in order", lambda d: _cell(summary, "videos_images", d)),
      ("reversed", lambda d: _cell(summary, "videos_images",
                                   f"{d}/reversed"))], summary)
  ax.set_title("Reversed frames at test time (paper Table 2)")
  save(fig, "table2_reversal.png")

  # Table 5: each video set alone, videos co-trained, videos + images.
  fig, ax = plt.subplots(figsize=(6, 3.5))
  alone = {"digits_appearance": "appearance_alone",
           "digits_motion": "motion_alone"}
  series = [
      ("alone", lambda d: _cell(summary, alone[d], d)),
      ("videos co-trained", lambda d: _cell(summary, "videos", d)),
      ("videos + images", lambda d: _cell(summary, "videos_images", d))]
  if any(f"{alone[d]}_equal_steps" in summary for d in VIDEOS):
    series.insert(1, ("alone, as many steps as videos + images",
                      lambda d: _cell(summary, f"{alone[d]}_equal_steps", d)))
  _bars(ax, list(VIDEOS), series, summary)
  ax.set_title("Co-training (paper Table 5)")
  save(fig, "table5_cotraining.png")

  # Table 6: the image loss weight.
  protocol = report["protocol"]
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  for key in VIDEOS + ("digits_image",):
    points = [(w, _cell(summary, run, key)) for run, w in
              protocol["image_weights"].items() if _cell(summary, run, key)]
    if not points:
      continue
    ax.errorbar([w for w, _ in points], [c["mean"] for _, c in points],
                yerr=[c["std"] for _, c in points], marker="o", capsize=3,
                label=SHORT[key])
  ax.set_xlabel("image loss weight (0: no images in the mixture)")
  ax.set_ylabel("test top-1")
  ax.legend(fontsize=8)
  ax.set_title("Image loss weight (paper Table 6)")
  save(fig, "table6_image_weight.png")

  # 3.2: linear probes on digits_motion.
  target = protocol["probe_target"]
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  key = f"{target}_probe"
  _bars(ax, [key], [
      (f"backbone of {source}",
       lambda k, s=source: _cell(summary, f"probe_{target}_from_{s}", k))
      for source in protocol["probe_sources"]], summary)
  ax.set_xticks([0], [f"linear probe on {target}"])
  ax.set_title("Frozen backbones, new linear head (paper 3.2)")
  save(fig, "probe.png")
  return paths


def recipe_rows(summary: dict, plain: str) -> dict:
  """The recipes comparison's rows: the plain run first, then the others in
  order; a run's EMA results ("<dataset>/ema...") as a row of their own,
  "<run> (EMA weights)"."""
  rows = {}
  for name in [plain] + [n for n in summary if n != plain]:
    raw = {k: v for k, v in summary.get(name, {}).items()
           if "/ema" not in k}
    averaged = {k.replace("/ema", ""): v for k, v in
                summary.get(name, {}).items() if "/ema" in k}
    if raw:
      rows[name] = raw
    if averaged:
      rows[f"{name} (EMA weights)"] = averaged
  return rows


def plot_recipes(report: dict, out: str) -> list[str]:
  """Writes recipes.md (the table) and recipes.png (a panel per dataset,
  each run's mean and seeds against the plain run's mean) into `out`;
  returns the figure's path."""
  plain = report["protocol"]["plain"]
  rows = recipe_rows(report["summary"], plain)
  rows.pop("image_pretrain", None)
  with open(os.path.join(out, "recipes.md"), "w") as f:
    f.write(markdown_table(rows))
  datasets = VIDEOS + ("digits_image",)
  names = list(rows)
  fig, axes = plt.subplots(1, len(datasets), figsize=(12, 0.4 * len(names) + 1.5),
                           sharey=True)
  for ax, dataset in zip(axes, datasets):
    for y, name in enumerate(names):
      cell = rows[name].get(dataset)
      if cell is None:
        continue
      ax.barh(y, cell["mean"], xerr=cell["std"], capsize=3,
              color="tab:gray" if name == plain else "tab:blue")
      ax.plot(cell["values"], [y] * len(cell["values"]), "k.", ms=3)
    if dataset in rows[plain]:
      ax.axvline(rows[plain][dataset]["mean"], color="k", ls="--", lw=0.8)
    ax.set_title(SHORT[dataset], fontsize=9)
    ax.set_xlabel("test top-1")
    ax.set_xlim(0, 1.05)
  axes[0].set_yticks(range(len(names)), names, fontsize=8)
  axes[0].invert_yaxis()
  fig.suptitle("Fine-tuning options against the plain co-training run "
               "(dashed)", fontsize=10)
  path = os.path.join(out, "recipes.png")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path]
