"""One split of one prepared dataset, read by record index.

Records are read from the dataset's ArrayRecord files by index, so that a
shuffle is a permutation of indices (`index_shuffle`) and the data position is
a counter: nothing but integers to checkpoint, whatever the record size.

A record or frame that cannot be read or decoded is named by `CorruptData`
(dataset, split, record key, frame, and the commands that list and repair
the broken records).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from data import features as data_features
from data import frame_store
from data import registry


class InputError(Exception):
  """The input pipeline stopped; the message says why and what fixes it (one
  line, for the command line to print as it is)."""


class CorruptData(InputError):
  """A record or frame of a prepared dataset cannot be read or decoded.

  Attributes:
    dataset, split: the prepared dataset and split it belongs to.
    record: its record index in the split; key: its id (None: unreadable).
    frame: the frame of a video (None: the record, or an image).
  """

  def __init__(self, message: str, *, dataset: str, split: str, record: int,
               key: str | None, frame: int | None):
    super().__init__(message)
    self.dataset, self.split, self.record = dataset, split, record
    self.key, self.frame = key, frame


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset split: its records, what they hold and how they may be used.

  Attributes:
    name: the name configs and heads use (e.g. "kinetics400").
    dataset: the prepared dataset it reads (e.g. "kinetics400/short512").
    split: the split read.
    kind: "video" or "image".
    num_examples: records in the split.
    label_names: the sorted label map.
    short_side: stored frames' short side in pixels (None: not recorded).
    flip_changes_label: a horizontal flip changes the class (SSv2).
    builder: the prepared tfds builder.
    frames: a video split's frame store.
    records: an image split's records (ArrayRecordDataSource).
    data_dir: the data dir it was found in (for the repair commands).
  """
  name: str
  dataset: str
  split: str
  kind: str
  num_examples: int
  label_names: tuple[str, ...]
  short_side: int | None
  flip_changes_label: bool
  builder: Any = dataclasses.field(repr=False, compare=False)
  frames: frame_store.FrameStore | None = dataclasses.field(
      default=None, repr=False, compare=False)
  records: Any = dataclasses.field(default=None, repr=False, compare=False)
  data_dir: str | None = None

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  def frame_counts(self) -> np.ndarray:
    """int32 [num_examples]: frames of each record (1 for an image)."""
    if self.frames is None:
      return np.ones([self.num_examples], np.int32)
    return self.frames.count

  def read(self, records: Sequence[int], frame_indices: np.ndarray
           ) -> tuple[list[bytes], np.ndarray]:
    """(JPEGs of `frame_indices[i]` of record `records[i]`, flattened row by
    row; int32 labels) for a batch of records."""
    if self.frames is not None:
      records = np.asarray(records, np.int64)
      return (self.frames.read(records, frame_indices),
              self.frames.label[records])
    serialized = self.records.__getitems__(
        np.asarray(records, np.int64).tolist())
    images, labels = [], []
    for record in serialized:
      feature = tf.train.Example.FromString(record).features.feature
      images.append(feature[self.kind].bytes_list.value[0])
      labels.append(feature["label"].int64_list.value[0])
    repeat = np.asarray(frame_indices).reshape(len(images), -1).shape[1]
    return ([jpeg for jpeg in images for _ in range(repeat)],
            np.asarray(labels, np.int32))

  def record_key(self, record: int) -> str | None:
    """The id of a record (None where its TFDS record cannot be read)."""
    try:
      if self.records is not None:
        serialized = self.records[int(record)]
      else:
        from array_record.python import array_record_data_source  # pylint: disable=import-outside-toplevel
        serialized = array_record_data_source.ArrayRecordDataSource(
            self.builder.info.splits[self.split].file_instructions)[
                int(record)]
      feature = tf.train.Example.FromString(serialized).features.feature
      for name in ("id", "file_name"):  # ours; TFDS image datasets'
        if name in feature:
          return feature[name].bytes_list.value[0].decode()
    except Exception:  # pylint: disable=broad-except
      pass
    return None

  def broken(self, record: int, frame: int | None, reason: str
             ) -> CorruptData:
    """The error naming a record (or a frame of it) that cannot be read or
    decoded, with the commands that list every broken record and repair
    the dataset."""
    from data import verify  # pylint: disable=import-outside-toplevel
    key = self.record_key(record)
    what = f"{self.kind} {key!r} (record {record})" if key else (
        f"record {record} (its id cannot be read either)")
    if frame is not None and self.kind == "video":
      what += f", frame {frame}"
    repair = verify.repair_hint(self.dataset, self.data_dir,
                                self.builder.data_dir)
    return CorruptData(
        f"Dataset {self.name!r} ({self.dataset}, split {self.split!r}): "
        f"{what} cannot be read or decoded: {reason}. List every broken "
        f"record: {verify.command(self.dataset, self.data_dir, self.split)}; "
        f"repair: {repair}; or set config.input.on_corrupt='skip' to train "
        f"on, replacing each broken example by the next usable record.",
        dataset=self.dataset, split=self.split, record=int(record), key=key,
        frame=frame)

  def encoded(self, record: int) -> tuple[list[bytes], int]:
    """(every JPEG frame, label) of one record."""
    indices = np.arange(self.frame_counts()[record])[None]
    frames, labels = self.read([record], indices)
    return frames, int(labels[0])


def check_head(heads: Mapping[str, int], source: Source) -> None:
  """A head for `source` with its label map's number of classes (the one
  check of training and evaluation)."""
  if source.name not in heads:
    raise ValueError(f"config.heads has no head {source.name!r} (heads: "
                     f"{sorted(heads)}): add config.heads.{source.name}="
                     f"{source.num_classes}.")
  if int(heads[source.name]) != source.num_classes:
    raise ValueError(
        f"config.heads.{source.name} = {heads[source.name]}, but dataset "
        f"{source.dataset!r} has {source.num_classes} classes: set "
        f"config.heads.{source.name}={source.num_classes}.")


def open_source(name: str, split: str, *, dataset: str | None = None,
                data_dir: str | None = None) -> Source:
  """The Source for `split` of `dataset` (default: `name`) in data_dir.

  Raises ValueError for an unknown or unprepared dataset, a missing split,
  a dataset not stored as ArrayRecord, or one without video/image features.
  """
  dataset = dataset or name
  builder = registry.load_builder(dataset, data_dir)
  info = builder.info
  if split not in info.splits:
    raise ValueError(f"Dataset {dataset!r} has no split {split!r}; its "
                     f"splits: {sorted(info.splits)}.")
  file_format = str(getattr(info.file_format, "value", info.file_format))
  if file_format != data_features.FILE_FORMAT:
    raise ValueError(
        f"Dataset {dataset!r} is stored as {file_format}; the input pipeline "
        f"reads records by index and needs {data_features.FILE_FORMAT}. "
        f"Convert it once: tfds convert_format --dataset_dir="
        f"{builder.data_dir} --out_file_format={data_features.FILE_FORMAT}")
  feature_keys = set(info.features.keys())
  kinds = [k for k in (data_features.VIDEO, data_features.IMAGE)
           if k in feature_keys]
  if len(kinds) != 1 or "label" not in feature_keys:
    raise ValueError(f"Dataset {dataset!r} has features {sorted(feature_keys)}"
                     f"; expected 'label' and one of 'video' or 'image'.")
  store = records = None
  if kinds[0] == data_features.IMAGE:
    from array_record.python import array_record_data_source  # pylint: disable=import-outside-toplevel
    records = array_record_data_source.ArrayRecordDataSource(
        info.splits[split].file_instructions)
  else:
    if not frame_store.has_frame_store(builder.data_dir, split):
      raise ValueError(
          f"Dataset {dataset!r} {split} has no frame store "
          f"({frame_store.index_path(builder.data_dir, split)}): it was not "
          f"prepared by data.prepare or data/video_builder.py, which store "
          f"every video's frames there. Prepare it again: python -m "
          f"data.prepare (docs/data.md).")
    store = frame_store.FrameStore(builder.data_dir, split)
    if len(store) != info.splits[split].num_examples:
      raise ValueError(
          f"The frame store of {dataset!r} {split} indexes {len(store)} "
          f"videos but the split has {info.splits[split].num_examples} "
          f"records: it belongs to another preparation. Prepare the "
          f"dataset again: python -m data.prepare (docs/data.md).")
  metadata = info.metadata or {}
  return Source(
      name=name, dataset=dataset, split=split, kind=kinds[0],
      num_examples=info.splits[split].num_examples,
      label_names=tuple(info.features["label"].names),
      short_side=metadata.get("short_side"),
      flip_changes_label=bool(metadata.get("flip_changes_label", False)),
      builder=builder, frames=store, records=records,
      data_dir=registry.expand(data_dir))
