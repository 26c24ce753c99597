"""A trained model applied to video and image files: classes and features.

    python main.py --mode=predict --config=CONFIG --workdir=DIR \
        --inputs=clip.mp4,photos/ [--inputs_from=list.txt] \
        [--output=predictions.jsonl]
    python main.py --mode=features ... --output=features.npz

Each input goes the evaluation's way: the frames evaluation samples (one
frame of each segment per clip, for config.input.eval_clips clips that each
span the video, `input.pipeline.eval_frame_indices`) decoded with PyAV as `python -m
data.prepare` decodes source videos (data/decode.py: JPEG frames at the
dataset's stored short side), then the evaluation's config.input.eval_views
crops of each clip (`input.pipeline.eval_views`), then the
view-averaged softmax of each head (`evaluate.averaged_log_probs`). Videos
are scored by the video datasets' heads, images by the image datasets'
(`--heads` chooses others). Class names come from the label maps that
training saved in the workdir (`label_maps.json`), else from the prepared
datasets, else from `--class_names`.

Memory is bounded whatever the inputs: a video is counted from its packets
and only its sampled frames are decoded (`sample_video`), an image may
decode to at most MAX_IMAGE_PIXELS, and DECODE_THREADS files decode at once.
Inputs that do not exist are named before the model loads
(`input_files`); a file that cannot be read is reported with the reason
and the run goes on.
"""

from __future__ import annotations

import array
import collections
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import dataclasses
import itertools
import os
import threading
from typing import Iterable, Iterator, Sequence

import av
from etils import epath
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict
import numpy as np
import tqdm

from cover_jax import pixels
from cover_jax.training.label_maps import HeadInfo

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg",
                    ".mpeg", ".ogv", ".flv", ".wmv", ".3gp", ".ts", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif",
                    ".tiff")


# ----------------------------------------------------------------------------
# Inputs: files and folders, decoded in parallel.
# ----------------------------------------------------------------------------

# Files decoded at once (threads; FFmpeg threads each video decode itself),
# whatever the number of cores; as many more decoded inputs may wait for the
# model. A video decode holds a few frames, not the video.
DECODE_THREADS = 4
# The most pixels an image may decode to (--max_image_pixels); the image
# decodes in flight hold no more than this many together (`PixelBudget`).
# Decoding takes about 12 bytes a pixel at its peak (the decoded image, its
# RGB copy, the upright copy). JPEGs decode at 1/2, 1/4 or 1/8 scale when
# that is still larger than the model needs (PIL's draft): the limit applies
# to what they decode to; other formats decode whole. Before it, PIL's own
# decompression-bomb check refuses files that declare more than twice
# PIL.Image.MAX_IMAGE_PIXELS (179 million pixels).
MAX_IMAGE_PIXELS = 50_000_000


def read_input_list(path: str) -> list[str]:
  """The paths listed in `path`, one per line: each line as written (commas
  and spaces are part of a name), blank lines and lines starting with "#"
  left out."""
  try:
    text = epath.Path(path).read_text()
  except FileNotFoundError:
    raise FileNotFoundError(f"--inputs_from={path}: no such file.") from None
  return [line for line in text.splitlines()
          if line.strip() and not line.startswith("#")]


def expand_inputs(paths: Sequence[str], what: str = "--inputs") -> list[str]:
  """Files of `paths`, folders searched recursively for videos and images.

  A file named directly is kept whatever its extension (its content is
  probed). Paths that do not exist raise, all of them named in one line
  (`what` says where they came from).
  """
  files, missing = [], []
  for path in paths:
    if os.path.isdir(path):
      for root, _, names in sorted(os.walk(path)):
        files += [os.path.join(root, n) for n in sorted(names)
                  if n.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)]
    elif os.path.exists(path):
      files.append(path)
    else:
      missing.append(path)
  if missing:
    named = ", ".join(repr(p) for p in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    raise FileNotFoundError(
        f"{what}: {named}{more} {'does' if len(missing) == 1 else 'do'} not "
        f"exist.")
  return files


def input_files(inputs: Sequence[str] | None, inputs_from: str | None,
                mode: str = "predict") -> list[str]:
  """The files `inputs` (--inputs) and the list file `inputs_from`
  (--inputs_from, `read_input_list`) name, in that order: either or both.
  Checked before a model loads: paths that do not exist raise, all named."""
  if not inputs and not inputs_from:
    raise ValueError(f"--mode={mode} needs --inputs=PATH[,PATH...] or "
                     f"--inputs_from=FILE (video or image files, or folders "
                     f"of them).")
  listed = read_input_list(inputs_from) if inputs_from else []
  what = " and ".join((["--inputs"] if inputs else []) +
                      ([f"--inputs_from={inputs_from}"] if inputs_from
                       else []))
  files = expand_inputs(list(inputs or []) + listed, what)
  if not files:
    raise ValueError(f"{what}: no video or image files found.")
  return files


def kind_of(path: str) -> str:
  """"image" for image extensions, else "video" (probed by FFmpeg)."""
  return "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "video"


@dataclasses.dataclass
class Decoded:
  """One input: the JPEG frames evaluation samples (with the frame index of
  each), or the reason it could not be used."""
  path: str
  kind: str
  frames: list[bytes] = dataclasses.field(default_factory=list)
  indices: list[int] = dataclasses.field(default_factory=list)
  error: str | None = None
  note: str | None = None


def decode(path: str, short_side: int, num_frames: int, *, clips: int = 1,
           max_image_pixels: int = MAX_IMAGE_PIXELS,
           budget: PixelBudget | None = None) -> Decoded:
  """The input's sampled JPEG frames at `short_side`, as prepare stores
  them: a video's `clips` x `num_frames` (`sample_video`), an image's one. An image
  of more than `max_image_pixels` to decode is refused (header read only);
  `budget`: the pixels shared with other decodes."""
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  kind = kind_of(path)
  try:
    if kind == "image":
      width, height = image_decode_size(path, short_side)
      if width * height > max_image_pixels:
        return Decoded(path, kind, error=(
            f"{width}x{height} image ({width * height:,} pixels to decode) "
            f"over the limit of {max_image_pixels:,} pixels; downscale it, "
            f"or raise --max_image_pixels"))
      with (budget or PixelBudget(max_image_pixels)).hold(width * height):
        try:
          jpeg = decoding.decode_image(path, short_side)
        finally:
          if width * height >= _TRIM_AFTER_PIXELS:
            _return_freed_memory()
      return Decoded(path, kind, [jpeg], [0])
    frames, indices, note = sample_video(path, short_side, num_frames,
                                         clips=clips)
    return Decoded(path, kind, frames, indices, note=note)
  except decoding.DecodeError as e:
    return Decoded(path, kind, error=e.reason)
  except OSError as e:
    return Decoded(path, kind, error=f"unreadable file: {e}")


def image_decode_size(path: str, short_side: int) -> tuple[int, int]:
  """(width, height) the image decodes to for `short_side` (JPEGs at a
  reduced scale), from its header; (0, 0) if unreadable (decode_image says
  why)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      image.draft("RGB", decoding.resized_size(*image.size, short_side))
      return image.size
  except Image.DecompressionBombError as e:
    raise decoding.DecodeError(
        f"{e} (PIL's own check, Image.MAX_IMAGE_PIXELS, which "
        f"--max_image_pixels does not raise): downscale the image") from e
  except (OSError, ValueError, SyntaxError):
    return 0, 0


# glibc keeps the memory a thread freed in that thread's arena: four threads
# that each decoded one large image in turn held four of them.
_TRIM_AFTER_PIXELS = 4_000_000


def _return_freed_memory() -> None:
  """glibc's malloc_trim(0): freed memory of every arena back to the OS (a
  no-op elsewhere)."""
  try:
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
  except (OSError, AttributeError, TypeError):
    pass


class PixelBudget:
  """Pixels that image decodes in flight hold together, at most `pixels`:
  a decode waits until what it needs is free."""

  def __init__(self, pixels: int):
    self._free = pixels
    self._changed = threading.Condition()

  @contextlib.contextmanager
  def hold(self, pixels: int):
    with self._changed:
      self._changed.wait_for(lambda: self._free >= pixels)
      self._free -= pixels
    try:
      yield
    finally:
      with self._changed:
        self._free += pixels
        self._changed.notify_all()


def decode_all(paths: Sequence[str], short_sides: dict[str, int],
               num_frames: dict[str, int], *, threads: int | None = None,
               max_image_pixels: int | None = None,
               clips: dict[str, int] | None = None) -> Iterator[Decoded]:
  """Decoded inputs in order (`short_sides`, `num_frames` and `clips` per
  kind; clips default 1).

  `threads` (default DECODE_THREADS) decode at once (FFmpeg and PIL
  release the GIL), no more than `threads` decoded inputs wait for the
  caller, and images decoding at once hold at most `max_image_pixels`
  (default MAX_IMAGE_PIXELS) together: memory does not grow with the
  number of inputs or of cores.
  """
  threads = threads or DECODE_THREADS
  max_image_pixels = max_image_pixels or MAX_IMAGE_PIXELS
  budget = PixelBudget(max_image_pixels)
  todo = iter(paths)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    running = collections.deque()

    def submit():
      for path in todo:
        kind = kind_of(path)
        running.append(pool.submit(
            decode, path, short_sides[kind], num_frames[kind],
            clips=(clips or {}).get(kind, 1),
            max_image_pixels=max_image_pixels, budget=budget))
        return

    for _ in range(2 * threads):
      submit()
    while running:
      decoded = running.popleft().result()
      submit()
      yield decoded


# ----------------------------------------------------------------------------
# Videos: only the frames evaluation samples are decoded.
# ----------------------------------------------------------------------------

class _Unsafe(Exception):
  """The stream is not as its packets said: decode it another way."""


@dataclasses.dataclass(frozen=True)
class Timeline:
  """A video stream's frames as its packets list them, without decoding.

  count: frames (packets with data, less those an edit list discards).
  pts: each frame's timestamp in display order, or None when some packet
    has none or two share one (then frames are only counted, not sought).
  keyframes: display indices of the keyframes, ascending.
  complete: the packets were read to the end without an error.
  """
  count: int
  pts: np.ndarray | None
  keyframes: np.ndarray
  complete: bool

  def index_of(self, pts: int | None) -> int | None:
    """The display index of the frame with timestamp `pts`, else None."""
    if pts is None:
      return None
    i = int(np.searchsorted(self.pts, pts))
    return i if i < self.count and self.pts[i] == pts else None


def read_timeline(path: str) -> Timeline:
  """The first video stream's `Timeline`, from one pass over its packets
  (demuxed, not decoded)."""
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  pts, keys = array.array("q"), array.array("q")
  timed, complete = True, True
  with av.open(path, metadata_errors="replace") as container:
    stream = decoding._video_stream(container)  # pylint: disable=protected-access
    try:
      for packet in container.demux(stream):
        if not packet.size or packet.is_discard:  # flush, edit list
          continue
        if packet.is_keyframe:
          keys.append(len(pts))
        timed &= packet.pts is not None
        pts.append(packet.pts if packet.pts is not None else 0)
    except av.FFmpegError:
      complete = False
  pts = np.asarray(pts, np.int64)
  order = np.argsort(pts, kind="stable")
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  pts = pts[order]
  timed &= bool(np.all(np.diff(pts) > 0))
  return Timeline(len(pts), pts if timed else None,
                  np.sort(rank[np.asarray(keys, np.int64)]), complete)


def sample_video(path: str, short_side: int, num_frames: int,
                 quality: int | None = None, clips: int = 1
                 ) -> tuple[list[bytes], list[int], str | None]:
  """(JPEGs, frame indices, note): the `clips` x `num_frames` frames
  evaluation samples from the video (clip by clip), decoded as `data.decode.decode_video` decodes
  every frame (the same bytes), without decoding the rest.

  The frames are counted from the packets (`read_timeline`), the indices
  are evaluation's (`input.pipeline.eval_frame_indices`), and each sampled
  frame is decoded from the keyframe before it (a seek) or, where the
  timestamps cannot say which frame is which, by decoding from the start
  up to the last sampled frame. Only the sampled frames become JPEGs; no
  list of frames is kept. Should the stream not be as its packets say (a
  decode error, fewer frames, timestamps that do not match), its frames
  are counted by decoding them all and then sampled: the frames decoded
  before an error, as `decode_video` keeps them, and `note` says where it
  stopped.
  """
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  quality = quality or decoding.JPEG_QUALITY
  decoding._check_not_empty(path)  # pylint: disable=protected-access
  try:
    timeline = read_timeline(path)
    if timeline.complete and timeline.count:
      indices = _eval_indices(timeline.count, num_frames, clips)
      for seek in (True, False) if timeline.pts is not None else (False,):
        try:
          return (_sampled_jpegs(path, indices, short_side, quality,
                                 timeline if seek else None), indices, None)
        except (_Unsafe, av.FFmpegError):
          pass
    count, error = _decodable_frames(path)
    if not count:
      raise decoding.DecodeError("no decodable frames" +
                                 (f" ({error})" if error else ""))
    indices = _eval_indices(count, num_frames, clips)
    try:
      jpegs = _sampled_jpegs(path, indices, short_side, quality, None)
    except _Unsafe as e:
      raise decoding.DecodeError(f"decoding is not repeatable: {e}") from e
  except av.FFmpegError as e:
    raise decoding.DecodeError(f"unreadable video file: {e}") from e
  note = (f"decoding stopped after {count} frames: {error}" if error else
          None)
  return jpegs, indices, note


def _eval_indices(count: int, num_frames: int, clips: int) -> list[int]:
  from cover_jax.input import pipeline  # pylint: disable=import-outside-toplevel
  return [int(i) for i in pipeline.eval_frame_indices(
      count, num_frames, clips=clips).numpy()]


def _decodable_frames(path: str) -> tuple[int, Exception | None]:
  """(frames decoded before the end or the first error, that error)."""
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  # pylint: disable=protected-access
  with av.open(path, metadata_errors="replace") as container:
    stream = decoding._video_stream(container)
    stream.thread_type = "AUTO"
    frames = decoding._StreamFrames(container, stream)
    for _ in frames:
      pass
  return frames.count, frames.error


def _sampled_jpegs(path: str, indices: Sequence[int], short_side: int,
                   quality: int, timeline: Timeline | None) -> list[bytes]:
  """The JPEGs of frames `indices`, sized by frame 0 as `decode_video`
  sizes every frame; `timeline` to seek, None to decode from the start."""
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  wanted = sorted(set(indices) | {0})
  got = []
  with av.open(path, metadata_errors="replace") as container:
    stream = decoding._video_stream(container)  # pylint: disable=protected-access
    stream.thread_type = "AUTO"

    def frames():
      for index, frame in _frames_at(container, stream, wanted, timeline):
        got.append(index)
        yield frame

    jpegs = list(decoding._jpegs(frames(), short_side,  # pylint: disable=protected-access
                                 stream.sample_aspect_ratio or 1, quality))
  by_index = dict(zip(got, jpegs))
  return [by_index[i] for i in indices]


def _frames_at(container, stream, wanted: Sequence[int],
               timeline: Timeline | None) -> Iterator[tuple[int, object]]:
  """(index, frame) for each of `wanted` (ascending frame indices).

  With a timeline, a frame after the next keyframe is reached by seeking
  (`_seek`), and every frame decoded must be the one its timestamp says,
  following the one before: else `_Unsafe`. Without, frames are numbered
  as they come from the start. `_Unsafe` too if the stream ends first.
  """
  frames = container.decode(stream)
  last = -1  # index of the last frame decoded; None just after a seek
  for target in wanted:
    if timeline is not None:
      k = np.searchsorted(timeline.keyframes, target, side="right") - 1
      if k >= 0 and timeline.keyframes[k] > last + 1:
        frames, last = _seek(container, stream, timeline, k, target), None
    for frame in frames:
      if timeline is None:
        index = last + 1
      else:
        index = timeline.index_of(frame.pts)
        if index is None or (last is not None and index != last + 1):
          raise _Unsafe(f"frame at {frame.pts} after frame {last}")
      last = index
      if index == target:
        yield index, frame
        break
      if index > target:
        raise _Unsafe(f"the seek passed frame {target}")
    else:
      raise _Unsafe(f"the stream ended before frame {target}")


def _seek(container, stream, timeline: Timeline, k: int,
          target: int) -> Iterator[object]:
  """Decoded frames from keyframe `k` (of timeline.keyframes), or from an
  earlier one: a demuxer that seeks by decode timestamps can land after the
  keyframe asked for, then the ones before are tried."""
  for key in timeline.keyframes[max(0, k - 2):k + 1][::-1]:
    container.seek(int(timeline.pts[key]), stream=stream, backward=True,
                   any_frame=False)
    frames = container.decode(stream)
    first = next(frames, None)
    index = None if first is None else timeline.index_of(first.pts)
    if index is not None and index <= target:
      return itertools.chain([first], frames)
  raise _Unsafe(f"no seek reached frame {target}")


# ----------------------------------------------------------------------------
# The model: views -> per-head probabilities and the clip embedding.
# ----------------------------------------------------------------------------

def make_scorer(model, heads: Sequence[str], *, mean: Sequence[float],
                std: Sequence[float]):
  """jitted (params, uint8 views [b, V, T, H, W, 3]) -> ({head: probs},
  features); V: all views of an input (clips x crops, `_views`).

  The views are normalised with `mean`, `std` (`pixels.normalize`, as in
  training). Probabilities are the views' averaged softmax (evaluation's own
  function); features are the normalised class token ("cls") and the
  pre-logits (when the model has them), averaged over the views.
  """
  from cover_jax.training import evaluate  # pylint: disable=import-outside-toplevel

  def score(params, views):
    b, v = views.shape[:2]
    flat = pixels.normalize(views.reshape((b * v,) + views.shape[2:]), mean,
                            std)
    logits, state = model.apply({"params": params}, flat, train=False,
                                mutable=["intermediates"])
    probs = {h: jnp.exp(evaluate.view_averaged_log_probs(logits[h], v))
             for h in heads}
    features = {k: jnp.mean(val[0].astype(jnp.float32).reshape(b, v, -1),
                            axis=1)
                for k, val in state["intermediates"].items()}
    return probs, features
  return jax.jit(score)


def _views(frames: list[bytes], prep, clips: int = 1):
  """views [clips * V, T, crop, crop, 3] uint8 of an input's sampled JPEG
  frames (`input.pipeline.eval_views`, as evaluation crops them)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cover_jax.input import pipeline  # pylint: disable=import-outside-toplevel
  return pipeline.eval_views(tf.constant(frames), prep, clips).numpy()


def decode_short_side(infos: dict[str, HeadInfo], heads: Sequence[str],
                      prep) -> int:
  """The short side to decode inputs to: that of the heads' stored data
  (what the model saw in training), else the evaluation's resize."""
  eval_side = prep.eval_short_side or prep.crop_size
  return max([infos[h].short_side or eval_side for h in heads] or
             [eval_side])


@dataclasses.dataclass
class Result:
  """What predict says of one input."""
  path: str
  kind: str
  frames: list[int] = dataclasses.field(default_factory=list)
  heads: dict[str, list[tuple[str, float]]] = dataclasses.field(
      default_factory=dict)
  features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  error: str | None = None
  note: str | None = None

  def as_json(self) -> dict:
    out = {"input": self.path, "kind": self.kind}
    if self.error:
      out["error"] = self.error
      return out
    out["frames"] = self.frames
    out["heads"] = {h: [[name, round(p, 6)] for name, p in top]
                    for h, top in self.heads.items()}
    if self.note:
      out["note"] = self.note
    return out


def run(model, params, config: ConfigDict, infos: dict[str, HeadInfo],
        paths: Sequence[str], *, heads: Sequence[str] | None = None,
        top_k: int = 5, batch_size: int = 8, progress: bool = True,
        decode_threads: int | None = None,
        max_image_pixels: int | None = None) -> list[Result]:
  """Results for `paths`, in order, batched by kind of input.

  heads: the heads to report (default: those of the input's kind).
  decode_threads, max_image_pixels: `decode_all`'s threads and limit.
  """
  from cover_jax.input import make  # pylint: disable=import-outside-toplevel
  prep = make.preprocessing(config)
  unknown = sorted(set(heads or ()) - set(infos))
  if unknown:
    raise ValueError(f"--heads {unknown} are not heads of this model: "
                     f"{sorted(infos)}.")
  chosen = {kind: list(heads) if heads else
            [h for h, info in infos.items() if info.kind == kind]
            for kind in ("video", "image")}
  scorers = {kind: make_scorer(model, names, mean=prep.mean, std=prep.std)
             for kind, names in chosen.items() if names}
  short_sides = {kind: decode_short_side(infos, names, prep)
                 for kind, names in chosen.items()}
  pending = {"video": [], "image": []}

  def flush(kind):  # scores the pending inputs, filling their results
    batch, pending[kind] = pending[kind], []
    if not batch:
      return
    views = np.stack([v for _, v in batch])
    # Pad to a fixed batch: one compile per kind of input.
    pad = batch_size - len(batch)
    views = np.concatenate([views, np.zeros((pad,) + views.shape[1:],
                                            views.dtype)])
    probs, features = jax.device_get(scorers[kind](params, views))
    for i, (result, _) in enumerate(batch):
      for h in chosen[kind]:
        order = np.argsort(-probs[h][i])[:top_k]
        result.heads[h] = [(infos[h].labels[j], float(probs[h][i][j]))
                           for j in order]
      result.features = {k: np.asarray(v[i]) for k, v in features.items()}

  results = []
  with tqdm.tqdm(total=len(paths), unit=" inputs",
                 disable=not progress) as bar:
    num_frames = {"video": prep.num_frames, "image": 1}
    clips = {kind: prep.clips_of(kind) for kind in num_frames}
    for decoded in decode_all(paths, short_sides, num_frames,
                              threads=decode_threads,
                              max_image_pixels=max_image_pixels,
                              clips=clips):
      result = Result(decoded.path, decoded.kind, error=decoded.error,
                      note=decoded.note)
      results.append(result)
      if decoded.error is None and decoded.kind not in scorers:
        result.error = (f"no {decoded.kind} head to score it: heads "
                        f"{sorted(infos)}; choose some with --heads")
      if result.error is None:
        result.frames = decoded.indices
        try:
          views = _views(decoded.frames, prep, clips[decoded.kind])
        except Exception as e:  # pylint: disable=broad-except
          result.error = f"frames could not be decoded: {e}"
        else:
          pending[decoded.kind].append((result, views))
          if len(pending[decoded.kind]) == batch_size:
            flush(decoded.kind)
      bar.update()
    for kind in pending:
      flush(kind)
  return results


def table(results: Iterable[Result], top: int = 3) -> str:
  """A readable table: input, head, top classes with probabilities."""
  rows = [f"{'input':<40} {'head':<22} top classes"]
  for r in results:
    name = r.path if len(r.path) <= 40 else "..." + r.path[-37:]
    if r.error:
      rows.append(f"{name:<40} {'-':<22} FAILED: {r.error}")
      continue
    for i, (head, classes) in enumerate(r.heads.items()):
      listed = ", ".join(f"{c} {p:.3f}" for c, p in classes[:top])
      rows.append(f"{name if i == 0 else '':<40} {head:<22} {listed}")
  return "\n".join(rows)
