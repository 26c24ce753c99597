"""Decoding of the videos real datasets hold, beyond the tidy ones: phone
videos stored sideways, anamorphic pixels, other pixel formats, broken
timestamps, odd stream layouts and sizes, lying extensions."""

import io
import shutil
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from data import decode
from tests import media_files

# Quadrants red, green / blue, white: any turn or mirror moves them.
QUADRANTS = np.array([[[255, 0, 0], [0, 255, 0]],
                      [[0, 0, 255], [255, 255, 255]]], np.uint8)
# A 4x2 grid of 16-pixel blocks of saturated and in-between colors.
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255],
                   [0, 0, 0], [128, 128, 128], [255, 255, 0], [40, 90, 200]],
                  np.uint8)
GRID = COLORS.reshape(2, 4, 3).repeat(16, 0).repeat(16, 1)  # [32, 64, 3].


def images(video):
  return [np.asarray(Image.open(io.BytesIO(j))) for j in video.frames]


def sizes(video):
  return {Image.open(io.BytesIO(j)).size for j in video.frames}


def block_means(image, blocks):
  """[rows, columns, 3] mean colors of a grid of blocks, their borders left
  out (JPEG and chroma subsampling blur them)."""
  rows, columns = blocks
  height, width = image.shape[0] // rows, image.shape[1] // columns
  inner = lambda i, n: slice(i * n + n // 4, (i + 1) * n - n // 4)
  return np.array([[image[inner(r, height), inner(c, width)].mean((0, 1))
                    for c in range(columns)] for r in range(rows)])


@pytest.mark.parametrize("rotation", [
    (0, False, False), (90, False, False), (180, False, False),
    (270, False, False), (-90, False, False), (0, True, False),
    (90, True, False), (180, True, False), (270, True, False),
    (0, False, True)])
def test_display_matrix_turns_frames_upright(tmp_path, rotation):
  stored = Image.fromarray(QUADRANTS).resize((48, 32), Image.Resampling.NEAREST)
  path = media_files.write_video(tmp_path / "phone.mp4", frames=3,
                                 picture=np.asarray(stored), rotation=rotation)
  video = decode.decode_video(path, short_side=16)
  # What a player shows: turned counter-clockwise by the angle, then mirrored.
  degrees, hflip, vflip = rotation
  shown = stored.rotate(degrees, expand=True)
  if hflip:
    shown = shown.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  if vflip:
    shown = shown.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
  # The short side is that of the upright frame.
  width, height = shown.size
  assert sizes(video) == {(24, 16) if width > height else (16, 24)}
  expected = block_means(np.asarray(shown), (2, 2))
  for image in images(video):
    assert np.abs(block_means(image, (2, 2)) - expected).max() < 40


def test_upright_transpose_rounds_odd_angles_to_quarter_turns():
  # A matrix turning 80 degrees clockwise: shown as a quarter turn.
  angle = np.radians(80)
  matrix = np.round(np.array([np.cos(angle), np.sin(angle), 0,
                              -np.sin(angle), np.cos(angle), 0]) * 65536)
  assert (decode.upright_transpose(tuple(int(x) for x in matrix)) ==
          Image.Transpose.ROTATE_270)
  assert decode.upright_transpose((0,) * 9) is None  # A broken matrix.


@pytest.mark.parametrize("aspect, rotation, size", [
    (Fraction(16, 15), None, (48, 36)),  # PAL 4:3, 720x576 scaled down.
    (Fraction(64, 45), None, (64, 36)),  # PAL 16:9.
    (Fraction(64, 45), (90, False, False), (36, 64)),  # Then turned.
    (Fraction(1, 2), None, (36, 58))])  # Tall pixels.
def test_non_square_pixels_shown_at_the_display_aspect(tmp_path, aspect,
                                                       rotation, size):
  path = media_files.write_video(tmp_path / "pal.mp4", frames=2, width=90,
                                 height=72, sample_aspect_ratio=aspect,
                                 rotation=rotation)
  assert sizes(decode.decode_video(path, short_side=36)) == {size}


@pytest.mark.parametrize("name, codec, pix_fmt", [
    ("v.mp4", "libx264", "yuv444p"),
    ("v.mp4", "libx264", "yuvj420p"),  # Full range, the old way.
    ("v.mp4", "libx264", "yuv420p10le"),
    ("v.mkv", "libx264", "yuv422p10le"),
    ("v.webm", "libvpx-vp9", "yuv444p"),
    ("v.mov", "prores_ks", "yuv422p10le"),
    ("v.mkv", "ffv1", "yuv444p16le"),
    ("v.avi", "mjpeg", "yuvj420p"),
    ("v.mov", "png", "rgb24"),
    ("v.mov", "png", "rgba"),
    ("v.mov", "qtrle", "rgb24"),
    ("v.mov", "qtrle", "argb"),
    ("v.mkv", "ffv1", "bgr0"),
    ("v.avi", "rawvideo", "bgr24"),
])
def test_pixel_formats_become_the_right_rgb(tmp_path, name, codec, pix_fmt):
  path = media_files.write_video(tmp_path / name, frames=2, width=64,
                                 height=32, codec=codec, pix_fmt=pix_fmt,
                                 picture=GRID)
  video = decode.decode_video(path, short_side=32)
  assert sizes(video) == {(64, 32)}
  error = np.abs(block_means(images(video)[0], (2, 4)) - GRID[::16, ::16])
  assert error.max() < 10


@pytest.mark.parametrize("color", [("ITU709", "MPEG"), ("ITU709", "JPEG"),
                                   ("ITU601", "JPEG")])
def test_color_matrix_and_range_tags_are_followed(tmp_path, color):
  # Read with the BT.601 matrix or the wrong range, these colors are off by
  # over 20 levels.
  path = media_files.write_video(tmp_path / "hd.mp4", frames=2, width=64,
                                 height=32, picture=GRID, color=color)
  error = np.abs(block_means(images(decode.decode_video(path, 32))[0],
                             (2, 4)) - GRID[::16, ::16])
  assert error.max() < 10


@pytest.mark.parametrize("name, codec, pix_fmt", [
    ("gray.mov", "png", "gray"), ("gray.mkv", "ffv1", "gray16le")])
def test_gray_videos_become_gray_rgb(tmp_path, name, codec, pix_fmt):
  gray = np.repeat(GRID.mean(2, keepdims=True).astype(np.uint8), 3, 2)
  path = media_files.write_video(tmp_path / name, frames=2, width=64,
                                 height=32, codec=codec, pix_fmt=pix_fmt,
                                 picture=gray)
  image = images(decode.decode_video(path, 32))[0]
  assert image.shape == (32, 64, 3)
  assert np.abs(block_means(image, (2, 4)) - gray[::16, ::16]).max() < 4


def test_variable_frame_rate_resampled_by_timestamps(tmp_path):
  times = [0, 0.04, 0.08, 0.5, 0.52, 1.5, 1.6, 1.7]
  path = media_files.write_video(tmp_path / "phone.mkv", times=times)
  video = decode.decode_video(path, 16, fps=10)
  # Slots 0, 0.1 ... 1.7 show the latest frame: frame 1 never, frame 4
  # (0.52 s) from 0.6 to 1.4 s. A frame shown again is encoded once.
  shown = [0, 2, 2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 6, 7]
  assert len(video.frames) == len(shown)
  first = {}
  for frame, source in zip(video.frames, shown):
    assert first.setdefault(source, frame) is frame
  assert len(set(video.frames)) == 7


def test_raw_stream_without_timestamps_uses_its_frame_rate(tmp_path):
  # Raw H.264 has no timestamps; FFmpeg states 25 fps for it.
  path = media_files.write_video(tmp_path / "raw.h264", frames=10, rate=25)
  assert len(decode.decode_video(path, 16, fps=10).frames) == 4
  assert len(decode.decode_video(path, 16).frames) == 10


@pytest.mark.parametrize("start, width", [(0, 64), (36000, 48)])
def test_joined_segments_keep_every_frame_at_one_size(tmp_path, start, width):
  """Two MPEG-TS segments joined by `cat`: the second one's timestamps go
  back to the start, or jump 10 hours ahead; it may change resolution."""
  first = media_files.write_video(tmp_path / "a.ts", frames=10, width=48)
  second = media_files.write_video(tmp_path / "b.ts", frames=10, width=width,
                                   start=start)
  path = media_files.concatenate(tmp_path / "ab.ts", [first, second])
  for fps in (None, 10):
    video = decode.decode_video(path, 16, fps=fps)
    assert len(video.frames) == 20 and sizes(video) == {(24, 16)}


@pytest.mark.parametrize("name, streams", [
    ("audio_first.mp4", ["audio", "48x32"]),
    ("two_videos.mkv", ["48x32", "32x64"]),
    ("with_album_art.mp4", ["48x32", "audio", "cover"]),
])
def test_the_first_video_stream_is_decoded(tmp_path, name, streams):
  video = decode.decode_video(
      media_files.write_streams(tmp_path / name, streams), 16)
  assert len(video.frames) == 4 and sizes(video) == {(24, 16)}


@pytest.mark.parametrize("name", ["song.mp3", "song.mp4"])
def test_album_art_is_not_a_video(tmp_path, name):
  path = media_files.write_streams(tmp_path / name, ["audio", "cover"])
  with pytest.raises(decode.DecodeError, match="no video stream"):
    decode.decode_video(path, 16)


@pytest.mark.parametrize("width, height, codec, pix_fmt, size", [
    (33, 17, "libx264", "yuv444p", (31, 16)),
    (33, 17, "ffv1", "yuv420p", (31, 16)),
    (17, 33, "mpeg4", "yuv420p", (16, 31)),
    (2, 2, "libx264", "yuv444p", (16, 16)),
    (1, 1, "ffv1", "yuv444p", (16, 16)),
])
def test_odd_and_tiny_sizes(tmp_path, width, height, codec, pix_fmt, size):
  path = media_files.write_video(tmp_path / "v.mkv", frames=3, width=width,
                                 height=height, codec=codec, pix_fmt=pix_fmt)
  video = decode.decode_video(path, 16)
  assert len(video.frames) == 3 and sizes(video) == {size}


def test_animated_gif_with_frame_durations(tmp_path):
  # Palette frames shown 0.1, 0.3 and 0.2 s.
  path = str(tmp_path / "anim.gif")
  first, *others = [Image.fromarray(picture)
                    for picture in (GRID, 255 - GRID, GRID[::-1])]
  first.save(path, save_all=True, append_images=others,
             duration=[100, 300, 200])
  video = decode.decode_video(path, 32, fps=10)
  # The last frame lasts as long as the gap before it.
  assert len(video.frames) == 7 and sizes(video) == {(64, 32)}
  error = np.abs(block_means(images(video)[0], (2, 4)) - GRID[::16, ::16])
  assert error.max() < 10


def test_too_elongated_for_jpeg_is_a_decode_error(tmp_path):
  # 16 pixels high, it would be 65600 wide.
  path = media_files.write_video(tmp_path / "strip.mkv", frames=2, width=8200,
                                 height=2, codec="ffv1", pix_fmt="yuv444p")
  with pytest.raises(decode.DecodeError, match="too elongated"):
    decode.decode_video(path, 16)
  image = media_files.write_image(tmp_path / "strip.png", 8200, 2)
  with pytest.raises(decode.DecodeError, match="too elongated"):
    decode.decode_image(image, 16)


def test_upsampled_frames_share_their_jpeg(tmp_path):
  # 1 fps to 30 fps: 30 slots a frame, one JPEG each in memory.
  path = media_files.write_video(tmp_path / "slow.mp4", frames=3, rate=1)
  video = decode.decode_video(path, 16, fps=30)
  assert len(video.frames) == 90
  assert len({id(frame) for frame in video.frames}) == 3


@pytest.mark.parametrize("real, named", [
    (".webm", "v.mp4"), (".mkv", "v.avi"), (".mp4", "v.webm"),
    (".avi", "v")])
def test_the_content_not_the_extension_decides(tmp_path, real, named):
  source = media_files.write_video(tmp_path / f"real{real}", frames=5)
  path = shutil.copy(source, tmp_path / named)
  assert len(decode.decode_video(path, 16).frames) == 5


@pytest.mark.parametrize("name", ["v.mp4", "v.mkv", "v.avi"])
def test_titles_not_in_utf8_are_no_error(tmp_path, name):
  path = media_files.write_video(tmp_path / name, frames=3,
                                 title="TITLE_PLACEHOLDER")
  with open(path, "rb") as f:
    data = f.read()
  assert b"TITLE_PLACEHOLDER" in data
  # The same length in Latin-1, as old cameras and tools write it.
  latin1 = "Caf\xe9 \xe0 la cr\xe8me".encode("latin-1").ljust(17)
  media_files.write_bytes(path, data.replace(b"TITLE_PLACEHOLDER", latin1))
  assert len(decode.decode_video(path, 16).frames) == 3
