"""The source-file builders, end to end on tiny real videos and images."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data import decode
from data import decode_stage
from data import folder
from data import frame_store
from data import kinetics
from data import moments
from data import prepare_report
from data import ssv2
from data import video_builder
from tests import media_files

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def write_text(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def read_back(builder, split):
  """The examples of a prepared split, by id, with their decoded frames
  (from the frame store, for videos): what training reads."""
  prepared = tfds.builder_from_directory(os.fspath(builder.data_dir))
  store = (frame_store.FrameStore(prepared.data_dir, split)
           if "video" in prepared.info.features else None)
  examples = {}
  for i, example in enumerate(prepared.as_data_source(split)):
    if store is not None:
      assert len(example["video"]) == 0  # the frames are in the store only
      assert store.label[i] == example["label"]
      example["video"] = np.stack([tf.io.decode_jpeg(jpeg).numpy()
                                   for jpeg in store.frames(i)])
    examples[example["id"].decode()] = example
  return prepared, examples


def report_of(builder):
  with open(os.path.join(builder.data_dir, prepare_report.REPORT_FILE)) as f:
    return json.load(f)


@pytest.fixture
def kinetics_dir(tmp_path):
  """Train clips per class, validation clips flat; one clip listed but
  absent, one corrupt; a test.csv without labels (not a split)."""
  root = tmp_path / "k400"
  write_text(root / "train.csv", KINETICS_HEADER +
             "zumba,aaa,0,10,train,0\n"
             "abseiling,b_b,5,15,train,0\n"
             "zumba,ccc,0,10,train,0\n"
             "abseiling,ddd,0,10,train,0\n")
  write_text(root / "validate.csv", KINETICS_HEADER +
             "zumba,eee,1,11,validate,0\nabseiling,fff,2,12,validate,0\n")
  write_text(root / "test.csv", "youtube_id,time_start,time_end,split\n"
                                "ggg,0,10,test\n")
  media_files.write_video(root / "train/zumba/aaa_000000_000010.mp4", 5)
  media_files.write_video(root / "train/abseiling/b_b_000005_000015.webm", 7)
  media_files.write_bytes(root / "train/zumba/ccc_000000_000010.mp4",
                          b"\x00\x01garbage" * 50)
  media_files.write_video(root / "val/eee_000001_000011.mp4", 4,
                          width=32, height=48)
  media_files.write_video(root / "val/fff_000002_000012.avi", 3)
  return root


def test_kinetics_counts_skips_and_stores_frames(kinetics_dir, tmp_path):
  builder = kinetics.Kinetics400(data_dir=tmp_path / "data",
                                 manual_dir=kinetics_dir, num_workers=2)
  builder.download_and_prepare()

  report = report_of(builder)
  assert report["dataset"] == "kinetics400/short320/1.0.0"
  assert report["splits"]["train"] == dict(
      listed=4, written=2, truncated=0, skipped=1, missing=1, duplicate=0,
      decoded=3, from_cache=0)
  assert report["splits"]["validation"]["written"] == 2
  assert set(report["splits"]) == {"train", "validation"}  # test: no labels
  problems = {p["id"]: p for p in report["problems"]}
  assert problems["ddd_000000_000010"]["kind"] == "missing"
  assert problems["ccc_000000_000010"]["kind"] == "skipped"
  assert "unreadable video file" in problems["ccc_000000_000010"]["reason"]
  assert not os.path.exists(tmp_path / "data/kinetics400/short320" /
                            video_builder.CACHE_DIR)

  prepared, train = read_back(builder, "train")
  labels = prepared.info.features["label"]
  assert labels.names == ["abseiling", "zumba"]
  assert dict(prepared.info.metadata) == dict(
      short_side=320, fps=None, flip_changes_label=False)
  assert train["aaa_000000_000010"]["video"].shape == (5, 320, 480, 3)
  assert train["aaa_000000_000010"]["label"] == labels.str2int("zumba")
  assert train["b_b_000005_000015"]["video"].shape[0] == 7
  _, validation = read_back(builder, "validation")
  assert validation["eee_000001_000011"]["video"].shape == (4, 480, 320, 3)


def test_kinetics_config_sets_short_side_and_fps(kinetics_dir, tmp_path):
  config = video_builder.decode_config(short_side=16, fps=5)
  assert config.name == "short16_fps5"
  builder = kinetics.Kinetics400(data_dir=tmp_path / "data", config=config,
                                 manual_dir=kinetics_dir, num_workers=0)
  builder.download_and_prepare()
  _, train = read_back(builder, "train")
  # 5 frames at 10 fps: half a second, 3 frames at 5 fps (t = 0, .2, .4).
  assert train["aaa_000000_000010"]["video"].shape == (3, 16, 24, 3)
  assert os.path.isdir(tmp_path / "data/kinetics400/short16_fps5/1.0.0")
  assert video_builder.config_name(512, 12.5) == "short512_fps12p5"


def test_kinetics_label_outside_the_map_names_file_and_line(
    kinetics_dir, tmp_path):
  write_text(kinetics_dir / "validate.csv", KINETICS_HEADER +
             "zumba,eee,1,11,validate,0\nsalsa,fff,2,12,validate,0\n")
  builder = kinetics.Kinetics400(data_dir=tmp_path / "data",
                                 manual_dir=kinetics_dir, num_workers=0)
  with pytest.raises(ValueError, match=r"validate.csv, line 3: label 'salsa'"):
    builder.download_and_prepare()


def test_kinetics_missing_annotations_are_named(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    kinetics.Kinetics700(data_dir=tmp_path / "data", manual_dir=tmp_path)
  message = str(error.value)
  for expected in ("train.csv", "validate.csv",
                   str(tmp_path / "annotations" / "val.csv")):
    assert expected in message


def test_kinetics_annotations_under_annotations_folder(kinetics_dir, tmp_path):
  os.makedirs(kinetics_dir / "annotations")
  for name in ("train.csv", "validate.csv"):
    os.rename(kinetics_dir / name, kinetics_dir / "annotations" / name)
  builder = kinetics.Kinetics600(data_dir=tmp_path / "data",
                                 manual_dir=kinetics_dir, num_workers=0)
  assert builder.label_names == ["abseiling", "zumba"]


SSV2_LABELS = {"Pushing something from left to right": "0",
               "Pushing something from right to left": "1",
               "Holding something next to something": "2"}


def ssv2_entry(video_id, template):
  return {"id": video_id, "template": template,
          "label": template.replace("[something]", "a cup"),
          "placeholders": ["a cup"] * template.count("[")}


@pytest.fixture
def ssv2_dir(tmp_path):
  root = tmp_path / "ssv2"
  write_text(root / "labels/something-something-v2-labels.json",
             json.dumps(SSV2_LABELS))
  write_text(root / "labels/something-something-v2-train.json", json.dumps([
      ssv2_entry("1", "Pushing [something] from left to right"),
      ssv2_entry("2", "Holding [something] next to [something]")]))
  write_text(root / "labels/something-something-v2-validation.json",
             json.dumps([ssv2_entry("3", "Pushing [something] from right "
                                         "to left")]))
  for video_id in "123":
    media_files.write_video(
        root / f"20bn-something-something-v2/{video_id}.webm", 4)
  return root


def test_ssv2_classes_are_templates_without_brackets(ssv2_dir, tmp_path):
  builder = ssv2.Ssv2(data_dir=tmp_path / "data", manual_dir=ssv2_dir,
                      num_workers=0, config="short512")
  builder.download_and_prepare()
  prepared, train = read_back(builder, "train")
  labels = prepared.info.features["label"]
  assert labels.names == sorted(SSV2_LABELS)
  assert labels.int2str(train["2"]["label"]) == (
      "Holding something next to something")
  assert prepared.info.metadata["flip_changes_label"] is True
  assert prepared.info.metadata["short_side"] == 512
  assert train["1"]["video"].shape == (4, 512, 768, 3)


def test_ssv2_unknown_template_names_file_and_entry(ssv2_dir, tmp_path):
  write_text(ssv2_dir / "labels/something-something-v2-validation.json",
             json.dumps([ssv2_entry("3", "Dancing with [something]")]))
  builder = ssv2.Ssv2(data_dir=tmp_path / "data", manual_dir=ssv2_dir,
                      num_workers=0)
  with pytest.raises(ValueError, match=r"validation.json, entry 0 \(id 3\)"):
    builder.download_and_prepare()


@pytest.fixture
def moments_dir(tmp_path):
  root = tmp_path / "mit"
  write_text(root / "moments_categories.txt", "running,1\nclapping,0\n")
  write_text(root / "trainingSet.csv", "running/a.mp4,running,3,0\n"
                                       "clapping/b.mp4,clapping,3,0\n"
                                       "clapping/gone.mp4,clapping,3,0\n")
  write_text(root / "validationSet.csv", "running/c.mp4,running,3,0\n")
  media_files.write_video(root / "training/running/a.mp4", 3)
  media_files.write_video(root / "training/clapping/b.mp4", 4)
  media_files.write_video(root / "validation/running/c.mp4", 5)
  return root


def test_moments_in_time(moments_dir, tmp_path):
  builder = moments.MomentsInTime(data_dir=tmp_path / "data",
                                  manual_dir=moments_dir, num_workers=0)
  builder.download_and_prepare()
  assert report_of(builder)["splits"]["train"]["missing"] == 1
  prepared, train = read_back(builder, "train")
  assert prepared.info.features["label"].names == ["clapping", "running"]
  assert train["clapping/b.mp4"]["video"].shape[0] == 4
  assert train["clapping/b.mp4"]["label"] == 0


def test_moments_label_outside_the_map(moments_dir, tmp_path):
  write_text(moments_dir / "validationSet.csv", "running/c.mp4,running,3,0\n"
                                                "x/d.mp4,jumping,3,0\n")
  builder = moments.MomentsInTime(data_dir=tmp_path / "data",
                                  manual_dir=moments_dir, num_workers=0)
  with pytest.raises(ValueError,
                     match=r"validationSet.csv, line 2: label 'jumping'"):
    builder.download_and_prepare()


def test_video_folder_any_format_and_classes_of_all_splits(tmp_path):
  root = tmp_path / "clips"
  media_files.write_video(root / "train/wave/a.mp4", 3)
  media_files.write_video(root / "train/wave/more/b.webm", 4)
  media_files.write_video(root / "train/clap/c.avi", 5)
  media_files.write_video(root / "test/jump/d.mkv", 6)
  media_files.write_bytes(root / "train/clap/.DS_Store", b"x")
  config = folder.folder_config("mine", short_side=16,
                                flip_changes_label=True)
  builder = folder.VideoFolder(data_dir=tmp_path / "data", manual_dir=root,
                               config=config, num_workers=0)
  builder.download_and_prepare()
  assert os.path.isdir(tmp_path / "data/video_folder/mine/1.0.0")
  prepared, train = read_back(builder, "train")
  labels = prepared.info.features["label"]
  assert labels.names == ["clap", "jump", "wave"]
  assert sorted(train) == ["clap/c.avi", "wave/a.mp4", "wave/more/b.webm"]
  assert train["wave/more/b.webm"]["video"].shape == (4, 16, 24, 3)
  assert labels.int2str(train["clap/c.avi"]["label"]) == "clap"
  assert prepared.info.metadata["flip_changes_label"] is True
  _, test = read_back(builder, "test")
  assert list(test) == ["jump/d.mkv"]


def test_image_folder(tmp_path):
  root = tmp_path / "pictures"
  media_files.write_image(root / "train/cat/a.png", width=40, height=20)
  media_files.write_image(root / "train/dog/b.jpg")
  media_files.write_bytes(root / "train/dog/broken.jpg", b"")
  media_files.write_image(root / "validation/cat/c.bmp")
  builder = folder.ImageFolder(data_dir=tmp_path / "data", manual_dir=root,
                               config=folder.folder_config("pets", 10),
                               num_workers=0)
  builder.download_and_prepare()
  assert report_of(builder)["splits"]["train"]["skipped"] == 1
  prepared, train = read_back(builder, "train")
  assert prepared.info.features["label"].names == ["cat", "dog"]
  assert train["cat/a.png"]["image"].shape == (10, 20, 3)


@pytest.mark.parametrize("layout, message", [
    (["train/a.mp4"], "must hold class folders only"),
    (["my split/cls/a.mp4"], "a split name must be letters"),
])
def test_folder_layout_errors(tmp_path, layout, message):
  for relative in layout:
    media_files.write_bytes(tmp_path / "root" / relative, b"x")
  with pytest.raises(ValueError, match=message):
    folder.VideoFolder(data_dir=tmp_path / "data", manual_dir=tmp_path / "root",
                       config=folder.folder_config("x"))


def test_folder_needs_a_named_config(tmp_path):
  with pytest.raises(ValueError, match="folder_config"):
    folder.VideoFolder(data_dir=tmp_path, manual_dir=tmp_path)
  with pytest.raises(ValueError, match="not valid"):
    folder.folder_config("a/b")


def test_folder_reprepared_with_other_settings_is_refused(tmp_path):
  root = tmp_path / "clips"
  media_files.write_video(root / "train/wave/a.mp4", 2)
  for short_side in (16, 32):
    builder = folder.VideoFolder(
        data_dir=tmp_path / "data", manual_dir=root, num_workers=0,
        config=folder.folder_config("mine", short_side))
    if short_side == 16:
      builder.download_and_prepare()
  with pytest.raises(ValueError, match="prepare under another name"):
    builder.download_and_prepare()


def test_killed_prepare_resumes_from_the_decode_cache(
    kinetics_dir, tmp_path, monkeypatch):
  def build():
    builder = kinetics.Kinetics400(data_dir=tmp_path / "data",
                                   manual_dir=kinetics_dir, num_workers=0)
    builder.download_and_prepare()
    return builder

  def killed(*args):  # Writing starts: the process is killed.
    raise KeyboardInterrupt
    yield  # Never reached; makes this a generator, like the real one.

  with monkeypatch.context() as patch:
    patch.setattr(kinetics.Kinetics400, "_generate_examples", killed)
    with pytest.raises(KeyboardInterrupt):
      build()
  cache = tmp_path / "data/kinetics400/short320" / video_builder.CACHE_DIR
  cached = [f for _, _, files in os.walk(cache) for f in files]
  assert len(cached) == 5 and all(f.endswith(".npz") for f in cached)

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again")

  monkeypatch.setattr(decode, "decode_video", no_decoding)
  # What tfds leaves behind when killed by SIGKILL.
  stale = tmp_path / "data/kinetics400/short320/incomplete.ABC123_1.0.0"
  media_files.write_bytes(stale / "dataset_info.json", b"{}")
  report = report_of(build())
  assert not os.path.exists(stale)
  assert report["splits"]["train"]["decoded"] == 0
  assert report["splits"]["train"]["from_cache"] == 3
  assert report["splits"]["train"]["written"] == 2
  assert not os.path.exists(cache)


def test_prepare_killed_mid_decode_decodes_only_the_rest(
    kinetics_dir, tmp_path, monkeypatch):
  """Killed while decoding its third file: the restart decodes only the
  files not yet in the cache; every file is decoded once in all."""
  real = decode.decode_video
  first, second = [], []

  def killed_at_the_third(path, *args, **kwargs):
    if len(first) == 2:
      raise KeyboardInterrupt
    first.append(path)
    return real(path, *args, **kwargs)

  def build():
    builder = kinetics.Kinetics400(data_dir=tmp_path / "data",
                                   manual_dir=kinetics_dir, num_workers=0)
    builder.download_and_prepare()
    return builder

  with monkeypatch.context() as patch:
    patch.setattr(decode, "decode_video", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
      build()
  monkeypatch.setattr(decode, "decode_video", lambda path, *args, **kwargs: (
      second.append(path), real(path, *args, **kwargs))[1])
  report = report_of(build())
  assert len(first) == 2 and second and not set(first) & set(second)
  assert len(first + second) == 5  # the 5 present files (one is corrupt)
  counts = report["splits"].values()
  assert sum(c["from_cache"] for c in counts) == 2
  assert sum(c["decoded"] for c in counts) == len(second)
  assert report["splits"]["train"]["written"] == 2  # as uninterrupted


def test_decode_stage_cache_follows_the_file_and_settings(tmp_path):
  path = media_files.write_video(tmp_path / "v.mp4", 3)
  decoding = decode_stage.Decoding("video", short_side=16)
  run = lambda d: decode_stage.decode_all([path], tmp_path / "cache", d,
                                          num_workers=0)
  files, counts = run(decoding)
  assert counts == decode_stage.StageCounts(decoded=1, from_cache=0)
  assert len(decode_stage.read(files[0]).frames) == 3
  assert run(decoding)[1] == decode_stage.StageCounts(0, 1)
  # Other settings, or a replaced file: decoded again.
  assert run(decode_stage.Decoding("video", short_side=32))[1].decoded == 1
  media_files.write_video(tmp_path / "v.mp4", 5)
  files, counts = run(decoding)
  assert counts.decoded == 1 and len(decode_stage.read(files[0]).frames) == 5


def test_truncated_videos_are_written_and_reported(
    moments_dir, tmp_path, monkeypatch):
  real = decode.decode_video

  def cut_short(path, *args):
    video = real(path, *args)
    if path.endswith("b.mp4"):
      return decode.DecodedVideo(video.frames[:2], "decoding stopped after 2")
    return video

  monkeypatch.setattr(decode, "decode_video", cut_short)
  builder = moments.MomentsInTime(data_dir=tmp_path / "data",
                                  manual_dir=moments_dir, num_workers=0)
  builder.download_and_prepare()
  report = report_of(builder)
  assert report["splits"]["train"]["truncated"] == 1
  assert report["splits"]["train"]["written"] == 2
  _, train = read_back(builder, "train")
  assert train["clapping/b.mp4"]["video"].shape[0] == 2


def test_split_without_files_is_an_error_before_decoding(moments_dir,
                                                         tmp_path):
  os.remove(moments_dir / "validation/running/c.mp4")
  builder = moments.MomentsInTime(data_dir=tmp_path / "data",
                                  manual_dir=moments_dir, num_workers=0)
  with pytest.raises(FileNotFoundError,
                     match=r"No file of split\(s\) \['validation'\]"):
    builder.download_and_prepare()
  assert not os.path.exists(tmp_path / "data/moments_in_time/short320" /
                            video_builder.CACHE_DIR)


def test_split_with_no_usable_video_is_an_error(moments_dir, tmp_path):
  media_files.write_bytes(moments_dir / "validation/running/c.mp4", b"")
  builder = moments.MomentsInTime(data_dir=tmp_path / "data",
                                  manual_dir=moments_dir, num_workers=0)
  with pytest.raises(ValueError, match="No example of split 'validation'"):
    builder.download_and_prepare()


def test_listed_twice_is_reported_once_written(kinetics_dir, tmp_path):
  with open(kinetics_dir / "validate.csv", "a") as f:
    f.write("zumba,eee,1,11,validate,0\n")
  builder = kinetics.Kinetics400(data_dir=tmp_path / "data",
                                 manual_dir=kinetics_dir, num_workers=0)
  builder.download_and_prepare()
  counts = report_of(builder)["splits"]["validation"]
  assert (counts["listed"], counts["written"], counts["duplicate"]) == (3, 2, 1)
