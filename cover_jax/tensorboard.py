"""Reading back the scalars a run wrote to TensorBoard."""

import os


def read_scalars(workdir: str, tag: str) -> dict[int, float]:
  """{step: value} of the scalar `tag` ("train/steps_per_sec") in the event
  files directly in `workdir` (tf.io.gfile: local paths and gs://)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for path in tf.io.gfile.glob(os.path.join(workdir, "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tf.make_ndarray(value.tensor))
  return out
