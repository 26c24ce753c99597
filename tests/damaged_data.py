"""Copies of the synthetic datasets (tests/synthetic_data.py) with records
broken the ways disks and encoders break them."""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow_datasets as tfds

from data import frame_store

BUILDER = "synthetic_clips"
# Not a JPEG stream: nothing decodes it.
UNDECODABLE = b"\xff\xd8\xff\xe0" + bytes(60)


def copy_dataset(data_dir: str, config: str, destination: str) -> str:
  """A data dir holding a copy of synthetic_clips/`config` of data_dir."""
  shutil.copytree(os.path.join(data_dir, BUILDER, config),
                  os.path.join(destination, BUILDER, config))
  return destination


def version_dir(data_dir: str, config: str) -> str:
  return os.path.join(data_dir, BUILDER, config, "1.0.0")


def warned_jpeg(jpeg: bytes) -> bytes:
  """`jpeg` cut in the middle of its entropy-coded data, its end marker
  kept: libjpeg decodes it to wrong pixels with only "Corrupt JPEG data:
  premature end of data segment" on stderr, as a damaged source file
  encoded before storing."""
  sos = jpeg.index(b"\xff\xda")
  start = sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")
  return jpeg[:start + (len(jpeg) - 2 - start) // 2] + b"\xff\xd9"


def first_record_of_length(data_dir: str, config: str, length: int,
                           split: str = "train") -> int:
  store = frame_store.FrameStore(version_dir(data_dir, config), split)
  return int(np.flatnonzero(store.count == length)[0])


def overwrite_stored_frame(data_dir: str, config: str, record: int,
                           frame: int, split: str = "train",
                           size: int = 30) -> None:
  """Overwrites `size` bytes inside a stored frame, as a damaged disk does:
  the frame's chunk no longer matches its hash."""
  folder = version_dir(data_dir, config)
  with np.load(frame_store.index_path(folder, split)) as index:
    i = int(index["first"][record]) + frame
    file = int(np.searchsorted(index["file_first"], i, side="right") - 1)
    path = os.path.join(folder, frame_store.FOLDER, str(index["files"][file]))
    offset, length = int(index["offset"][i]), int(index["size"][i])
  _overwrite(path, offset + length // 2 - size // 2, size)


def overwrite_record_file(data_dir: str, config: str, split: str = "train",
                          size: int = 30) -> None:
  """Overwrites `size` bytes inside one record of the split's TFDS records
  (a sixth into the file, where the tiny datasets hold their records)."""
  folder = version_dir(data_dir, config)
  path, = [os.path.join(folder, f) for f in os.listdir(folder)
           if f"-{split}.array_record" in f]
  _overwrite(path, os.path.getsize(path) // 6, size)


def _overwrite(path: str, position: int, size: int) -> None:
  with open(path, "r+b") as f:
    f.seek(position)
    old = f.read(size)
    f.seek(position)
    f.write(bytes(b ^ 0x5A for b in old))


def replace_frame(data_dir: str, config: str, record: int, frame: int,
                  jpeg: bytes, split: str = "train") -> None:
  """Writes the split's frame store again with one frame's JPEG replaced,
  as a broken encoder would have stored it (its chunk hash matches)."""
  folder = version_dir(data_dir, config)
  store = frame_store.FrameStore(folder, split)
  videos = [store.frames(r) for r in range(len(store))]
  videos[record][frame] = jpeg
  frames_dir = os.path.join(folder, frame_store.FOLDER)
  for name in os.listdir(frames_dir):  # this split's files only
    if name.startswith(f"{split}-") or name.startswith(f"{split}."):
      os.remove(os.path.join(frames_dir, name))
  builder = tfds.builder_from_directory(folder)
  keys_and_labels = list(frame_store.record_keys_and_labels(
      builder.info.splits[split].file_instructions))
  writer = frame_store.Writer(folder, split)
  for (key, _), frames in zip(keys_and_labels, videos):
    writer.add(key, frames)
  writer.close()
  frame_store.write_index(folder, split, writer.files, writer.spans,
                          keys_and_labels, writer.locations())


def record_key(data_dir: str, config: str, record: int,
               split: str = "train") -> str:
  builder = tfds.builder_from_directory(version_dir(data_dir, config))
  keys = list(frame_store.record_keys_and_labels(
      builder.info.splits[split].file_instructions))
  return keys[record][0]
