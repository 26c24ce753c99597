"""The paper's input settings, and `config.input` / `config.model` for them.

Numbers are the CoVeR paper's (Zhang et al. 2021, arXiv:2112.07175) and
TimeSformer's, whose input recipe the paper follows ("Following
TimeSFormer", 4.1).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping, Optional

import ml_collections

# Optional fields are typed placeholders (None by default) so that the command
# line can set them, e.g. --config.model.representation_size=1024.
placeholder = ml_collections.config_dict.placeholder


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
  return input_fields(s.num_frames, s.crop_size, s.scale_range, **fields)


def input_fields(num_frames: int, crop_size: int,
                 scale_range: tuple[float, float],
                 **fields) -> ml_collections.ConfigDict:
  """`config.input`, the one schema of every config: clips of `num_frames`
  cropped to `crop_size` from a short side of `scale_range` x crop_size;
  `fields` override."""
  spec = dict(
      num_frames=num_frames, crop_size=crop_size, scale_range=scale_range,
      eval_short_side=placeholder(int),  # None: the crop size (TimeSformer)
      eval_views=3,  # paper 4.1: 1 temporal x 3 spatial crops, averaged
      # Temporal clips per video at evaluation and predict: evenly spaced
      # windows, each sampled as the one clip is; the softmax is averaged
      # over eval_clips x eval_views views (e.g. 4 x 3, ViViT's). Images
      # have 1. eval_batch_size still counts videos: eval memory grows by
      # eval_clips.
      eval_clips=1,
      mean=VIT_MEAN, std=VIT_STD,
      video_share=placeholder(float),  # None: in proportion to sizes (4.1)
      seed=0,
      # A record or frame that cannot be read or decoded: "stop" names it
      # and stops; "skip" replaces it by the next usable record and counts
      # it (cover_jax/input/pipeline.py).
      on_corrupt="stop",
      # RandAugment of training clips, in timm's notation: "rand-m9-n2",
      # optionally "-mstd0.5", "-mmax10", "-inc1"; the same ops on every
      # frame (cover_jax/input/randaugment.py). "": none, the paper's
      # recipe ("only random cropping and random horizontal flipping", 4.1).
      randaugment="")
  spec.update(fields)
  return ml_collections.ConfigDict(spec)


def remat_policy(variant_name: str, setting: str) -> Optional[str]:
  """Recompute activations where keeping them does not fit.

  L/16 at 16x448 (batch 128 on 64 chips: a video and an image per chip)
  needs more memory per chip without remat than v4 or v5e chips hold
  (`--mode=plan` on v5p:4x4x4); with nothing_saveable it fits every slice,
  at more FLOPs. Where memory allows (v5p, 80 GB GPUs),
  --config.model.remat_policy=everything_saveable (off) is faster, and
  dots_with_no_batch_dims_saveable suits 32 GiB chips; `--mode=plan
  --plan_search` tries each policy (figures: benchmarks/RESULTS.md).
  """
  if (variant_name, setting) == ("L/16", "16x448"):
    return "nothing_saveable"
  return None


def model_fields(**fields) -> dict:
  """The fields of every config.model beside its size, at the model's own
  defaults (cover_jax.models.TimeSformer), so that the command line can set
  each of them on every config (a locked config takes no new field):

    dtype "float32" (or "bfloat16": compute in bf16, parameters in float32);
    gelu_approximate False (True: the tanh GELU the ViT .npz checkpoints
      used);
    representation_size None: no pre-logits layer, as ViT fine-tuning does.
      If the init checkpoint has one ("pre_logits" in the .npz), set it to
      its width, e.g. --config.model.representation_size=1024;
    stochastic_depth_rate 0, dropout_rate 0;
    remat_policy None keeps activations for the backward pass, a
      jax.checkpoint_policies name recomputes them. The command line cannot
      set a text field back to None: "everything_saveable" turns remat off;
    scan_layers False, attention_implementation "xla" ("cudnn" on GPUs
      with bf16).
  """
  spec = dict(dtype="float32", gelu_approximate=False,
              representation_size=placeholder(int),
              stochastic_depth_rate=0.0, dropout_rate=0.0,
              remat_policy=placeholder(str), scan_layers=False,
              attention_implementation="xla")
  spec.update(fields)
  return spec


def model(variant_name: str, setting: str, **fields
          ) -> ml_collections.ConfigDict:
  """`config.model`: a TimeSformer variant at an input setting.

  Width, depth, heads and MLP come from `variant_name` (cover_jax.models.
  VARIANTS; paper 4.1 for L/16: 24 blocks, 16 heads, 1024 wide; appendix B
  for B/16: 12 blocks, 12 heads, 768 wide); the other fields are
  `model_fields`, with bf16 compute (the paper does not say; bf16 is what
  TPUs and H100s run at full speed), the ViT checkpoints' tanh GELU, no
  regulariser ("only random cropping and random horizontal flipping", 4.1)
  and `remat_policy(variant_name, setting)`.
  """
  s = input_setting(setting)
  remat = remat_policy(variant_name, setting)
  spec = dict(variant_name=variant_name, num_frames=s.num_frames,
              image_size=s.crop_size,
              **model_fields(dtype="bfloat16", gelu_approximate=True,
                             **({} if remat is None else
                                {"remat_policy": remat})))
  spec.update(fields)
  return ml_collections.ConfigDict(spec)
