"""Video frames stored one JPEG per record, so that reading a clip reads only
the frames it samples.

A training clip uses 8 or 16 frames of a video that stores hundreds: kept
inside the video's record, every read would fetch and parse all of them
(most of the input pipeline's CPU time). So the frames of a video dataset's split live in a frame store beside
its TFDS records:

    <dataset dir>/frames/<split>-00000.array_record, ...   one JPEG per record
    <dataset dir>/frames/<split>.index.npz                 per video record

The index holds, in the split's record order, each video's first frame in the
store (`first`), its number of frames (`count`) and its label (`label`), plus
the store's file names (`files`). The TFDS records keep the id and the label;
their `video` feature is empty where a frame store holds the frames.
The index also says where each frame's bytes lie in its file (`file_first`,
`offset`, `size`), so that a store on gs:// is read with one bounded range
request per frame: ArrayRecord asks for ranges open to the end of the file,
and the server sends far more than the frame before the reader hangs up
(benchmarks/gcs_read_bytes.py).
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

from absl import logging
from etils import epath
import numpy as np

FOLDER = "frames"
# JPEG bytes do not compress; one record per chunk reads one frame at a time.
WRITER_OPTIONS = "group_size:1,uncompressed"
# Files of a few GB at typical frame sizes.
FRAMES_PER_FILE = 100_000


def index_path(dataset_dir, split: str) -> epath.Path:
  return epath.Path(dataset_dir) / FOLDER / f"{split}.index.npz"


def has_frame_store(dataset_dir, split: str) -> bool:
  """Whether `split` of the dataset in `dataset_dir` has a complete store
  (the index is written last)."""
  return index_path(dataset_dir, split).exists()


class Writer:
  """Appends videos' frames to a split's store, in any order, by key.

  `spans` maps each key to (first, count); `write_index` later puts them in
  the split's record order. Files are written under hidden names and renamed
  by `close`, so a killed writer leaves nothing that looks complete.
  """

  def __init__(self, dataset_dir, split: str,
               frames_per_file: int = FRAMES_PER_FILE):
    self._folder = epath.Path(dataset_dir) / FOLDER
    self._folder.mkdir(parents=True, exist_ok=True)
    self._split = split
    self._frames_per_file = frames_per_file
    self._writer = None
    self._in_file = 0
    self.files: list[str] = []
    self.spans: dict[str, tuple[int, int]] = {}
    self.num_frames = 0
    self._sizes: list[int] = []  # of the frames in the open file
    self._offsets: list[np.ndarray] = []  # per closed file
    self._file_sizes: list[np.ndarray] = []

  def _partial(self, name: str) -> str:
    return os.fspath(self._folder / f".{name}.partial")

  def _next_file(self) -> None:
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    self._close_file()
    self.files.append(f"{self._split}-{len(self.files):05d}.array_record")
    self._writer = array_record_module.ArrayRecordWriter(
        self._partial(self.files[-1]), WRITER_OPTIONS)
    self._in_file = 0

  def _close_file(self) -> None:
    if self._writer is not None:
      self._writer.close()
      partial = self._partial(self.files[-1])
      self._offsets.append(record_offsets(partial, self._sizes))
      self._file_sizes.append(np.asarray(self._sizes, np.int32))
      self._sizes = []
      os.replace(partial, os.fspath(self._folder / self.files[-1]))
      self._writer = None

  def add(self, key: str, frames: Sequence[bytes]) -> None:
    """Stores the JPEG `frames` of the video `key`."""
    if key in self.spans:
      raise ValueError(f"Video {key!r} was added to the frame store twice.")
    if not frames:
      raise ValueError(f"Video {key!r} has no frames to store.")
    self.spans[key] = (self.num_frames, len(frames))
    for jpeg in frames:
      if self._writer is None or self._in_file == self._frames_per_file:
        self._next_file()
      record = bytes(jpeg)
      self._writer.write(record)
      self._sizes.append(len(record))
      self._in_file += 1
      self.num_frames += 1

  def close(self) -> None:
    self._close_file()

  def locations(self) -> dict[str, np.ndarray]:
    """Where the frames lie (after `close`): the first frame of each file
    (`file_first`), each frame's byte offset in its file and its size."""
    counts = [len(o) for o in self._offsets]
    return dict(
        file_first=np.cumsum([0] + counts[:-1]).astype(np.int64),
        offset=np.concatenate([np.zeros([0], np.int64)] + self._offsets),
        size=np.concatenate([np.zeros([0], np.int32)] + self._file_sizes))


def write_index(dataset_dir, split: str, files: Sequence[str],
                spans: dict[str, tuple[int, int]],
                records: Iterable[tuple[str, int]],
                locations: dict[str, np.ndarray] | None = None) -> int:
  """Writes the index of `split`: `records` gives (key, label) in record
  order, `spans` each key's frames, `locations` where they lie
  (`Writer.locations`; None: the store is read through ArrayRecord only).
  Returns the number of records."""
  first, count, label = [], [], []
  for key, record_label in records:
    if key not in spans:
      raise ValueError(f"Record {key!r} of split {split!r} has no frames in "
                       f"the frame store.")
    first.append(spans[key][0])
    count.append(spans[key][1])
    label.append(record_label)
  buffer = io.BytesIO()
  np.savez(buffer, first=np.asarray(first, np.int64),
           count=np.asarray(count, np.int32),
           label=np.asarray(label, np.int32), files=np.asarray(files),
           **(locations or {}))
  path = index_path(dataset_dir, split)
  partial = path.parent / f".{path.name}.partial"
  partial.write_bytes(buffer.getvalue())
  partial.replace(path)
  return len(first)


# -- Where a record lies in an ArrayRecord file --------------------------------
# riegeli's layout (riegeli/records/block.h): the file is cut into 64 KiB
# blocks, each beginning with a 24-byte block header, and chunks (a 40-byte
# header, then the data) run across them. A simple chunk's data (the chunk
# type 'r', chunk_encoding/simple_encoder.cc) is: the compression type, a
# varint length of the sizes, the sizes (varints), the records. Uncompressed,
# one record per chunk, a frame's bytes are the end of its chunk, cut only
# by the block headers they straddle.
_BLOCK = 1 << 16
_BLOCK_HEADER = 24
_CHUNK_HEADER = 40


def _past_block_header(pos: int) -> int:
  return pos + max(0, _BLOCK_HEADER - pos % _BLOCK)


def _possible_chunk_boundary(pos: int) -> int:
  """`pos` rounded up to where a chunk may begin: a block's start, or more
  than a block header into it (RoundUpToPossibleChunkBoundary)."""
  in_block = pos % _BLOCK
  return pos + _BLOCK_HEADER + 1 - in_block if 0 < in_block <= _BLOCK_HEADER \
      else pos


def span_end(begin: int, size: int) -> int:
  """The file position after `size` bytes of chunk content from `begin`,
  block headers between them included."""
  pos = begin
  while size:
    pos = _past_block_header(pos)
    step = min(size, _BLOCK - pos % _BLOCK)
    pos, size = pos + step, size - step
  return pos


def without_block_headers(data: bytes, begin: int) -> bytes:
  """The chunk content in `data`, the file's bytes from `begin` on."""
  parts, pos, i = [], begin, 0
  while i < len(data):
    skip = _past_block_header(pos) - pos
    step = _BLOCK - (pos + skip) % _BLOCK
    parts.append(data[i + skip:i + skip + step])
    pos, i = pos + skip + step, i + skip + step
  return b"".join(parts)


def _varint(data: bytes, i: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    value |= (data[i] & 0x7F) << shift
    shift += 7
    i += 1
    if data[i - 1] < 0x80:
      return value, i


def record_offsets(path: str, sizes: Sequence[int]) -> np.ndarray:
  """int64 file offset of each record of the ArrayRecord file `path`,
  written with WRITER_OPTIONS and holding records of `sizes`, from its
  chunk headers. Raises ValueError where the file is not laid out so."""

  with open(path, "rb") as f:

    def content(pos: int, size: int) -> bytes:
      f.seek(pos)
      return without_block_headers(f.read(span_end(pos, size) - pos), pos)

    offsets, chunk = [], 0
    while len(offsets) < len(sizes):
      header = content(chunk, _CHUNK_HEADER)
      if len(header) < _CHUNK_HEADER:
        raise ValueError(f"{path} ends after {len(offsets)} of "
                         f"{len(sizes)} records.")
      data_size = int.from_bytes(header[8:16], "little")
      num_records = int.from_bytes(header[25:32], "little")
      end = span_end(chunk, _CHUNK_HEADER + data_size)
      # A chunk ends at least num_records bytes on, at a possible boundary.
      end = max(end, _possible_chunk_boundary(chunk + num_records))
      if header[24:25] == b"r":
        data = content(span_end(chunk, _CHUNK_HEADER), min(data_size, 21))
        sizes_size, i = _varint(data, 1)
        record_size, _ = _varint(data, i)
        expected = sizes[len(offsets)]
        if data[0] != 0 or num_records != 1 or record_size != expected:
          raise ValueError(
              f"{path}: chunk at {chunk} holds {num_records} record(s) of "
              f"{record_size} bytes, compression {data[0]}; expected one "
              f"uncompressed record of {expected} bytes ({WRITER_OPTIONS}).")
        offsets.append(_past_block_header(
            span_end(chunk, _CHUNK_HEADER + i + sizes_size)))
      chunk = end
  return np.asarray(offsets, np.int64)


def record_keys_and_labels(file_instructions) -> Iterable[tuple[str, int]]:
  """(id, label) of each record of a split, in record order (the video
  feature is left unparsed)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from array_record.python import array_record_data_source  # pylint: disable=import-outside-toplevel
  reader = array_record_data_source.ArrayRecordDataSource(file_instructions)
  for i in range(len(reader)):
    feature = tf.train.Example.FromString(reader[i]).features.feature
    yield (feature["id"].bytes_list.value[0].decode(),
           int(feature["label"].int64_list.value[0]))


class FrameStore:
  """The frames of one split, read by (record, frame index).

  Reads through ArrayRecord check each frame against its chunk's hash, so
  stored bytes changed since (a damaged disk or copy) fail with riegeli's
  "Corrupted Riegeli/records file"; bounded range reads skip that check.

  Attributes:
    count: int32 [records], frames per video.
    label: int32 [records].
    locations: where each frame lies in its file (`Writer.locations`), for
      a store on gs:// with them in its index: frames are then read with
      bounded range requests; None: read through ArrayRecord (always, with
      `bounded_reads=False`).
  """

  def __init__(self, dataset_dir, split: str, bounded_reads: bool = True):
    path = index_path(dataset_dir, split)
    with np.load(io.BytesIO(path.read_bytes())) as index:
      self.first = index["first"]
      self.count = index["count"]
      self.label = index["label"]
      files = [str(f) for f in index["files"]]
      self.locations = None
      ranged = bounded_reads and os.fspath(path).startswith("gs://")
      if ranged and "offset" in index:
        self.locations = {k: index[k] for k in ("file_first", "offset",
                                                "size")}
      elif ranged:
        # Stores written before the index held frame locations: ArrayRecord's
        # open-ended range reads fetch several times the frames' bytes.
        logging.warning(
            "%s has no frame locations in its index: reading it from gs:// "
            "fetches several times the bytes each clip uses. Prepare it again "
            "from its sources (python -m data.prepare ... with a new "
            "--data_dir) to store them.", path)
    self._paths = [os.fspath(path.parent / f) for f in files]
    self._reader = None

  def __len__(self) -> int:
    return len(self.count)

  def _frames(self):
    if self._reader is None:  # opened on first use, in the reading process
      from array_record.python import array_record_data_source  # pylint: disable=import-outside-toplevel
      self._reader = array_record_data_source.ArrayRecordDataSource(
          self._paths)
    return self._reader

  def _read_ranges(self, ids: np.ndarray) -> list[bytes]:
    """Frames `ids`, one bounded range request each (concurrent)."""
    unique, inverse = np.unique(ids, return_inverse=True)
    file_of = np.searchsorted(self.locations["file_first"], unique,
                              side="right") - 1
    begins = self.locations["offset"][unique].tolist()
    sizes = self.locations["size"][unique].tolist()
    data = _object_store().cat_ranges(
        [self._paths[f] for f in file_of], begins,
        [span_end(b, n) for b, n in zip(begins, sizes)], on_error="raise")
    frames = [without_block_headers(d, b) for d, b in zip(data, begins)]
    if any(len(f) != n for f, n in zip(frames, sizes)):
      raise OSError(f"A short read from the frame store {self._paths[0]}.")
    return [frames[i] for i in inverse.ravel()]

  def read(self, records: np.ndarray, frame_indices: np.ndarray
           ) -> list[bytes]:
    """JPEGs of frames `frame_indices[i]` of video `records[i]`, flattened
    row by row. An index past a video's last frame is an error."""
    records = np.asarray(records, np.int64)
    frame_indices = np.asarray(frame_indices, np.int64).reshape(
        len(records), -1)
    if np.any(frame_indices >= self.count[records, None]) or np.any(
        frame_indices < 0):
      raise IndexError("Frame index outside its video.")
    ids = (self.first[records, None] + frame_indices).ravel()
    if self.locations is not None:
      return self._read_ranges(ids)
    return self._frames().__getitems__(ids.tolist())

  def frames(self, record: int) -> list[bytes]:
    """Every JPEG frame of one video."""
    return self.read(np.asarray([record]),
                     np.arange(self.count[record])[None])


def _object_store():
  """gcsfs at the endpoint ArrayRecord's reads of gs:// would use (fsspec
  keeps one instance per process). The JSON API's client: gcsfs's default
  class first asks the storage control API (gRPC) for the bucket's layout,
  which an emulator does not serve."""
  from gcsfs import core  # pylint: disable=import-outside-toplevel
  endpoint = os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT")
  if endpoint:
    return core.GCSFileSystem(endpoint_url=endpoint, token="anon")
  return core.GCSFileSystem()


class WritesFrameStore:
  """For tfds builders of videos: the frames go to the frame store.

  Put it before the tfds base class. The example generator calls
  `_stored(split, key, frames)` and puts what it returns (no frames) in the
  record; once TFDS has written the records, the indexes are written (still
  in the temporary folder, so the store appears with the dataset).
  """

  def _stored(self, split: str, key: str, frames: Sequence[bytes]) -> list:
    writers = self.__dict__.setdefault("_frame_writers", {})
    if split not in writers:
      writers[split] = Writer(self.data_dir, split)
    writers[split].add(key, frames)
    return []

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    for split, writer in self.__dict__.pop("_frame_writers", {}).items():
      writer.close()
      write_index(self.data_dir, split, writer.files, writer.spans,
                  record_keys_and_labels(
                      self.info.splits[split].file_instructions),
                  writer.locations())
