"""Input iterators from the experiment config (configs/cover_mini.py)."""

import re

import numpy as np
import pytest

from cover_jax import input as inp
from tests import tiny_runs



def test_mini_config_trains_on_all_three_datasets(digits_dir):
  config = tiny_runs.mini_config(digits_dir)
  it = inp.make.for_train(config, granule=8)
  # Equal sizes: 2 of 3 datasets are videos -> 2/3 of 32, rounded to 8s.
  assert it.global_batch_sizes == {"video": 24, "image": 8}
  names = it.names
  seen = set()
  for _ in range(5):
    batch = next(it)
    assert batch["video"]["frames"].shape == (24, 8, 32, 32, 3)
    assert batch["image"]["frames"].shape == (8, 1, 32, 32, 3)
    seen |= {names[i] for part in batch.values() for i in part["dataset"]}
    labels = batch["video"]["label"][batch["video"]["dataset"] ==
                                     names.index("digits_motion")]
    assert np.all((labels >= 0) & (labels < 8))
  assert seen == set(config.datasets)
  it.close()


def test_motion_set_is_never_flipped_and_flip_is_refused(digits_dir):
  config = tiny_runs.mini_config(digits_dir)
  config.datasets.digits_motion.flip = True
  with pytest.raises(ValueError, match="'digits_motion'.*set flip=False"):
    inp.make.for_train(config)


def test_unknown_input_field_is_named(digits_dir):
  config = tiny_runs.mini_config(digits_dir)
  config.input.unlock()
  config.input.crop = 32
  with pytest.raises(ValueError, match=r"Unknown config.input fields "
                     r"\['crop'\]"):
    inp.make.preprocessing(config)


def test_crop_larger_than_the_mini_frames_is_refused(digits_dir):
  config = tiny_runs.mini_config(digits_dir)
  config.input.crop_size = 48
  with pytest.raises(ValueError, match="short side of 40 px, smaller than "
                     "the crop 48"):
    inp.make.for_train(config)


def test_eval_views_every_test_example_once(digits_dir):
  config = tiny_runs.mini_config(digits_dir)
  config.eval_batch_size = 128
  (source,) = [s for s in inp.make.sources(config, "eval_split")
               if s.name == "digits_image"]
  batches = list(inp.make.for_eval(config, source))
  assert len(batches) == 3  # 359 examples, batches of 128
  assert batches[0]["frames"].shape == (128, 3, 1, 32, 32, 3)
  records = np.concatenate([b["record"][b["mask"] == 1] for b in batches])
  assert sorted(records) == list(range(359))


def test_main_describes_the_data_and_placeholders_override(digits_dir):
  import main  # pylint: disable=import-outside-toplevel
  config = tiny_runs.mini_config(digits_dir)
  report = main.describe_data(config)
  # 2/3 of 32 rounded to the 8 batch shards of this host's mesh: training's.
  assert report["batch"] == {"video": 24, "image": 8}
  assert report["batch_shards"] == 8
  assert report["datasets"]["digits_motion"]["classes"] == 8
  assert report["datasets"]["digits_image"]["kind"] == "image"
  config.input.video_share = 0.25  # a typed placeholder: settable
  assert main.describe_data(config)["batch"] == {"video": 8, "image": 24}


def test_describe_reports_the_split_training_uses(digits_dir):
  """sample_weight, the mesh's batch shards and gradient accumulation all
  shape the split; describe reports the iterator's own."""
  import main  # pylint: disable=import-outside-toplevel
  from cover_jax import sharding  # pylint: disable=import-outside-toplevel
  config = tiny_runs.mini_config(digits_dir)
  config.batch_size = 48
  config.datasets.digits_image.sample_weight = 5000.0  # images: 5000 of 10752
  config.mesh.update(data=2, fsdp=2, tensor=2)  # 4 batch shards
  config.optimizer.accumulation_steps = 2
  mesh = sharding.make_mesh(**config.mesh)
  want = inp.make.for_train(config, mesh=mesh).global_batch_sizes
  # 48 x 5752 / 10752 = 25.7 videos, in multiples of 4 x 2: 24.
  assert want == {"video": 24, "image": 24}
  report = main.describe_data(config)
  assert report["batch"] == want and report["batch_shards"] == 4

def test_a_head_that_does_not_fit_its_dataset_is_named(digits_dir):
  """inp.check_head: training's and evaluation's one check."""
  (source,) = [s for s in inp.make.sources(tiny_runs.mini_config(digits_dir),
                                           "eval_split")
               if s.name == "digits_motion"]
  inp.check_head({"digits_motion": 8}, source)
  with pytest.raises(ValueError, match=re.escape(
      "config.heads.digits_motion = 9, but dataset 'digits_motion' has 8 "
      "classes: set config.heads.digits_motion=8.")):
    inp.check_head({"digits_motion": 9}, source)
  with pytest.raises(ValueError, match=re.escape(
      "config.heads has no head 'digits_motion' (heads: ['other']): add "
      "config.heads.digits_motion=8.")):
    inp.check_head({"other": 3}, source)
