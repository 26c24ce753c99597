"""Kinetics-400, -600 and -700 from the official annotation files.

The annotations (`train.csv`, `validate.csv`, and `test.csv` where it has
labels) have the header `label,youtube_id,time_start,time_end,split` (some
releases add columns, e.g. `is_cc`). Clips are named
`<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>` and found anywhere under
the manual dir. Many YouTube videos are gone: listed clips without a file are
counted as missing in the prepare report.
"""

from __future__ import annotations

import csv
import functools

from data import video_builder

_INSTRUCTIONS = """\
Kinetics: put the official files in manual_dir:
  manual_dir/train.csv, manual_dir/validate.csv (val.csv is accepted too;
    optional: test.csv, used where it has labels), or the same names under
    manual_dir/annotations/
  manual_dir/**/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4: the clips,
    in any folders (flat, per split or per class); .webm, .mkv and other
    video extensions work too.
The annotations are at https://github.com/google-deepmind/kinetics-dataset."""


class _Kinetics(video_builder.SourceFileBuilder, skip_registration=True):
  """Kinetics human action videos (10 s YouTube clips)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  HOMEPAGE = "https://github.com/google-deepmind/kinetics-dataset"
  MANUAL_FILES = {
      "train": ("train.csv", "annotations/train.csv"),
      "validation": ("validate.csv", "val.csv", "annotations/validate.csv",
                     "annotations/val.csv"),
  }
  LABELS_FROM = "train"
  _TEST_FILES = ("test.csv", "annotations/test.csv")

  def _label_names(self):
    return {label for label, _, _ in self._rows["train"]}

  @functools.cached_property
  def _annotation_files(self) -> dict[str, str]:
    """Split -> its annotation file; test only where it has labels."""
    files = dict(self._manual_files)
    test = self._locate(self._TEST_FILES)
    if test and _has_labels(test):
      files["test"] = test
    return files

  @functools.cached_property
  def _rows(self) -> dict[str, list[tuple[str, str, int]]]:
    """Split -> (label, clip name, line number) of its annotation rows."""
    return {split: list(_read_annotations(path))
            for split, path in self._annotation_files.items()}

  def _split_sources(self):
    clips = video_builder.files_by_stem(self._manual_dir,
                                        video_builder.VIDEO_EXTENSIONS)
    sources = {}
    for split, rows in self._rows.items():
      for label, _, line in rows:
        self.check_label(label, f"{self._annotation_files[split]}, line {line}")
      sources[split] = [video_builder.Source(clip, label, clips.get(clip))
                        for label, clip, _ in rows]
    return sources


def _read_annotations(path: str):
  """(label, clip name, line number) of each row of a Kinetics CSV."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    required = {"label", "youtube_id", "time_start", "time_end"}
    if not required <= set(reader.fieldnames or ()):
      raise ValueError(
          f"{path}: the header must have the columns {sorted(required)} "
          f"(found {reader.fieldnames}). Is this a Kinetics annotation file?")
    for row in reader:
      try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
      except ValueError as e:
        raise ValueError(f"{path}, line {reader.line_num}: time_start and "
                         f"time_end must be numbers ({e}).") from e
      clip = f"{row['youtube_id']}_{start:06d}_{end:06d}"
      yield row["label"], clip, reader.line_num


def _has_labels(path: str) -> bool:
  """Whether a CSV has a filled-in label column (not every test.csv does)."""
  with open(path, newline="") as f:
    row = next(csv.DictReader(f), None)
  return bool(row and row.get("label"))


class Kinetics400(_Kinetics):
  """Kinetics-400: 400 human action classes, 10 s YouTube clips."""


class Kinetics600(_Kinetics):
  """Kinetics-600: 600 human action classes, 10 s YouTube clips."""


class Kinetics700(_Kinetics):
  """Kinetics-700: 700 human action classes, 10 s YouTube clips."""
