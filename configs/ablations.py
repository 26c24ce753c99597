"""The paper's ablations as config-argument tokens of co-training configs.

    --config=configs/cover_l16_jft.py:k400,no_moments_in_time,no_images

Tokens (comma-separated, each at most once; D is a key of config.datasets):

  no_D              drop D from the mixture and its head (paper Table 5:
                    "K400+SSv2" is no_moments_in_time,no_images).
  no_images         drop every image dataset (Table 5's rows without ImNet).
  image_weight=W    the loss weight w_image of every image dataset (Table 6:
                    0, 0.5 (the default), 0.75). W=0 drops the image datasets,
                    the same as no_images: Table 6's w_image=0 row has no
                    ImageNet result, so images were not trained on, rather
                    than filling part of every batch for nothing.
  D_weight=W        the loss weight w_D of D (paper 3.3); W=0 drops D.
  D_sample=S        D's sampling weight, config.datasets.D.sample_weight: in
                    units of examples, as the others' default (their sizes,
                    paper 4.1), so D_sample=2e5 samples D as if it had 200k
                    examples; S=0 drops D.

`apply(config, tokens)` edits config.datasets and config.heads in place.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import ml_collections

from configs import datasets

GRAMMAR = ("no_<dataset>, no_images, image_weight=W, <dataset>_weight=W, "
           "<dataset>_sample=S")


def is_token(token: str) -> bool:
  """Whether `token` has an ablation's form (checked by `apply`)."""
  return token.startswith("no_") or "=" in token


def split(tokens: Union[str, Sequence[str], None]) -> list[str]:
  """The tokens of "a,b" or ["a", "b"], blanks left out."""
  if isinstance(tokens, str) or tokens is None:
    tokens = (tokens or "").split(",")
  return [t.strip() for t in tokens if t.strip()]


def accepted(names: Sequence[str], images: Sequence[str]) -> str:
  """The tokens accepted for these datasets, in words."""
  image_tokens = "no_images, image_weight=W; " if images else ""
  return (f"{image_tokens}no_D, D_weight=W or D_sample=S for D in "
          f"{', '.join(names)} (W, S >= 0; 0 drops the dataset)")


def apply(config: ml_collections.ConfigDict,
          tokens: Union[str, Sequence[str], None], *,
          images: Optional[Sequence[str]] = None
          ) -> ml_collections.ConfigDict:
  """Applies ablation tokens to config.datasets and config.heads in place.

  Call it before the config is locked.

  Args:
    config: has `datasets` and `heads` keyed by dataset name.
    tokens: "no_images,image_weight=0.25" or a list of such tokens.
    images: names of image datasets (what no_images and image_weight act on;
      those not in config.datasets are ignored); None: those configs/
      datasets.py knows as images.
  Returns:
    `config`. Raises ValueError naming the bad token and what is accepted.
  """
  names = list(config.datasets)
  if images is None:
    images = datasets.image_datasets(names)
  images = [n for n in names if n in images]
  drop, loss, sample, seen = {}, {}, {}, set()

  def fail(token, why):
    raise ValueError(f"Config argument {token!r}: {why}. Accepted: "
                     f"{accepted(names, images)}.")

  def set_once(table, name, value, token, what):
    if name in table:
      fail(token, f"{name}'s {what} is already set by {table[name][1]!r}")
    table[name] = (value, token)

  for token in split(tokens):
    key, has_value, text = token.partition("=")
    if key in seen:
      fail(token, f"{key} is given twice")
    seen.add(key)
    if not has_value:
      if key == "no_images" and images:
        targets = images
      elif key.startswith("no_") and key[3:] in names:
        targets = [key[3:]]
      else:
        fail(token, "not an ablation of this mixture")
      for name in targets:
        drop.setdefault(name, token)
      continue
    if key == "image_weight" and images:
      targets, table, what = images, loss, "loss weight"
    elif key.endswith("_weight") and key[:-len("_weight")] in names:
      targets, table, what = [key[:-len("_weight")]], loss, "loss weight"
    elif key.endswith("_sample") and key[:-len("_sample")] in names:
      targets, table, what = [key[:-len("_sample")]], sample, "sample weight"
    else:
      fail(token, "not an ablation of this mixture")
    try:
      value = float(text)
    except ValueError:
      value = math.nan
    if not (math.isfinite(value) and value >= 0):
      fail(token, f"{text!r} is not a number >= 0")
    for name in targets:
      if value == 0:  # a dataset weighted 0 is not trained on: drop it
        drop.setdefault(name, token)
      else:
        set_once(table, name, value, token, what)

  for table in (loss, sample):
    for name, (_, token) in table.items():
      if name in drop:
        fail(token, f"{name} is dropped by {drop[name]!r}")
  if len(drop) == len(names):
    raise ValueError(f"Config argument {','.join(split(tokens))!r} drops "
                     f"every dataset ({', '.join(names)}).")
  for name in drop:
    del config.datasets[name]
    del config.heads[name]
  for name, (value, _) in loss.items():
    config.datasets[name].loss_weight = value
  for name, (value, _) in sample.items():
    config.datasets[name].sample_weight = value
  return config
