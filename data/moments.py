"""Moments in Time (v1) from the official release.

`moments_categories.txt` has lines `category,index`; `trainingSet.csv` and
`validationSet.csv` have rows `relative/path.mp4,label,...` (no header),
with paths relative to the `training/` and `validation/` folders.
"""

from __future__ import annotations

import csv
import os

from data import video_builder

_INSTRUCTIONS = """\
Moments in Time: put the extracted Moments_in_Time_Raw folder's content in
manual_dir:
  manual_dir/moments_categories.txt, trainingSet.csv, validationSet.csv
  manual_dir/training/<category>/<video>.mp4 and
  manual_dir/validation/<category>/<video>.mp4
Request the download at http://moments.csail.mit.edu."""

class MomentsInTime(video_builder.SourceFileBuilder):
  """Moments in Time: 339 classes of events, 3 s videos."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  HOMEPAGE = "http://moments.csail.mit.edu"
  MANUAL_FILES = {
      "categories": ("moments_categories.txt",),
      "train": ("trainingSet.csv",),
      "validation": ("validationSet.csv",),
      "train_videos": ("training",),
      "validation_videos": ("validation",),
  }
  LABELS_FROM = "categories"

  def _label_names(self):
    return [row[0] for row, _ in _rows(self._manual_files["categories"])]

  def _split_sources(self):
    sources = {}
    for split in ("train", "validation"):
      path = self._manual_files[split]
      videos = self._manual_files[split + "_videos"]
      sources[split] = []
      for row, line in _rows(path):
        if len(row) < 2:
          raise ValueError(f"{path}, line {line}: expected "
                           f"'relative/path.mp4,label,...', got {row}.")
        relative, label = row[0], row[1]
        self.check_label(label, f"{path}, line {line}")
        video = os.path.join(videos, relative)
        sources[split].append(video_builder.Source(
            relative, label, video if os.path.isfile(video) else None))
    return sources


def _rows(path: str):
  """(fields, line number) of each non-empty line of a headerless CSV."""
  with open(path, newline="") as f:
    reader = csv.reader(f)
    for row in reader:
      if row:
        yield row, reader.line_num
