"""Datasets in a gs:// data dir, against a GCS emulator (tests/gcs.py).

Preparing uploads (ArrayRecord writes local files only): the dataset is
prepared in a local staging dir, then copied with its dataset_info.json
last; an interrupted upload resumes. Training, evaluation, preflight and
describe then read every dataset kind from the bucket: ours (Kinetics
layout), folder datasets, TFDS catalogue datasets. How each library reaches
the emulator: etils.epath with EPATH_USE_TF=false through gcsfs
(STORAGE_EMULATOR_HOST); array_record's reader through google-cloud-cpp
(CLOUD_STORAGE_EMULATOR_ENDPOINT).
"""

import importlib
import json
import logging
import os
import urllib.parse
import urllib.request

import fsspec
import numpy as np
import pytest

from configs import args
from configs import datasets
from cover_jax import storage
from cover_jax.cli import preflight
from data import prepare
from data import registry
from tests import media_files
from tests import tiny_runs
from tests.gcs import BUCKET, bucket_objects, read_object

GS = f"gs://{BUCKET}/tfds"


@pytest.fixture
def gs_env(gcs_emulator, monkeypatch):
  """The emulator's URL, with this process pointed at it."""
  monkeypatch.setenv("EPATH_USE_TF", "false")
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
  monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", gcs_emulator)
  # Undone after the test: gcsfs as it was registered.
  registered = importlib.import_module("fsspec.registry")._registry  # pylint: disable=protected-access
  for protocol in ("gs", "gcs"):
    monkeypatch.setitem(registered, protocol, registered.get(protocol))
  monkeypatch.setitem(fsspec.config.conf, "gcs",
                      dict(fsspec.config.conf.get("gcs", {})))
  storage.use_gcs_emulator_if_set()
  # epath decides tf.io.gfile or fsspec (EPATH_USE_TF) and makes its gcsfs
  # instance once per process: again now, and again after the test.
  caches = (importlib.import_module("etils.epath.gpath")._is_tf_installed,  # pylint: disable=protected-access
            importlib.import_module("etils.epath.backend")
            ._FileSystemSpecBackend._get_filesystem)  # pylint: disable=protected-access
  for cache in caches:
    cache.cache_clear()
  yield gcs_emulator
  for cache in caches:
    cache.cache_clear()


def put_object(url: str, name: str, data: bytes = b"{}"):
  """Writes one object through the JSON API (not the code under test)."""
  request = urllib.request.Request(
      f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}",
      data=data, method="POST")
  urllib.request.urlopen(request).close()


def delete_object(url: str, name: str):
  quoted = urllib.parse.quote(name, safe="")
  urllib.request.urlopen(urllib.request.Request(
      f"{url}/storage/v1/b/{BUCKET}/o/{quoted}", method="DELETE")).close()


def local_files(root) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, n), root)
                for d, _, names in os.walk(root) for n in names)


def gcsfs_warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.name.startswith("gcsfs") and r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------
# What is prepared on the bucket (directories only).
# ----------------------------------------------------------------------------

def test_registry_and_preflight_see_datasets_on_gs(gs_env, caplog):
  """Our builders at their exact version, folder datasets, a TFDS
  catalogue dataset with and without config folders: prepared; a stale
  version, a missing one and an unbuilt mini dataset: the command that
  prepares it. No gcsfs warning about credentials."""
  caplog.set_level(logging.WARNING)
  version = str(registry.builder_class("kinetics400").VERSION)
  for name in (f"kinetics400/short512/{version}", "ssv2/short512/0.0.1",
               "video_folder/gestures/1.0.0", "image_folder/pics/2.0.0",
               "imagenet2012/5.1.0", "coco/2017/1.1.0"):
    put_object(gs_env, f"tfds/{name}/dataset_info.json")
  put_object(gs_env, "tfds/image_folder/half/incomplete.x_1.0.0/"
                     "dataset_info.json")  # TFDS's folder before its rename

  assert registry.preparation("kinetics400/short512", GS) is None
  assert registry.preparation("video_folder/gestures", GS) is None
  assert registry.preparation("image_folder/pics", GS) is None
  assert registry.preparation("imagenet2012", GS) is None
  assert registry.preparation("coco", GS) is None  # some config is there
  assert registry.preparation("ssv2/short512", GS) == (
      f"python -m data.prepare ssv2 --manual_dir=DIR --data_dir={GS} "
      f"--short_side=512")
  assert registry.preparation("image_folder/half", GS) == (
      f"python -m data.prepare folder --images=ROOT --name=half "
      f"--data_dir={GS}")
  assert registry.preparation("digits_motion/train10", GS) == (
      f"python -m data.prepare digits_motion/train10 --data_dir={GS}")
  local = os.path.join(registry.DEFAULT_DATA_DIR, "places365")
  assert registry.preparation("places365", GS) == (
      f"tfds build places365 --manual_dir=DIR --data_dir="
      f"{registry.DEFAULT_DATA_DIR} --file_format=array_record, then gcloud "
      f"storage rsync --recursive {local} {GS}/places365")
  assert registry.known_names(GS)[-2:] == ["video_folder/gestures",
                                           "image_folder/pics"]
  with pytest.raises(ValueError, match=r"needs the name it was prepared "
                     r"under: video_folder/NAME \(prepared here: "
                     r"\['video_folder/gestures', 'image_folder/pics'\]\)"):
    registry.load_builder("video_folder", GS)
  # Not built on the bucket (ArrayRecord cannot write there): the command.
  with pytest.raises(ValueError, match=(
      f"Dataset 'digits_image' is not prepared in {GS} .*Prepare it once "
      f"with: python -m data.prepare digits_image/train100 --data_dir={GS}$")):
    registry.load_builder("digits_image", GS)
  assert not bucket_objects(gs_env, "tfds/digits_image")

  config = args.load("configs/cover_l16_jft.py")
  with config.unlocked():
    config.data_dir = GS
    config.init_from = f"gs://{BUCKET}/vit.npz"
  put_object(gs_env, "vit.npz")
  missing = preflight.missing(config, f"gs://{BUCKET}/run", "train")
  assert [line.split(" (")[0] for line in missing] == [
      "dataset 'moments_in_time/short512'", "dataset 'ssv2/short512'"]
  assert gcsfs_warnings(caplog) == []


def test_local_data_dir_still_expands_home(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  version = str(registry.builder_class("kinetics400").VERSION)
  info = tmp_path / f"tfds/kinetics400/short320/{version}/dataset_info.json"
  info.parent.mkdir(parents=True)
  info.write_text("{}")
  assert registry.preparation("kinetics400", "~/tfds") is None
  assert registry.preparation("ssv2", "~/tfds") == (
      f"python -m data.prepare ssv2 --manual_dir=DIR --data_dir={tmp_path}"
      f"/tfds")


def test_prepare_flag_errors_name_the_fix(tmp_path, capsys):
  code = prepare.main(["digits_image", f"--data_dir={tmp_path}",
                       f"--staging_dir={tmp_path}/s"])
  assert code == 1 and capsys.readouterr().err.endswith(
      f"--staging_dir applies to a gs:// --data_dir only; {tmp_path} is "
      f"written directly.\n")
  code = prepare.main(["digits_image", f"--data_dir={GS}",
                       "--staging_dir=gs://other/dir"])
  assert code == 1 and capsys.readouterr().err.endswith(
      "--staging_dir must be a local directory (ArrayRecord writes local "
      "files only), not gs://other/dir.\n")
  code = prepare.main(["digits_image/train7", f"--data_dir={tmp_path}"])
  assert code == 1 and capsys.readouterr().err.endswith(
      "Unknown dataset 'digits_image/train7'. digits_image has: "
      "digits_image/train100, digits_image/train50, digits_image/train25, "
      "digits_image/train10.\n")


# ----------------------------------------------------------------------------
# Preparing to the bucket, reading it back.
# ----------------------------------------------------------------------------

def test_prepare_to_gs_resumes_an_interrupted_upload_and_reads_back(
    gs_env, tmp_path, monkeypatch, capsys, synthetic_dir):
  """An image folder prepared for gs://: the upload dies on the records;
  the dataset is not there yet; the same command uploads only what is
  missing without preparing again, and the records read from the bucket
  equal the local ones. A TFDS catalogue dataset copied there reads back
  too."""
  root = tmp_path / "pictures"
  for i, label in enumerate(("cat", "dog", "cat")):
    media_files.write_image(root / f"train/{label}/{i}.png", 20 + 4 * i)
  staging = tmp_path / "staging"
  argv = ["folder", f"--images={root}", "--name=pics", f"--data_dir={GS}",
          f"--staging_dir={staging}", "--num_workers=0"]
  upload = storage._upload_file  # pylint: disable=protected-access

  def dies_on_records(source, target):
    if ".array_record" in source:
      raise OSError("connection reset")
    return upload(source, target)

  monkeypatch.setattr(storage, "_upload_file", dies_on_records)
  assert prepare.main(argv) == 1
  assert "connection reset" in capsys.readouterr().err
  local = staging / "image_folder/pics/1.0.0"
  files = local_files(local)
  assert "dataset_info.json" in files and "prepare_report.json" in files
  uploaded = [n[len("tfds/image_folder/pics/1.0.0/"):]
              for n in bucket_objects(gs_env, "tfds/image_folder/pics/")]
  assert "dataset_info.json" not in uploaded and uploaded
  assert registry.preparation("image_folder/pics", GS) is not None

  monkeypatch.setattr(storage, "_upload_file", upload)
  written = {f: os.stat(local / f).st_mtime_ns for f in files}
  assert prepare.main(argv) == 0
  out = capsys.readouterr().out
  assert (f"image_folder/pics/1.0.0 is ready in {GS}/image_folder/pics/"
          f"1.0.0 (prepared in {local}; {len(files) - len(uploaded)} files "
          f"uploaded, {len(uploaded)} were there already)") in out
  assert "train: 3 written" in out
  assert written == {f: os.stat(local / f).st_mtime_ns for f in files}
  assert sorted(n[len("tfds/image_folder/pics/1.0.0/"):] for n in
                bucket_objects(gs_env, "tfds/image_folder/pics/")) == files
  assert json.loads(read_object(
      gs_env, "tfds/image_folder/pics/1.0.0/dataset_info.json")) == (
          json.loads((local / "dataset_info.json").read_text()))
  assert prepare.main(argv) == 0
  assert (f"was already prepared in {GS}/image_folder/pics/1.0.0" in
          capsys.readouterr().out)

  from tests import synthetic_data  # pylint: disable=import-outside-toplevel,unused-import
  storage.upload_tree(os.path.join(synthetic_dir, "synthetic_clips/image/1.0.0"),
                      storage.resolve(f"{GS}/synthetic_clips/image/1.0.0"))
  for name, local_dir in (("image_folder/pics", staging),
                          ("synthetic_clips/image", synthetic_dir)):
    remote = registry.load_builder(name, GS)
    assert os.fspath(remote.data_dir).startswith(GS)
    records = list(remote.as_data_source("train"))
    assert len(records) == remote.info.splits["train"].num_examples > 0
    for a, b in zip(records, registry.load_builder(
        name, local_dir).as_data_source("train"), strict=True):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


# ----------------------------------------------------------------------------
# End to end: raw videos -> bucket -> training.
# ----------------------------------------------------------------------------

def write_kinetics(root):
  """A Kinetics-layout manual dir: 2 classes, 4 train and 2 validation
  clips (real mp4 files)."""
  header = "label,youtube_id,time_start,time_end,split\n"
  rows = {"train": [(c, f"{c[:2]}{i}") for c in ("zumba", "abseiling")
                    for i in range(2)],
          "validate": [(c, f"v{c[:2]}") for c in ("zumba", "abseiling")]}
  for split, clips in rows.items():
    media_files.write_bytes(root / f"{split}.csv", (header + "".join(
        f"{c},{clip},0,10,{split}\n" for c, clip in clips)).encode())
    for i, (_, clip) in enumerate(clips):
      media_files.write_video(root / f"{clip}_000000_000010.mp4", 4 + i)


def two_video_config(data_dir):
  config = tiny_runs.tiny_config(data_dir, num_train_steps=2,
                                  log_every_steps=1, eval_batch_size=16)
  del config.pretrain
  config.datasets = {
      "gestures": datasets.entry("video_folder/gestures", eval_split="test",
                                 flip=False),
      "k400": datasets.entry("kinetics400/short32", flip=False)}
  config.heads = {"gestures": 2, "k400": 2}
  return config


@pytest.mark.slow
def test_videos_to_bucket_then_training_equals_the_local_copy(
    gs_env, tmp_path, caplog):
  """A video folder and a Kinetics dataset of real video files, prepared
  for gs://: preflight passes, describe and training read the bucket, and
  the losses and evaluation equal those of the same run on the local copy."""
  import main  # pylint: disable=import-outside-toplevel
  from cover_jax.training import train  # pylint: disable=import-outside-toplevel
  from cover_jax.training.event_writer import read_scalars  # pylint: disable=import-outside-toplevel
  caplog.set_level(logging.WARNING)
  clips, kinetics, staging = (tmp_path / "clips", tmp_path / "k400",
                              tmp_path / "staging")
  for split, per_class in (("train", 2), ("test", 1)):
    for label in ("wave", "clap"):
      for i in range(per_class):
        media_files.write_video(clips / f"{split}/{label}/{i}.mp4", 3 + i)
  write_kinetics(kinetics)
  common = [f"--data_dir={GS}", f"--staging_dir={staging}",
            "--short_side=32", "--num_workers=0"]
  assert prepare.main(["folder", f"--videos={clips}", "--name=gestures"]
                      + common) == 0
  assert prepare.main(["kinetics400", f"--manual_dir={kinetics}"]
                      + common) == 0
  assert bucket_objects(gs_env, "tfds/kinetics400/short32/1.0.0/frames/")

  remote, local = two_video_config(GS), two_video_config(str(staging))
  assert preflight.missing(remote, str(tmp_path / "gs_run"), "train") == []
  described = main.describe_data(remote)
  assert described == main.describe_data(local)
  assert described["datasets"]["k400"]["train_examples"] == 4
  results = {}
  for name, config in (("gs_run", remote), ("local_run", local)):
    results[name] = train.train_and_evaluate(config, str(tmp_path / name))
    results[name]["loss"] = read_scalars(str(tmp_path / name), "train/loss")
  assert sorted(results["gs_run"]["loss"]) == [1, 2]
  assert results["gs_run"] == results["local_run"]
  assert results["gs_run"]["k400"]["examples"] == 2
  assert gcsfs_warnings(caplog) == []
