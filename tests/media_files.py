"""Tiny real media files for the data tests, written with PyAV and PIL."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Sequence

import av
import numpy as np
from PIL import Image

# Codec by extension: H.264 in mp4, VP8 in webm, MPEG-4 part 2 in avi.
CODECS = {".mp4": "libx264", ".webm": "libvpx", ".avi": "mpeg4",
          ".mkv": "libx264", ".ts": "libx264", ".mov": "libx264",
          ".h264": "libx264"}


def write_video(path, frames: int = 6, width: int = 48, height: int = 32,
                rate: int = 10, faststart: bool = False, *,
                codec: str | None = None, pix_fmt: str = "yuv420p",
                picture: np.ndarray | None = None,
                rotation: tuple[int, bool, bool] | None = None,
                sample_aspect_ratio: Fraction | None = None,
                color: tuple[str, str] | None = None,
                times: Sequence[float] | None = None,
                start: float = 0, title: str | None = None) -> str:
  """Writes `frames` frames at `rate` fps; returns `path`.

  Args:
    path: the file; its extension picks the container and the codec.
    frames, width, height, rate: the video.
    faststart: mp4 index first (a cut file still opens).
    codec, pix_fmt: the encoder and its pixel format.
    picture: the RGB uint8 [height, width, 3] of every frame; None: random.
    rotation: (degrees counter-clockwise, horizontal flip, vertical flip) of
      the display matrix, as phones write it.
    sample_aspect_ratio: the pixel shape, for anamorphic video.
    color: (colorspace, color range) of YUV frames, e.g. ("ITU709", "JPEG"):
      frames are converted so and the stream says so. None: BT.601, limited
      range, untagged.
    times: each frame's timestamp in seconds (variable frame rate); None:
      `start` + i / `rate`.
    start: the first timestamp.
    title: the title in the container's and the stream's metadata.
  """
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  options = {"movflags": "faststart"} if faststart else {}
  rng = np.random.default_rng(len(str(path)))
  # Ticks of a frame at a constant rate (avi has no other timing).
  time_base = Fraction(1, 1000 if times else rate)
  if times is None:
    times = [start + i / rate for i in range(frames)]
  with av.open(str(path), "w", options=options) as container:
    stream = container.add_stream(
        codec or CODECS[os.path.splitext(path)[1]], rate=rate)
    if title:
      container.metadata["title"] = stream.metadata["title"] = title
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.codec_context.time_base = time_base
    if rotation:
      stream.set_display_rotation(*rotation)
    if sample_aspect_ratio:
      stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
    if color:
      space = av.video.reformatter.Colorspace[color[0]]
      color_range = av.video.reformatter.ColorRange[color[1]]
      stream.codec_context.colorspace = space
      stream.codec_context.color_range = color_range
    for time in times:
      image = (rng.integers(0, 256, (height, width, 3), np.uint8)
               if picture is None else picture)
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      if color:
        frame = frame.reformat(format=pix_fmt, dst_colorspace=space,
                               dst_color_range=color_range)
      frame.pts, frame.time_base = round(time / time_base), time_base
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return str(path)


def write_streams(path, streams: Sequence[str]) -> str:
  """A file with `streams`, in this order: "audio", "cover" (album art: a
  one-picture video stream) or "WIDTHxHEIGHT" (a video of 4 frames)."""
  mp3 = str(path).endswith(".mp3")
  with av.open(str(path), "w") as container:
    contents = []  # (stream, frames): every stream is added before muxing.
    for kind in streams:
      if kind == "audio":
        stream = container.add_stream("libmp3lame" if mp3 else "aac",
                                      rate=8000)
        stream.layout = "mono"
        contents.append((stream, [_silence() for _ in range(4)]))
      else:
        stream = container.add_stream(
            ("png" if mp3 else "mjpeg") if kind == "cover" else "libx264",
            rate=10)
        width, height = (16, 16) if kind == "cover" else map(
            int, kind.split("x"))
        stream.width, stream.height = width, height
        stream.pix_fmt = {"png": "rgb24", "mjpeg": "yuvj420p"}.get(
            stream.codec_context.name, "yuv420p")
        if kind == "cover":
          stream.disposition = av.stream.Disposition.attached_pic
        picture = np.zeros((height, width, 3), np.uint8)
        contents.append((stream, [
            av.VideoFrame.from_ndarray(picture, format="rgb24")
            for _ in range(1 if kind == "cover" else 4)]))
    for stream, frames in contents:
      for frame in frames:
        container.mux(stream.encode(frame))
      container.mux(stream.encode())
  return str(path)


def write_audio_only(path) -> str:
  """An mp4 with one AAC audio stream and no video."""
  return write_streams(path, ["audio"])


def _silence() -> av.AudioFrame:
  frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32),
                                     format="fltp", layout="mono")
  frame.sample_rate = 8000
  return frame


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


def concatenate(path, parts: Sequence[str]) -> str:
  """The bytes of `parts` one after the other, as `cat` joins MPEG-TS
  segments (whose timestamps then restart or jump)."""
  data = b""
  for part in parts:
    with open(part, "rb") as f:
      data += f.read()
  return write_bytes(path, data)
