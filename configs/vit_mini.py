"""Stage 1 of the mini run: a ViT pretrained on digits_image.

The role of the ImageNet-21k / JFT ViT that CoVeR starts from (paper 4.1):
the mini TimeSformer with its temporal layers removed (attention_type
"space_only", paper 3.1: "during the pre-training stage, the temporal
attention layers are all removed"), trained on images alone. cover_mini.py
runs it first and initialises from its result as TimeSformer initialises
from a ViT: temporal attention copied from spatial, temporal_fc and the time
embedding at zero (cover_jax.training.checkpointing.inflate_image_model).

    python main.py --config=configs/vit_mini.py --workdir=/tmp/vit_mini

Recipe (measured, see README "Training"): AdamW, batch 64, lr 1e-3 dropped
to 1e-4 for the last quarter, 1440 steps (~1.3 min on 2 cores).
"""

from configs import base
from configs import mini


def get_config():
  config = base.config()
  config.datasets, config.heads = mini.mixture([mini.IMAGES])
  config.input = mini.input_config()
  config.model = mini.model(attention_type="space_only")
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 32  # 1438 steps of 64 images
  # From scratch SGD barely moves a transformer in minutes: AdamW.
  config.optimizer = base.optimizer(
      name="adamw", learning_rates=(1e-3, 1e-4), boundaries_epochs=(24,),
      warmup_epochs=0.5, weight_decay=1e-4, grad_clip_norm=1.0)
  config.checkpoint.every_steps = 500
  config.log_every_steps = 250
  return config
