"""Using a trained model: --mode=predict, features and export (cover_jax/
predict.py, apply.py, export.py) on real mp4, webm and png files and a
corrupt one, from a run's workdir and from an official-format .pyth."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cover_jax import apply
from cover_jax import predict
from cover_jax.input import make
from tests import make_test
from tests import media_files
from tests import train_test

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
      f"--config.model.{k}={v}" for k, v in train_test.TINY.items()]


def test_predict_command_on_a_runs_workdir(tiny_run, digits_dir, inputs,
                                           tmp_path):
  out = tmp_path / "predictions.jsonl"
  proc = subprocess.run(
      [sys.executable, "main.py", "--mode=predict",
       "--config=configs/cover_mini.py", f"--inputs={inputs}",
       f"--output={out}", "--top_k=3"] + tiny_flags(tiny_run, digits_dir),
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 1, proc.stdout + proc.stderr  # one input failed
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  by_name = {os.path.relpath(l["input"], inputs): l for l in lines}
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
  assert "3 of 4 inputs done; 1 failed" in proc.stdout


def test_predictions_are_the_view_averaged_softmax(tiny_run, digits_dir,
                                                   inputs):
  """Independent of the batching: each input's probabilities are the mean
  over its views of the softmax of the model's logits on those views
  (uint8, normalised here)."""
  config = train_test.tiny_config(digits_dir)
  model, params, infos, origin = apply.load(config, tiny_run)
  assert "step 5" in origin
  paths = predict.expand_inputs([inputs])
  results = list(predict.run(model, params, config, infos, paths, top_k=10,
                             batch_size=2, progress=False))
  prep = make.preprocessing(config)
  for result in results:
    if result.error:
      continue
    side = predict.decode_short_side(infos, list(result.heads), prep)
    decoded = predict.decode(result.path, side)
    views, _ = predict._views(decoded.frames,  # pylint: disable=protected-access
                              prep.num_frames if result.kind == "video"
                              else 1, prep)
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


def test_features_are_the_models_clip_embeddings(tiny_run, digits_dir,
                                                 inputs, tmp_path):
  config = train_test.tiny_config(digits_dir)
  out = tmp_path / "features.npz"
  status = apply.main(config, tiny_run, mode="features", inputs=[inputs],
                      output=str(out))
  assert status == 1  # the broken file
  saved = np.load(out)
  assert [os.path.basename(i) for i in saved["ids"]] == [
      "clip.mp4", "digit.png", "clip.webm"]
  assert [os.path.basename(i) for i in saved["failed"]] == ["broken.mp4"]
  assert saved["cls"].shape == (3, train_test.TINY["width"])
  # The embedding feeds the heads: the head applied to it gives the logits.
  model, params, infos, _ = apply.load(config, tiny_run)
  prep = make.preprocessing(config)
  decoded = predict.decode(str(saved["ids"][1]), predict.decode_short_side(
      infos, ["digits_image"], prep))
  views, _ = predict._views(decoded.frames, 1, prep)  # pylint: disable=protected-access
  views = normalised(views, prep)
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
  config = train_test.tiny_config(digits_dir)
  with pytest.raises(ValueError, match=r"--mode=predict needs --inputs"):
    apply.main(config, tiny_run, mode="predict")
  with pytest.raises(FileNotFoundError, match=r"--inputs: .*nowhere does "
                     r"not exist"):
    apply.main(config, tiny_run, mode="predict",
               inputs=[str(tmp_path / "nowhere")])
  with pytest.raises(ValueError, match=r"Nothing to apply the model with: "
                     r"no checkpoint in .*config.init_from is set"):
    apply.main(config, str(tmp_path), mode="predict",
               inputs=[str(tmp_path)])


# ----------------------------------------------------------------------------
# An official TimeSformer .pyth with a class-names file.
# ----------------------------------------------------------------------------

def pyth_config(pyth, data_dir):
  config = make_test.config_file("timesformer_b16_k400", data_dir)
  config.init_from = pyth
  config.heads.kinetics400 = 7
  config.model.update(dict(width=32, depth=2, num_heads=4, mlp_dim=64,
                           patch_size=4, num_frames=4, image_size=12,
                           gelu_approximate=False, variant_name=None,
                           dtype="float32"))  # exact, against float64
  config.input.update(dict(num_frames=4, crop_size=12, eval_short_side=12))
  return config


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
  model, params, infos, origin = apply.load(
      config, str(tmp_path), class_names=[str(tmp_path / "classes.json")])
  assert "TimeSformer .pyth" in origin
  assert infos["kinetics400"].labels == tuple(names)
  path = os.path.join(inputs, "clip.mp4")
  result, = predict.run(model, params, config, infos, [path], top_k=7,
                        progress=False)
  prep = make.preprocessing(config)
  views, _ = predict._views(predict.decode(path, 12).frames, 4, prep)  # pylint: disable=protected-access
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
  assert apply.main(config, str(tmp_path), mode="features", inputs=[path],
                    output=str(tmp_path / "f.npz"),
                    class_names=class_names) == 0
  assert np.load(tmp_path / "f.npz")["cls"].shape == (1, 32)
  out = tmp_path / "export"
  assert apply.main(config, str(tmp_path), mode="export",
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


def test_export_reloads_in_a_fresh_process_with_predicts_numbers(
    tiny_run, digits_dir, tmp_path):
  config = train_test.tiny_config(digits_dir)
  out = str(tmp_path / "export")
  assert apply.main(config, tiny_run, mode="export", export_dir=out) == 0
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
  model, params, infos, _ = apply.load(config, tiny_run)
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
