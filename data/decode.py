"""Source files -> JPEG frames at a fixed short side (PyAV and PIL, no TF).

This module runs in the worker processes of the decode stage, so it must not
import TensorFlow.

- `decode_video`: every frame of the first video stream, optionally resampled
  to a frame rate, resized so that its short side is `short_side`.
- `decode_image`: one image, EXIF orientation applied, resized the same way.

Frames are resized up as well as down, so that every stored frame of a
dataset has the same short side (the input pipeline's crops rely on it).
Files that cannot be used raise `DecodeError` with the reason.
"""

from __future__ import annotations

import dataclasses
import io
import os
from fractions import Fraction
from typing import Iterable, Iterator

import av
from PIL import Image, ImageOps

JPEG_QUALITY = 90


class DecodeError(Exception):
  """A source file with no usable frames; `reason` says why."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
  """JPEG frames of a video; `truncated` says why decoding stopped early."""
  frames: list[bytes]
  truncated: str | None = None


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
  """(width, height) scaled so that the shorter one is `short_side`."""
  if width <= height:
    return short_side, max(1, round(height * short_side / width))
  return max(1, round(width * short_side / height)), short_side


def decode_video(path: str, short_side: int, fps: float | None = None,
                 quality: int = JPEG_QUALITY) -> DecodedVideo:
  """Decodes the first video stream of `path` into JPEG frames.

  Args:
    path: any file FFmpeg reads (mp4, webm, mkv, avi, mov...).
    short_side: the short side of the returned frames, in pixels.
    fps: the frame rate to resample to (`at_rate`); None keeps every frame.
    quality: JPEG quality.

  Returns:
    The frames. A file that stops decoding with an error after some frames
    (typically a truncated download) keeps those frames: the clip is shorter
    but its label still holds, and frames are sampled across the whole clip.
    `truncated` then says where and why it stopped, for the prepare report.

  Raises:
    DecodeError: the file is empty, is not a readable container, has no
      video stream, or no frame decodes.
  """
  _check_not_empty(path)
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise DecodeError("no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      frames = _StreamFrames(container, stream)
      shown = frames if fps is None else at_rate(frames, fps)
      jpegs = [_frame_jpeg(frame, short_side, quality) for _, frame in shown]
  except av.FFmpegError as e:
    raise DecodeError(f"unreadable video file: {e}") from e
  if not jpegs:
    raise DecodeError("no decodable frames" +
                      (f" ({frames.error})" if frames.error else ""))
  truncated = None
  if frames.error:
    truncated = (f"decoding stopped after {frames.count} frames: "
                 f"{frames.error}")
  return DecodedVideo(jpegs, truncated)


def decode_image(path: str, short_side: int,
                 quality: int = JPEG_QUALITY) -> bytes:
  """Decodes an image file (any format PIL reads) into one RGB JPEG.

  Raises:
    DecodeError: the file is empty, not an image, or truncated.
  """
  _check_not_empty(path)
  try:
    with Image.open(path) as image:
      # JPEGs decode directly at a reduced scale no smaller than the target.
      image.draft("RGB", resized_size(*image.size, short_side))
      image = ImageOps.exif_transpose(image).convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DecodeError(f"unreadable image file: {e}") from e
  size = resized_size(*image.size, short_side)
  return _jpeg(image.resize(size, Image.Resampling.BICUBIC), quality)


def at_rate(timed_frames: Iterable[tuple[Fraction | None, object]],
            fps: float) -> Iterator[tuple[Fraction, object]]:
  """Resamples (time, frame) pairs to `fps`: the frame shown at t0 + k / fps.

  A frame is shown from its timestamp until the next frame's, the last one
  for as long as the gap before it. A faster source drops frames, a slower
  one repeats them, so that the output has exactly `fps` frames per second
  of video. Times are exact fractions: no rounding drift over long videos.
  """
  period = 1 / Fraction(str(fps))
  slot = shown = shown_time = None
  gap = Fraction(0)
  for time, frame in timed_frames:
    if time is None:
      raise DecodeError("frames have no timestamps, so they cannot be "
                        "resampled to a frame rate; prepare without --fps")
    if shown is None:
      slot = time
    else:
      gap = max(time - shown_time, Fraction(0))
      while slot < time:
        yield slot, shown
        slot += period
    shown, shown_time = frame, time
  if shown is not None:
    end = shown_time + (gap or period)
    while slot < end:
      yield slot, shown
      slot += period


class _StreamFrames:
  """(time in seconds, frame) of a stream; stops at the first decode error.

  The error is kept in `error` rather than raised, so that frames decoded
  before it can be kept (see `decode_video`).
  """

  def __init__(self, container: av.container.InputContainer,
               stream: av.VideoStream):
    self._container = container
    self._stream = stream
    self.count = 0
    self.error: av.FFmpegError | None = None

  def __iter__(self) -> Iterator[tuple[Fraction | None, av.VideoFrame]]:
    rate = self._stream.average_rate or self._stream.guessed_rate
    try:
      for frame in self._container.decode(self._stream):
        if frame.pts is not None and frame.time_base is not None:
          time = frame.pts * Fraction(frame.time_base)
        else:  # Some containers (raw streams) carry no timestamps.
          time = self.count / Fraction(rate) if rate else None
        self.count += 1
        yield time, frame
    except av.FFmpegError as e:
      self.error = e


def _frame_jpeg(frame: av.VideoFrame, short_side: int, quality: int) -> bytes:
  width, height = resized_size(frame.width, frame.height, short_side)
  # swscale resizes and converts in one pass, faster than PIL's resize.
  rgb = frame.reformat(width=width, height=height, format="rgb24")
  return _jpeg(rgb.to_image(), quality)


def _jpeg(image: Image.Image, quality: int) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def _check_not_empty(path: str):
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise DecodeError(f"cannot read the file: {e}") from e
  if size == 0:
    raise DecodeError("empty file (0 bytes)")
