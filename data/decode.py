"""Source files -> JPEG frames at a fixed short side (PyAV and PIL, no TF).

This module runs in the worker processes of the decode stage, so it must not
import TensorFlow.

- `decode_video`: every frame of the first video stream, optionally resampled
  to a frame rate, turned upright and resized so that its short side is
  `short_side`.
- `decode_image`: one image, EXIF orientation applied, resized the same way.

Frames are resized up as well as down, so that every stored frame of a
dataset has the same short side (the input pipeline's crops rely on it).
Files that cannot be used raise `DecodeError` with the reason.

Real-world videos are shown as a player shows them: phone videos stored
sideways are turned upright by their display matrix, non-square pixels are
stretched to the display aspect ratio, any pixel format (10-bit, full range,
gray, RGB codecs) becomes RGB by the stream's own color matrix and range,
and broken timestamps are repaired (`steady_times`) before resampling.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
from fractions import Fraction
from typing import Iterable, Iterator

import av
from PIL import Image, ImageOps

JPEG_QUALITY = 90
# The longest side a JPEG can have.
JPEG_MAX_SIDE = 65500
# A jump between the timestamps of two frames longer than this (in seconds) is
# a discontinuity, not a frame shown that long: FFmpeg's own threshold
# (-dts_delta_threshold).
MAX_GAP = Fraction(10)
# Streams of video type that are not videos: album art of audio files (MP3,
# M4A) and thumbnail tracks.
_NOT_VIDEO = (av.stream.Disposition.attached_pic |
              av.stream.Disposition.timed_thumbnails)
# The transposes that swap width and height.
_QUARTER_TURNS = {Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270,
                  Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE}


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


def resized_size(width: float, height: float,
                 short_side: int) -> tuple[int, int]:
  """(width, height) scaled so that the shorter one is `short_side`."""
  if width <= height:
    return short_side, max(1, round(height * short_side / width))
  return max(1, round(width * short_side / height)), short_side


def decode_video(path: str, short_side: int, fps: float | None = None,
                 quality: int = JPEG_QUALITY) -> DecodedVideo:
  """Decodes the first video stream of `path` into JPEG frames.

  Args:
    path: any file FFmpeg reads (mp4, webm, mkv, avi, mov...), whatever its
      extension says: the format is probed from the content.
    short_side: the short side of the returned frames, in pixels.
    fps: the frame rate to resample to (`at_rate`); None keeps every frame.
    quality: JPEG quality.

  Returns:
    The frames, upright, at the display aspect ratio, all the size of the
    first one (a stream that changes resolution midway is scaled to it: the
    input pipeline stacks a clip's frames). A file that stops decoding with an
    error after some frames (typically a truncated download) keeps those
    frames: the clip is shorter but its label still holds, and frames are
    sampled across the whole clip. `truncated` then says where and why it
    stopped, for the prepare report. Memory holds JPEGs, not decoded frames.

  Raises:
    DecodeError: the file is empty, is not a readable container, has no
      video stream (album art is not one), or no frame decodes.
  """
  _check_not_empty(path)
  try:
    # Titles in legacy encodings are common and are no reason to fail.
    with av.open(path, metadata_errors="replace") as container:
      stream = _video_stream(container)
      stream.thread_type = "AUTO"
      frames = _StreamFrames(container, stream)
      shown = frames if fps is None else at_rate(
          steady_times(frames, _frame_period(stream, fps)), fps)
      jpegs = list(_jpegs((frame for _, frame in shown), short_side,
                          stream.sample_aspect_ratio or 1, quality))
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
  size = _stored_size(*image.size, short_side)
  return _jpeg(image.resize(size, Image.Resampling.BICUBIC), quality)


def steady_times(timed_frames: Iterable[tuple[Fraction | None, object]],
                 period: Fraction) -> Iterator[tuple[Fraction, object]]:
  """(time, frame) pairs with increasing times, as `at_rate` needs them.

  Real files have frames without a timestamp (raw H.264 streams), timestamps
  that go back (concatenated MPEG-TS segments each start again) or jump ahead
  by hours (timestamp wraps, broken muxers). Such a frame is placed `period`
  (the source's nominal frame period) after the previous one, and the frames
  after it keep their own spacing: a variable frame rate is kept, and no jump
  drops a whole segment or repeats a frame for hours.
  """
  shift, last = Fraction(0), None
  for time, frame in timed_frames:
    if time is None:
      time = Fraction(0) if last is None else last + period
    else:
      if last is not None and not last < time + shift <= last + MAX_GAP:
        shift = last + period - time
      time += shift
    last = time
    yield time, frame


def at_rate(timed_frames: Iterable[tuple[Fraction, object]],
            fps: float) -> Iterator[tuple[Fraction, object]]:
  """Resamples (time, frame) pairs to `fps`: the frame shown at t0 + k / fps.

  A frame is shown from its timestamp until the next frame's, the last one
  for as long as the gap before it. A faster source drops frames, a slower
  one repeats them, so that the output has exactly `fps` frames per second
  of video. Times are exact fractions: no rounding drift over long videos.
  Times must increase (see `steady_times`).
  """
  period = 1 / Fraction(str(fps))
  slot = shown = shown_time = None
  gap = Fraction(0)
  for time, frame in timed_frames:
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


def upright_transpose(matrix: tuple[int, ...]) -> Image.Transpose | None:
  """The transpose that shows a frame with this display matrix upright.

  `matrix` is FFmpeg's 3x3 display matrix (row-major, 16.16 fixed point).
  The choice is FFmpeg's own autorotation (fftools), with any angle rounded
  to quarter turns: cameras write only those.
  """
  a, b, _, c, d = matrix[:5]
  # The clockwise angle to turn by: minus av_display_rotation_get's.
  angle = math.degrees(math.atan2(b * math.hypot(a, c), a * math.hypot(b, d)))
  turns = round(angle / 90) % 4
  if turns == 1:
    return Image.Transpose.TRANSPOSE if c > 0 else Image.Transpose.ROTATE_270
  if turns == 3:
    return Image.Transpose.TRANSVERSE if c < 0 else Image.Transpose.ROTATE_90
  if turns == 2 and a < 0:
    return (Image.Transpose.ROTATE_180 if d < 0 else
            Image.Transpose.FLIP_LEFT_RIGHT)
  return Image.Transpose.FLIP_TOP_BOTTOM if d < 0 else None


class _StreamFrames:
  """(time in seconds or None, frame) of a stream; stops at the first decode
  error.

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
    try:
      for frame in self._container.decode(self._stream):
        time = None
        if frame.pts is not None and frame.time_base is not None:
          time = frame.pts * Fraction(frame.time_base)
        self.count += 1
        yield time, frame
    except av.FFmpegError as e:
      self.error = e


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
  """The first stream that is a video, whatever streams come before it."""
  for stream in container.streams.video:
    if not stream.disposition & _NOT_VIDEO:
      return stream
  raise DecodeError("no video stream" + (
      " (only album art or thumbnails)" if container.streams.video else ""))


def _frame_period(stream: av.VideoStream, fps: float) -> Fraction:
  """The source's nominal frame period; `fps`'s if it states no rate."""
  rate = stream.average_rate or stream.guessed_rate or Fraction(str(fps))
  return 1 / Fraction(rate)


def _jpegs(frames: Iterable[av.VideoFrame], short_side: int,
           sample_aspect_ratio: Fraction, quality: int) -> Iterator[bytes]:
  """Upright JPEGs, all the size of the first; a frame repeated in a row (by
  `at_rate`) is encoded once and its bytes shared."""
  size = last = jpeg = None
  for frame in frames:
    if frame is not last:
      transpose = _upright(frame)
      if size is None:
        width, height = frame.width * sample_aspect_ratio, frame.height
        if transpose in _QUARTER_TURNS:
          width, height = height, width
        size = _stored_size(width, height, short_side)
      jpeg, last = _frame_jpeg(frame, size, transpose, quality), frame
    yield jpeg


def _stored_size(width: float, height: float,
                 short_side: int) -> tuple[int, int]:
  """`resized_size`; DecodeError if a JPEG cannot be that long."""
  size = resized_size(width, height, short_side)
  if max(size) > JPEG_MAX_SIDE:
    raise DecodeError(
        f"too elongated: {round(width)}x{round(height)} at short side "
        f"{short_side} is {size[0]}x{size[1]}, over the {JPEG_MAX_SIDE} "
        f"pixels a JPEG can have")
  return size


def _upright(frame: av.VideoFrame) -> Image.Transpose | None:
  side_data = frame.side_data.get("DISPLAYMATRIX")
  if side_data is None:
    return None
  return upright_transpose(struct.unpack("=9i", bytes(side_data)))


def _frame_jpeg(frame: av.VideoFrame, size: tuple[int, int],
                transpose: Image.Transpose | None, quality: int) -> bytes:
  width, height = size
  if transpose in _QUARTER_TURNS:
    width, height = height, width
  # swscale resizes and converts in one pass, faster than PIL's resize. It
  # reads the frame's color matrix and range (BT.601/709, limited/full).
  image = frame.reformat(width=width, height=height, format="rgb24").to_image()
  return _jpeg(image if transpose is None else image.transpose(transpose),
               quality)


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
