"""The CoVeR-mini scale: built-in datasets, a tiny TimeSformer, its input.

Shared by vit_mini.py (image pretraining) and cover_mini.py (co-training
from it), so that the two stages' models fit each other. The datasets are
made from scikit-learn's digits (data/digits.py) with no download.
"""

import ml_collections

from configs import datasets
from configs import settings

IMAGES = "digits_image"  # the ImageNet role
VIDEOS = ("digits_appearance", "digits_motion")  # the Kinetics and SSv2 roles
CLASSES = {"digits_image": 10, "digits_appearance": 10, "digits_motion": 8}
# Builder configs of data/digits.py: the percentage of training digits kept.
TRAIN_PERCENTS = (100, 50, 25, 10)


def mixture(names, *, video_percent: int = 100
            ) -> tuple[ml_collections.ConfigDict, dict[str, int]]:
  """(config.datasets, config.heads) of mini datasets.

  No flips anywhere: a mirrored digit is another shape (3 and a backwards 3),
  and mirroring swaps digits_motion's left and right classes. Image loss
  weight 0.5: the paper's best (Table 6). `video_percent` < 100 reads the
  video sets' `trainNN` configs (fewer training digits, same test digits):
  the paper's regime of video data scarcer than image data.
  """
  if video_percent not in TRAIN_PERCENTS:
    raise ValueError(f"video_percent {video_percent} is not one of the "
                     f"built configs {TRAIN_PERCENTS}.")
  specs, heads = {}, {}
  for name in names:
    stored = name
    if name in VIDEOS and video_percent != 100:
      stored = f"{name}/train{video_percent}"
    specs[name] = datasets.entry(
        stored, eval_split="test", flip=False,
        loss_weight=0.5 if name == IMAGES else 1.0)
    heads[name] = CLASSES[name]
  return ml_collections.ConfigDict(specs), heads


def input_config() -> ml_collections.ConfigDict:
  """8 frames of 32x32 (the 40x40 canvas resized to 32-40, then cropped)."""
  return settings.input_fields(num_frames=8, crop_size=32,
                               scale_range=(1.0, 1.25))


def model(**fields) -> ml_collections.ConfigDict:
  """A 4-block TimeSformer, width 64, 8-px patches (16 per 32x32 frame), in
  float32; every other field of the paper configs' models
  (settings.model_fields) settable too."""
  spec = dict(variant_name=None, width=64, depth=4, num_heads=4, mlp_dim=128,
              patch_size=8, num_frames=8, image_size=32,
              attention_type="divided_space_time", **settings.model_fields())
  spec.update(fields)
  return ml_collections.ConfigDict(spec)
