"""Reads and strictly decodes every record and frame of a prepared dataset.

    python -m data.verify DATASET [--data_dir=DIR] [--split=SPLIT ...]
        [--num_workers=N]

Checks every split (or those given) of a frame store video dataset, a video
dataset whose records hold the frames, or an image dataset: each record and
frame is read through ArrayRecord, which checks the stored bytes against
their chunk's hash, and each JPEG is decoded by libjpeg-turbo (simplejpeg)
with its warnings made errors, so a JPEG that TensorFlow decodes to wrong
pixels with only "Corrupt JPEG data" on stderr counts as broken. The frames
of a video must all have one size, and labels must be in the label map.

Prints what is broken (dataset, split, record, its key, frame, error) and the
command that repairs the dataset; exits 1 if anything is broken, 0 if not,
2 for a dataset that cannot be opened. Damage that leaves a valid JPEG
stream (a changed pixel value) cannot be seen without the source files.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
import threading
from typing import Sequence

import numpy as np

# Records per unit of work (and per progress bar update).
CHUNK = 32


def command(dataset: str, data_dir: str | None, split: str | None = None
            ) -> str:
  """The command that lists every broken record of `dataset`."""
  from data import registry  # pylint: disable=import-outside-toplevel
  return (f"python -m data.verify {dataset} "
          f"--data_dir={registry.expand(data_dir)}"
          + (f" --split={split}" if split else ""))


def repair_hint(dataset: str, data_dir: str | None, dataset_dir) -> str:
  """How to replace a damaged prepared dataset: delete its folder, prepare
  it again (a prepared dataset is never prepared over)."""
  from cover_jax import storage  # pylint: disable=import-outside-toplevel
  from data import registry  # pylint: disable=import-outside-toplevel
  folder = os.fspath(dataset_dir)
  remove = (f"gcloud storage rm --recursive {folder}"
            if storage.is_uri(folder) else f"rm -r {folder}")
  return (f"delete it ({remove}) and prepare it again "
          f"({registry.prepare_command(dataset, data_dir)})")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One broken record or frame."""
  dataset: str
  split: str
  record: int
  key: str | None  # None: the record's id cannot be read
  frame: int | None  # None: the record itself, or an image
  error: str

  def __str__(self) -> str:
    where = f"record {self.record}" + (f" {self.key!r}" if self.key else "")
    if self.frame is not None:
      where += f" frame {self.frame}"
    return f"{self.dataset} {self.split} {where}: {self.error}"


def jpeg_problem(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
  """((height, width), None) of a JPEG that decodes without a warning, else
  (None, what libjpeg-turbo reports)."""
  import simplejpeg  # pylint: disable=import-outside-toplevel
  try:
    image = simplejpeg.decode_jpeg(bytes(data), colorspace="rgb", strict=True)
  except Exception as e:  # pylint: disable=broad-except  (ValueError mostly)
    return None, f"JPEG does not decode strictly: {_line(e)}"
  return image.shape[:2], None


def _line(error: BaseException) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return (lines[0] if lines else type(error).__name__)[:300]


def _example(serialized: bytes):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.train.Example.FromString(serialized).features.feature


def _key(feature) -> str | None:
  for name in ("id", "file_name"):  # ours; TFDS image datasets'
    if name in feature and feature[name].bytes_list.value:
      return feature[name].bytes_list.value[0].decode(errors="replace")
  return None


class _Split:
  """Checks the records of one split; one reader per thread."""

  def __init__(self, builder, dataset: str, split: str):
    from data import frame_store  # pylint: disable=import-outside-toplevel
    self.dataset, self.split = dataset, split
    self.instructions = builder.info.splits[split].file_instructions
    self.num_records = builder.info.splits[split].num_examples
    self.kind = "video" if "video" in builder.info.features else "image"
    self.num_classes = builder.info.features["label"].num_classes
    self.data_dir = builder.data_dir
    self.store = (self.kind == "video" and
                  frame_store.has_frame_store(builder.data_dir, split))
    self._local = threading.local()

  def _readers(self):
    """(TFDS records, frame store or None) of this thread."""
    if not hasattr(self._local, "records"):
      from array_record.python import array_record_data_source  # pylint: disable=import-outside-toplevel
      from data import frame_store  # pylint: disable=import-outside-toplevel
      self._local.records = array_record_data_source.ArrayRecordDataSource(
          self.instructions)
      # Through ArrayRecord, never bounded ranges: the chunk hashes checked.
      self._local.store = (frame_store.FrameStore(
          self.data_dir, self.split, bounded_reads=False)
                           if self.store else None)
    return self._local.records, self._local.store

  def check(self, records: Sequence[int]) -> list[Problem]:
    problems = []
    for record in records:
      problems += self._check(int(record))
    return problems

  def _check(self, record: int) -> list[Problem]:
    tfds_records, store = self._readers()
    problem = lambda frame, error, key=None: Problem(
        self.dataset, self.split, record, key, frame, error)
    try:
      feature = _example(tfds_records[record])
    except Exception as e:  # pylint: disable=broad-except
      return [problem(None, f"record cannot be read: {_line(e)}")]
    key = _key(feature)
    if store is not None:
      label, frames = int(store.label[record]), None
    else:
      label = int(feature["label"].int64_list.value[0])
      frames = list(feature[self.kind].bytes_list.value)
    out = []
    if not 0 <= label < self.num_classes:
      out.append(problem(None, f"label {label} outside the label map's "
                               f"{self.num_classes} classes", key))
    if frames is None:  # the frame store: one read, else frame by frame
      count = int(store.count[record])
      try:
        frames = store.read([record], np.arange(count)[None])
      except Exception:  # pylint: disable=broad-except
        frames = []
        for f in range(count):
          try:
            frames += store.read([record], np.asarray([[f]]))
          except Exception as e:  # pylint: disable=broad-except
            frames.append(None)
            out.append(problem(f, f"frame cannot be read: {_line(e)}", key))
    if not frames:
      out.append(problem(None, f"no {self.kind}", key))
    size = None
    for f, jpeg in enumerate(frames):
      if jpeg is None:
        continue
      shape, error = jpeg_problem(jpeg)
      frame = f if self.kind == "video" else None
      if error:
        out.append(problem(frame, error, key))
      elif size is None:
        size = shape
      elif shape != size:
        out.append(problem(frame, f"frame of {shape[0]}x{shape[1]} px in a "
                                  f"video of {size[0]}x{size[1]}", key))
    return out


def verify(dataset: str, data_dir: str | None = None,
           splits: Sequence[str] | None = None, num_workers: int | None = None,
           progress: bool = True) -> tuple[list[Problem], dict[str, int]]:
  """(every problem found, records checked per split) of a prepared dataset,
  with a progress bar on a terminal's stderr (unless `progress` is False).

  Raises ValueError for a dataset that is not prepared or has no such split.
  """
  from data import registry  # pylint: disable=import-outside-toplevel
  import tqdm  # pylint: disable=import-outside-toplevel
  builder = registry.load_builder(dataset, data_dir)
  names = list(splits or sorted(builder.info.splits))
  missing = [s for s in names if s not in builder.info.splits]
  if missing:
    raise ValueError(f"Dataset {dataset!r} has no split {missing[0]!r}; its "
                     f"splits: {sorted(builder.info.splits)}.")
  checks = [_Split(builder, dataset, s) for s in names]
  total = sum(c.num_records for c in checks)
  problems, counts = [], {}
  workers = num_workers or os.cpu_count() or 1
  with tqdm.tqdm(total=total, unit=" records", desc=f"verify {dataset}",
                 disable=None if progress else True) as bar, \
      concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for check in checks:
      chunks = [range(i, min(i + CHUNK, check.num_records))
                for i in range(0, check.num_records, CHUNK)]
      for chunk, found in zip(chunks, pool.map(check.check, chunks)):
        problems += found
        bar.update(len(chunk))
      counts[check.split] = check.num_records
  return problems, counts


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m data.verify", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dataset", help="e.g. kinetics400/short320")
  parser.add_argument("--data_dir", help="default: ~/tensorflow_datasets")
  parser.add_argument("--split", action="append", dest="splits",
                      help="a split to check (repeatable; default: all)")
  parser.add_argument("--num_workers", type=int,
                      help="decoding threads (default: one per CPU)")
  args = parser.parse_args(argv)
  from data import registry  # pylint: disable=import-outside-toplevel
  try:
    problems, counts = verify(args.dataset, args.data_dir, args.splits,
                              args.num_workers)
    dataset_dir = registry.load_builder(args.dataset, args.data_dir).data_dir
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    return 2
  for problem in problems:
    print(f"broken: {problem}")
  for split, count in counts.items():
    broken = len({p.record for p in problems if p.split == split})
    print(f"{args.dataset} {split}: {count} records, {broken} broken")
  if not problems:
    return 0
  print(f"To repair {args.dataset}, "
        f"{repair_hint(args.dataset, args.data_dir, dataset_dir)}; or train "
        f"with config.input.on_corrupt='skip', which replaces each broken "
        f"example by the next usable record.")
  return 1


if __name__ == "__main__":
  sys.exit(main())
