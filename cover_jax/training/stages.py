"""A run in two stages: image pretraining, then co-training from its result.

CoVeR fine-tunes a model pretrained on images (paper 3.1, 4.1), initialised
as TimeSformer initialises from a ViT. A config whose `pretrain` field holds
another config (the pretraining stage, e.g. configs/vit_mini.py's) is run in
stages by one command:

    WORKDIR/pretrain/   `config.pretrain`, trained and evaluated there, on
                        this config's model with its temporal layers removed
                        (attention_type "space_only": paper 3.1);
    WORKDIR/            this config, with init_from = WORKDIR/pretrain.

Each stage checkpoints and resumes on its own, so the same command, run
again after a kill, resumes whichever stage was running (bit for bit); a
finished pretraining stage is not run again (its evaluation is read back). One
stop_request.StopRequest spans both stages, so SIGTERM or Ctrl-C at any moment,
between the stages too, stops the run at the next safe point. An explicit
`config.init_from` replaces the pretraining stage. Stage fields can be set on
the command line, e.g. --config.pretrain.num_train_steps=500.
"""

from __future__ import annotations

import jax
from ml_collections import ConfigDict

from cover_jax import storage
from cover_jax.runtime import stop_request
from cover_jax.training import train

PRETRAIN_DIR = "pretrain"
# What the stage takes from the run besides its model: the same data, and the
# seed (so that seeds vary both stages).
INHERITED = ("data_dir", "seed")


def pretrain_config(config: ConfigDict) -> ConfigDict | None:
  """The pretraining stage of `config`, or None (none, or init_from set)."""
  stage = config.get("pretrain")
  if not stage or config.get("init_from"):
    return None
  stage = stage.copy_and_resolve_references()
  with stage.unlocked():
    for field in INHERITED:
      stage[field] = config[field]
    # The run's model, so that the result fits it.
    stage.model = config.model.copy_and_resolve_references()
    stage.model.attention_type = "space_only"
  return stage


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, after its pretraining stage if it has one.

  Returns the final evaluation of the last stage; raises stop_request.Stopped
  when SIGTERM or SIGINT stopped the run (its checkpoint saved).
  """
  with stop_request.StopRequest() as stop:
    stage = pretrain_config(config)
    if stage is not None:
      stage_dir = str(storage.resolve(workdir) / PRETRAIN_DIR)  # gs:// too
      _say(f"Stage 1 of 2: image pretraining in {stage_dir}")
      try:
        train.train_and_evaluate(stage, stage_dir, stop)
      except stop_request.Stopped as stopped:
        stopped.where = " in stage 1" + stopped.where
        raise
      stop.check(" between the stages")
      config = config.copy_and_resolve_references()
      config.init_from = stage_dir
      _say(f"Stage 2 of 2: co-training in {workdir}")
    return train.train_and_evaluate(config, workdir, stop)


def _say(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)
