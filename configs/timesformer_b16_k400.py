r"""The standard paradigm: TimeSformer-B/16 fine-tuned on Kinetics-400 alone.

An ImageNet-21k ViT-B/16 becomes a TimeSformer and is fine-tuned on K400
only, with TimeSformer's own recipe (Bertasius et al. 2021, the paper the
CoVeR paper follows for this paradigm, sections 3.1 and 3.2; its official
config TimeSformer_divST_8x32_224.yaml). Reproduces:
  - CoVeR paper Table 2 (arXiv:2112.07175): K400 top-1 78.1 with frames in
    order, 78.0 reversed (add --config.eval_reverse=True);
  - TimeSformer paper: K400 78.0 (8x224, 1x3 views); with ":16x448"
    (TimeSformer_divST_16x16_448.yaml, "TimeSformer-HR") 79.7.
  - Its checkpoint is the source of the paper's linear probe (3.2: 19.5% on
    SSv2), see linear_probe.py.

Recipe (TimeSformer's, not CoVeR's): global batch 8, SGD momentum 0.9,
weight decay 1e-4, lr 5e-3 for 11 epochs, 5e-4 for 3, 5e-5 for 1 (15
epochs; PySlowFast's STEPS [0, 11, 14] count finished epochs, as our
boundaries_epochs do: (11, 14) here, CoVeR's (10, 14)); stochastic
depth 0.1; short side jittered in [256, 320] then a random 224 crop and flip;
test: short side 224, 3 crops. Pixels normalised with PySlowFast's mean 0.45
and std 0.225, as TimeSformer did. Differences: our frames are sampled
uniformly over the whole video (TimeSformer: 8 frames 32 apart, ~8.5 s of a
10 s clip); weight decay applies to the kernels only
(TimeSformer's: to all but the position and time embeddings and the class
token, biases and norms included). Batch 8 needs a device
count dividing 8; with a larger batch, scale the learning rates with it.

":strong" (e.g. ":16x448,strong") adds VideoMAE's fine-tuning recipe
(configs/recipes.py: label smoothing, mixup/cutmix, RandAugment, layer
decay, 5 x 3 test views).

Launch:

  python main.py --config=configs/timesformer_b16_k400.py \
      --workdir=/runs/timesformer_b16_k400 \
      --config.init_from=/path/to/ViT-B_16.npz --config.data_dir=/data/tfds

Needs:
  - init_from (default "ViT-B_16.npz", in the working directory; give its
    path): an ImageNet-21k ViT-B/16 .npz with a class token (Google's
    vision_transformer release; with a pre-logits layer add
    --config.model.representation_size=768). To evaluate the official
    TimeSformer_divST_8x32_224_K400.pyth instead (--mode=eval), also set
    --config.model.gelu_approximate=False (PyTorch's exact GELU).
  - kinetics400 prepared in data_dir (python -m data.prepare kinetics400
    --manual_dir=DIR --data_dir=DIR; ":16x448": --short_side=512).
"""

from configs import args
from configs import base
from configs import datasets
from configs import recipes
from configs import settings


def get_config(arg=None):
  arg = args.parse_arg(
      arg, groups=dict(input=tuple(settings.INPUT_SETTINGS),
                       recipe=recipes.RECIPES),
      defaults=dict(input="8x224", recipe="plain"))
  setting = arg["input"]
  config = base.config()
  config.datasets, config.heads = datasets.mixture(["kinetics400"], setting)
  # PySlowFast's default normalisation, which TimeSformer trained with.
  config.input = settings.input_config(
      setting, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
  config.model = settings.model(
      "B/16", setting, stochastic_depth_rate=0.1)  # TimeSformer's vit.py
  if setting == "16x448":  # batch 8 of 16x448 clips: recompute activations
    config.model.remat_policy = "nothing_saveable"
  config.batch_size = 8  # TRAIN.BATCH_SIZE, PySlowFast's global batch
  config.eval_batch_size = 8
  config.num_epochs = 15
  config.optimizer = base.optimizer(
      learning_rates=(5e-3, 5e-4, 5e-5), boundaries_epochs=(11, 14),
      weight_decay=1e-4)
  # K400 is ~240k videos: 30k steps per epoch at batch 8. TimeSformer
  # evaluates every 5 epochs (EVAL_PERIOD 5).
  config.eval_every_steps = 150_000
  config.checkpoint.every_steps = 5_000
  # TimeSformer starts from a ViT (its 4.1); point at yours on the command
  # line.
  config.init_from = "ViT-B_16.npz"
  config.requires_init = True
  recipes.apply(config, arg["recipe"])
  return config
