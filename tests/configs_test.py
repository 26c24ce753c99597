"""The experiment configs: they load, and their numbers are the paper's.

Fast: no data is read and no model is initialised (main.describe counts
parameters and FLOPs from shapes only).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import ablations
from configs import args
from configs import datasets
from cover_jax.models import create, flops
from cover_jax.training import optimizer
from tests import tiny_runs

CONFIGS = args.CONFIG_DIR

PAPER_CONFIGS = ["cover_l16_jft.py", "cover_l16_i21k.py", "cover_b16_i21k.py"]
# The ablation arguments every co-training config accepts (ablations.py).
ABLATIONS = (":k400,no_images", ":k700,no_moments_in_time,no_images",
             ":no_ssv2,no_moments_in_time,no_images", ":image_weight=0",
             ":k600,image_weight=0.75", ":8x224,image_weight=0.25",
             ":no_kinetics400", ":ssv2_weight=2,moments_in_time_sample=1e5",
             ":k700,16x448,kinetics700_weight=0,imagenet_sample=0.5")
# Every file with every argument it documents.
VARIANTS = [
    *[f"{f}{arg}" for f in PAPER_CONFIGS
      for arg in ("", ":k400", ":k600", ":k700", ":k400,8x224",
                  ":8x224,k700", ":16x448", *ABLATIONS)],
    "timesformer_b16_k400.py", "timesformer_b16_k400.py:16x448",
    *[f"{f}{arg}" for f in ("transfer_finetune.py", "linear_probe.py")
      for arg in ("", ":ssv2", ":k400,l16,16x448", ":moments_in_time",
                  ":imagenet", ":kinetics700,b16", ":digits_motion",
                  ":digits_appearance")],
]
CLASSES = {"kinetics400": 400, "kinetics600": 600, "kinetics700": 700,
           "ssv2": 174, "moments_in_time": 339, "imagenet": 1000}


def load(name, lock=True):
  return args.load(os.path.join(CONFIGS, name), lock=lock)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_config_loads_with_consistent_heads(name):
  config = load(name)
  assert set(config.heads) == set(config.datasets)
  assert config.model.num_frames == config.input.num_frames
  assert config.model.image_size == config.input.crop_size
  for field in ("seed", "data_dir", "batch_size", "eval_batch_size",
                "num_epochs", "optimizer", "mesh", "checkpoint",
                "resume_from", "init_from", "log_every_steps",
                "eval_every_steps", "eval_reverse", "nonfinite"):
    assert field in config, field
  for spec in config.datasets.values():
    assert {"dataset", "train_split", "eval_split", "flip", "sample_weight",
            "loss_weight"} <= set(spec)
    base = (spec.dataset or "").split("/")[0]
    if base == "ssv2" or base == "digits_motion":
      assert spec.flip is False  # left/right classes (paper 4.1)
  # The schedule is well formed for any run length.
  optimizer.learning_rate_schedule(config.optimizer.learning_rates,
                                   config.optimizer.boundaries_epochs, 7)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
@pytest.mark.parametrize("kinetics", ["k400", "k600", "k700"])
def test_cover_configs_are_the_papers_recipe(name, kinetics):
  """Paper 4.1 and Table 6, for every pre-training and Kinetics version."""
  config = load(f"{name}:{kinetics}")
  k = datasets.KINETICS[kinetics]
  assert dict(config.heads) == {k: CLASSES[k], "ssv2": 174,
                                "moments_in_time": 339, "imagenet": 1000}
  assert config.batch_size == 128
  assert config.num_epochs == 20
  opt = config.optimizer
  assert tuple(opt.learning_rates) == (5e-3, 5e-4, 5e-5)
  assert tuple(opt.boundaries_epochs) == (10, 14)
  assert opt.momentum == 0.9 and not opt.nesterov
  assert opt.weight_decay == 0.0 and opt.trainable == "all"
  assert config.input.eval_views == 3  # 1 temporal x 3 spatial crops
  d = config.datasets
  assert [d[n].loss_weight for n in (k, "ssv2", "moments_in_time")] == [1] * 3
  assert d.imagenet.loss_weight == 0.5
  assert d.imagenet.dataset == "imagenet2012"
  assert d.ssv2.flip is False
  assert d[k].flip and d.moments_in_time.flip and d.imagenet.flip
  assert all(s.sample_weight is None for s in d.values())  # size-proportional
  assert config.input.video_share is None
  assert config.loss_reduction == "weighted_sum"  # paper eqs. 2 and 4
  # A ViT checkpoint's file name; the user gives its path.
  assert config.init_from.endswith(".npz") and config.requires_init


@pytest.mark.parametrize("name,variant,frames,size,stored", [
    ("cover_l16_jft.py", "L/16", 16, 448, 512),
    ("cover_l16_i21k.py", "L/16", 16, 448, 512),
    ("cover_b16_i21k.py", "B/16", 8, 224, 320),
    ("cover_l16_jft.py:8x224", "L/16", 8, 224, 320),
    ("cover_b16_i21k.py:16x448", "B/16", 16, 448, 512),
    ("timesformer_b16_k400.py", "B/16", 8, 224, 320),
])
def test_model_and_input_settings(name, variant, frames, size, stored):
  config = load(name)
  assert config.model.variant_name == variant
  assert (config.input.num_frames, config.input.crop_size) == (frames, size)
  for spec in config.datasets.values():
    if spec.dataset != "imagenet2012":
      assert spec.dataset.endswith(f"/short{stored}")
  # The training resize never exceeds the stored frames, never goes below
  # the crop (TimeSformer's jitter: [448, 512] or [256, 320]).
  lo, hi = config.input.scale_range
  assert lo * size == pytest.approx(size if size == 448 else 256)
  assert hi * size == pytest.approx(stored)


def test_timesformer_baseline_is_timesformers_recipe():
  config = load("timesformer_b16_k400.py")
  assert dict(config.heads) == {"kinetics400": 400}
  assert config.batch_size == 8 and config.num_epochs == 15
  assert tuple(config.optimizer.learning_rates) == (5e-3, 5e-4, 5e-5)
  assert tuple(config.optimizer.boundaries_epochs) == (11, 14)
  assert config.optimizer.weight_decay == 1e-4
  assert config.optimizer.momentum == 0.9
  assert config.model.stochastic_depth_rate == 0.1
  assert tuple(config.input.mean) == (0.45,) * 3
  assert tuple(config.input.std) == (0.225,) * 3


@pytest.mark.parametrize("steps_per_epoch", [1, 37, 19_532])
def test_schedule_drops_at_epochs_11_and_15(steps_per_epoch):
  """5e-3 through epoch 10, 5e-4 from the first step of epoch 11, 5e-5 from
  the first step of epoch 15 to the end (epochs counted from 1)."""
  opt = load("cover_l16_jft.py").optimizer
  schedule = optimizer.learning_rate_schedule(
      opt.learning_rates, opt.boundaries_epochs, steps_per_epoch)
  first = lambda epoch: (epoch - 1) * steps_per_epoch  # first step of epoch
  lr = lambda step: float(schedule(step))
  assert lr(0) == pytest.approx(5e-3)
  assert lr(first(11) - 1) == pytest.approx(5e-3)  # last step of epoch 10
  assert lr(first(11)) == pytest.approx(5e-4)
  assert lr(first(15) - 1) == pytest.approx(5e-4)
  assert lr(first(15)) == pytest.approx(5e-5)
  assert lr(first(21) - 1) == pytest.approx(5e-5)  # last step of epoch 20


def timesformer_parameters(d, depth, mlp, patch, frames, size, classes):
  """Parameters of a divided space-time TimeSformer, counted by hand."""
  dense = lambda i, o: i * o + o
  block = (3 * 2 * d  # temporal, spatial and MLP LayerNorms
           + 4 * dense(d, d) + dense(d, d)  # temporal q, k, v, out; fc
           + 4 * dense(d, d)  # spatial q, k, v, out
           + dense(d, mlp) + dense(mlp, d))
  tokens = (size // patch) ** 2
  return (depth * block + patch * patch * 3 * d + d  # patch embedding
          + d + (1 + tokens) * d + frames * d  # class token, position, time
          + 2 * d + sum(dense(d, c) for c in classes))


@pytest.mark.parametrize("name", ["cover_l16_jft.py", "cover_l16_i21k.py:k700",
                                  "cover_b16_i21k.py"])
@pytest.mark.slow
def test_describe_reports_size_and_flops(name):
  import main  # pylint: disable=import-outside-toplevel
  config = load(name)
  report = main.describe(config)
  fields = dict(config.model)
  model = create(dict(config.heads), **fields)
  d, depth = model.width, model.depth
  expected = timesformer_parameters(
      d, depth, model.mlp_dim, model.patch_size, model.num_frames,
      model.image_size, list(config.heads.values()))
  assert report["parameters"] == expected
  if model.depth == 24:  # L/16: ViT-L's 304M plus 24 temporal attentions
    assert 4.2e8 < report["parameters"] < 4.4e8
  else:  # B/16: ViT-B's 86M plus 12 temporal attentions
    assert 1.2e8 < report["parameters"] < 1.25e8
  assert report["gflops_per_clip"] == pytest.approx(
      flops.forward_flops(model) / 1e9)
  # DESIGN.md's count: (17 d^2 + 2 (s+1) d + 2 n d) n s L multiply-adds,
  # plus the patch embedding and the heads; 2 FLOPs each.
  n, s = model.num_frames, (model.image_size // model.patch_size) ** 2
  macs = ((17 * d * d + 2 * (s + 1) * d + 2 * n * d) * n * s * depth
          + n * s * model.patch_size ** 2 * 3 * d
          + d * sum(config.heads.values()))
  assert report["gflops_per_clip"] == pytest.approx(2 * macs / 1e9)
  if name.startswith("cover_b16"):  # TimeSformer: 0.59 T MACs for 3 views
    assert 3 * macs / 1e12 == pytest.approx(0.59, rel=0.01)


def test_command_line_overrides_placeholders():
  """What `main.py --config=FILE:ARG --config.FIELD=VALUE` does."""
  argv = [
      "main.py", f"--config={os.path.join(CONFIGS, 'cover_l16_jft.py')}:k600",
      "--config.init_from=/x.npz", "--config.data_dir=/data/tfds",
      "--config.model.representation_size=1024",
      "--config.model.remat_policy=everything_saveable",
      "--config.num_train_steps=10",
      "--config.datasets.kinetics600.sample_weight=2.5",
      "--config.input.eval_short_side=480", "--config.batch_size=256"]
  config = tiny_runs.command_line_config(argv)
  assert config.init_from == "/x.npz" and config.data_dir == "/data/tfds"
  assert config.model.representation_size == 1024
  assert config.model.remat_policy == "everything_saveable"  # remat off
  assert config.num_train_steps == 10 and config.batch_size == 256
  assert config.datasets.kinetics600.sample_weight == 2.5
  assert config.input.eval_short_side == 480
  assert config.heads.kinetics600 == 600


def test_every_config_has_one_input_schema():
  """The mini configs' input has exactly the paper configs' fields."""
  fields = {name: set(load(name).input) for name in PAPER_CONFIGS +
            ["timesformer_b16_k400.py", "cover_mini.py", "vit_mini.py"]}
  assert len({frozenset(f) for f in fields.values()}) == 1, fields


def test_the_mini_configs_take_every_model_field_of_the_paper_configs():
  """One schema: what the command line sets on a paper config's model it
  sets on cover_mini's and vit_mini's, and the model builds with it."""
  from cover_jax.training import train  # pylint: disable=import-outside-toplevel
  paper = set().union(*(load(name).model for name in PAPER_CONFIGS +
                        ["timesformer_b16_k400.py"]))
  for mini in ("cover_mini.py", "vit_mini.py"):
    assert paper <= set(load(mini).model), (mini, paper - set(load(mini).model))
  argv = ["main.py", f"--config={os.path.join(CONFIGS, 'cover_mini.py')}",
          "--config.model.remat_policy=nothing_saveable",
          "--config.model.scan_layers=True", "--config.model.dtype=bfloat16",
          "--config.model.representation_size=32"]
  model = train.model_from_config(tiny_runs.command_line_config(argv))
  assert (model.remat_policy, model.scan_layers, model.representation_size,
          model.dtype) == ("nothing_saveable", True, 32, jnp.bfloat16)
  # Unset, the mini model is the model's defaults (float32, exact GELU).
  default = train.model_from_config(load("cover_mini.py"))
  assert (default.dtype, default.gelu_approximate, default.remat_policy,
          default.scan_layers) == (jnp.float32, False, None, False)


def test_placeholders_are_typed_and_the_config_locked():
  config = load("cover_l16_jft.py")
  config.init_from = "/x.npz"
  config.resume_from = "/runs/a/checkpoints"
  config.datasets.ssv2.sample_weight = 1.0
  with pytest.raises(TypeError):
    config.init_from = 3
  with pytest.raises(AttributeError):  # a typo is refused, not added
    config.init_form = "/x.npz"


def test_transfer_configs_use_a_fresh_head():
  probe = load("linear_probe.py:ssv2")
  assert dict(probe.heads) == {"ssv2_probe": 174}
  assert probe.datasets.ssv2_probe.dataset == "ssv2/short320"
  assert probe.datasets.ssv2_probe.flip is False
  assert probe.optimizer.trainable == "heads"
  assert probe.model.variant_name == "B/16"
  finetune = load("transfer_finetune.py:k400,l16,16x448")
  assert dict(finetune.heads) == {"kinetics400_transfer": 400}
  assert finetune.datasets.kinetics400_transfer.dataset == (
      "kinetics400/short512")
  assert finetune.optimizer.trainable == "all"
  assert finetune.model.variant_name == "L/16"
  assert finetune.model.remat_policy == "nothing_saveable"
  mini = load("cover_mini.py")
  probe = load("linear_probe.py:digits_motion")
  assert dict(probe.heads) == {"digits_motion_probe": mini.heads.digits_motion}
  assert probe.datasets.digits_motion_probe.dataset == "digits_motion"
  assert probe.model.to_dict() == mini.model.to_dict()
  assert probe.input.to_dict() == mini.input.to_dict()


@pytest.mark.slow
def test_linear_probe_optimizer_moves_only_the_head():
  config = load("linear_probe.py:digits_motion")
  params = {"embedding": {"kernel": jnp.ones((4, 4))},
            "encoder_norm": {"scale": jnp.ones(4)},
            "heads": {"digits_motion_probe": {"kernel": jnp.ones((4, 8)),
                                              "bias": jnp.zeros(8)}}}
  tx, _ = optimizer.make(config, steps_per_epoch=10)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  new = params
  for _ in range(5):  # past any warm-up from zero
    updates, state = tx.update(grads, state, new)
    new = optax.apply_updates(new, updates)
  np.testing.assert_array_equal(new["embedding"]["kernel"], 1.0)
  np.testing.assert_array_equal(new["encoder_norm"]["scale"], 1.0)
  assert np.all(new["heads"]["digits_motion_probe"]["kernel"] < 1.0)


@pytest.mark.parametrize("name,arg,message", [
    ("cover_l16_jft.py", "k500", "Unknown config argument 'k500'"),
    ("cover_l16_jft.py", "k400,k600", "names the kinetics twice"),
    ("timesformer_b16_k400.py", "k600", "Unknown config argument"),
    ("linear_probe.py", "digits_motion,l16", "uses cover_mini.py's model"),
    ("transfer_finetune.py", "ucf101", "Accepted"),
    ("cover_l16_jft.py", "k400,no_ucf101",
     "'no_ucf101': not an ablation.*Accepted: no_images, image_weight=W"),
    ("cover_b16_i21k.py", "image_weight=x", "'image_weight=x': 'x' is not a"),
    ("cover_b16_i21k.py", "ssv2_weight=-1", "'ssv2_weight=-1'.*Accepted"),
    ("cover_l16_i21k.py", "no_images,image_weight=0.5",
     "'image_weight=0.5': imagenet is dropped by 'no_images'"),
    ("cover_l16_jft.py", "image_weight=0.5,image_weight=0.75",
     "'image_weight=0.75': image_weight is given twice"),
    ("cover_l16_jft.py", "imagenet_weight=1,image_weight=0.75",
     "'image_weight=0.75': imagenet's loss weight is already set"),
    ("cover_l16_jft.py", "no_ssv2,no_kinetics400,no_moments_in_time,no_images",
     "drops every dataset"),
    ("cover_l16_jft.py", "kinetics=k400", "'kinetics=k400': not an ablation"),
    ("timesformer_b16_k400.py", "no_images",
     "Unknown config argument 'no_images'"),
])
def test_bad_arguments_say_what_is_accepted(name, arg, message):
  with pytest.raises(ValueError, match=message):
    load(f"{name}:{arg}")


def datasets_and_heads(config):
  return ({n: s.to_dict() for n, s in config.datasets.items()},
          dict(config.heads))


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_no_images_drops_the_image_dataset_and_its_head(name):
  """Paper Table 5, "K400+SSv2+MiT": the rest of the mixture unchanged."""
  full, ablated = load(f"{name}:k400"), load(f"{name}:k400,no_images")
  assert dict(ablated.heads) == {"kinetics400": 400, "ssv2": 174,
                                 "moments_in_time": 339}
  assert set(ablated.datasets) == set(ablated.heads)
  for n, spec in ablated.datasets.items():
    assert spec.to_dict() == full.datasets[n].to_dict()
  assert ablated.model.to_dict() == full.model.to_dict()
  assert ablated.input.to_dict() == full.input.to_dict()


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_image_weight_zero_is_no_images(name):
  """Table 6's w_image = 0 row has no ImageNet result: images are not in the
  mixture, rather than a zero-weighted part of every batch."""
  assert (datasets_and_heads(load(f"{name}:k600,image_weight=0")) ==
          datasets_and_heads(load(f"{name}:k600,no_images")))


@pytest.mark.parametrize("weight", [0.25, 0.75])
def test_image_weight_sets_the_imagenet_loss_weight(weight):
  config = load(f"cover_l16_jft.py:image_weight={weight}")
  assert config.datasets.imagenet.loss_weight == weight
  assert config.heads.imagenet == 1000
  assert all(config.datasets[n].loss_weight == 1.0
             for n in ("kinetics400", "ssv2", "moments_in_time"))


def test_table5_mixtures_and_per_dataset_weights():
  two = load("cover_l16_jft.py:k700,no_moments_in_time,no_images")
  assert dict(two.heads) == {"kinetics700": 700, "ssv2": 174}  # K700+SSv2
  alone = load("cover_l16_jft.py:no_ssv2,no_moments_in_time,no_images")
  assert dict(alone.heads) == {"kinetics400": 400}  # "Train independently"
  config = load("cover_b16_i21k.py:ssv2_weight=2,moments_in_time_sample=1e5,"
                "kinetics400_sample=0")
  assert config.datasets.ssv2.loss_weight == 2.0
  assert config.datasets.moments_in_time.sample_weight == 1e5
  assert config.datasets.ssv2.sample_weight is None  # still its size
  assert "kinetics400" not in config.heads  # sampled never: dropped


def test_ablations_apply_to_any_mixture():
  """The grammar is generic: the mini config names its own image dataset."""
  entry = lambda w: ml_collections.ConfigDict(dict(
      dataset="x", loss_weight=w, sample_weight=None))
  config = ml_collections.ConfigDict(dict(
      datasets={"appearance": entry(1.0), "motion": entry(1.0),
                "pictures": entry(0.5)},
      heads={"appearance": 10, "motion": 8, "pictures": 10}))
  ablations.apply(config, "image_weight=0.25,motion_sample=3",
                  images=["pictures"])
  assert config.datasets.pictures.loss_weight == 0.25
  assert config.datasets.motion.sample_weight == 3.0
  ablations.apply(config, ["no_images"], images=["pictures"])
  assert dict(config.heads) == {"appearance": 10, "motion": 8}
  with pytest.raises(ValueError, match="'no_images': not an ablation"):
    ablations.apply(config, "no_images", images=["pictures"])  # none left
  ablations.apply(config, "")  # nothing to do
  assert set(config.datasets) == {"appearance", "motion"}


def test_command_line_takes_ablations_and_a_checkpoint_path():
  argv = ["main.py", f"--config={os.path.join(CONFIGS, 'cover_l16_jft.py')}"
          ":k400,no_images,ssv2_weight=0.5",
          "--config.init_from=/ckpt/ViT-L_16_JFT-3B.npz",
          "--config.loss_reduction=weighted_average"]
  config = tiny_runs.command_line_config(argv)
  assert "imagenet" not in config.heads
  assert config.datasets.ssv2.loss_weight == 0.5
  assert config.init_from == "/ckpt/ViT-L_16_JFT-3B.npz"
  assert config.loss_reduction == "weighted_average"


@pytest.mark.parametrize("name", sorted(
    f for f in os.listdir(CONFIGS) if f.endswith(".py")
    and not f.endswith("_mini.py")  # the laptop configs: README's first
    and "def get_config(" in open(os.path.join(CONFIGS, f)).read()))
def test_docstrings_say_what_how_and_needs(name):
  """Each config says what it reproduces, how to launch it, what it needs."""
  with open(os.path.join(CONFIGS, name)) as f:
    module_doc = f.read().split('"""')[1]
  assert f"python main.py --config=configs/{name}" in module_doc
  assert "Needs:" in module_doc
  assert "arXiv:2112.07175" in module_doc
  assert isinstance(load(name), ml_collections.ConfigDict)


def test_mini_configs_arguments_and_stages():
  """cover_mini.py: the regime and ablation arguments; its image stage."""
  config = load("cover_mini.py")
  assert sorted(config.heads) == ["digits_appearance", "digits_image",
                                  "digits_motion"]
  assert config.datasets.digits_image.loss_weight == 0.5
  assert not any(spec.flip for spec in config.datasets.values())
  assert config.pretrain.datasets.digits_image.dataset == "digits_image"
  assert "model" not in config.pretrain  # the run's own, at run time
  scarce = load("cover_mini.py:video25,image_weight=0.25")
  assert scarce.datasets.digits_motion.dataset == "digits_motion/train25"
  assert scarce.datasets.digits_appearance.dataset == (
      "digits_appearance/train25")
  assert scarce.datasets.digits_image.dataset == "digits_image"  # all images
  assert scarce.datasets.digits_image.loss_weight == 0.25
  no_images = load("cover_mini.py:video25,no_images")
  zero = load("cover_mini.py:image_weight=0,video25")
  assert no_images.datasets.to_dict() == zero.datasets.to_dict()
  assert dict(zero.heads) == {"digits_appearance": 10, "digits_motion": 8}
  alone = load("cover_mini.py:no_digits_appearance,no_images")
  assert list(alone.heads) == ["digits_motion"]
  with pytest.raises(ValueError, match="'video30'"):
    load("cover_mini.py:video30")
  with pytest.raises(ValueError, match="'no_kinetics400'"):
    load("cover_mini.py:no_kinetics400")


@pytest.mark.parametrize("name, paper", [
    ("timesformer_b16_k400.py",  # TimeSformer paper, Table 1: 0.59 TFLOPs
     "0.59 TFLOPs = 0.196 per view x 3 views"),
    ("cover_l16_jft.py",  # L/16 at 16x448: (17 d^2 + 2 (s+1) d + 2 n d)
     # n s L = 5.860 T, plus 0.010 T of patch embedding
     "17.61 TFLOPs = 5.870 per view x 3 views")])
@pytest.mark.slow
def test_describe_states_flops_as_the_papers_do(name, paper):
  import main  # pylint: disable=import-outside-toplevel
  assert main.describe(load(name))["tflops_as_in_the_papers"] == (
      f"{paper}, clips x crops (multiply-adds, as TimeSformer and CoVeR "
      f"count)")
  config = load(name)  # 2 clips x 3 crops: twice the views
  config.input.eval_clips = 2
  text = main.describe(config)["tflops_as_in_the_papers"]
  assert f"= {paper.split(' = ')[1].split()[0]} per view x 6 views" in text
  assert float(text.split()[0]) == pytest.approx(
      2 * float(paper.split()[0]), abs=0.011)


@pytest.mark.parametrize("name", ["timesformer_b16_k400.py", "cover_mini.py"])
def test_the_strong_recipe_is_videomaes_and_plain_is_unchanged(name):
  plain, strong = load(name), load(f"{name}:strong")
  assert load(f"{name}:plain").to_dict() == plain.to_dict()
  for entry in strong.datasets.values():
    assert (entry.label_smoothing, entry.mixup_alpha, entry.cutmix_alpha,
            entry.mix_prob, entry.switch_prob) == (0.1, 0.8, 1.0, 1.0, 0.5)
  assert strong.input.randaugment == "rand-m7-n4-mstd0.5-inc1"
  assert strong.optimizer.layer_decay == 0.75
  assert strong.model.stochastic_depth_rate == 0.1
  assert (strong.input.eval_clips, strong.input.eval_views) == (5, 3)
  # Everything else is the config's own recipe.
  for field in ("optimizer", "num_epochs", "batch_size", "ema_decay"):
    if field == "optimizer":
      assert {k: v for k, v in strong.optimizer.items() if k != "layer_decay"
              } == {k: v for k, v in plain.optimizer.items()
                    if k != "layer_decay"}
    else:
      assert strong[field] == plain[field]
  assert all(e.mixup_alpha == 0 and e.label_smoothing == 0
             for e in plain.datasets.values())
  assert plain.input.randaugment == "" and plain.input.eval_clips == 1
