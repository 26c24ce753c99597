"""The frame store: writing, reading, refusing datasets without one, and the
pipeline reading a batch in one call."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cover_jax import input as inp
from cover_jax.input.source import Source
from data import features
from data import frame_store
from tests import synthetic_data
from tests.gcs import BUCKET


class OldLayoutClips(tfds.core.GeneratorBasedBuilder):
  """Videos with every frame inside its record, no frame store."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=features.video_features(["a", "b", "c"]),
        metadata=features.metadata(short_side=24))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(9)}

  def _generate_examples(self, n):
    for i in range(n):
      label = i % 3
      frames = [synthetic_data.jpeg(synthetic_data.frame(t, 24, 32))
                for t in range(synthetic_data.LENGTHS[label])]
      yield i, {"video": frames, "label": label, "id": f"old{i}"}


def test_a_video_dataset_without_a_frame_store_is_refused_naming_the_fix(
    tmp_path):
  data_dir = str(tmp_path)
  builder = OldLayoutClips(data_dir=data_dir,
                           file_format=features.FILE_FORMAT)
  builder.download_and_prepare()
  with pytest.raises(ValueError) as e:
    inp.open_source("old", "train", dataset="old_layout_clips",
                    data_dir=data_dir)
  assert str(e.value) == (
      f"Dataset 'old_layout_clips' train has no frame store "
      f"({frame_store.index_path(builder.data_dir, 'train')}): it was not "
      f"prepared by data.prepare or data/video_builder.py, which store every "
      f"video's frames there. Prepare it again: python -m data.prepare "
      f"(docs/data.md).")


def test_writer_spreads_over_files_and_reads_back_in_record_order(tmp_path):
  rng = np.random.default_rng(0)
  videos = {f"v{i}": [rng.bytes(int(rng.integers(1, 50)))
                      for _ in range(int(rng.integers(1, 9)))]
            for i in range(12)}
  writer = frame_store.Writer(tmp_path, "train", frames_per_file=5)
  for key, frames in videos.items():
    writer.add(key, frames)
  assert not frame_store.has_frame_store(tmp_path, "train")  # no index yet
  writer.close()
  assert len(writer.files) == -(-sum(map(len, videos.values())) // 5)
  order = [f"v{i}" for i in rng.permutation(12)]  # the records' order
  frame_store.write_index(tmp_path, "train", writer.files, writer.spans,
                          [(key, int(key[1:]) % 3) for key in order])
  store = frame_store.FrameStore(tmp_path, "train")
  for record, key in enumerate(order):
    assert store.frames(record) == videos[key]
    assert store.label[record] == int(key[1:]) % 3
  a, b = videos[order[3]], videos[order[0]]
  assert store.read([3, 0, 3], [[len(a) - 1, 0], [0, 0], [0, len(a) - 1]]
                    ) == [a[-1], a[0], b[0], b[0], a[0], a[-1]]
  last = len(videos[order[5]]) - 1
  assert store.read([5], [[last]]) == [videos[order[5]][last]]
  with pytest.raises(IndexError, match="outside its video"):
    store.read([5], [[last + 1]])
  with pytest.raises(ValueError, match="added to the frame store twice"):
    writer.add("v0", [b"x"])


def test_a_killed_writer_leaves_no_store(tmp_path):
  writer = frame_store.Writer(tmp_path, "train", frames_per_file=2)
  writer.add("a", [b"1", b"2", b"3"])
  del writer  # killed: never closed, no index
  assert not frame_store.has_frame_store(tmp_path, "train")
  assert ".train-00001.array_record.partial" in os.listdir(
      tmp_path / frame_store.FOLDER)
  # Written again from the start, the store holds the new frames only.
  writer = frame_store.Writer(tmp_path, "train", frames_per_file=2)
  writer.add("b", [b"4", b"5"])
  writer.close()
  frame_store.write_index(tmp_path, "train", writer.files, writer.spans,
                          [("b", 0)])
  store = frame_store.FrameStore(tmp_path, "train")
  assert len(store) == 1 and store.frames(0) == [b"4", b"5"]


def test_an_index_of_another_preparation_is_refused(tmp_path):
  synthetic_data.prepare(str(tmp_path))
  source = inp.open_source("v", "train", dataset="synthetic_clips/video",
                           data_dir=str(tmp_path))
  index = frame_store.index_path(source.builder.data_dir, "train")
  with np.load(index) as arrays:
    arrays = dict(arrays)
  np.savez(index, **{k: v[:-1] if k != "files" else v
                      for k, v in arrays.items()})
  with pytest.raises(ValueError, match="indexes 11 videos but the split has "
                                       "12 records: it belongs to another "
                                       "preparation. Prepare the dataset "
                                       r"again: python -m data.prepare"):
    inp.open_source("v", "train", dataset="synthetic_clips/video",
                    data_dir=str(tmp_path))


@pytest.mark.slow
def test_the_pipeline_reads_each_batch_in_one_call(tmp_path, monkeypatch):
  """Python runs once per batch and part (Source.read), not per example."""
  synthetic_data.prepare(str(tmp_path))
  sources = [inp.open_source(n, "train", dataset=f"synthetic_clips/{c}",
                             data_dir=str(tmp_path))
             for n, c in (("clips", "video"), ("pictures", "image"))]
  calls = []
  read = Source.read

  def counted(self, records, frame_indices):
    calls.append((self.kind, len(records), np.shape(frame_indices)))
    return read(self, records, frame_indices)

  monkeypatch.setattr(Source, "read", counted)
  prep = inp.Preprocessing(num_frames=4, crop_size=16)
  it = inp.TrainIterator(sources, prep, flips=[True, True], global_batch=16,
                         weights=[1.0, 1.0], video_share=0.5)
  batches = [next(it) for _ in range(3)]
  it.close()
  assert {c[0] for c in calls} == {"video", "image"}
  assert all(c[1] == 8 for c in calls)  # a whole part of the batch each
  assert all(c[2] == ((8, 4) if c[0] == "video" else (8, 1)) for c in calls)
  assert len(calls) >= 6  # 3 steps x 2 parts (and what prefetch read ahead)
  assert batches[0]["video"]["frames"].shape == (8, 4, 16, 16, 3)
  assert batches[0]["image"]["frames"].shape == (8, 1, 16, 16, 3)
  # An image's JPEG and label are its record's.
  pictures = sources[1]
  jpegs, labels = pictures.read([4, 1], np.zeros([2, 1], int))
  records = pictures.builder.as_data_source(
      "train", deserialize_method=tfds.decode.DeserializeMethod.
      DESERIALIZE_NO_DECODE)
  for jpeg, label, record in zip(jpegs, labels, (4, 1)):
    feature = records[record].features.feature
    assert jpeg == feature["image"].bytes_list.value[0]
    assert label == feature["label"].int64_list.value[0]


def upload(url: str, local_dir, prefix: str) -> None:
  """Puts every file under `local_dir` into the emulator's bucket."""
  import urllib.parse  # pylint: disable=import-outside-toplevel
  import urllib.request  # pylint: disable=import-outside-toplevel
  for path in sorted(local_dir.rglob("*")):
    if path.is_file():
      name = urllib.parse.quote(f"{prefix}/{path.relative_to(local_dir)}")
      request = urllib.request.Request(
          f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}",
          data=path.read_bytes(), method="POST")
      urllib.request.urlopen(request).close()


def test_a_store_on_gs_reads_bounded_ranges_equal_to_the_local_read(
    tmp_path, gcs_emulator, monkeypatch, caplog):
  """Frames of every size, straddling riegeli's 64 KiB block headers, read
  from gs:// with one bounded range each (and through ArrayRecord, as a
  store without locations is), are the bytes written."""
  rng = np.random.default_rng(3)
  videos = {f"v{i}": [rng.bytes(int(rng.choice([1, 700, 40_000, 140_000])
                                    * rng.uniform(0.5, 1.0)) or 1)
                      for _ in range(int(rng.integers(1, 6)))]
            for i in range(9)}
  writer = frame_store.Writer(tmp_path / "store", "train", frames_per_file=8)
  for key, frames in videos.items():
    writer.add(key, frames)
  writer.close()
  frame_store.write_index(tmp_path / "store", "train", writer.files,
                          writer.spans, [(k, 0) for k in videos],
                          writer.locations())
  upload(gcs_emulator, tmp_path / "store", "store")
  (tmp_path / "old" / frame_store.FOLDER).mkdir(parents=True)
  frame_store.write_index(tmp_path / "old", "train", writer.files,
                          writer.spans, [(k, 0) for k in videos])
  upload(gcs_emulator, tmp_path / "old", "old")  # an index without locations
  for name, value in (("EPATH_USE_TF", "false"),  # epath through gcsfs
                      ("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false"),
                      ("STORAGE_EMULATOR_HOST", gcs_emulator),
                      ("CLOUD_STORAGE_EMULATOR_ENDPOINT", gcs_emulator)):
    monkeypatch.setenv(name, value)
  from etils.epath import gpath  # pylint: disable=import-outside-toplevel
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  try:
    remote = frame_store.FrameStore(f"gs://{BUCKET}/store", "train")
    assert "no frame locations" not in caplog.text
    old = frame_store.FrameStore(f"gs://{BUCKET}/old", "train")
    assert old.locations is None
    assert "gs://bucket/old/frames/train.index.npz has no frame locations" in (
        caplog.text)
  finally:
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  assert remote.locations is not None and len(writer.files) > 2
  for record, frames in enumerate(videos.values()):
    assert remote.frames(record) == frames
  a, b = videos["v3"], videos["v0"]
  assert remote.read([3, 0, 3], [[len(a) - 1, 0], [0, 0], [0, len(a) - 1]]
                     ) == [a[-1], a[0], b[0], b[0], a[0], a[-1]]
  remote.locations = None  # as a store prepared before locations
  assert remote.read([8, 3], [[0], [len(a) - 1]]) == [videos["v8"][0], a[-1]]


def test_record_offsets_refuses_a_file_of_several_records_per_chunk(
    tmp_path):
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  path = str(tmp_path / "grouped.array_record")
  writer = array_record_module.ArrayRecordWriter(path,
                                                 "group_size:2,uncompressed")
  for record in (b"ab", b"cde", b"f"):
    writer.write(record)
  writer.close()
  with pytest.raises(ValueError, match="holds 2 record"):
    frame_store.record_offsets(path, [2, 3, 1])
