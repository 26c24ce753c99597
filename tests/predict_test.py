"""Using a trained model: --mode=predict, features and export (cover_jax/
predict.py, commands.py, export.py) on real mp4, webm and png files and a
corrupt one, from a run's workdir and from an official-format .pyth."""

import json
import os
import subprocess
import sys
from fractions import Fraction

import av
import jax
import numpy as np
import pytest

from cover_jax.inference import commands
from cover_jax.inference import predict
from cover_jax.input import make
from tests import media_files
from tests import tiny_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def normalised(views, prep):
  """The pipeline's uint8 views as the model's input, computed here:
  (x / 255 - mean) / std in float64, then float32."""
  assert views.dtype == np.uint8
  return ((views / 255.0 - np.array(prep.mean)) /
          np.array(prep.std)).astype(np.float32)


def eval_indices(n, t):
  """Segment middles, written out: floor((i + 0.5) n / t)."""
  return [min(int((i + 0.5) * n / t), n - 1) for i in range(t)]


def views_of_every_frame(path, short_side, num_frames, prep):
  """The evaluation's views of an input with every frame decoded
  (data.decode) and the evaluation's sampling of the whole list
  (input.preprocess_eval): predict's path before it bounded decoding."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  frames = ([decoding.decode_image(path, short_side)]
            if predict.kind_of(path) == "image" else
            decoding.decode_video(path, short_side).frames)
  return inp.preprocess_eval(tf.constant(frames), num_frames=num_frames,
                             prep=prep).numpy()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("inputs")
  os.makedirs(folder / "nested")
  media_files.write_video(str(folder / "clip.mp4"), frames=12)
  media_files.write_video(str(folder / "nested" / "clip.webm"), frames=9,
                          width=40, height=56)
  media_files.write_image(str(folder / "digit.png"))
  media_files.write_bytes(str(folder / "broken.mp4"), b"\x00not a video" * 50)
  (folder / "notes.txt").write_text("not a media file: not an input")
  return str(folder)


def tiny_flags(workdir, data_dir):
  return [f"--workdir={workdir}", f"--config.data_dir={data_dir}"] + [
      f"--config.model.{k}={v}" for k, v in tiny_runs.TINY.items()]


@pytest.mark.slow
def test_predict_command_on_a_runs_workdir(tiny_run, digits_dir, inputs,
                                           tmp_path):
  out = tmp_path / "predictions.jsonl"
  # A name with a comma, which --inputs would split, in --inputs_from.
  comma = media_files.write_image(str(tmp_path / "digit, again.png"))
  (tmp_path / "list.txt").write_text(f"# more inputs\n\n{comma}\n")
  proc = subprocess.run(
      [sys.executable, "main.py", "--mode=predict",
       "--config=configs/cover_mini.py", f"--inputs={inputs}",
       f"--inputs_from={tmp_path / 'list.txt'}",
       f"--output={out}", "--top_k=3"] + tiny_flags(tiny_run, digits_dir),
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 1, proc.stdout + proc.stderr  # one input failed
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert lines[-1]["input"] == comma and "error" not in lines[-1]
  assert sorted(lines[-1]["heads"]) == ["digits_image"]
  by_name = {os.path.relpath(l["input"], inputs): l for l in lines[:-1]}
  assert sorted(by_name) == ["broken.mp4", "clip.mp4", "digit.png",
                             os.path.join("nested", "clip.webm")]
  assert "unreadable video file" in by_name["broken.mp4"]["error"]
  labels = json.loads((open(os.path.join(tiny_run, "label_maps.json"))
                       .read()))
  for name, frames in (("clip.mp4", 12),
                       (os.path.join("nested", "clip.webm"), 9)):
    line = by_name[name]
    assert line["frames"] == eval_indices(frames, 8)
    assert sorted(line["heads"]) == ["digits_appearance", "digits_motion"]
    motion = line["heads"]["digits_motion"]
    assert len(motion) == 3
    assert {c for c, _ in motion} <= set(labels["digits_motion"]["labels"])
    probs = [p for _, p in motion]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
  assert sorted(by_name["digit.png"]["heads"]) == ["digits_image"]
  # The readable table names each input, and the failure with its reason.
  assert "digits_motion" in proc.stdout and "FAILED" in proc.stdout
  assert "4 of 5 inputs done; 1 failed" in proc.stdout


@pytest.mark.slow
def test_predictions_are_the_view_averaged_softmax(tiny_run, digits_dir,
                                                   inputs):
  """Independent of the batching: each input's probabilities are the mean
  over its views of the softmax of the model's logits on those views
  (uint8, normalised here)."""
  config = tiny_runs.tiny_config(digits_dir)
  model, params, infos, origin = commands.load(config, tiny_run)
  assert "step 5" in origin
  paths = predict.expand_inputs([inputs])
  results = list(predict.run(model, params, config, infos, paths, top_k=10,
                             batch_size=2, progress=False))
  prep = make.preprocessing(config)
  for result in results:
    if result.error:
      continue
    side = predict.decode_short_side(infos, list(result.heads), prep)
    views = views_of_every_frame(
        result.path, side, prep.num_frames if result.kind == "video" else 1,
        prep)
    logits = model.apply({"params": params}, normalised(views, prep),
                         train=False)
    for head, top in result.heads.items():
      z = np.asarray(logits[head], np.float64)
      softmax = np.exp(z - z.max(-1, keepdims=True))
      softmax /= softmax.sum(-1, keepdims=True)
      want = softmax.mean(0)
      names = infos[head].labels
      for name, p in top:
        np.testing.assert_allclose(p, want[names.index(name)], atol=1e-6)


@pytest.mark.slow
def test_features_are_the_models_clip_embeddings(tiny_run, digits_dir,
                                                 inputs, tmp_path):
  config = tiny_runs.tiny_config(digits_dir)
  out = tmp_path / "features.npz"
  status = commands.main(config, tiny_run, mode="features", inputs=[inputs],
                      output=str(out))
  assert status == 1  # the broken file
  saved = np.load(out)
  assert [os.path.basename(i) for i in saved["ids"]] == [
      "clip.mp4", "digit.png", "clip.webm"]
  assert [os.path.basename(i) for i in saved["failed"]] == ["broken.mp4"]
  assert saved["cls"].shape == (3, tiny_runs.TINY["width"])
  # The embedding feeds the heads: the head applied to it gives the logits.
  model, params, infos, _ = commands.load(config, tiny_run)
  prep = make.preprocessing(config)
  views = normalised(views_of_every_frame(
      str(saved["ids"][1]), predict.decode_short_side(
          infos, ["digits_image"], prep), 1, prep), prep)
  logits = model.apply({"params": params}, views, train=False)
  head = params["heads"]["digits_image"]
  _, state = model.apply({"params": params}, views, train=False,
                         mutable=["intermediates"])
  per_view = np.asarray(state["intermediates"]["cls"][0])
  np.testing.assert_allclose(per_view @ head["kernel"] + head["bias"],
                             logits["digits_image"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(saved["cls"][1], per_view.mean(0), rtol=1e-5,
                             atol=1e-6)


def test_nothing_to_predict_is_refused(tiny_run, digits_dir, tmp_path):
  config = tiny_runs.tiny_config(digits_dir)
  with pytest.raises(ValueError, match=r"--mode=predict needs --inputs"):
    commands.main(config, tiny_run, mode="predict")
  with pytest.raises(FileNotFoundError, match=r"--inputs: '.*nowhere' does "
                     r"not exist"):
    commands.main(config, tiny_run, mode="predict",
               inputs=[str(tmp_path / "nowhere")])
  with pytest.raises(ValueError, match=r"--inputs: no video or image "
                     r"files found"):
    commands.main(config, tiny_run, mode="predict", inputs=[str(tmp_path)])
  media_files.write_image(str(tmp_path / "an_image.png"))
  with pytest.raises(ValueError, match=r"Nothing to apply the model with: "
                     r"no checkpoint in .*config.init_from is set"):
    commands.main(config, str(tmp_path), mode="predict",
               inputs=[str(tmp_path)])


# ----------------------------------------------------------------------------
# An official TimeSformer .pyth with a class-names file.
# ----------------------------------------------------------------------------

def pyth_config(pyth, data_dir):
  config = tiny_runs.config_file("timesformer_b16_k400", data_dir)
  config.init_from = pyth
  config.heads.kinetics400 = 7
  config.model.update(dict(width=32, depth=2, num_heads=4, mlp_dim=64,
                           patch_size=4, num_frames=4, image_size=12,
                           gelu_approximate=False, variant_name=None,
                           dtype="float32"))  # exact, against float64
  config.input.update(dict(num_frames=4, crop_size=12, eval_short_side=12))
  return config


@pytest.mark.slow
def test_predict_from_a_pyth_with_class_names_equals_pytorch(tmp_path,
                                                             digits_dir,
                                                             inputs):
  torch = pytest.importorskip("torch")
  from tests import reference_timesformer  # pylint: disable=import-outside-toplevel
  sd = reference_timesformer.random_state_dict(
      torch.Generator().manual_seed(3))
  pyth = tmp_path / "TimeSformer_k400.pyth"
  torch.save({"model_state": {"model." + k: v for k, v in sd.items()}}, pyth)
  names = {f"action {i}": i for i in range(7)}  # SlowFast's {name: index}
  (tmp_path / "classes.json").write_text(json.dumps(names))
  config = pyth_config(str(pyth), digits_dir)
  model, params, infos, origin = commands.load(
      config, str(tmp_path), class_names=[str(tmp_path / "classes.json")])
  assert "TimeSformer .pyth" in origin
  assert infos["kinetics400"].labels == tuple(names)
  path = os.path.join(inputs, "clip.mp4")
  result, = predict.run(model, params, config, infos, [path], top_k=7,
                        progress=False)
  prep = make.preprocessing(config)
  views = views_of_every_frame(path, 12, 4, prep)
  assert views.dtype == np.uint8
  x = (views / 255.0 - np.array(prep.mean)) / np.array(prep.std)
  x = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
  with torch.no_grad():
    z = reference_timesformer.logits({k: v.double() for k, v in sd.items()},
                                     x, 4).numpy()
  want = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).mean(0)
  got = dict(result.heads["kinetics400"])
  for i, name in enumerate(names):
    np.testing.assert_allclose(got[name], want[i], rtol=1e-4, atol=1e-6)
  # Features and export from the same .pyth.
  class_names = [f"kinetics400={tmp_path / 'classes.json'}"]
  assert commands.main(config, str(tmp_path), mode="features", inputs=[path],
                    output=str(tmp_path / "f.npz"),
                    class_names=class_names) == 0
  assert np.load(tmp_path / "f.npz")["cls"].shape == (1, 32)
  out = tmp_path / "export"
  assert commands.main(config, str(tmp_path), mode="export",
                    export_dir=str(out), class_names=class_names) == 0
  exported = jax.export.deserialize((out / "model.jax_export").read_bytes())
  frames = np.random.default_rng(1).integers(0, 256, (2, 4, 12, 12, 3),
                                             dtype=np.uint8)
  x = (frames / 255.0 - np.array(prep.mean)) / np.array(prep.std)
  x = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
  with torch.no_grad():
    z = reference_timesformer.logits({k: v.double() for k, v in sd.items()},
                                     x, 4).numpy()
  np.testing.assert_allclose(
      np.asarray(exported.call(frames)["kinetics400"]),
      np.exp(z) / np.exp(z).sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
  assert json.loads((out / "class_names.json").read_text()) == {
      "kinetics400": list(names)}


# ----------------------------------------------------------------------------
# Export: SavedModel and jax.export, reloaded in a fresh process.
# ----------------------------------------------------------------------------

RELOAD = r"""
import json, sys
import numpy as np
import tensorflow as tf
import jax
out, frames_file = sys.argv[1], sys.argv[2]
frames = np.load(frames_file)
loaded = tf.saved_model.load(out + "/saved_model")
tf_probs = loaded.signatures["serving_default"](frames=tf.constant(frames))
exported = jax.export.deserialize(open(out + "/model.jax_export", "rb").read())
jax_probs = exported.call(frames)
assets = tf.io.gfile.listdir(out + "/saved_model/assets")
np.savez(out + "/reloaded.npz",
         **{"tf/" + k: v.numpy() for k, v in tf_probs.items()},
         **{"jax/" + k: np.asarray(v) for k, v in jax_probs.items()})
print(json.dumps(assets))
"""


@pytest.mark.slow
def test_export_reloads_in_a_fresh_process_with_predicts_numbers(
    tiny_run, digits_dir, tmp_path):
  config = tiny_runs.tiny_config(digits_dir)
  out = str(tmp_path / "export")
  assert commands.main(config, tiny_run, mode="export", export_dir=out) == 0
  # Frames as the model takes them, for two batch sizes (free batch).
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8)
  np.save(tmp_path / "frames.npy", frames)
  proc = subprocess.run([sys.executable, "-c", RELOAD, out,
                         str(tmp_path / "frames.npy")], capture_output=True,
                        text=True, timeout=300, cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1]) == ["class_names.json"]
  reloaded = np.load(os.path.join(out, "reloaded.npz"))
  # predict's own scorer on the same uint8 frames, one view each.
  model, params, infos, _ = commands.load(config, tiny_run)
  prep = make.preprocessing(config)
  probs, _ = predict.make_scorer(model, list(infos), mean=prep.mean,
                                 std=prep.std)(params, frames[:, None])
  for head in infos:
    for kind in ("tf", "jax"):
      np.testing.assert_allclose(reloaded[f"{kind}/{head}"],
                                 np.asarray(probs[head]), atol=1e-5,
                                 err_msg=f"{kind} {head}")
  names = json.loads(open(os.path.join(out, "class_names.json")).read())
  assert names["digits_motion"] == list(infos["digits_motion"].labels)


def test_portable_erf_is_lax_erf_in_float32():
  from cover_jax.models import timesformer  # pylint: disable=import-outside-toplevel
  x = np.linspace(-7, 7, 200001).astype(np.float32)
  got = np.asarray(timesformer.portable_erf(x))
  want = np.asarray(jax.lax.erf(x))
  assert np.abs(got - want).max() < 1e-6
  from scipy import special  # pylint: disable=import-outside-toplevel
  assert np.abs(got - special.erf(x.astype(np.float64))).max() < 1e-6


# ----------------------------------------------------------------------------
# Bounded decoding: only the sampled frames of a video, images under a pixel
# limit, a bounded pool, inputs listed in a file.
# ----------------------------------------------------------------------------

def write_gop_video(path, frames, *, gop, codec="libx264", times=None):
  """48x32 frames of a texture sliding smoothly (no scene cuts), a keyframe
  every `gop` frames (libx264 with B-frames: decode order is not display
  order); `times`: each frame's timestamp in seconds."""
  rng = np.random.default_rng(0)
  texture = rng.integers(0, 256, (64, 128, 3), np.uint8)
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
    stream.codec_context.gop_size = gop
    if codec == "libx264":
      stream.options = {"x264-params": "scenecut=0"}
    for i in range(frames):
      y, x = i % 32, (2 * i) % 80
      frame = av.VideoFrame.from_ndarray(
          np.ascontiguousarray(texture[y:y + 32, x:x + 48]), format="rgb24")
      if times is not None:
        frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return str(path)


class _CountingContainer:
  """An av container whose decoded frames are counted."""

  def __init__(self, container, counts):
    self._container, self._counts = container, counts

  def __getattr__(self, name):
    return getattr(self._container, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return self._container.__exit__(*exc)

  def decode(self, *args, **kwargs):
    for frame in self._container.decode(*args, **kwargs):
      self._counts["decoded"] += 1
      yield frame


@pytest.fixture
def spy(monkeypatch):
  """Counts of the frames PyAV decodes and of the frames made JPEGs."""
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  counts = {"decoded": 0, "jpegs": 0}
  real_open, real_jpeg = av.open, decoding._frame_jpeg  # pylint: disable=protected-access

  def counting_jpeg(*args, **kwargs):
    counts["jpegs"] += 1
    return real_jpeg(*args, **kwargs)

  monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(
      real_open(*a, **k), counts))
  monkeypatch.setattr(decoding, "_frame_jpeg", counting_jpeg)
  return counts


def every_frame(path, short_side):
  """All the JPEG frames of a video, as predict decoded them before it
  bounded decoding (data.decode.decode_video)."""
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  return decoding.decode_video(path, short_side)


VFR = np.cumsum([0] + [0.05, 0.15, 0.1, 0.3] * 20)[:80].tolist()
# name, frames, keyframe every, codec, timestamps; the most frames decoded.
VIDEOS = [
    ("gop.mp4", 120, 10, "libx264", None, 8 * 10 + 1),
    ("gop.webm", 90, 10, "libvpx", None, 8 * 10 + 1),
    ("vfr.mkv", 80, 8, "libx264", VFR, 8 * 8 + 1),
    ("gop.avi", 60, 6, "mpeg4", None, 8 * 6 + 1),
    # Raw H.264 has no timestamps: decoded from the start, up to the last
    # sampled frame (7.5 / 8 of the way), not further.
    ("raw.h264", 64, 8, "libx264", None, 60 + 1),
    ("short.mp4", 5, 2, "libx264", None, 5),  # fewer frames than sampled
]


@pytest.mark.parametrize("name,frames,gop,codec,times,most", VIDEOS,
                         ids=[v[0] for v in VIDEOS])
def test_a_video_decodes_only_its_sampled_frames_to_the_same_bytes(
    tmp_path, spy, name, frames, gop, codec, times, most):
  path = write_gop_video(tmp_path / name, frames, gop=gop, codec=codec,
                         times=times)
  everything = every_frame(path, 24).frames
  assert len(everything) == frames
  assert spy["decoded"] == frames  # the reference decodes every frame
  spy.update(decoded=0, jpegs=0)
  decoded = predict.decode(path, 24, 8)
  want = eval_indices(frames, 8)
  assert decoded.error is None and decoded.note is None
  assert decoded.indices == want
  assert decoded.frames == [everything[i] for i in want]  # the same bytes
  # Only the sampled frames (and frame 0, which sizes them) become JPEGs;
  # the frames decoded are those from the keyframe before each.
  assert spy["jpegs"] == len(set(want) | {0})
  assert spy["decoded"] <= most


class _CorruptFrom(_CountingContainer):
  """A container whose video fails to decode at frame `n` and after it
  (the frames' timestamps say which), like a file damaged there."""

  def __init__(self, container, counts, n):
    super().__init__(container, counts)
    self._n = n

  def decode(self, *args, **kwargs):
    for frame in super().decode(*args, **kwargs):
      if frame.pts * frame.time_base >= Fraction(self._n, 10):  # 10 fps
        raise av.error.InvalidDataError(1094995529, "Invalid data found")
      yield frame


def test_a_damaged_video_keeps_the_frames_before_the_error(tmp_path, spy,
                                                           monkeypatch):
  """As decode_video: the frames before a decode error, sampled, and a
  note of where it stopped; a truncated webm: the frames that are there."""
  path = write_gop_video(tmp_path / "damaged.mp4", 60, gop=6)
  real_open = av.open
  monkeypatch.setattr(av, "open", lambda *a, **k: _CorruptFrom(
      real_open(*a, **k), spy, 25))
  reference = every_frame(path, 24)
  assert len(reference.frames) == 25
  assert "decoding stopped after 25 frames" in reference.truncated
  cut = media_files.truncate(
      write_gop_video(tmp_path / "cut.webm", 60, gop=6, codec="libvpx"), 0.5)
  cut_reference = every_frame(cut, 24)
  assert 0 < len(cut_reference.frames) < 60
  for path, reference in ((path, reference), (cut, cut_reference)):
    decoded = predict.decode(path, 24, 8)
    want = eval_indices(len(reference.frames), 8)
    assert decoded.indices == want
    assert decoded.frames == [reference.frames[i] for i in want]
    assert decoded.note == reference.truncated


@pytest.mark.slow
def test_predict_scores_a_long_video_from_its_sampled_frames(
    tiny_run, digits_dir, tmp_path, spy):
  """predict.run on a 200-frame video: the scores of the views of every
  frame decoded (the evaluation's path on the whole list), from 9 JPEGs."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel
  config = tiny_runs.tiny_config(digits_dir)
  model, params, infos, _ = commands.load(config, tiny_run)
  prep = make.preprocessing(config)
  path = write_gop_video(tmp_path / "long.mp4", 200, gop=10)
  side = predict.decode_short_side(infos, ["digits_motion"], prep)
  everything = every_frame(path, side).frames
  spy.update(decoded=0, jpegs=0)
  result, = predict.run(model, params, config, infos, [path], top_k=10,
                        progress=False)
  assert result.error is None
  assert result.frames == eval_indices(200, prep.num_frames)
  assert spy["jpegs"] == prep.num_frames + 1  # frame 0 sizes them
  assert spy["decoded"] <= 8 * 10 + 1
  views = inp.preprocess_eval(tf.constant(everything),
                              num_frames=prep.num_frames, prep=prep).numpy()
  logits = model.apply({"params": params}, normalised(views, prep),
                       train=False)
  for head, top in result.heads.items():
    z = np.asarray(logits[head], np.float64)
    want = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).mean(0)
    for name, p in top:
      np.testing.assert_allclose(p, want[infos[head].labels.index(name)],
                                 atol=1e-6)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(
    tmp_path, monkeypatch):
  from PIL import Image, ImageFile  # pylint: disable=import-outside-toplevel
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  png = media_files.write_image(str(tmp_path / "big.png"), 300, 200)
  jpeg = str(tmp_path / "big.jpg")
  Image.open(png).resize((1600, 1200)).save(jpeg, quality=90)
  loads = []
  real_load = ImageFile.ImageFile.load
  monkeypatch.setattr(ImageFile.ImageFile, "load",
                      lambda self: loads.append(self.size) or real_load(self))
  refused = predict.decode(png, 24, 1, max_image_pixels=50_000)
  assert refused.error == (
      "300x200 image (60,000 pixels to decode) over the limit of 50,000 "
      "pixels; downscale it, or raise --max_image_pixels")
  assert loads == [] and refused.frames == []  # no pixel decoded
  assert "big.png" in predict.table([predict.Result(
      refused.path, refused.kind, error=refused.error)])
  # The limit is settable; a JPEG of 1,920,000 pixels decodes at 1/8 scale
  # (200x150 = 30,000 pixels) under the same 50,000 limit.
  for path, limit in ((png, 60_000), (jpeg, 50_000)):
    decoded = predict.decode(path, 24, 1, max_image_pixels=limit)
    assert decoded.error is None
    assert decoded.frames == [decoding.decode_image(path, 24)]
  assert loads[-2:] == [(200, 150)] * 2  # the JPEG, drafted, twice


def test_images_decoding_at_once_share_the_pixel_limit(tmp_path,
                                                       monkeypatch):
  """Four 60,000-pixel images under a 100,000 limit: one at a time, though
  four threads decode; small ones side by side."""
  import threading  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  large = [media_files.write_image(str(tmp_path / f"l{i}.png"), 300, 200)
           for i in range(4)]
  small = [media_files.write_image(str(tmp_path / f"s{i}.png"), 100, 100)
           for i in range(8)]
  lock, now, most = threading.Lock(), [0], [0]
  real = decoding.decode_image

  def counted(*args, **kwargs):
    with lock:
      now[0] += 1
      most[0] = max(most[0], now[0])
    time.sleep(0.05)
    try:
      return real(*args, **kwargs)
    finally:
      with lock:
        now[0] -= 1

  monkeypatch.setattr(decoding, "decode_image", counted)
  done = list(predict.decode_all(large, {"image": 24}, {"image": 1},
                                 threads=4, max_image_pixels=100_000))
  assert [d.error for d in done] == [None] * 4 and most[0] == 1
  most[0] = 0
  done = list(predict.decode_all(small, {"image": 24}, {"image": 1},
                                 threads=4, max_image_pixels=100_000))
  assert [d.error for d in done] == [None] * 8 and most[0] > 1


def test_the_decoding_pool_is_bounded_whatever_the_cores(monkeypatch):
  """DECODE_THREADS decode at once on a 64-core host, and the pool runs at
  most DECODE_THREADS inputs ahead of the caller."""
  import threading  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  lock, now, most, started = threading.Lock(), [0], [0], []

  def fake_decode(path, *args, **kwargs):
    with lock:
      started.append(path)
      now[0] += 1
      most[0] = max(most[0], now[0])
    time.sleep(0.02)
    with lock:
      now[0] -= 1
    return predict.Decoded(path, "image", [b""], [0])

  monkeypatch.setattr(os, "cpu_count", lambda: 64)
  monkeypatch.setattr(predict, "decode", fake_decode)
  paths = [f"{i}.png" for i in range(30)]
  stream = predict.decode_all(paths, {"image": 8}, {"image": 1})
  assert next(stream).path == "0.png"
  time.sleep(0.5)  # the caller busy: the pool goes as far as it may
  threads = predict.DECODE_THREADS
  assert len(started) <= 2 * threads + 1 < len(paths)
  assert [d.path for d in stream] == paths[1:]
  assert 1 < most[0] <= threads


def test_inputs_from_a_list_file_are_checked_before_the_model_loads(
    tmp_path, monkeypatch, digits_dir):
  monkeypatch.setattr(commands, "load", lambda *a, **k: pytest.fail("loaded"))
  config = tiny_runs.tiny_config(digits_dir)
  with pytest.raises(FileNotFoundError) as error:
    commands.main(config, str(tmp_path), mode="predict",
               inputs=[str(tmp_path / "gone.mp4")])
  assert str(error.value) == (f"--inputs: {str(tmp_path / 'gone.mp4')!r} "
                              f"does not exist.")
  listed = tmp_path / "inputs.txt"
  image = media_files.write_image(str(tmp_path / "a, comma.png"))
  listed.write_text(f"# one path a line\n\n{image}\n   \n"
                    f"{tmp_path / 'gone, too.mp4'}\n")
  assert predict.read_input_list(str(listed)) == [
      image, str(tmp_path / "gone, too.mp4")]
  with pytest.raises(FileNotFoundError) as error:
    commands.main(config, str(tmp_path), mode="predict",
               inputs=[str(tmp_path / "gone.mp4"), image],
               inputs_from=str(listed))
  assert str(error.value) == (
      f"--inputs and --inputs_from={listed}: "
      f"{str(tmp_path / 'gone.mp4')!r}, "
      f"{str(tmp_path / 'gone, too.mp4')!r} do not exist.")
  with pytest.raises(ValueError, match=r"needs --inputs=PATH\[,PATH...\] "
                     r"or --inputs_from=FILE"):
    commands.main(config, str(tmp_path), mode="features")
  listed.write_text(f"{image}\n")
  assert predict.input_files([image], str(listed)) == [image, image]
