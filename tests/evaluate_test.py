"""Multi-view evaluation: scores against numpy, rigged heads, reversal, files.

One tiny TimeSformer with random parameters and three heads, on a mesh of the
8 fake CPU devices: the synthetic clips (tests/synthetic_data.py; videos and
images, 3 classes) and the digits images (10 classes, varied enough that the
predictions vary), with eval batches that leave a padded last batch.
"""

import json

import numpy as np
import pytest

from cover_jax import input as inp
from cover_jax import sharding
from cover_jax.models import create
from cover_jax.training import evaluate as ev
from tests import eval_reference
from tests import synthetic_data  # pylint: disable=unused-import

@pytest.fixture(scope="module")
def tiny():
  """(model, params), one model object for every test: compiled once."""
  return eval_reference.model_and_params()


@pytest.mark.slow
def test_scores_equal_numpy_on_the_same_logits(tiny, synthetic_dir,
                                               digits_dir):
  model, params = tiny
  mesh = sharding.make_mesh(data=-1)
  # 359 digits in 6 batches of 64; 7 clips and 5 stills in one batch of 8:
  # every last batch is padded.
  digits = eval_reference.synthetic_config(
      digits_dir,
      {"digits_image": eval_reference.dataset("digits_image", "test")},
      eval_batch_size=64)
  synthetic = eval_reference.synthetic_config(synthetic_dir)
  for config, sizes in ((digits, {"digits_image": 359}),
                        (synthetic, {"clips": 7, "stills": 5})):
    results = ev.evaluate(model, params, config, mesh=mesh)
    assert set(results) == set(sizes)
    for name, size in sizes.items():
      expected = eval_reference.numpy_scores(model, params, config, name)
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
  # Test splits: labels i % 3.
  config = eval_reference.synthetic_config(synthetic_dir)
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
  config = eval_reference.synthetic_config(synthetic_dir)
  mesh = sharding.make_mesh(data=-1)
  plain = ev.evaluate(model, params, config, mesh=mesh, names=["clips"])
  reversed_ = ev.evaluate(model, params, config, mesh=mesh, reverse=True)
  assert set(reversed_) == {"clips/reversed"}  # an image has one frame
  assert reversed_["clips/reversed"]["examples"] == 7
  assert reversed_["clips/reversed"]["loss"] != pytest.approx(
      plain["clips"]["loss"], rel=1e-3)
  assert reversed_["clips/reversed"] == pytest.approx(
      eval_reference.numpy_scores(model, params, config, "clips", reverse=True),
      rel=1e-5)
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
def test_datasets_of_one_input_shape_share_one_program(synthetic_dir):
  """Two video datasets on heads of their own (listed out of sorted order):
  one program between them, and each is scored on its own head, as numpy
  scores it."""
  heads = {"clips_b": 3, "clips_a": 3}
  model, params = eval_reference.model_and_params(seed=1, heads=heads)
  video = eval_reference.dataset("synthetic_clips/video", "test")
  config = eval_reference.synthetic_config(
      synthetic_dir, {name: video for name in heads}, heads=heads)
  compiled = ev._accumulate._cache_size()  # pylint: disable=protected-access
  results = ev.evaluate(model, params, config, mesh=sharding.make_mesh(
      data=-1))
  assert ev._accumulate._cache_size() == compiled + 1  # pylint: disable=protected-access
  for name in heads:
    expected = eval_reference.numpy_scores(model, params, config, name)
    assert results[name]["top1"] == expected["top1"]
    assert results[name]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
  assert results["clips_a"]["loss"] != pytest.approx(
      results["clips_b"]["loss"], rel=1e-3)  # the heads differ


@pytest.mark.slow
def test_results_go_to_json_and_the_writer_compiled_once(tiny, synthetic_dir,
                                                         tmp_path):
  """Results in JSON and TensorBoard; one program per architecture."""
  model, params = tiny
  config = eval_reference.synthetic_config(synthetic_dir)
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
  config = eval_reference.synthetic_config(synthetic_dir, eval_batch_size=12)
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
  wrong = create({"clips": 4, "stills": 3}, **eval_reference.MODEL)
  with pytest.raises(ValueError, match=r"config.heads.clips = 4, but "
                     r"dataset 'synthetic_clips/video' has 3 classes: set "
                     r"config.heads.clips=3"):
    ev.evaluate_source(wrong, params, config,
                       inp.make.sources(config, "eval_split")[0], mesh=mesh)


def test_an_example_scored_twice_or_missed_is_an_error(synthetic_dir):
  config = eval_reference.synthetic_config(synthetic_dir)
  (source,) = [s for s in inp.make.sources(config, "eval_split")
               if s.name == "clips"]
  totals = {"top1": 3, "top5": 8, "examples": 8, "loss": 1.0, "skipped": 0}
  with pytest.raises(RuntimeError, match="scored 8 examples and skipped 0 "
                     "broken ones, but the split has 7"):
    ev._finalize(totals, source)  # pylint: disable=protected-access


# Two processes scoring every example once: tests/multiprocess_input_test.py
# (one pair of jax.distributed processes for the input and the evaluation).
