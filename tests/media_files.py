"""Tiny real media files for the data tests, written with PyAV and PIL."""

from __future__ import annotations

import os

import av
import numpy as np
from PIL import Image

# Codec by extension: H.264 in mp4, VP8 in webm, MPEG-4 part 2 in avi.
CODECS = {".mp4": "libx264", ".webm": "libvpx", ".avi": "mpeg4",
          ".mkv": "libx264"}


def write_video(path, frames: int = 6, width: int = 48, height: int = 32,
                rate: int = 10, faststart: bool = False) -> str:
  """Writes `frames` random frames at `rate` fps; returns `path`."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  options = {"movflags": "faststart"} if faststart else {}
  rng = np.random.default_rng(len(str(path)))
  with av.open(str(path), "w", options=options) as container:
    stream = container.add_stream(CODECS[os.path.splitext(path)[1]], rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for _ in range(frames):
      image = rng.integers(0, 256, (height, width, 3), np.uint8)
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return str(path)


def write_audio_only(path) -> str:
  """An mp4 with one AAC audio stream and no video."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream("aac", rate=8000)
    samples = np.zeros((1, 1024), np.float32)
    for _ in range(4):
      frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
      frame.sample_rate = 8000
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return str(path)


def write_image(path, width: int = 48, height: int = 32) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  image = np.random.default_rng(0).integers(0, 256, (height, width, 3),
                                            np.uint8)
  Image.fromarray(image).save(path)
  return str(path)


def write_bytes(path, data: bytes) -> str:
  """A file with `data`: b"" for an empty file, random bytes for a corrupt
  one."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def truncate(path, fraction: float) -> str:
  """Cuts the file at `path` to `fraction` of its size, in place."""
  with open(path, "rb") as f:
    data = f.read()
  return write_bytes(path, data[:int(len(data) * fraction)])
