"""cover-jax command line.

    python main.py --config=configs/cover_mini.py --workdir=/tmp/cover
    python main.py --config=configs/cover_l16_jft.py:k600 --workdir=gs://b/run \
        --config.batch_size=256
    python main.py --config=... --workdir=... --mode=eval

Modes: `train` (default) trains and evaluates, resuming from the workdir's
last checkpoint when there is one; `eval` evaluates the workdir's last
checkpoint (or config.init_from) on every dataset; `describe` prints the
model, its cost and the data mixture without training; `plan` compiles the
training step ahead of time for --topology (a TPU slice, e.g. v5p:4x4x4,
from any host with `pip install -e ".[tpu]"`; or cpu:N fake devices) and
reports memory per chip, FLOPs and the compiler's step-time estimate, in
WORKDIR/plan.json (cover_jax/tools/plan.py); --plan_search also tries remat, scan,
mesh shapes and accumulation; `predict` classifies video and image files
(--inputs, --inputs_from), `features` writes their clip embeddings,
`export` writes a TF SavedModel and a jax.export artifact
(cover_jax/inference/commands.py). Run the same command on every host of a pod slice
or cluster: jax.distributed finds the others (TPU, SLURM, Open MPI), or pass
--coordinator_address, --num_processes and --process_id.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cover_jax.cli import command_line
from cover_jax.cli import log_noise
from cover_jax.runtime import allocator
from cover_jax.runtime import startup

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the resolved config, "
                    "checkpoints, TensorBoard events and evaluation results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "describe", "plan",
                                   "predict", "features", "export"],
                  "train: train and evaluate; eval: evaluate the last "
                  "checkpoint; describe: report the model and the data; "
                  "plan: compile the step for --topology and report memory "
                  "and speed; predict: classify --inputs; features: their "
                  "clip embeddings; export: SavedModel and jax.export.")
flags.DEFINE_list("inputs", None, "--mode=predict/features: video and image "
                  "files or folders (searched recursively).")
flags.DEFINE_string("inputs_from", None, "--mode=predict/features: a file of "
                    "inputs, one path a line as written (commas kept; blank "
                    "lines and lines starting with # skipped); after "
                    "--inputs when both are given.")
flags.DEFINE_integer("max_image_pixels", None, "--mode=predict/features: "
                     "the most pixels an image may decode to (JPEGs at a "
                     "reduced scale); larger ones are refused. Default "
                     "cover_jax/inference/predict.py's MAX_IMAGE_PIXELS, 50 million.")
flags.DEFINE_integer("decode_threads", None, "--mode=predict/features: "
                     "files decoded at once (default 4, whatever the "
                     "cores).")
flags.DEFINE_string("output", None, "--mode=predict: a .jsonl file (one "
                    "line per input); --mode=features: the .npz to write.")
flags.DEFINE_integer("top_k", 5, "--mode=predict: classes per head.")
flags.DEFINE_list("heads", None, "--mode=predict/features: the heads to "
                  "report (default: those of each input's kind).")
flags.DEFINE_list("class_names", None, "HEAD=FILE pairs (or one FILE for a "
                  "one-head model): class names for weights from elsewhere, "
                  "e.g. an official TimeSformer .pyth (JSON list, JSON "
                  "{name: index} or one name per line).")
flags.DEFINE_string("export_dir", None, "--mode=export: where to write.")
flags.DEFINE_string("topology", None, "--mode=plan: a TPU topology "
                    "(v4:2x2x4, v5p:4x4x4, v5e:8x8, v6e:4x4), or cpu:N for N "
                    "fake CPU devices (default: this host's CPU devices).")
flags.DEFINE_bool("plan_search", False, "--mode=plan: also try remat "
                  "policies, scan_layers, mesh shapes and accumulation; "
                  "print the fastest that fits as --config overrides.")
flags.DEFINE_enum("platform", "auto", startup.PLATFORMS, "What JAX runs "
                  "on: auto picks tpu where TPU chips are attached, else a "
                  "visible NVIDIA GPU with jax[cuda12] installed, else cpu. "
                  "JAX_PLATFORMS, when set, wins. --mode=plan compiles on "
                  "the CPU.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, "
                    "for clusters jax.distributed cannot detect.")
flags.DEFINE_integer("num_processes", None, "With --coordinator_address.")
flags.DEFINE_integer("process_id", None, "With --coordinator_address.")
flags.mark_flags_as_required(["config", "workdir"])

# Modes that apply a trained model (cover_jax/inference/commands.py).
APPLY_MODES = ("predict", "features", "export")

def describe(config) -> dict:
  """Model size and cost for `config` (no parameters are allocated)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cover_jax.models import abstract_variables, flops  # pylint: disable=import-outside-toplevel
  from cover_jax.training.train import model_from_config  # pylint: disable=import-outside-toplevel

  model = model_from_config(config)
  model.validate()
  shapes = abstract_variables(model)
  count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))
  # The papers' "TFLOPs" are multiply-adds (flops.py), per evaluated clip.
  macs = flops.forward_macs(model)
  views = config.input.get("eval_views", 3) * config.input.get("eval_clips", 1)
  return dict(
      model=dict(width=model.width, depth=model.depth,
                 num_heads=model.num_heads, mlp_dim=model.mlp_dim,
                 patch_size=model.patch_size, num_frames=model.num_frames,
                 image_size=model.image_size, heads=dict(model.heads)),
      parameters=count,
      gflops_per_clip=flops.forward_flops(model) / 1e9,
      gflops_per_image=flops.forward_flops(model, num_frames=1) / 1e9,
      tflops_per_step_all_video=flops.train_step_flops(
          model, batch=config.batch_size) / 1e12,
      tflops_as_in_the_papers=(
          f"{macs * views / 1e12:.2f} TFLOPs = {macs / 1e12:.3f} per view x "
          f"{views} views, clips x crops (multiply-adds, as TimeSformer and CoVeR "
          f"count)"))


def describe_data(config) -> dict:
  """The config's datasets (built on first use if they are the mini ones),
  checked against the preprocessing, and the split of the batch that
  training uses on this host's mesh."""
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel
  from cover_jax import sharding  # pylint: disable=import-outside-toplevel

  sources = inp.make.sources(config, "train_split")
  inp.check_sources(sources, inp.make.preprocessing(config),
                    inp.make.flips(config))
  granule = sharding.batch_shards(sharding.make_mesh(**config.mesh))
  return dict(
      datasets={s.name: dict(dataset=s.dataset, kind=s.kind,
                             train_examples=s.num_examples,
                             classes=s.num_classes, short_side=s.short_side)
                for s in sources},
      batch=inp.make.batch_split(config, sources, granule),
      batch_shards=granule)


def main(argv):
  del argv
  try:
    run()
  except KeyboardInterrupt:  # Ctrl-C outside training: nothing to save
    print("main.py: interrupted (Ctrl-C); nothing was being saved.",
          file=sys.stderr, flush=True)
    raise SystemExit(130) from None


def run():
  """The --mode the flags ask for (training handles Ctrl-C itself)."""
  # The run prints its own concise lines; orbax's and clu's INFO logs and
  # TensorFlow's and TFDS's start-up noise would bury them. --verbosity=0
  # brings them back.
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    log_noise.quiet()  # before TensorFlow is imported
  if FLAGS.config.get("retain_freed_host_memory"):  # before JAX starts
    allocator.retain_freed_host_memory()
  if FLAGS.mode == "plan" and FLAGS.platform not in (None, "auto", "cpu"):
    raise SystemExit(f"main.py: error: --platform={FLAGS.platform}: "
                     f"--mode=plan compiles on the CPU; drop --platform.")
  if FLAGS.mode != "plan":  # before any backend starts (cover_jax/runtime/startup.py)
    try:
      startup.set_platform(FLAGS.platform)
    except startup.PlatformError as e:
      raise SystemExit(f"main.py: error: {e}") from None
  # TensorFlow only reads data here: keep it off the accelerators.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")
  if FLAGS.mode == "plan":  # one process compiling ahead of time
    from cover_jax.tools import plan  # pylint: disable=import-outside-toplevel
    plan.prepare_host(FLAGS.topology)
  else:
    startup.start_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                              FLAGS.process_id)
  import jax  # pylint: disable=import-outside-toplevel

  from cover_jax import storage  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  # Local or gs://: every file of the run goes through epath or orbax.
  workdir = storage.resolve(FLAGS.workdir)
  config_path = workdir / "config.json"
  if FLAGS.mode in APPLY_MODES:  # a trained run's workdir: read, not written
    from cover_jax.inference import commands  # pylint: disable=import-outside-toplevel
    try:
      status = commands.main(config, str(workdir), mode=FLAGS.mode,
                          inputs=FLAGS.inputs, inputs_from=FLAGS.inputs_from,
                          output=FLAGS.output, top_k=FLAGS.top_k,
                          heads=FLAGS.heads, class_names=FLAGS.class_names,
                          export_dir=FLAGS.export_dir,
                          decode_threads=FLAGS.decode_threads,
                          max_image_pixels=FLAGS.max_image_pixels)
    except (ValueError, FileNotFoundError) as e:  # what to fix, one line
      raise SystemExit(f"main.py: error: {e}") from None
    raise SystemExit(status)
  if FLAGS.mode in ("train", "eval"):  # all that is missing, before opening
    from cover_jax.cli import preflight  # pylint: disable=import-outside-toplevel
    preflight.exit_if_missing(config, str(workdir), FLAGS.mode)
  if FLAGS.mode == "train":  # one run per workdir: before anything is written
    from cover_jax.training import workdir_lock  # pylint: disable=import-outside-toplevel
    try:
      workdir_lock.hold_until_exit(str(workdir), config.checkpoint.get(
          "lock_lease_seconds"))
    except workdir_lock.WorkdirLockError as e:
      raise SystemExit(f"main.py: error: {e}") from None
  if jax.process_index() == 0:
    storage.write_text(config_path, config.to_json_best_effort(indent=2),
                       "--workdir")
  logging.info("Config:\n%s", config)
  if FLAGS.mode == "describe":
    report = describe(config)
    report["devices"] = dict(platform=jax.default_backend(),
                             processes=jax.process_count(),
                             count=jax.device_count())
    if "datasets" in config:
      try:
        report["data"] = describe_data(config)
      except ValueError as e:  # e.g. not prepared yet: still describe
        report["data"] = {"error": str(e)}
    print(json.dumps(report, indent=2))
    print(f"Resolved config saved to {config_path}")
    return
  if FLAGS.mode == "plan":
    result = plan.run(config, plan.topology_devices(FLAGS.topology),
                      search_all=FLAGS.plan_search)
    storage.write_text(workdir / "plan.json", json.dumps(
        plan.to_json(result), indent=2), "--workdir")
    print(f"Plan saved to {workdir / 'plan.json'}")
    return
  from cover_jax.training import checkpointing, event_writer, stages, train  # pylint: disable=import-outside-toplevel
  from cover_jax.runtime import stop_request  # pylint: disable=import-outside-toplevel
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel
  if FLAGS.mode == "train":
    try:
      stages.train_and_evaluate(config, str(workdir))
    except inp.InputError as e:  # names the record and the fix
      raise SystemExit(f"main.py: error: {e}") from None
    except stop_request.Stopped as stopped:  # SIGTERM or Ctrl-C: one line
      if jax.process_index() == 0:
        print(stopped, flush=True)
      raise SystemExit(stopped.exit_status) from None
    except (checkpointing.SaveFailed,
            event_writer.EventsNotWritten) as e:  # the OS's error, one line
      # At once: orbax's other writes, failing in their threads, would print
      # tracebacks while the interpreter shuts down.
      workdir_lock.release(str(workdir))
      print(f"main.py: error: {e}", file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(1)  # pylint: disable=protected-access
  else:
    try:
      train.evaluate_checkpoint(config, str(workdir))
    except inp.InputError as e:
      raise SystemExit(f"main.py: error: {e}") from None


if __name__ == "__main__":
  # Mistyped overrides and missing config files: one line, nothing started.
  app.run(main, flags_parser=command_line.parse_flags)
