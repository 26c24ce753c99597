"""Shared pieces of the experiment configs: datasets, model, input, optimizer.

Every function returns a fresh ConfigDict; the tables below are read-only.
The numbers are the CoVeR paper's (Zhang et al., "Co-training Transformer
with Videos and Images Improves Action Recognition", arXiv:2112.07175),
cited by section or table as "paper 4.1" etc.; where the paper is silent the
comment says what was chosen and why.

A config file picks its variants with the text after the colon of --config:

    --config=configs/cover_l16_jft.py:k600,8x224

`parse_arg` reads that text as comma-separated tokens, each from one group
(Kinetics version, input setting, model size, transfer target).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import types
from typing import Mapping, Optional, Sequence

import ml_collections

# Optional fields are typed placeholders (None by default) so that the command
# line can set them, e.g. --config.init_from=/ckpt/vit.npz.
placeholder = ml_collections.config_dict.placeholder

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------
# Datasets.
# ----------------------------------------------------------------------------

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
  """
  builder: str
  num_classes: int
  kind: str
  flip: bool = True
  loss_weight: float = 1.0
  per_setting: bool = True


KNOWN_DATASETS: Mapping[str, KnownDataset] = types.MappingProxyType({
    # Paper 4.1: Kinetics-400/600/700 have 400, 600 and 700 classes.
    "kinetics400": KnownDataset("kinetics400", 400, "video"),
    "kinetics600": KnownDataset("kinetics600", 600, "video"),
    "kinetics700": KnownDataset("kinetics700", 700, "video"),
    # Paper 4.1: 174 classes; never flipped, "Pushing something from left to
    # right" and "... right to left" are each other's mirror images.
    "ssv2": KnownDataset("ssv2", 174, "video", flip=False),
    # Moments in Time v1: 339 classes (the paper gives its size, 791K/33K
    # videos, not its classes; v1 is the release it cites [22]).
    "moments_in_time": KnownDataset("moments_in_time", 339, "video"),
    # ImageNet (ILSVRC-2012, TFDS "imagenet2012"), 1000 classes, images as
    # 1-frame videos (paper 3.3.2). Loss weight 0.5: paper Table 6, the best
    # video accuracy (K400 87.2, SSv2 70.8, MiT 46.1, ImageNet 86.1).
    "imagenet": KnownDataset("imagenet2012", 1000, "image", loss_weight=0.5,
                             per_setting=False),
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


def dataset(dataset: Optional[str] = None, *, train_split: str = "train",  # pylint: disable=redefined-outer-name
            eval_split: str = "validation", flip: bool = True,
            sample_weight: Optional[float] = None,
            loss_weight: float = 1.0) -> ml_collections.ConfigDict:
  """One `config.datasets` entry (see cover_jax/input/make.py).

  Args:
    dataset: the prepared dataset read (None: the entry's key).
    train_split, eval_split: its splits. "validation" for evaluation: SSv2
      and MiT have no public test labels, and Kinetics results are usually
      reported on validation (the paper says "testing split" for all five).
    flip: random horizontal flips in training.
    sample_weight: its share of the mixture (None: its size, paper 4.1:
      "the sampling rate is proportional to the size of the datasets").
    loss_weight: w_i of its cross-entropy in the loss (paper 3.3.2).
  """
  return ml_collections.ConfigDict(dict(
      dataset=placeholder(str) if dataset is None else dataset,
      train_split=train_split, eval_split=eval_split, flip=flip,
      sample_weight=(placeholder(float) if sample_weight is None
                     else float(sample_weight)),
      loss_weight=float(loss_weight)))


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
    stored += f"/short{input_setting(setting).stored_short_side}"
  spec = dict(dataset=stored, flip=known.flip, loss_weight=known.loss_weight)
  spec.update(fields)
  return dataset(**spec), known.num_classes


def mixture(names: Sequence[str], setting: str
            ) -> tuple[ml_collections.ConfigDict, dict[str, int]]:
  """(`config.datasets`, `config.heads`) of known datasets, heads by name."""
  datasets, heads = {}, {}
  for name in names:
    datasets[name], heads[name] = known_dataset(name, setting)
  return ml_collections.ConfigDict(datasets), heads


# ----------------------------------------------------------------------------
# Input settings.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InputSetting:
  """Frames, crop and scale jitter of one of the paper's input settings.

  `scale_range` is the training resize of the short side, in multiples of
  the crop, before the random crop: TimeSformer's TRAIN_JITTER_SCALES (its
  configs TimeSformer_divST_8x32_224 and _16x16_448), which the paper follows
  ("Following TimeSFormer", 4.1; appendix B). The largest resize equals the
  stored short side, so no frame is upsampled.
  """
  num_frames: int
  crop_size: int
  stored_short_side: int
  scale_range: tuple[float, float]


INPUT_SETTINGS: Mapping[str, InputSetting] = types.MappingProxyType({
    # Paper 4.1 (the setting of every main result) and appendix B's "high
    # resolution": 16 frames sampled uniformly over the video, 448x448 crops.
    # TimeSformer's jitter for 448: short side in [448, 512].
    "16x448": InputSetting(16, 448, 512, (448 / 448, 512 / 448)),
    # Appendix B's "standard": 8 frames, 224x224 crops (Table 7, Table 2).
    # TimeSformer's jitter for 224: short side in [256, 320].
    "8x224": InputSetting(8, 224, 320, (256 / 224, 320 / 224)),
})

# Normalisation of the Google ViT checkpoints (.npz) the models start from:
# pixels in [0, 1] mapped to [-1, 1].
VIT_MEAN, VIT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def input_setting(name: str) -> InputSetting:
  if name not in INPUT_SETTINGS:
    raise ValueError(f"Unknown input setting {name!r}; known: "
                     f"{', '.join(INPUT_SETTINGS)}.")
  return INPUT_SETTINGS[name]


def input_config(setting: str, **fields) -> ml_collections.ConfigDict:
  """`config.input` for an input setting; `fields` override."""
  s = input_setting(setting)
  spec = dict(
      num_frames=s.num_frames, crop_size=s.crop_size,
      scale_range=s.scale_range,
      eval_short_side=placeholder(int),  # None: the crop size (TimeSformer)
      eval_views=3,  # paper 4.1: 1 temporal x 3 spatial crops, averaged
      mean=VIT_MEAN, std=VIT_STD,
      video_share=placeholder(float),  # None: in proportion to sizes (4.1)
      seed=0)
  spec.update(fields)
  return ml_collections.ConfigDict(spec)


# ----------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------

def model(variant_name: str, setting: str, **fields
          ) -> ml_collections.ConfigDict:
  """`config.model`: a TimeSformer variant at an input setting.

  Width, depth, heads and MLP come from `variant_name` (cover_jax.models.
  VARIANTS; paper 4.1 for L/16: 24 blocks, 16 heads, 1024 wide; appendix B
  for B/16: 12 blocks, 12 heads, 768 wide). Other fields are here so that the
  command line can set them (a locked config takes no new field):

    dtype "bfloat16": compute in bf16, parameters in float32 (the paper does
      not say; bf16 is what TPUs and H100s run at full speed);
    gelu_approximate True: the tanh GELU the ViT .npz checkpoints used;
    representation_size None: no pre-logits layer, as ViT fine-tuning does.
      If the init checkpoint has one ("pre_logits" in the .npz), set it to
      its width, e.g. --config.model.representation_size=1024;
    stochastic_depth_rate 0: the paper names no regulariser ("only random
      cropping and random horizontal flipping", 4.1);
    remat_policy None: keep activations for the backward pass; a
      jax.checkpoint_policies name recomputes them. The command line cannot
      set a text field back to None: "everything_saveable" turns remat off;
    scan_layers False, attention_implementation "xla" ("cudnn" on GPUs
      with bf16).
  """
  s = input_setting(setting)
  spec = dict(
      variant_name=variant_name, num_frames=s.num_frames,
      image_size=s.crop_size, dtype="bfloat16", gelu_approximate=True,
      representation_size=placeholder(int), stochastic_depth_rate=0.0,
      dropout_rate=0.0, remat_policy=placeholder(str), scan_layers=False,
      attention_implementation="xla")
  spec.update(fields)
  return ml_collections.ConfigDict(spec)


# ----------------------------------------------------------------------------
# Optimizer and the rest of the run.
# ----------------------------------------------------------------------------

def optimizer(**fields) -> ml_collections.ConfigDict:
  """`config.optimizer` (cover_jax/optimizer.py), paper 4.1 by default.

  SGD, momentum 0.9; learning rate 5e-3, "drops to 5e-4 and 5e-5 at epochs 11
  and 15": epoch 11 starts after 10 epochs, so the boundaries, in epochs
  done, are (10, 14). No weight decay, clipping or warm-up (none is named).
  """
  spec = dict(name="sgd", learning_rates=(5e-3, 5e-4, 5e-5), boundaries_epochs=(10, 14),
              warmup_epochs=0.0, momentum=0.9, nesterov=False,
              weight_decay=0.0, grad_clip_norm=placeholder(float),
              trainable="all", accumulation_steps=1)
  spec.update(fields)
  return ml_collections.ConfigDict(spec)


def base_config() -> ml_collections.ConfigDict:
  """The fields every config has (the shared schema), with CoVeR's run size.

  Batch 128 and 20 epochs: paper 4.1. An epoch is one pass over the
  training mixture (every dataset's train split once, in expectation).
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data_dir = placeholder(str)  # None: ~/tensorflow_datasets
  config.batch_size = 128  # global, videos and images together
  config.eval_batch_size = 64  # global, in videos (each with eval_views)
  config.num_epochs = 20
  config.num_train_steps = placeholder(int)  # set: overrides num_epochs
  config.optimizer = optimizer()
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, async_save=True))
  config.resume_from = placeholder(str)  # a checkpoint of ours: state + data
  config.init_from = placeholder(str)  # ViT .npz, TimeSformer .pyth, ours
  # True: the experiment starts from pretrained weights; training refuses to
  # start from scratch without init_from (or a checkpoint to resume).
  config.requires_init = False
  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0: at the end only
  config.eval_reverse = False  # also evaluate with frames reversed (Table 2)
  config.nonfinite = "stop"  # or "skip": skip the update
  return config


def cover_config(variant_name: str, kinetics: str, setting: str,
                 **model_fields) -> ml_collections.ConfigDict:
  """A CoVeR run (paper 4.1): `variant_name` co-trained on
  `cover_datasets(kinetics)` at `setting`, one head per dataset."""
  config = base_config()
  config.datasets, config.heads = mixture(cover_datasets(kinetics), setting)
  config.input = input_config(setting)
  config.model = model(variant_name, setting, **model_fields)
  # About one evaluation per epoch of K400+SSv2+MiT+ImageNet (~2.5M
  # examples, ~19.5k steps at batch 128); each costs ~5% of that epoch
  # (~80k validation videos x 3 views, forward only).
  config.eval_every_steps = 20_000
  config.requires_init = True  # spatial layers from an image ViT (4.1)
  return config



def cover_config_from_arg(variant_name: str, arg: Optional[str], *,
                          default_input: str) -> ml_collections.ConfigDict:
  """`cover_config` from a config argument "k400|k600|k700[,8x224|16x448]".

  L/16 at 16x448 keeps ~3.3 GB of activations per video per block for the
  backward pass (bf16; XLA's memory analysis), ~79 GB for 24 blocks: it
  recomputes them instead (~1/3 more compute).
  """
  choice = parse_arg(
      arg, groups=dict(kinetics=tuple(KINETICS), input=tuple(INPUT_SETTINGS)),
      defaults=dict(kinetics="k400", input=default_input))
  remat = variant_name == "L/16" and choice["input"] == "16x448"
  return cover_config(variant_name, choice["kinetics"], choice["input"],
                      remat_policy="nothing_saveable" if remat else None)

# ----------------------------------------------------------------------------
# Transfer: a new head on a checkpoint of ours (paper 3.2 and Fig. 3).
# ----------------------------------------------------------------------------

MODEL_SIZES = types.MappingProxyType({"b16": "B/16", "l16": "L/16"})
MINI_CONFIG = "cover_mini.py"


def transfer_config(arg: Optional[str], *, linear_probe: bool
                    ) -> ml_collections.ConfigDict:
  """Fine-tuning (or a linear probe of) a checkpoint on one target dataset.

  `arg` is "TARGET[,b16|l16][,8x224|16x448]" (default "ssv2,b16,8x224");
  TARGET is a known dataset (kinetics400 or k400, ..., ssv2,
  moments_in_time, imagenet) or a mini dataset of cover_mini.py, which then
  gives the model, input and optimizer. The head is named
  "<TARGET>_probe" (linear probe) or "<TARGET>_transfer", so it starts fresh
  even when the checkpoint has a head for TARGET (heads are restored by
  name). The model must match the checkpoint in config.init_from.
  """
  mini = load(os.path.join(CONFIG_DIR, MINI_CONFIG))
  targets = tuple(KNOWN_DATASETS) + tuple(KINETICS) + tuple(mini.datasets)
  choice = parse_arg(
      arg, groups=dict(target=targets, model=tuple(MODEL_SIZES),
                       input=tuple(INPUT_SETTINGS)),
      defaults=dict(target="ssv2"))
  target = KINETICS.get(choice["target"], choice["target"])
  head = target + ("_probe" if linear_probe else "_transfer")

  if target in mini.datasets:
    if "model" in choice or "input" in choice:
      raise ValueError(f"{arg!r}: the mini dataset {target!r} uses "
                       f"{MINI_CONFIG}'s model and input; drop "
                       f"{choice.get('model') or choice.get('input')!r}.")
    config = mini
    entry = mini.datasets[target]
    entry.dataset = target
    config.datasets = ml_collections.ConfigDict({head: entry})
    config.heads = {head: mini.heads[target]}
  else:
    size = choice.get("model", "b16")
    setting = choice.get("input", "8x224")
    config = base_config()
    entry, classes = known_dataset(target, setting)
    config.datasets = ml_collections.ConfigDict({head: entry})
    config.heads = {head: classes}
    config.input = input_config(setting)
    config.model = model(
        MODEL_SIZES[size], setting,
        remat_policy=("nothing_saveable" if (size, setting) == (
            "l16", "16x448") else None))
    # The paper gives no separate recipe for transfer or the probe: its
    # fine-tuning recipe (4.1; appendix B uses it for every run).
    config.optimizer = optimizer()
    config.eval_every_steps = 10_000
  if "optimizer" not in config:
    config.optimizer = optimizer()
  config.optimizer.trainable = "heads" if linear_probe else "all"
  config.requires_init = True  # the point is the checkpoint's backbone
  return config


# ----------------------------------------------------------------------------
# The config argument and loading configs.
# ----------------------------------------------------------------------------

def parse_arg(arg: Optional[str], groups: Mapping[str, Sequence[str]],
              defaults: Mapping[str, str]) -> dict[str, str]:
  """Reads "tok1,tok2" into {group: token}, the defaults filling the rest.

  Each token must belong to exactly one group and each group may be named
  once, e.g. groups={"kinetics": ("k400", "k600"), "input": ("16x448",
  "8x224")}: "k600,8x224" -> {"kinetics": "k600", "input": "8x224"}.
  """
  chosen = {}
  for token in (arg or "").split(","):
    token = token.strip()
    if not token:
      continue
    owners = [g for g, values in groups.items() if token in values]
    if not owners:
      accepted = "; ".join(f"{g}: {', '.join(v)}" for g, v in groups.items())
      raise ValueError(f"Unknown config argument {token!r} (in {arg!r}). "
                       f"Accepted, comma-separated, one per group: "
                       f"{accepted}.")
    group = owners[0]
    if group in chosen:
      raise ValueError(f"Config argument {arg!r} names the {group} twice "
                       f"({chosen[group]!r} and {token!r}).")
    chosen[group] = token
  return {**defaults, **chosen}


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
