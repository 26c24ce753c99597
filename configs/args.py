"""The config argument (the text after the colon of --config) and loading.

    --config=configs/cover_l16_jft.py:k700,8x224,no_images

`parse_arg` reads comma-separated tokens: each names a choice from one group
(Kinetics version, input setting, model size, ...), or, in co-training
configs, an ablation (configs/ablations.py).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Mapping, Optional, Sequence

import ml_collections

from configs import ablations

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def parse_arg(arg: Optional[str], groups: Mapping[str, Sequence[str]],
              defaults: Mapping[str, str], *, with_ablations: bool = False
              ) -> dict:
  """Reads "tok1,tok2" into {group: token}, the defaults filling the rest.

  Each token must belong to exactly one group and each group may be named
  once, e.g. groups={"kinetics": ("k400", "k600"), "input": ("16x448",
  "8x224")}: "k600,8x224" -> {"kinetics": "k600", "input": "8x224"}. With
  `with_ablations`, tokens of an ablation's form go, in order, to
  "ablations" (checked against the mixture by ablations.apply).
  """
  chosen, rest = {}, []
  for token in ablations.split(arg):
    owners = [g for g, values in groups.items() if token in values]
    if not owners and with_ablations and ablations.is_token(token):
      rest.append(token)
      continue
    if not owners:
      accepted = "; ".join(f"{g}: {', '.join(v)}" for g, v in groups.items())
      if with_ablations:
        accepted += f"; ablations: {ablations.GRAMMAR}"
      raise ValueError(f"Unknown config argument {token!r} (in {arg!r}). "
                       f"Accepted, comma-separated, one per group: "
                       f"{accepted}.")
    group = owners[0]
    if group in chosen:
      raise ValueError(f"Config argument {arg!r} names the {group} twice "
                       f"({chosen[group]!r} and {token!r}).")
    chosen[group] = token
  choice = {**defaults, **chosen}
  if with_ablations:
    choice["ablations"] = rest
  return choice


def load(path_and_arg: str, *, lock: bool = False
         ) -> ml_collections.ConfigDict:
  """`get_config(arg)` of "path/to/config.py[:arg]", as --config does.

  Relative paths are taken from the working directory, then from the
  repository root (this directory's parent).
  """
  path, sep, arg = path_and_arg.partition(":")
  if not os.path.exists(path) and not os.path.isabs(path):
    path = os.path.join(os.path.dirname(CONFIG_DIR), path)
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"No config file {path}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if sep else module.get_config()
  if lock:
    config.lock()
  return config
