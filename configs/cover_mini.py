"""CoVeR on the built-in mini datasets: the whole method on a laptop CPU.

    python main.py --config=configs/cover_mini.py --workdir=/tmp/cover

runs two stages in WORKDIR/pretrain and WORKDIR (cover_jax/training/stages.py):
  1. vit_mini.py: a ViT pretrained on digits_image (the ImageNet ViT role);
  2. co-training a TimeSformer initialised from it, as TimeSformer
     initialises from a ViT, on the three mini datasets made from
     scikit-learn's digits (data/digits.py; built on first use, no
     download): digits_image (ImageNet's role), digits_appearance
     (Kinetics': the label is the digit) and digits_motion (SSv2's: the
     label is the motion; never flipped, and time reversal swaps its
     classes). One head per dataset, images as 1-frame videos, batches mixed
     in proportion to dataset size, the image loss weighted 0.5 (paper
     Table 6), evaluation with 1 clip x 3 crops, also with frames reversed
     (paper Table 2).

README's "Results" gives its time and test top-1 per dataset (digits_motion
reversed is 0: each motion played backwards is its twin class).

Arguments (comma-separated, `--config=configs/cover_mini.py:ARG`):
  videoNN            read the video sets' trainNN builder configs (NN in 50,
                     25, 10: that percentage of the training digits, the
                     same test digits): video data scarcer than image data;
  strong             VideoMAE's fine-tuning recipe on stage 2
                     (configs/recipes.py);
  no_<dataset>, no_images, image_weight=W, <dataset>_weight=W,
  <dataset>_sample=S the ablations of configs/ablations.py (image_weight=0
                     drops digits_image, as the paper's Table 6 row 0).

The loss is the paper's weighted sum over datasets of the mean cross-entropy
of each dataset's examples in the batch (config.loss_reduction).
"""

from configs import ablations
from configs import args
from configs import base
from configs import mini
from configs import recipes
from configs import vit_mini

VIDEO_PERCENTS = tuple(f"video{p}" for p in mini.TRAIN_PERCENTS)


def get_config(arg=None):
  arg = args.parse_arg(arg, groups=dict(videos=VIDEO_PERCENTS,
                                        recipe=recipes.RECIPES),
                       defaults=dict(videos="video100", recipe="plain"),
                       with_ablations=True)
  config = base.config()
  config.datasets, config.heads = mini.mixture(
      (mini.IMAGES,) + mini.VIDEOS,
      video_percent=int(arg["videos"][len("video"):]))
  ablations.apply(config, arg["ablations"], images=[mini.IMAGES])
  config.input = mini.input_config()
  config.model = mini.model()
  # Stage 1 (cover_jax/training/stages.py): vit_mini.py's recipe on this model with
  # the temporal layers removed; init_from its result.
  config.pretrain = vit_mini.get_config()
  del config.pretrain.model  # the run's own
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 10  # 2700 steps
  # AdamW as in stage 1; SGD from a pretrained ViT as the paper does needs far
  # more steps than minutes give a model this small.
  config.optimizer = base.optimizer(
      name="adamw", learning_rates=(1e-3, 1e-4), boundaries_epochs=(7,),
      warmup_epochs=0.1, weight_decay=1e-4, grad_clip_norm=1.0)
  config.checkpoint.every_steps = 300
  config.log_every_steps = 100
  config.eval_reverse = True  # paper Table 2: motion needs the frame order
  recipes.apply(config, arg["recipe"])  # stage 2 only
  return config
