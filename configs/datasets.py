"""The datasets the paper trains on, and `config.datasets` entries.

Numbers are the CoVeR paper's (Zhang et al. 2021, arXiv:2112.07175), cited
as "paper 4.1" etc. The tables are read-only; every function returns a fresh
ConfigDict.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping, Optional, Sequence

import ml_collections

from configs import settings

# Optional fields are typed placeholders (None by default) so that the command
# line can set them, e.g. --config.datasets.ssv2.sample_weight=2.0.
placeholder = ml_collections.config_dict.placeholder


@dataclasses.dataclass(frozen=True)
class KnownDataset:
  """A dataset the paper trains on.

  Attributes:
    builder: the prepared dataset's name (data/registry.py, or a TFDS name).
    num_classes: size of its head.
    kind: "video" or "image".
    flip: random horizontal flips in training.
    loss_weight: w_i of the paper's loss (3.3.2).
    per_setting: frames are stored once per input setting (our video
      builders' `short320` / `short512` configs); False: read as it is.
    train_size: its published number of training examples (paper 4.1 and
      the datasets' papers; prepared copies may hold a few percent fewer:
      missing videos), the mixture's weight where a plan cannot count them.
  """
  builder: str
  num_classes: int
  kind: str
  flip: bool = True
  loss_weight: float = 1.0
  per_setting: bool = True
  train_size: int | None = None


KNOWN_DATASETS: Mapping[str, KnownDataset] = types.MappingProxyType({
    # Paper 4.1: Kinetics-400/600/700 have 400, 600 and 700 classes.
    "kinetics400": KnownDataset("kinetics400", 400, "video", train_size=240_000),
    "kinetics600": KnownDataset("kinetics600", 600, "video", train_size=392_000),
    "kinetics700": KnownDataset("kinetics700", 700, "video", train_size=545_000),
    # Paper 4.1: 174 classes; never flipped, "Pushing something from left to
    # right" and "... right to left" are each other's mirror images.
    "ssv2": KnownDataset("ssv2", 174, "video", flip=False,
                         train_size=168_913),
    # Moments in Time v1: 339 classes (the paper gives its size, 791K/33K
    # videos, not its classes; v1 is the release it cites [22]).
    "moments_in_time": KnownDataset("moments_in_time", 339, "video",
                                    train_size=791_000),
    # ImageNet (ILSVRC-2012, TFDS "imagenet2012"), 1000 classes, images as
    # 1-frame videos (paper 3.3.2). Loss weight 0.5: paper Table 6, the best
    # video accuracy (K400 87.2, SSv2 70.8, MiT 46.1, ImageNet 86.1).
    "imagenet": KnownDataset("imagenet2012", 1000, "image", loss_weight=0.5,
                             per_setting=False, train_size=1_281_167),
})

# The config argument's short names for the Kinetics versions.
KINETICS = types.MappingProxyType(
    {"k400": "kinetics400", "k600": "kinetics600", "k700": "kinetics700"})


def cover_datasets(kinetics: str) -> tuple[str, ...]:
  """CoVeR's training mixture: one Kinetics, SSv2, MiT and ImageNet.

  Paper 4.2, Tables 3 and 4: every pre-training setting (ImageNet-21k,
  JFT-300M, JFT-3B) co-trains on "K400+SSv2+MiT+ImNet" (or K600/K700 in place
  of K400). The image dataset is always ImageNet (ILSVRC-2012: Table 6 reports
  its top-1, 86.1); ImageNet-21k is only ever the pre-training dataset.
  """
  return (KINETICS.get(kinetics, kinetics), "ssv2", "moments_in_time",
          "imagenet")


def image_datasets(names: Sequence[str]) -> tuple[str, ...]:
  """The known image datasets among `names` (what `no_images` drops)."""
  return tuple(n for n in names
               if n in KNOWN_DATASETS and KNOWN_DATASETS[n].kind == "image")


def entry(dataset: Optional[str] = None, *, train_split: str = "train",
          eval_split: str = "validation", flip: bool = True,
          sample_weight: Optional[float] = None,
          loss_weight: float = 1.0, label_smoothing: float = 0.0,
          mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
          mix_prob: float = 1.0,
          switch_prob: float = 0.5) -> ml_collections.ConfigDict:
  """One `config.datasets` entry (see cover_jax/input/make.py).

  Args:
    dataset: the prepared dataset read (None: the entry's key).
    train_split, eval_split: its splits. "validation" for evaluation: SSv2
      and MiT have no public test labels, and Kinetics results are usually
      reported on validation (the paper says "testing split" for all five).
    flip: random horizontal flips in training.
    sample_weight: its share of the mixture, in units of examples (None: its
      size, paper 4.1: "the sampling rate is proportional to the size of the
      datasets").
    loss_weight: w_i of its cross-entropy in the loss (paper 3.3.2).
    label_smoothing, mixup_alpha, cutmix_alpha, mix_prob, switch_prob: its
      targets, as timm's Mixup options (cover_jax/training/mixing.py); an
      example is mixed only with one of its own dataset. The defaults are
      off, the paper's recipe (4.1: random crops and flips only).
  """
  return ml_collections.ConfigDict(dict(
      dataset=placeholder(str) if dataset is None else dataset,
      train_split=train_split, eval_split=eval_split, flip=flip,
      sample_weight=(placeholder(float) if sample_weight is None
                     else float(sample_weight)),
      loss_weight=float(loss_weight), label_smoothing=float(label_smoothing),
      mixup_alpha=float(mixup_alpha), cutmix_alpha=float(cutmix_alpha),
      mix_prob=float(mix_prob), switch_prob=float(switch_prob)))


def known_dataset(name: str, setting: str, **fields
                  ) -> tuple[ml_collections.ConfigDict, int]:
  """(`config.datasets` entry, number of classes) of a known dataset.

  Videos are read from the copy stored for the input setting (e.g.
  "kinetics400/short512" for 16x448); `fields` override the entry.
  """
  if name not in KNOWN_DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; known: "
                     f"{', '.join(KNOWN_DATASETS)}.")
  known = KNOWN_DATASETS[name]
  stored = known.builder
  if known.per_setting:
    stored += f"/short{settings.input_setting(setting).stored_short_side}"
  spec = dict(dataset=stored, flip=known.flip, loss_weight=known.loss_weight)
  spec.update(fields)
  return entry(**spec), known.num_classes


def mixture(names: Sequence[str], setting: str
            ) -> tuple[ml_collections.ConfigDict, dict[str, int]]:
  """(`config.datasets`, `config.heads`) of known datasets, heads by name."""
  datasets, heads = {}, {}
  for name in names:
    datasets[name], heads[name] = known_dataset(name, setting)
  return ml_collections.ConfigDict(datasets), heads
