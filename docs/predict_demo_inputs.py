"""Writes README's --mode=predict example inputs from the mini test sets.

    .venv/bin/python docs/predict_demo_inputs.py --data_dir=~/tensorflow_datasets --out=/tmp/demo_inputs

Two digits_motion test clips as mp4 (H.264) and webm (VP8), upscaled 4x to
160x160, a digits_image test digit as PNG, and a broken mp4. The file names
carry the true labels.
"""

import argparse
import io
import os

import av
import numpy as np
from PIL import Image

from cover_jax import input as inp


def test_example(name, index, data_dir):
  """(frames uint8 [T, H, W, 3], label name) of a test example."""
  source = inp.open_source(name, "test", data_dir=data_dir)
  encoded, label = source.encoded(index)
  frames = np.stack([np.asarray(Image.open(io.BytesIO(f))) for f in encoded])
  return frames, source.label_names[label]


def write_video(path, frames, codec, rate=10):
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")))
    container.mux(stream.encode())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--out", default="/tmp/demo_inputs")
  args = parser.parse_args()
  os.makedirs(os.path.join(args.out, "videos"), exist_ok=True)
  for index, ext, codec in ((0, "mp4", "libx264"), (5, "webm", "libvpx")):
    frames, label = test_example("digits_motion", index, args.data_dir)
    frames = frames.repeat(4, axis=1).repeat(4, axis=2)  # codecs want > 40 px
    write_video(os.path.join(args.out, "videos",
                             f"motion_{index}_{label}.{ext}"), frames, codec)
  frames, label = test_example("digits_image", 3, args.data_dir)
  Image.fromarray(frames[0]).save(os.path.join(args.out, f"digit_{label}.png"))
  with open(os.path.join(args.out, "videos", "broken.mp4"), "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)


if __name__ == "__main__":
  main()
