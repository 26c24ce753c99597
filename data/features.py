"""The storage contract every cover-jax dataset follows.

One input pipeline reads all datasets (the mini digits, Kinetics, SSv2, MiT,
folders), so every builder stores the same features, the same metadata and the
same file format:

- videos: `{"video": JPEG frames, "label": ClassLabel, "id": text}`;
- images: `{"image": JPEG image, "label": ClassLabel, "id": text}`;
- metadata: the stored short side in pixels, the frame rate videos were
  resampled to (None: the source rate), and whether a horizontal flip changes
  the label (SSv2, the motion digits: training must not flip them);
- ArrayRecord files, so that the pipeline reads records by index: shuffling is
  a permutation of indices and the data position is a counter.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow_datasets as tfds

FILE_FORMAT = "array_record"
VIDEO = "video"
IMAGE = "image"


def sorted_label_names(names: Sequence[str]) -> list[str]:
  """The label map: unique names in sorted order, never in discovery order."""
  names = list(names)
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"Label names appear more than once: {duplicates}.")
  return sorted(names)


def video_features(label_names: Sequence[str]) -> tfds.features.FeaturesDict:
  """Features of a video dataset: JPEG frames of any size and count."""
  return tfds.features.FeaturesDict({
      VIDEO: tfds.features.Video(shape=(None, None, None, 3),
                                 encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(names=list(label_names)),
      "id": tfds.features.Text(),
  })


def image_features(label_names: Sequence[str]) -> tfds.features.FeaturesDict:
  """Features of an image dataset: one JPEG image of any size."""
  return tfds.features.FeaturesDict({
      IMAGE: tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(names=list(label_names)),
      "id": tfds.features.Text(),
  })


def media_features(media: str, label_names: Sequence[str]
                   ) -> tfds.features.FeaturesDict:
  """`video_features` or `image_features`, by `media` (VIDEO or IMAGE)."""
  if media not in (VIDEO, IMAGE):
    raise ValueError(f"media must be {VIDEO!r} or {IMAGE!r}, not {media!r}.")
  return (video_features if media == VIDEO else image_features)(label_names)


def metadata(*, short_side: int, fps: float | None = None,
             flip_changes_label: bool = False) -> tfds.core.MetadataDict:
  """Dataset metadata the input pipeline checks its config against."""
  return tfds.core.MetadataDict(short_side=int(short_side),
                                fps=None if fps is None else float(fps),
                                flip_changes_label=bool(flip_changes_label))
