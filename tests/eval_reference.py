"""An independent evaluation: a tiny TimeSformer with random parameters and
three heads, the synthetic clips' eval config, and the metrics recomputed in
numpy (tests/evaluate_test.py checks cover_jax's evaluation against them)."""

import functools

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from cover_jax import input as inp
from cover_jax.models import abstract_variables, create
from cover_jax.training import evaluate as ev
# Registers the synthetic clips' builder.
from tests import synthetic_data  # pylint: disable=unused-import

HEADS = {"clips": 3, "stills": 3, "digits_image": 10}
MODEL = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8,
             num_frames=4, image_size=16)


def dataset(name, split):
  return dict(dataset=name, train_split="train", eval_split=split, flip=False,
              loss_weight=1.0)


def synthetic_config(data_dir, datasets=None, split="test", eval_batch_size=8,
                     heads=None):
  """Clips (videos) and stills (images) of the synthetic data by default;
  `heads` (default: HEADS) holds each dataset's head size."""
  if datasets is None:
    clips = "video_large" if split == "train" else "video"
    datasets = {"clips": dataset(f"synthetic_clips/{clips}", split),
                "stills": dataset("synthetic_clips/image", split)}
  config = ml_collections.ConfigDict()
  config.data_dir = data_dir
  config.datasets = ml_collections.ConfigDict(datasets)
  config.heads = {name: (heads or HEADS)[name] for name in datasets}
  config.input = ml_collections.ConfigDict(dict(
      num_frames=4, crop_size=16, scale_range=(1.0, 1.0), eval_views=3,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed=0))
  config.model = ml_collections.ConfigDict(MODEL)
  config.batch_size = 8
  config.eval_batch_size = eval_batch_size
  return config


def model_and_params(seed=0, heads=None):
  """The tiny model with `heads` (default: HEADS) and random numpy
  parameters, all of them.

  (At init the temporal branch's output layer and the time embedding are
  zero, and the model could not tell frame order.)
  """
  model = create(heads or HEADS, **MODEL)
  shapes = nn.unbox(abstract_variables(model))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, x):
    centre = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return (centre + 0.5 * rng.standard_normal(x.shape)).astype(np.float32)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def head_logits(static_model, name):
  """A jitted apply of one head, cached per model (hashed by identity)."""
  model = static_model.module
  return jax.jit(lambda p, x: model.apply({"params": p}, x)[name])


def numpy_scores(model, params, config, name, reverse=False):
  """The metrics recomputed batch by batch on one device, then in numpy;
  the pipeline's uint8 frames normalised here ((x / 255 - mean) / std)."""
  (source,) = [s for s in inp.make.sources(config, "eval_split")
               if s.name == name]
  apply = head_logits(ev._Static(model), name)  # pylint: disable=protected-access
  top1 = top5 = loss = examples = 0.0
  records = []
  mean, std = np.array(config.input.mean), np.array(config.input.std)
  for batch in inp.make.for_eval(config, source, reverse=reverse):
    assert batch["frames"].dtype == np.uint8
    b, views = batch["frames"].shape[:2]
    x = ((batch["frames"] / 255.0 - mean) / std).astype(np.float32)
    logits = np.asarray(apply(params, x.reshape((b * views,) + x.shape[2:])),
                        np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).reshape(b, views, -1)
    probs = probs.mean(axis=1)
    valid, label = batch["mask"] == 1, batch["label"]
    ranked = np.argsort(-probs, axis=-1)
    top1 += np.sum((ranked[:, 0] == label)[valid])
    top5 += np.sum(np.any(ranked[:, :5] == label[:, None], -1)[valid])
    loss -= np.sum(np.log(probs[np.arange(b), label])[valid])
    examples += valid.sum()
    records += list(batch["record"][valid])
  assert sorted(records) == list(range(source.num_examples))
  clips = config.input.get("eval_clips", 1) if source.kind == "video" else 1
  return {"top1": top1 / examples, "top5": top5 / examples,
          "loss": loss / examples, "examples": int(examples),
          "clips": clips, "views": config.input.eval_views}
