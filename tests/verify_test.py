"""python -m data.verify: every record and frame read and strictly decoded."""

import numpy as np
import tensorflow as tf

from data import frame_store
from data import verify
from tests import damaged_data

VIDEO, IMAGE = "synthetic_clips/video", "synthetic_clips/image"


def test_clean_datasets_verify(synthetic_dir, capsys):
  assert verify.main([VIDEO, f"--data_dir={synthetic_dir}"]) == 0
  assert verify.main([IMAGE, f"--data_dir={synthetic_dir}",
                      "--split=test"]) == 0
  out = capsys.readouterr().out
  assert "broken:" not in out
  assert f"{VIDEO} train: 12 records, 0 broken" in out
  assert f"{VIDEO} test: 7 records, 0 broken" in out
  assert out.strip().endswith(f"{IMAGE} test: 5 records, 0 broken")
  assert verify.main([VIDEO, f"--data_dir={synthetic_dir}",
                      "--split=nope"]) == 2
  assert "has no split 'nope'" in capsys.readouterr().err


def test_broken_frames_are_listed_with_the_repair(synthetic_dir, tmp_path,
                                                  capfd):
  data_dir = damaged_data.copy_dataset(synthetic_dir, "video", str(tmp_path))
  warned = damaged_data.first_record_of_length(data_dir, "video", 5)
  unreadable = damaged_data.first_record_of_length(data_dir, "video", 19)
  jpeg = frame_store.FrameStore(damaged_data.version_dir(data_dir, "video"),
                                "train").frames(warned)[3]
  damaged = damaged_data.warned_jpeg(jpeg)
  # What TensorFlow makes of it: wrong pixels, and a warning on stderr only.
  capfd.readouterr()
  pixels = tf.io.decode_jpeg(damaged, channels=3).numpy()
  assert not np.array_equal(pixels, tf.io.decode_jpeg(jpeg, channels=3))
  assert "Corrupt JPEG data" in capfd.readouterr().err
  damaged_data.replace_frame(data_dir, "video", warned, 3, damaged)
  damaged_data.overwrite_stored_frame(data_dir, "video", unreadable, 11)

  assert verify.main([VIDEO, f"--data_dir={data_dir}", "--split=train",
                      "--num_workers=2"]) == 1
  out = capfd.readouterr().out
  key = lambda record: damaged_data.record_key(data_dir, "video", record)
  broken = sorted(line for line in out.splitlines()
                  if line.startswith("broken:"))
  want = sorted([
      f"broken: {VIDEO} train record {warned} {key(warned)!r} frame 3: "
      f"JPEG does not decode strictly: Corrupt JPEG data: premature end of "
      f"data segment",
      f"broken: {VIDEO} train record {unreadable} {key(unreadable)!r} frame "
      f"11: frame cannot be read: Corrupted Riegeli/records file: chunk data "
      f"hash mismatch"])
  assert len(broken) == 2
  for line, start in zip(broken, want):
    assert line.startswith(start), line
  assert f"{VIDEO} train: 12 records, 2 broken" in out
  assert (f"delete it (rm -r {damaged_data.version_dir(data_dir, 'video')})"
          f" and prepare it again (tfds build {VIDEO}") in out


def test_a_broken_image_record_is_listed(synthetic_dir, tmp_path, capsys):
  data_dir = damaged_data.copy_dataset(synthetic_dir, "image", str(tmp_path))
  damaged_data.overwrite_record_file(data_dir, "image", "train")
  assert verify.main([IMAGE, f"--data_dir={data_dir}"]) == 1
  out = capsys.readouterr().out
  broken = [line for line in out.splitlines() if line.startswith("broken:")]
  assert len(broken) == 1, out  # one record's chunk
  assert broken[0].startswith(f"broken: {IMAGE} train record ")
  assert ("record cannot be read: Corrupted Riegeli/records file: chunk data "
          "hash mismatch") in broken[0]
  assert f"{IMAGE} train: 60 records, 1 broken" in out
  assert f"{IMAGE} test: 5 records, 0 broken" in out
