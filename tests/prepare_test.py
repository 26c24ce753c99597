"""The prepare command: its errors, and a folder dataset end to end."""

import os
import subprocess
import sys

import pytest

from data import prepare
from data import registry
from tests import media_files


def run(argv, capsys):
  """(exit code, stdout, stderr) of `python -m data.prepare ARGV`."""
  code = prepare.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def test_unknown_name_lists_the_known_ones(tmp_path, capsys):
  code, _, err = run(["kinetics999", f"--data_dir={tmp_path}"], capsys)
  assert code == 1
  assert "Unknown dataset 'kinetics999'" in err
  for name in ("kinetics400", "ssv2", "moments_in_time", "digits_motion",
               "folder"):
    assert name in err


def test_missing_manual_files_are_named(tmp_path, capsys):
  code, out, err = run(["ssv2", f"--manual_dir={tmp_path}",
                        f"--data_dir={tmp_path / 'data'}"], capsys)
  assert code == 1 and not out
  for name in ("labels.json", "train.json", "validation.json"):
    assert f"something-something-v2-{name} (looked for: {tmp_path}/" in err
  assert not os.path.exists(tmp_path / "data" / "ssv2")


@pytest.mark.parametrize("argv, message", [
    (["kinetics400"], "needs --manual_dir"),
    (["moments_in_time", "--manual_dir=x", "--videos=y"],
     "--videos does not apply"),
    (["folder", "--name=x"], "exactly one of --videos=ROOT and --images=ROOT"),
    (["folder", "--videos=x"], "needs --name=NAME"),
    (["folder", "--images=x", "--name=x", "--fps=2"], "videos only"),
    (["digits_image", "--manual_dir=x"], "--manual_dir does not apply"),
])
def test_flags_that_do_not_fit_are_errors(tmp_path, capsys, argv, message):
  code, _, err = run(argv + [f"--data_dir={tmp_path}"], capsys)
  assert code == 1 and message in err


def test_folder_end_to_end(tmp_path, capsys):
  root = tmp_path / "clips"
  media_files.write_video(root / "train/wave/a.mp4", 3)
  media_files.write_video(root / "train/clap/b.webm", 4)
  media_files.write_bytes(root / "train/clap/empty.mp4", b"")
  media_files.write_video(root / "validation/wave/c.avi", 2)
  argv = ["folder", f"--videos={root}", "--name=gestures",
          f"--data_dir={tmp_path / 'data'}", "--short_side=16",
          "--num_workers=0"]
  code, out, _ = run(argv, capsys)
  assert code == 0
  assert "video_folder/gestures/1.0.0 is ready" in out
  assert "train: 2 written (0 truncated) of 3 listed; 1 skipped" in out
  assert "prepare_report.json" in out
  assert "'video_folder/gestures'" in out

  builder = registry.load_builder("video_folder/gestures", tmp_path / "data")
  assert builder.info.splits["train"].num_examples == 2
  assert builder.info.metadata["short_side"] == 16

  code, out, _ = run(argv, capsys)
  assert code == 0 and "was already prepared" in out


@pytest.mark.slow
def test_mini_dataset_needs_no_manual_files(tmp_path, capsys):
  code, out, _ = run(["digits_image", f"--data_dir={tmp_path}"], capsys)
  assert code == 0
  from data import digits  # pylint: disable=import-outside-toplevel
  version = digits.DigitsImage.VERSION
  assert f"digits_image/train100/{version} is ready" in out and "  train: " in out


def test_command_line_with_spawned_workers(tmp_path):
  """`python -m data.prepare` itself, decoding in a worker process."""
  root = tmp_path / "pictures"
  media_files.write_image(root / "train/cat/a.png")
  media_files.write_image(root / "train/dog/b.png")
  result = subprocess.run(
      [sys.executable, "-m", "data.prepare", "folder", f"--images={root}",
       "--name=pets", f"--data_dir={tmp_path / 'data'}", "--num_workers=1"],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr
  assert "image_folder/pets/1.0.0 is ready" in result.stdout
  assert "train: 2 written" in result.stdout
