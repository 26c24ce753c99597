"""cover_jax/input/source.py: a dataset not stored as ArrayRecord is refused
with the conversion command (the pipeline reads records by index)."""

import pytest

from cover_jax import input as inp
from data import features
from tests import synthetic_data


@pytest.mark.parametrize("file_format", ["tfrecord", features.FILE_FORMAT])
def test_only_array_record_datasets_are_read(tmp_path, file_format):
  synthetic_data.SyntheticClips(
      config="image", data_dir=str(tmp_path),
      file_format=file_format).download_and_prepare()
  open_it = lambda: inp.open_source("clips", "train",
                                    dataset="synthetic_clips/image",
                                    data_dir=str(tmp_path))
  if file_format == features.FILE_FORMAT:  # the same dataset, readable
    assert open_it().num_examples == 60
    return
  with pytest.raises(ValueError, match=(
      r"'synthetic_clips/image' is stored as tfrecord; the input pipeline "
      r"reads records by index and needs array_record\. Convert it once: "
      r"tfds convert_format --dataset_dir=.*synthetic_clips/image/1\.0\.0 "
      r"--out_file_format=array_record")):
    open_it()
