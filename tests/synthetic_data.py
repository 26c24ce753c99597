"""Tiny TFDS datasets whose pixels say which frame and which side they are.

Grayscale frames: the brightness of frame t is 40 + 8 t, and the left
`DARK_COLUMNS` columns are black, so a test reads back which frames were
sampled, in which order, and whether a clip was mirrored. Each label has its
own clip length, so a test knows a clip's length from its label.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from cover_jax import input as inp
from data import features
from data import frame_store

DARK_COLUMNS = 12
LENGTHS = (5, 8, 19)  # frames of a clip with label 0, 1, 2


def brightness(frame_index):
  return 40 + 8 * np.asarray(frame_index)


def frame_index(value):
  """The frame index a brightness (0..255) encodes."""
  return np.round((np.asarray(value, np.float64) - 40) / 8).astype(int)


# The input pipeline's preprocessing of the tests that read clips back:
# 8 frames at 16x16, whole frames, 3 evaluation views.
PREP = inp.Preprocessing(num_frames=8, crop_size=16, scale_range=(1.0, 1.0),
                         eval_views=3)

def sampled_indices(clip) -> np.ndarray:
  """Frame index of each uint8 frame of a clip [T, H, W, 3], read off its
  bright side."""
  clip = np.asarray(clip)
  assert clip.dtype == np.uint8
  return frame_index(clip[:, :, -4:].astype(np.float64).mean(axis=(1, 2, 3)))


def source(data_dir, config: str, split: str = "train", name=None):
  """The input pipeline's source for synthetic_clips/<config>."""
  return inp.open_source(name or config, split,
                         dataset=f"synthetic_clips/{config}",
                         data_dir=data_dir)


def jpeg(frame: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format="JPEG", quality=98)
  return buffer.getvalue()


def frame(t: int, height: int, width: int) -> np.ndarray:
  image = np.full((height, width, 3), brightness(t), np.uint8)
  image[:, :DARK_COLUMNS] = 0
  return image


@dataclasses.dataclass
class ClipsConfig(tfds.core.BuilderConfig):
  kind: str = "video"
  sizes: tuple = (("train", 12), ("test", 7))
  height: int = 24
  width: int = 32
  short_side: int = 24
  flip_changes_label: bool = False


class SyntheticClips(frame_store.WritesFrameStore,
                     tfds.core.GeneratorBasedBuilder):
  """Clips (or images) of known content; see the module docstring."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      ClipsConfig(name="video"),
      ClipsConfig(name="video_large", sizes=(("train", 90), ("test", 7))),
      ClipsConfig(name="portrait", height=32, width=24),
      ClipsConfig(name="image", kind="image", sizes=(("train", 60),
                                                     ("test", 5))),
      ClipsConfig(name="mirrored_classes", flip_changes_label=True),
      ClipsConfig(name="small_frames", height=16, width=20, short_side=16),
  ]

  def _info(self):
    names = [f"class{i}" for i in range(len(LENGTHS))]
    return tfds.core.DatasetInfo(
        builder=self,
        features=features.media_features(self.builder_config.kind, names),
        metadata=features.metadata(
            short_side=self.builder_config.short_side,
            flip_changes_label=self.builder_config.flip_changes_label))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.sizes}

  def _generate_examples(self, split, num_examples):
    c = self.builder_config
    for i in range(num_examples):
      label = i % len(LENGTHS)
      frames = [jpeg(frame(t, c.height, c.width))
                for t in range(LENGTHS[label])]
      key = f"clip{i}"
      content = (self._stored(split, key, frames) if c.kind == "video"
                 else frames[0])
      yield i, {c.kind: content, "label": label, "id": key}


def prepare(data_dir: str) -> None:
  """Builds every config of SyntheticClips into data_dir."""
  for config in SyntheticClips.BUILDER_CONFIGS:
    SyntheticClips(config=config.name, data_dir=data_dir,
                   file_format=features.FILE_FORMAT).download_and_prepare()
