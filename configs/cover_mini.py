"""CoVeR on the built-in mini datasets: a tiny TimeSformer for a laptop CPU.

Three datasets made from scikit-learn's digits (data/digits.py), built into
`data_dir` on first use with no download: digits as images (the ImageNet
role), as appearance videos (Kinetics) and as motion videos (SSv2: never
flipped, and time-reversal swaps its classes).

    python main.py --config=configs/cover_mini.py --workdir=/tmp/cover

trains 1890 steps in about 7 minutes on 2 CPU cores, checkpointing every 200
steps, and evaluates every dataset (1 clip x 3 crops, and reversed). On the
development VM: test top-1 0.35 digits_appearance, 0.19 digits_image, 0.48
digits_motion (chance 0.10, 0.10, 0.125).
"""

import ml_collections


# Optional fields are typed placeholders (None by default) so that they can be
# set on the command line, e.g. --config.data_dir=/data/tfds.
placeholder = ml_collections.config_dict.placeholder


def dataset(**fields) -> ml_collections.ConfigDict:
  spec = dict(dataset=placeholder(str), train_split="train",
              eval_split="test", flip=True,
              sample_weight=placeholder(float), loss_weight=1.0)
  spec.update(fields)
  return ml_collections.ConfigDict(spec)


def get_config():
  config = ml_collections.ConfigDict()
  config.data_dir = placeholder(str)  # None: ~/tensorflow_datasets
  # No flips at all: a mirrored digit is another shape (3 and a backwards
  # 3), and mirroring swaps digits_motion's left and right classes.
  config.datasets = ml_collections.ConfigDict({
      "digits_appearance": dataset(flip=False),
      "digits_motion": dataset(flip=False),
      "digits_image": dataset(flip=False, loss_weight=0.5),
  })
  # name -> number of classes; one head per dataset.
  config.heads = {"digits_image": 10, "digits_appearance": 10,
                  "digits_motion": 8}
  config.input = ml_collections.ConfigDict(dict(
      num_frames=8, crop_size=32, scale_range=(1.0, 1.25),
      eval_short_side=placeholder(int), eval_views=3, mean=(0.5, 0.5, 0.5),
      std=(0.5, 0.5, 0.5), video_share=placeholder(float), seed=0))
  config.model = ml_collections.ConfigDict(dict(
      variant_name=None, width=64, depth=4, num_heads=4, mlp_dim=128,
      patch_size=8, num_frames=8, image_size=32))
  config.batch_size = 32
  config.eval_batch_size = 64

  config.seed = 0
  config.num_epochs = 7  # ~1900 steps: ~7 minutes on 2 cores
  config.num_train_steps = placeholder(int)  # overrides num_epochs
  # The paper fine-tunes pretrained ViTs with SGD; this model starts from
  # scratch, where SGD barely moves a transformer in minutes: AdamW.
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rates=(2e-3, 2e-4), boundaries_epochs=(5.5,),
      warmup_epochs=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
      grad_clip_norm=1.0, trainable="all", accumulation_steps=1))
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=200, keep=3, async_save=True))  # ~40 s at ~5 steps/s
  config.resume_from = placeholder(str)
  config.init_from = placeholder(str)
  config.requires_init = False  # the mini run trains from scratch
  config.log_every_steps = 25
  config.eval_every_steps = 0  # 0: at the end only
  config.eval_reverse = True  # the paper's Table 2: motion needs the order
  config.nonfinite = "stop"
  return config
