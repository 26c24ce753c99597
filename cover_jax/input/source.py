"""One split of one prepared dataset, read by record index.

Records are read from the dataset's ArrayRecord files by index, so that a
shuffle is a permutation of indices (`index_shuffle`) and the data position is
a counter: nothing but integers to checkpoint, whatever the record size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from data import features as data_features
from data import registry


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

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  def reader(self):
    """Random access to the serialized records: reader[i] -> bytes."""
    from array_record.python import array_record_data_source  # pylint: disable=import-outside-toplevel
    return array_record_data_source.ArrayRecordDataSource(
        self.builder.info.splits[self.split].file_instructions)

  def parse(self, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(encoded JPEG frames [N] string, label int32) of one record."""
    example = self.builder.info.features.deserialize_example(
        serialized, decoders={self.kind: tfds.decode.SkipDecoding()})
    frames = example[self.kind]
    if self.kind == data_features.IMAGE:
      frames = frames[None]
    return frames, tf.cast(example["label"], tf.int32)


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
  metadata = info.metadata or {}
  return Source(
      name=name, dataset=dataset, split=split, kind=kinds[0],
      num_examples=info.splits[split].num_examples,
      label_names=tuple(info.features["label"].names),
      short_side=metadata.get("short_side"),
      flip_changes_label=bool(metadata.get("flip_changes_label", False)),
      builder=builder)
