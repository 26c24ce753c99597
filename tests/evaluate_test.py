"""Multi-view evaluation: scores against numpy, rigged heads, reversal, files.

One tiny TimeSformer with random parameters and three heads, on a mesh of the
8 fake CPU devices: the synthetic clips (tests/synthetic_data.py; videos and
images, 3 classes) and the digits images (10 classes, varied enough that the
predictions vary), with eval batches that leave a padded last batch.
"""

import functools
import json

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from cover_jax import input as inp
from cover_jax import sharding
from cover_jax.models import abstract_variables, create
from cover_jax.training import evaluate as ev
from tests import synthetic_data  # pylint: disable=unused-import

HEADS = {"clips": 3, "stills": 3, "digits_image": 10}
MODEL = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8,
             num_frames=4, image_size=16)


def dataset(name, split):
  return dict(dataset=name, train_split="train", eval_split=split, flip=False,
              loss_weight=1.0)


def tiny_config(data_dir, datasets=None, split="test", eval_batch_size=8):
  """Clips (videos) and stills (images) of the synthetic data by default."""
  if datasets is None:
    clips = "video_large" if split == "train" else "video"
    datasets = {"clips": dataset(f"synthetic_clips/{clips}", split),
                "stills": dataset("synthetic_clips/image", split)}
  config = ml_collections.ConfigDict()
  config.data_dir = data_dir
  config.datasets = ml_collections.ConfigDict(datasets)
  config.heads = {name: HEADS[name] for name in datasets}
  config.input = ml_collections.ConfigDict(dict(
      num_frames=4, crop_size=16, scale_range=(1.0, 1.0), eval_views=3,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed=0))
  config.model = ml_collections.ConfigDict(MODEL)
  config.batch_size = 8
  config.eval_batch_size = eval_batch_size
  return config


def model_and_params(seed=0):
  """The tiny model and random numpy parameters, all of them.

  (At init the temporal branch's output layer and the time embedding are
  zero, and the model could not tell frame order.)
  """
  model = create(HEADS, **MODEL)
  shapes = nn.unbox(abstract_variables(model))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, x):
    centre = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return (centre + 0.5 * rng.standard_normal(x.shape)).astype(np.float32)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
  """(model, params), one model object for every test: compiled once."""
  return model_and_params()


@pytest.fixture(scope="module")
def digits_image_dir(tmp_path_factory):
  """A data dir with the digits images alone (quicker than `digits_dir`)."""
  from data import registry  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("digits_image"))
  registry.load_builder("digits_image", data_dir)
  return data_dir


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


@pytest.mark.slow
def test_scores_equal_numpy_on_the_same_logits(tiny, synthetic_dir,
                                               digits_image_dir):
  model, params = tiny
  mesh = sharding.make_mesh(data=-1)
  # 359 digits in 6 batches of 64; 7 clips and 5 stills in one batch of 8:
  # every last batch is padded.
  digits = tiny_config(digits_image_dir, {"digits_image": dataset(
      "digits_image", "test")}, eval_batch_size=64)
  synthetic = tiny_config(synthetic_dir)
  for config, sizes in ((digits, {"digits_image": 359}),
                        (synthetic, {"clips": 7, "stills": 5})):
    results = ev.evaluate(model, params, config, mesh=mesh)
    assert set(results) == set(sizes)
    for name, size in sizes.items():
      expected = numpy_scores(model, params, config, name)
      assert results[name]["examples"] == expected["examples"] == size
      assert results[name]["top1"] == expected["top1"]
      assert results[name]["top5"] == expected["top5"]
      assert results[name]["loss"] == pytest.approx(expected["loss"],
                                                    rel=1e-5)
    if "digits_image" in results:  # ten classes: a test that can fail
      assert 0 < results["digits_image"]["top1"] < results[
          "digits_image"]["top5"] < 1
  # Three classes: the top-5 is the top-3, always right.
  assert results["clips"]["top5"] == 1.0


@pytest.mark.slow
def test_constant_head_scores_the_share_of_its_class(tiny, synthetic_dir):
  model, params = tiny
  config = tiny_config(synthetic_dir)  # test splits: labels i % 3
  big = 5.0
  heads = dict(params["heads"])
  for name, c in (("clips", 0), ("stills", 2)):
    heads[name] = {"kernel": np.zeros_like(heads[name]["kernel"]),
                   "bias": big * np.eye(3, dtype=np.float32)[c]}
  rigged = dict(params, heads=heads)
  results = ev.evaluate(model, rigged, config,
                        mesh=sharding.make_mesh(data=4, fsdp=2))
  right = -np.log(np.exp(big) / (np.exp(big) + 2))
  wrong = -np.log(1 / (np.exp(big) + 2))
  # clips: 7 labels 0,1,2,0,1,2,0 -> class 0 is 3/7; stills: 0,1,2,0,1 -> 1/5.
  for name, share, size in (("clips", 3 / 7, 7), ("stills", 1 / 5, 5)):
    assert results[name]["examples"] == size
    assert results[name]["top1"] == pytest.approx(share, abs=1e-12)
    assert results[name]["loss"] == pytest.approx(
        share * right + (1 - share) * wrong, rel=1e-5)


@pytest.mark.slow
def test_reversed_frames_equal_a_reversed_time_embedding(tiny,
                                                         synthetic_dir):
  model, params = tiny
  config = tiny_config(synthetic_dir)
  mesh = sharding.make_mesh(data=-1)
  plain = ev.evaluate(model, params, config, mesh=mesh, names=["clips"])
  reversed_ = ev.evaluate(model, params, config, mesh=mesh, reverse=True)
  assert set(reversed_) == {"clips/reversed"}  # an image has one frame
  assert reversed_["clips/reversed"]["examples"] == 7
  assert reversed_["clips/reversed"]["loss"] != pytest.approx(
      plain["clips"]["loss"], rel=1e-3)
  assert reversed_["clips/reversed"] == pytest.approx(
      numpy_scores(model, params, config, "clips", reverse=True), rel=1e-5)
  # The model sees frame order only through the time embedding: reversing
  # the frames is reversing the embedding.
  flipped = dict(params, time_embedding=params["time_embedding"][::-1])
  rigged = ev.evaluate(model, flipped, config, mesh=mesh, names=["clips"])
  assert rigged["clips"] == pytest.approx(reversed_["clips/reversed"],
                                          rel=1e-5)


class RecordingWriter:
  """A clu metric writer that remembers what it was given."""

  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))

  def flush(self):
    pass


@pytest.mark.slow
def test_results_go_to_json_and_the_writer_compiled_once(tiny, synthetic_dir,
                                                         tmp_path):
  """Results in JSON and TensorBoard; one program per architecture."""
  model, params = tiny
  config = tiny_config(synthetic_dir)
  mesh = sharding.make_mesh(data=-1)
  writer, workdir = RecordingWriter(), str(tmp_path)
  results = ev.evaluate(model, params, config, mesh=mesh, writer=writer,
                        step=7, workdir=workdir)
  for name in ("step_7.json", "latest.json"):
    with open(tmp_path / "eval" / name) as f:
      assert json.load(f) == {"step": 7, "results": results}
  assert writer.scalars == [(7, {f"eval/{k}/{m}": results[k][m]
                                 for k in results for m in ev.METRICS})]
  compiled = ev._accumulate._cache_size()  # pylint: disable=protected-access
  again = ev.evaluate(model, params, config, mesh=mesh, reverse=True,
                      writer=writer, step=7, workdir=workdir)
  assert ev._accumulate._cache_size() == compiled  # pylint: disable=protected-access
  assert "eval/clips/reversed/top1" in writer.scalars[-1][1]
  # Another model object of the same architecture shares the programs (jit
  # keeps no program per model object); another architecture does not.
  assert ev.evaluate(model.clone(), params, config, mesh=mesh, reverse=True,
                     step=7) == again
  assert ev._accumulate._cache_size() == compiled  # pylint: disable=protected-access
  assert ev._Static(model) != ev._Static(model.clone(heads={  # pylint: disable=protected-access
      **model.heads, "stills": model.heads["stills"] + 1}))
  # The reversed sections join the plain ones of the same step.
  assert ev.read_json(workdir) == ev.read_json(workdir, 7) == {
      "step": 7, "results": {**results, **again}}
  ev.evaluate(model, params, config, mesh=mesh, step=8, workdir=workdir,
              names=["stills"])
  assert ev.read_json(workdir) == {
      "step": 8, "results": {"stills": results["stills"]}}


def test_bad_settings_are_refused_with_the_fix(tiny, synthetic_dir):
  model, params = tiny
  config = tiny_config(synthetic_dir, eval_batch_size=12)
  mesh = sharding.make_mesh(data=-1)
  with pytest.raises(ValueError, match=r"config.eval_batch_size = 12 is not "
                     r"divisible by the 8 batch shards.*--config."
                     r"eval_batch_size to a multiple of 8, e.g. 16"):
    ev.evaluate(model, params, config, mesh=mesh)
  config.eval_batch_size = 8
  with pytest.raises(ValueError, match=r"\['kinetics'\] are not in config"):
    ev.evaluate(model, params, config, mesh=mesh, names=["kinetics"])
  with pytest.raises(ValueError, match="needs the step"):
    ev.evaluate(model, params, config, mesh=mesh, writer=RecordingWriter())
  wrong = create({"clips": 4, "stills": 3}, **MODEL)
  with pytest.raises(ValueError, match=r"config.heads.clips = 4, but "
                     r"dataset 'synthetic_clips/video' has 3 classes: set "
                     r"config.heads.clips=3"):
    ev.evaluate_source(wrong, params, config,
                       inp.make.sources(config, "eval_split")[0], mesh=mesh)


def test_an_example_scored_twice_or_missed_is_an_error(synthetic_dir):
  config = tiny_config(synthetic_dir)
  (source,) = [s for s in inp.make.sources(config, "eval_split")
               if s.name == "clips"]
  totals = {"top1": 3, "top5": 8, "examples": 8, "loss": 1.0, "skipped": 0}
  with pytest.raises(RuntimeError, match="scored 8 examples and skipped 0 "
                     "broken ones, but the split has 7"):
    ev._finalize(totals, source)  # pylint: disable=protected-access


# Two processes scoring every example once: tests/multiprocess_input_test.py
# (one pair of jax.distributed processes for the input and the evaluation).
