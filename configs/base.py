"""The fields every config has (the shared schema), with the paper's recipe.

Numbers are the CoVeR paper's (Zhang et al. 2021, arXiv:2112.07175, 4.1).
"""

import ml_collections

from configs import ablations
from configs import args
from configs import datasets
from configs import settings

# Optional fields are typed placeholders (None by default) so that the command
# line can set them, e.g. --config.resume_from=/runs/a/checkpoints.
placeholder = ml_collections.config_dict.placeholder


def optimizer(**fields) -> ml_collections.ConfigDict:
  """`config.optimizer` (cover_jax/training/optimizer.py), paper 4.1 by default.

  SGD, momentum 0.9; learning rate 5e-3, "drops to 5e-4 and 5e-5 at epochs 11
  and 15": epoch 11 starts after 10 epochs, so the boundaries, in epochs
  done, are (10, 14). No weight decay, clipping or warm-up (none is named).
  """
  spec = dict(name="sgd", learning_rates=(5e-3, 5e-4, 5e-5),
              boundaries_epochs=(10, 14), warmup_epochs=0.0, momentum=0.9,
              nesterov=False, weight_decay=0.0,
              grad_clip_norm=placeholder(float), trainable="all",
              accumulation_steps=1,
              # Layer-wise lr decay for fine-tuning (BEiT's and VideoMAE
              # V2's layer_decay, e.g. 0.75): None is off, the paper's.
              layer_decay=placeholder(float))
  spec.update(fields)
  return ml_collections.ConfigDict(spec)


def config() -> ml_collections.ConfigDict:
  """Every config's fields, with CoVeR's run size; no datasets, input, model.

  Batch 128 and 20 epochs: paper 4.1. An epoch is one pass over the
  training mixture (every dataset's train split once, in expectation).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = placeholder(str)  # None: ~/tensorflow_datasets
  c.batch_size = 128  # global, videos and images together
  c.eval_batch_size = 64  # global, in videos (each eval_clips x eval_views)
  c.num_epochs = 20
  c.num_train_steps = placeholder(int)  # set: overrides num_epochs
  c.optimizer = optimizer()
  # The loss (cover_jax/training/train.py weighted_loss): "weighted_sum", the paper's
  # sum over datasets of w_d x the mean cross-entropy of d's examples in the
  # batch (3.3, eqs. 2 and 4); "weighted_average" divides it by the sum of
  # the weights of the datasets in the batch (appendix A's wording).
  c.loss_reduction = "weighted_sum"
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # lock_lease_seconds: a killed run's lock on the workdir is taken over
  # this long after its last renewal when its host cannot tell that it is
  # gone (another host; cover_jax/training/workdir_lock.py).
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, async_save=True, lock_lease_seconds=180.0))
  c.resume_from = placeholder(str)  # a checkpoint of ours: state + data
  c.init_from = placeholder(str)  # ViT .npz, TimeSformer .pyth, ours
  # A pretraining stage's config, trained first in WORKDIR/pretrain on this
  # config's model, whose result is then init_from (cover_jax/training/stages.py).
  c.pretrain = None
  # True: the experiment starts from pretrained weights; training refuses to
  # start from scratch without init_from (or a checkpoint to resume).
  c.requires_init = False
  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: at the end only
  c.eval_reverse = False  # also evaluate with frames reversed (Table 2)
  c.nonfinite = "stop"  # or "skip": skip the update
  # An EMA of the parameters (cover_jax/training/ema.py), e.g. 0.9999: 0 is
  # off, the paper's. With it, evaluation reports both weights ("<name>/ema"
  # beside "<name>"), and predict, features, export and init_from use the
  # EMA. ema_warmup: decay min(ema_decay, (1 + t) / (10 + t)) after t
  # updates (tf.train.ExponentialMovingAverage's num_updates form).
  c.ema_decay = 0.0
  c.ema_warmup = False
  # True: glibc keeps freed memory for reuse (cover_jax/runtime/allocator.py): a faster
  # XLA:CPU step but a slower input pipeline beside it; the mini config
  # trained slower with it on two free cores (benchmarks/RESULTS.md).
  c.retain_freed_host_memory = False
  return c


def cover(arg: str | None, *, model: str, default_input: str,
          init_from: str) -> ml_collections.ConfigDict:
  """A paper config: CoVeR co-training (4.1) of TimeSformer `model` ("B/16",
  "L/16") from the image ViT .npz `init_from`.

  arg: "KINETICS,INPUT,ABLATION..." (configs/args.py): the Kinetics version
  of the mixture (k400 by default), the input setting (default_input when
  not given) and the ablations of configs/ablations.py.
  """
  arg = args.parse_arg(
      arg, groups=dict(kinetics=tuple(datasets.KINETICS),
                       input=tuple(settings.INPUT_SETTINGS)),
      defaults=dict(kinetics="k400", input=default_input),
      with_ablations=True)
  c = config()
  c.datasets, c.heads = datasets.mixture(
      datasets.cover_datasets(arg["kinetics"]), arg["input"])
  ablations.apply(c, arg["ablations"])
  c.input = settings.input_config(arg["input"])
  c.model = settings.model(model, arg["input"])
  # About one evaluation per epoch of K400+SSv2+MiT+ImageNet (~2.5M
  # examples, ~19.5k steps at batch 128); forward only over the validation
  # sets, a small share of an epoch.
  c.eval_every_steps = 20_000
  # Spatial layers from an image ViT (4.1); point at yours on the command line.
  c.init_from = init_from
  c.requires_init = True
  return c
