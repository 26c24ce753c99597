"""Fine-tuning or a linear probe of a checkpoint of ours on one dataset.

What transfer_finetune.py and linear_probe.py share (paper 3.2 and 4.3,
Fig. 3, of Zhang et al. 2021, arXiv:2112.07175).
"""

from __future__ import annotations

import os
import types
from typing import Optional

import ml_collections

from configs import args
from configs import base
from configs import datasets
from configs import settings

MODEL_SIZES = types.MappingProxyType({"b16": "B/16", "l16": "L/16"})
MINI_CONFIG = "cover_mini.py"


def config(arg: Optional[str], *, linear_probe: bool
           ) -> ml_collections.ConfigDict:
  """A new head for one target dataset on config.init_from's backbone.

  `arg` is "TARGET[,b16|l16][,8x224|16x448]" (default "ssv2,b16,8x224");
  TARGET is a known dataset (kinetics400 or k400, ..., ssv2,
  moments_in_time, imagenet) or a mini dataset of cover_mini.py, which then
  gives the model, input and optimizer. The head is named
  "<TARGET>_probe" (linear probe) or "<TARGET>_transfer", so it starts fresh
  even when the checkpoint has a head for TARGET (heads are restored by
  name). The model must match the checkpoint in config.init_from.
  """
  mini = args.load(os.path.join(args.CONFIG_DIR, MINI_CONFIG))
  targets = (tuple(datasets.KNOWN_DATASETS) + tuple(datasets.KINETICS) +
             tuple(mini.datasets))
  choice = args.parse_arg(
      arg, groups=dict(target=targets, model=tuple(MODEL_SIZES),
                       input=tuple(settings.INPUT_SETTINGS)),
      defaults=dict(target="ssv2"))
  target = datasets.KINETICS.get(choice["target"], choice["target"])
  head = target + ("_probe" if linear_probe else "_transfer")

  if target in mini.datasets:
    if "model" in choice or "input" in choice:
      raise ValueError(f"{arg!r}: the mini dataset {target!r} uses "
                       f"{MINI_CONFIG}'s model and input; drop "
                       f"{choice.get('model') or choice.get('input')!r}.")
    c = mini
    c.pretrain = None  # the backbone is init_from's
    entry = mini.datasets[target]
    entry.dataset = target
    c.datasets = ml_collections.ConfigDict({head: entry})
    c.heads = {head: mini.heads[target]}
  else:
    variant = MODEL_SIZES[choice.get("model", "b16")]
    setting = choice.get("input", "8x224")
    c = base.config()
    entry, classes = datasets.known_dataset(target, setting)
    c.datasets = ml_collections.ConfigDict({head: entry})
    c.heads = {head: classes}
    c.input = settings.input_config(setting)
    c.model = settings.model(variant, setting)
    # The paper gives no separate recipe for transfer or the probe: its
    # fine-tuning recipe (4.1; appendix B uses it for every run).
    c.optimizer = base.optimizer()
    c.eval_every_steps = 10_000
  if "optimizer" not in c:
    c.optimizer = base.optimizer()
  c.optimizer.trainable = "heads" if linear_probe else "all"
  c.requires_init = True  # the point is the checkpoint's backbone
  return c
