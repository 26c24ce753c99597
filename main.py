"""cover-jax command line.

    python main.py --config=configs/cover_mini.py --workdir=/tmp/cover

`--mode=describe` (today's only mode) prints what the config builds: the
model, its parameters and its cost per clip and per training step, the
datasets (the built-in ones are built on first use) and how a batch splits
between videos and images, and saves the resolved config in the workdir. Training and evaluation arrive with the
training loop (see README).
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from cover_jax import host

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the resolved config, "
                    "checkpoints and logs.")
flags.DEFINE_enum("mode", "describe", ["describe"],
                  "describe: report the model and its cost.")
flags.mark_flags_as_required(["config", "workdir"])


def describe(config) -> dict:
  """Model size and cost for `config` (no parameters are allocated)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cover_jax.models import abstract_variables, create, flops  # pylint: disable=import-outside-toplevel

  model = create(config.heads, **config.model)
  model.validate()
  shapes = abstract_variables(model)
  count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))
  return dict(
      model=dict(width=model.width, depth=model.depth,
                 num_heads=model.num_heads, mlp_dim=model.mlp_dim,
                 patch_size=model.patch_size, num_frames=model.num_frames,
                 image_size=model.image_size, heads=dict(model.heads)),
      parameters=count,
      gflops_per_clip=flops.forward_flops(model) / 1e9,
      gflops_per_image=flops.forward_flops(model, num_frames=1) / 1e9,
      tflops_per_step_all_video=flops.train_step_flops(
          model, batch=config.batch_size) / 1e12)


def describe_data(config) -> dict:
  """The config's datasets (built on first use if they are the mini ones),
  checked against the preprocessing, and the split of the batch."""
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel

  sources = inp.make.sources(config, "train_split")
  inp.check_sources(sources, inp.make.preprocessing(config),
                    [spec.get("flip", True)
                     for spec in config.datasets.values()])
  weights = {part: sum(s.num_examples for s in sources if s.kind == part)
             for part in inp.PARTS}
  return dict(
      datasets={s.name: dict(dataset=s.dataset, kind=s.kind,
                             train_examples=s.num_examples,
                             classes=s.num_classes, short_side=s.short_side)
                for s in sources},
      batch=inp.split_batch(config.batch_size, weights["video"],
                            weights["image"],
                            video_share=config.input.get("video_share")))


def main(argv):
  del argv
  host.retain_freed_host_memory()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  with open(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
    f.write(FLAGS.config.to_json_best_effort(indent=2))
  report = describe(FLAGS.config)
  if "datasets" in FLAGS.config:
    report["data"] = describe_data(FLAGS.config)
  print(json.dumps(report, indent=2))
  print(f"Resolved config saved to {os.path.join(FLAGS.workdir, 'config.json')}")


if __name__ == "__main__":
  app.run(main)
