"""Multi-clip testing (config.input.eval_clips): indices, views, averaging.

The clip indices against hand computations; the views of every clip against
the ops applied to that clip alone (and, for one clip, to today's single
clip); the averaged softmax against numpy's; predict's frames against
evaluation's.
"""

from fractions import Fraction
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow as tf

from cover_jax import input as inp
from cover_jax import sharding
from cover_jax.inference import predict
from cover_jax.input import ops
from cover_jax.input import pipeline
from cover_jax.training import evaluate as ev
from tests import eval_reference
from tests import media_files
from tests import synthetic_data


def clip_indices(n, t, c, reverse=False):
  return pipeline.eval_frame_indices(tf.constant(n), t, reverse,
                                     clips=c).numpy().reshape(c, t).tolist()


# (n, T, C) -> the clips, by hand: frame t of clip c is at offset
# (c + 1/2) / C of segment t, floor((t + (c + 1/2) / C) n / T), at most n - 1.
HAND = {
    (16, 4, 2): [[1, 5, 9, 13], [3, 7, 11, 15]],  # segments of 4 frames
    (30, 3, 2): [[2, 12, 22], [7, 17, 27]],  # of 10: 2.5, 12.5, ... 7.5, ...
    # n < T C: segments of 1.5 frames: 0.375, 1.875, ... and 1.125, ...
    (6, 4, 2): [[0, 1, 3, 4], [1, 2, 4, 5]],
    # n < T: segments of 3/4 frame, offsets 1/6, 1/2, 5/6 of one.
    (3, 4, 3): [[0, 0, 1, 2], [0, 1, 1, 2], [0, 1, 2, 2]],
    (1, 2, 2): [[0, 0], [0, 0]],
    (19, 8, 1): [[1, 3, 5, 8, 10, 13, 15, 17]],  # one clip: TSN's middles
}


@pytest.mark.parametrize("n,t,c", list(HAND))
def test_clip_indices_equal_the_hand_computation(n, t, c):
  assert clip_indices(n, t, c) == HAND[(n, t, c)]
  # Reversed: each clip's frames backwards, the clips in their order.
  assert clip_indices(n, t, c, reverse=True) == [
      clip[::-1] for clip in HAND[(n, t, c)]]


@pytest.mark.parametrize("t,c", [(1, 4), (2, 2), (4, 2), (4, 4), (8, 2)])
def test_every_clip_spans_the_video_at_the_training_tempo(t, c):
  """Segment i of T, [i n / T, (i + 1) n / T) in exact fractions, sampled by
  clip k at (k + 1/2) / C of it: for every n up to 40 (C T a power of two,
  so float32 holds the positions exactly). Every clip's frames are spread
  over the whole video, as one training clip's are."""
  for n in range(1, 41):
    segment = Fraction(n, t)
    expected = [[min(int((i + (k + Fraction(1, 2)) / c) * segment), n - 1)
                 for i in range(t)] for k in range(c)]
    assert clip_indices(n, t, c) == expected, n
    if n >= 2 * t * c:  # no repeated frames: each clip spans most of it
      assert all(clip[-1] - clip[0] >= n * (t - 1) / t - 1
                 for clip in clip_indices(n, t, c)), n


@pytest.mark.parametrize("n,t", [(16, 8), (19, 8), (5, 8), (1, 4), (300, 16)])
def test_one_clip_is_todays_sampling(n, t):
  np.testing.assert_array_equal(
      pipeline.eval_frame_indices(tf.constant(n), t).numpy(),
      ops.sample_frame_indices(tf.constant(n), t, training=False).numpy())
  np.testing.assert_array_equal(
      pipeline.eval_frame_indices(tf.constant(n), t, True, clips=1).numpy(),
      ops.sample_frame_indices(tf.constant(n), t, training=False).numpy()
      [::-1])


def one_clip_views(jpegs, prep):
  """uint8 [V, T, crop, crop, 3]: the single-clip evaluation views of the
  JPEGs of one clip, composed from the ops (eval_views before clips)."""
  frames = ops.decode_frames(tf.constant(jpegs))
  windows = ops.view_windows(frames.shape[1], frames.shape[2],
                             prep.crop_size,
                             prep.eval_short_side or prep.crop_size,
                             prep.eval_views)
  return ops.to_uint8(ops.crop_views(frames, windows,
                                     prep.crop_size)).numpy()


@pytest.mark.parametrize("clips,reverse", [(1, False), (1, True),
                                           (2, False), (3, True)])
def test_batch_views_are_each_clips_views(synthetic_dir, clips, reverse):
  """frames [b, C V, T, ...]: views c V .. c V + V - 1 are clip c's
  single-clip views (today's eval_views, composed from the ops), bit for
  bit, and show the clip's hand-computed frames. One batch: clips of 5, 8,
  19 and 5 frames (5 < T C for C > 1)."""
  source = synthetic_data.source(synthetic_dir, "video", "test")
  prep = inp.Preprocessing(num_frames=4, crop_size=16,
                           scale_range=(1.0, 1.0), eval_views=3,
                           eval_clips=clips)
  batch = next(iter(inp.eval_batches(source, prep, global_batch=4,
                                     reverse=reverse)))
  assert batch["frames"].shape[1:3] == (clips * 3, 4)
  assert list(batch["mask"]) == [1, 1, 1, 1]
  for views, label, record in zip(batch["frames"], batch["label"],
                                  batch["record"]):
    n = synthetic_data.LENGTHS[label]
    segment = Fraction(n, 4)
    for c in range(clips):
      indices = [min(int((i + (c + Fraction(1, 2)) / clips) * segment),
                     n - 1) for i in range(4)]
      if clips == 1:  # today's sampling
        assert indices == ops.sample_frame_indices(
            n, 4, training=False).numpy().tolist()
      indices = indices[::-1] if reverse else indices
      jpegs, _ = source.read([record], np.asarray([indices]))
      clip_views = views[c * 3:(c + 1) * 3]
      np.testing.assert_array_equal(clip_views, one_clip_views(
          np.asarray(jpegs, object).ravel(), prep))
      for view in clip_views:
        assert list(synthetic_data.sampled_indices(view)) == indices


def test_images_have_one_clip(synthetic_dir):
  source = synthetic_data.source(synthetic_dir, "image", "test")
  prep = inp.Preprocessing(num_frames=4, crop_size=16,
                           scale_range=(1.0, 1.0), eval_views=3,
                           eval_clips=4)
  batch = next(iter(inp.eval_batches(source, prep, global_batch=4)))
  assert batch["frames"].shape[1:3] == (3, 1)  # eval_views crops, 1 frame


class Tiny(nn.Module):
  """A linear head on the pixels: logits that vary with every view."""

  @nn.compact
  def __call__(self, x, train=False):
    return {"h": nn.Dense(5)(x.reshape(x.shape[0], -1))}


def test_averaged_softmax_is_numpys_mean_over_all_views():
  b, clips, views = 2, 2, 3
  frames = np.random.default_rng(0).integers(
      0, 256, (b, clips * views, 2, 4, 4, 3), dtype=np.uint8)
  model = Tiny()
  params = model.init(jax.random.key(0), frames[:, 0])["params"]
  params = jax.tree.map(lambda p: p + 0.05, params)  # non-zero bias
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
  # As evaluate's program scores a batch: every head's logits, then one.
  logits, n = ev._all_logits(model, params, frames, mean, std)  # pylint: disable=protected-access
  got = np.exp(np.asarray(ev.view_averaged_log_probs(logits["h"], n),
                          np.float64))
  want = np.zeros((b, 5))
  for v in range(clips * views):  # each view on its own
    x = ((frames[:, v] / 255.0 - np.array(mean)) / np.array(std))
    z = np.asarray(model.apply({"params": params}, x.astype(np.float32))["h"],
                   np.float64)
    want += np.exp(z) / np.exp(z).sum(-1, keepdims=True) / (clips * views)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert not np.allclose(got[0], got[1])  # the test can see a mix-up


def test_predict_samples_and_crops_as_evaluation(tmp_path):
  """predict with eval_clips=2: evaluation's indices and views of the
  video with every frame decoded."""
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  path = str(tmp_path / "clip.mp4")
  media_files.write_video(path, frames=13)
  prep = inp.Preprocessing(num_frames=3, crop_size=16,
                           scale_range=(1.0, 1.0), eval_views=2,
                           eval_clips=2)
  decoded = predict.decode(path, 24, 3, clips=2)
  assert decoded.error is None
  assert decoded.indices == [1, 5, 9, 3, 7, 11]  # segments of 13 / 3
  assert decoded.indices == pipeline.eval_frame_indices(
      13, 3, clips=2).numpy().tolist()
  everything = decoding.decode_video(path, 24).frames
  want = inp.preprocess_eval(tf.constant(everything), num_frames=3,
                             prep=prep, clips=2).numpy()
  got = predict._views(decoded.frames, prep, 2)  # pylint: disable=protected-access
  assert got.shape == (4, 3, 16, 16, 3)
  np.testing.assert_array_equal(got, want)
  # decode_all passes each kind's clips.
  (again,) = predict.decode_all([path], {"video": 24}, {"video": 3},
                                clips={"video": 2})
  assert again.indices == decoded.indices


@pytest.mark.slow
def test_the_eval_json_records_clips_and_views(synthetic_dir, tmp_path):
  model, params = eval_reference.model_and_params()
  config = eval_reference.synthetic_config(synthetic_dir)
  config.input.eval_clips, config.input.eval_views = 2, 1
  results = ev.evaluate(model, params, config,
                        mesh=sharding.make_mesh(data=-1), step=3,
                        workdir=str(tmp_path))
  saved = json.loads((tmp_path / "eval" / "step_3.json").read_text())
  assert saved["results"] == results
  assert (results["clips"]["clips"], results["clips"]["views"]) == (2, 1)
  assert (results["stills"]["clips"], results["stills"]["views"]) == (1, 1)
  # The scores are those of the 2 x 1 views averaged in numpy.
  expected = eval_reference.numpy_scores(model, params, config, "clips")
  assert results["clips"]["top1"] == expected["top1"]
  assert results["clips"]["loss"] == pytest.approx(expected["loss"],
                                                   rel=1e-5)
  # Resuming reads these results back only for the same clips and views.
  assert ev.saved_results(config, str(tmp_path), 3) == results
  config.input.eval_clips = 1
  assert ev.saved_results(config, str(tmp_path), 3) is None
