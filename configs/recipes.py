"""Named fine-tuning recipes: `strong`, the combination VideoMAE fine-tunes
with, on top of a config's own recipe.

Values are the defaults of VideoMAE's run_class_finetuning.py
(MCG-NJU/VideoMAE, Tong et al. 2022), which its Kinetics-400 and SSv2
fine-tuning scripts use:
  --smoothing 0.1                      label smoothing, every dataset
  --mixup 0.8 --cutmix 1.0             mixup / cutmix alphas,
  --mixup_prob 1.0 --mixup_switch_prob 0.5   every batch mixed, cutmix half
  --aa rand-m7-n4-mstd0.5-inc1         RandAugment
  --layer_decay 0.75                   layer-wise lr decay
  --drop_path 0.1                      stochastic depth
  --test_num_segment 5 --test_num_crop 3   5 clips x 3 crops at test time
VideoMAE keeps no EMA by default (--model_ema off), so neither does this.
The optimizer, its schedule and the run length stay the config's: VideoMAE's
AdamW with cosine decay belongs to its own step budget.
"""

import ml_collections

RECIPES = ("plain", "strong")


def apply(config: ml_collections.ConfigDict, recipe: str) -> None:
  """Turns `recipe` on in `config` ("plain": the config as it is)."""
  if recipe not in RECIPES:
    raise ValueError(f"Unknown recipe {recipe!r}; known: {', '.join(RECIPES)}.")
  if recipe == "plain":
    return
  for entry in config.datasets.values():
    entry.label_smoothing = 0.1
    entry.mixup_alpha, entry.cutmix_alpha = 0.8, 1.0
    entry.mix_prob, entry.switch_prob = 1.0, 0.5
  config.input.randaugment = "rand-m7-n4-mstd0.5-inc1"
  config.optimizer.layer_decay = 0.75
  config.model.stochastic_depth_rate = 0.1
  config.input.eval_clips, config.input.eval_views = 5, 3
