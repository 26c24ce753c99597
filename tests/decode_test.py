"""Decoding of real little video and image files into JPEG frames."""

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from data import decode
from tests import media_files


def sizes(jpegs):
  return {Image.open(io.BytesIO(j)).size for j in jpegs}


@pytest.mark.parametrize("extension", [".mp4", ".webm", ".avi", ".mkv"])
def test_every_frame_at_the_short_side(tmp_path, extension):
  path = media_files.write_video(tmp_path / f"v{extension}", frames=7,
                                 width=48, height=32)
  video = decode.decode_video(path, short_side=16)
  assert len(video.frames) == 7 and video.truncated is None
  assert sizes(video.frames) == {(24, 16)}
  assert Image.open(io.BytesIO(video.frames[0])).format == "JPEG"


def test_portrait_frames_and_upscaling(tmp_path):
  path = media_files.write_video(tmp_path / "v.mp4", width=32, height=48)
  assert sizes(decode.decode_video(path, short_side=64).frames) == {(64, 96)}


@pytest.mark.parametrize("fps, expected", [(5, 5), (20, 20), (2.5, 3),
                                           (10, 10)])
def test_resampled_to_a_frame_rate(tmp_path, fps, expected):
  # 10 frames at 10 fps: one second of video.
  path = media_files.write_video(tmp_path / "v.mp4", frames=10, rate=10)
  assert len(decode.decode_video(path, 16, fps=fps).frames) == expected


def test_at_rate_shows_the_latest_frame_at_each_time():
  # Frames 0..3 at 0, 0.1, 0.2, 0.3 s; the last is shown until 0.4 s.
  frames = [(Fraction(i, 10), i) for i in range(4)]
  assert [f for _, f in decode.at_rate(frames, 20)] == [0, 0, 1, 1, 2, 2, 3, 3]
  assert [f for _, f in decode.at_rate(frames, 5)] == [0, 2]
  assert [f for _, f in decode.at_rate(frames, 7.5)] == [0, 1, 2]
  # Uneven timestamps, starting late: slots count from the first frame; the
  # last frame lasts as long as the gap before it (until 8.5 s).
  uneven = [(Fraction(5), "a"), (Fraction(5.5), "b"), (Fraction(7), "c")]
  assert [f for _, f in decode.at_rate(uneven, 1)] == ["a", "b", "c", "c"]
  assert [f for _, f in decode.at_rate([(Fraction(0), "x")], 30)] == ["x"]


def test_steady_times_repair_what_at_rate_cannot_use():
  def steady(times):
    timed = [(None if t is None else Fraction(str(t)), i)
             for i, t in enumerate(times)]
    return [float(t) for t, _ in decode.steady_times(timed, Fraction(1, 10))]

  # Good timestamps, variable rate included, are kept.
  assert steady([5, 5.04, 5.5, 7]) == [5, 5.04, 5.5, 7]
  # No timestamps at all (raw streams): the nominal rate from 0.
  assert steady([None, None, None]) == [0, 0.1, 0.2]
  # A frame without one sits a period after the previous frame.
  assert steady([1, None, 1.3]) == [1, 1.1, 1.3]
  # Going back (a second MPEG-TS segment) or not forward: the following
  # frames are shifted to go on a period later, their spacing kept.
  assert steady([1, 1.5, 1, 1.2, 1.2]) == [1, 1.5, 1.6, 1.8, 1.9]
  # A jump of more than MAX_GAP (a timestamp wrap) is closed the same way.
  assert steady([0, 0.5, 3600.5, 3600.55]) == [0, 0.5, 0.6, 0.65]
  assert steady([0, 10]) == [0, 10]  # A gap of MAX_GAP is a long frame.


@pytest.mark.parametrize("make, reason", [
    (lambda p: media_files.write_bytes(p, b""), "empty file"),
    (lambda p: media_files.write_bytes(
        p, np.random.default_rng(0).bytes(4000)), "unreadable video file"),
    (media_files.write_audio_only, "no video stream"),
    # Without `faststart` the index is at the end: a cut file does not open.
    (lambda p: media_files.truncate(media_files.write_video(p, 20), 0.5),
     "unreadable video file"),
])
def test_unusable_files_raise_the_reason(tmp_path, make, reason):
  path = make(tmp_path / "bad.mp4")
  with pytest.raises(decode.DecodeError, match=reason) as error:
    decode.decode_video(path, 16)
  assert reason in error.value.reason


class _CutAfter:
  """A container whose video fails to decode after `n` frames, like a file
  cut short in the middle of its data."""

  def __init__(self, container, n):
    self._container, self._n = container, n
    self.streams = container.streams

  def decode(self, stream):
    for i, frame in enumerate(self._container.decode(stream)):
      if i == self._n:
        raise av.error.InvalidDataError(1094995529, "Invalid data found")
      yield frame

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._container.close()


@pytest.mark.parametrize("fps", [None, 10])
def test_truncated_video_keeps_the_frames_before_the_error(
    tmp_path, monkeypatch, fps):
  path = media_files.write_video(tmp_path / "v.mp4", frames=8, rate=10)
  real_open = av.open
  cut_after = lambda n: lambda p, **kw: _CutAfter(real_open(p, **kw), n)
  monkeypatch.setattr(decode.av, "open", cut_after(3))
  video = decode.decode_video(path, 16, fps=fps)
  assert len(video.frames) == 3
  assert "decoding stopped after 3 frames" in video.truncated
  monkeypatch.setattr(decode.av, "open", cut_after(0))
  with pytest.raises(decode.DecodeError, match="no decodable frames"):
    decode.decode_video(path, 16)


def test_truncated_webm_decodes_what_is_there(tmp_path):
  path = media_files.write_video(tmp_path / "v.webm", frames=20)
  media_files.truncate(path, 0.5)
  assert 0 < len(decode.decode_video(path, 16).frames) < 20


@pytest.mark.parametrize("name", ["i.png", "i.jpg", "i.bmp"])
def test_image_resized_to_the_short_side(tmp_path, name):
  path = media_files.write_image(tmp_path / name, width=60, height=40)
  jpeg = decode.decode_image(path, short_side=20)
  assert sizes([jpeg]) == {(30, 20)}
  assert Image.open(io.BytesIO(jpeg)).mode == "RGB"


def test_image_exif_orientation_applied(tmp_path):
  path = str(tmp_path / "rotated.jpg")
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees to display.
  Image.new("RGB", (60, 40)).save(path, exif=exif)
  assert sizes([decode.decode_image(path, 20)]) == {(20, 30)}


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"), (b"not an image", "unreadable image")])
def test_unusable_images_raise_the_reason(tmp_path, data, reason):
  path = media_files.write_bytes(tmp_path / "bad.jpg", data)
  with pytest.raises(decode.DecodeError, match=reason):
    decode.decode_image(path, 16)


def test_truncated_image_is_unreadable(tmp_path):
  path = media_files.write_image(tmp_path / "cut.png", width=200, height=200)
  media_files.truncate(path, 0.5)
  with pytest.raises(decode.DecodeError, match="unreadable image"):
    decode.decode_image(path, 16)


def test_resized_size():
  assert decode.resized_size(640, 360, 320) == (569, 320)
  assert decode.resized_size(360, 640, 320) == (320, 569)
  assert decode.resized_size(100, 100, 320) == (320, 320)
