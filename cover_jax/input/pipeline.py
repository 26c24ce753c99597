"""The co-training mixture and the evaluation views, as tf.data pipelines.

A training batch is `{"video": part, "image": part}`; each part holds
`frames` uint8 `[b, T, crop, crop, 3]` (T = 1 for images; pixels, which the
jitted step normalises on the devices: `cover_jax.pixels.normalize`),
`label` int32 `[b]` and `dataset` int32 `[b]` (the index of the example's
dataset in `TrainIterator.names`, which is also the order of the heads'
losses).

Determinism: the global batch of a step is a function of the seed and the
step alone, never of the number of processes. Every random choice is a
stateless function of the seed and of counters (the step, and how many
examples of each dataset the whole run has read), so the iterator state is
those integers, the same on every process. Each process loads only the rows
of the batch shards its devices hold (`shards`; processes whose devices hold
the same shard, as when a tensor group spans processes, load the same
examples). So a restored iterator yields exactly the batches the original
would have, on any number of processes, and a many-host run can be replayed
on one host.

Broken data (`on_corrupt`): a record that cannot be read, or a frame that
does not decode, fails the batch's tf.data step; the iterator then computes
that batch again row by row in Python with the same ops, and stops with the
`CorruptData` that names the dataset, split, record key and frame ("stop",
the default), or replaces each failing row by the next usable record of its
dataset ("skip"): the first after it in record order whose frames read and
decode, with the frames the row would sample from it, the row's crop and
flip, and that record's label. In "skip" mode the reader replaces a record
that cannot be read as it reads, by the same rule, without failing the
step. The choice is a function of the position and the stored bytes only,
so a resumed run still yields the same batches; the iterator counts the
rows replaced (`TrainIterator.corrupt_skipped`). A pipeline that fails is
dropped at once, before the error travels on (`NumpyStream`).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import math
import queue
import re
import threading
import traceback
from typing import Callable, Iterator, Sequence
import weakref

from absl import logging
import numpy as np
import tensorflow as tf

from cover_jax.input import ops
from cover_jax.input import randaugment
from cover_jax.input.source import InputError, Source

PARTS = ("video", "image")
# config.input.on_corrupt: what a record or frame that cannot be read or
# decoded does (see the module docstring).
ON_CORRUPT = ("stop", "skip")
# "skip": how many of the records after a broken one may stand in for it
# before the dataset counts as too damaged to train on.
REPLACEMENT_TRIES = 100


def check_on_corrupt(on_corrupt: str) -> str:
  """`on_corrupt`, or a ValueError naming the values it may take."""
  if on_corrupt not in ON_CORRUPT:
    raise ValueError(f"config.input.on_corrupt must be 'stop' (a broken "
                     f"record or frame stops the run, named) or 'skip' (it "
                     f"is replaced by the next usable record), not "
                     f"{on_corrupt!r}.")
  return on_corrupt


def _reason(error: BaseException) -> str:
  """What went wrong, in one line: TensorFlow's message without its op and
  node names or the Python traceback a py_function appends."""
  text = error.message if isinstance(error, tf.errors.OpError) else str(
      error)
  text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*|\[\[.*|Error in "
                r"user-defined function passed to .*? with iterator: \S+: ",
                "", text)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  line = lines[0] if lines else type(error).__name__
  return line[:500].rstrip(" .;:")


def _drop_frames(error: BaseException) -> None:
  """Clears the locals of the finished frames that `error` (and the errors
  it was raised from) passed through: they hold the tf.data iterator."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    traceback.clear_frames(error.__traceback__)  # skips executing frames
    error = error.__cause__ or error.__context__


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How examples become model inputs (config.input).

  Attributes:
    num_frames: frames sampled per video (images are 1 frame).
    crop_size: square crop fed to the model.
    scale_range: training scale jitter, as multiples of crop_size the short
      side is resized to before the random crop.
    eval_short_side: evaluation resize of the short side (None: crop_size).
    eval_views: spatial crops per video at evaluation (paper: 3).
    eval_clips: temporal clips per video at evaluation (`eval_frame_indices`;
      paper: 1); a video is scored on eval_clips x eval_views views. Images
      have one clip.
    mean, std: per-channel normalisation of [0, 1] pixel values, applied
      on the devices (`cover_jax.pixels.normalize`): the pipeline's frames
      are uint8.
    randaugment: RandAugment of training clips in timm's notation (e.g.
      "rand-m9-n2", `randaugment.parse`), after the crop and flip, one draw
      per clip; "" (the default): none.
  """
  num_frames: int
  crop_size: int
  scale_range: tuple[float, float] = (1.0, 1.25)
  eval_short_side: int | None = None
  eval_views: int = 3
  eval_clips: int = 1
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)
  randaugment: str = ""

  def __post_init__(self):
    if self.eval_clips < 1 or self.eval_views < 1:
      raise ValueError(f"config.input.eval_clips ({self.eval_clips}) and "
                       f"eval_views ({self.eval_views}) must be at least 1.")
    if self.randaugment:
      randaugment.parse(self.randaugment)  # refuses a bad string now

  def frames_of(self, source: Source) -> int:
    return self.num_frames if source.kind == "video" else 1

  def clips_of(self, kind: str) -> int:
    """Evaluation clips of a "video" or an "image" (always 1)."""
    return self.eval_clips if kind == "video" else 1


def check_sources(sources: Sequence[Source], preprocessing: Preprocessing,
                  flips: Sequence[bool]) -> None:
  """Refuses, before any compute, settings the stored data cannot honour."""
  for source, flip in zip(sources, flips):
    if source.short_side and preprocessing.crop_size > source.short_side:
      raise ValueError(
          f"Dataset {source.name!r} ({source.dataset}) stores frames with a "
          f"short side of {source.short_side} px, smaller than the crop "
          f"{preprocessing.crop_size}. Prepare it again with "
          f"--short_side={preprocessing.crop_size} or more, or lower "
          f"config.input.crop_size.")
    if flip and source.flip_changes_label:
      raise ValueError(
          f"Dataset {source.name!r} has classes that a horizontal flip "
          f"changes (left/right); set flip=False for it.")


def split_batch(global_batch: int, video_weight: float, image_weight: float,
                granule: int = 1, video_share: float | None = None
                ) -> dict[str, int]:
  """Examples per part: in proportion to the parts' weights (or video_share).

  Each part gets a multiple of `granule` (the number of batch shards), and a
  part with datasets gets at least one granule.
  """
  if global_batch % granule:
    raise ValueError(f"Batch size {global_batch} is not divisible by the "
                     f"{granule} batch shards of the mesh; choose a multiple "
                     f"of {granule}.")
  units = global_batch // granule
  if units < (video_weight > 0) + (image_weight > 0):
    raise ValueError(f"Batch size {global_batch} cannot hold one shard of "
                     f"{granule} examples per part; raise it.")
  if video_share is None:
    video_share = video_weight / (video_weight + image_weight)
  low = 1 if video_weight > 0 else 0  # a part with datasets gets a shard
  high = units - 1 if image_weight > 0 else units  # and one without, none
  video = min(max(int(round(units * video_share)), low), high)
  return {"video": video * granule, "image": (units - video) * granule}


def sampling_weights(sources: Sequence[Source],
                     weights: Sequence[float | None] | None = None
                     ) -> list[float]:
  """Per source its sampling weight: the one given, else its number of
  training examples."""
  return [float(s.num_examples) if w is None else float(w) for s, w in
          zip(sources, weights or [None] * len(sources))]


def mixture_split(kinds: Sequence[str], weights: Sequence[float],
                  global_batch: int, *, granule: int = 1,
                  micro_batches: int = 1, video_share: float | None = None
                  ) -> dict[str, int]:
  """The training batch's examples per part: the one rule that training,
  --mode=describe and --mode=plan use.

  A part weighs the summed sampling weights of its datasets (or
  video_share); each part is a multiple of granule x micro_batches, so that
  every micro-batch has rows on every batch shard.
  """
  if global_batch % (granule * micro_batches):
    raise ValueError(
        f"Batch size {global_batch} is not divisible by the {granule} batch "
        f"shards of the mesh x {micro_batches} accumulation steps; choose a "
        f"multiple of {granule * micro_batches}.")
  part_weight = {part: sum(w for k, w in zip(kinds, weights) if k == part)
                 for part in PARTS}
  return split_batch(global_batch, part_weight["video"],
                     part_weight["image"], granule=granule * micro_batches,
                     video_share=video_share)


def _example_seeds(seed):
  """(time, crop, flip) seeds of one training example."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, 3))


# RandAugment's seed is folded from the example's with this tag, so the
# time, crop and flip seeds (and the paper configs' pixels) stay as they are.
RANDAUGMENT_STREAM = 3


def train_frame_indices(num_available, seed, num_frames: int):
  """The frames a training clip samples (random within each segment)."""
  seed_time, _, _ = _example_seeds(seed)
  return ops.sample_frame_indices(num_available, num_frames, training=True,
                                  seed=seed_time)


def eval_frame_indices(num_available, num_frames: int, reverse: bool = False,
                       clips: int = 1):
  """The frames evaluation samples: int32 [clips * num_frames], clip by clip.

  Every clip spans the whole video at the training tempo: the video of n
  frames is cut into `num_frames` equal segments (as `ops.sample_frame_
  indices` cuts it), and clip c takes in each segment the frame at offset
  (c + 1/2) / clips of it. Frame t of clip c is

      min(floor((t + (c + 1/2) / clips) * n / num_frames), n - 1)

  (in float32): clips=1 is the paper's single clip (the segments' middles),
  and the clips together take clips * num_frames evenly spaced frames, as
  TSN tests with several samples per segment. Windows cut from the video
  (mmaction2's or PySlowFast's multi-clip testing) would each be denser in
  time than the whole-video clips the model trains on. A video shorter than
  clips * num_frames repeats frames. `reverse` reverses each clip's frames.
  """
  n = tf.cast(num_available, tf.float32)
  offsets = (tf.range(clips, dtype=tf.float32)[:, None] + 0.5) / clips
  positions = (tf.range(num_frames, dtype=tf.float32)[None, :] + offsets) * (
      n / num_frames)
  indices = tf.minimum(tf.cast(tf.floor(positions), tf.int32),
                       tf.cast(num_available, tf.int32) - 1)
  if reverse:
    indices = tf.reverse(indices, axis=[1])
  return tf.reshape(indices, [-1])


def preprocess_train(sampled, seed, *, flip, prep: Preprocessing):
  """uint8 [T, crop, crop, 3] from the sampled JPEG frames of a clip: one
  scale-jittered random crop (only its window is decoded), maybe flipped,
  then RandAugment's ops if `prep.randaugment` names them."""
  _, seed_crop, seed_flip = _example_seeds(seed)
  height, width = ops.frame_shape(sampled)
  window = ops.random_crop_window(height, width, prep.crop_size,
                                  prep.scale_range, seed_crop)
  frames = ops.decode_frames(sampled, window)
  # Flip the uint8 window, before the resize: a quarter of the bytes.
  frames = tf.cond(flip, lambda: ops.random_flip(frames, seed_flip),
                   lambda: frames)
  frames = ops.to_uint8(ops.resize(frames, prep.crop_size))
  if prep.randaugment:
    frames = randaugment.augment(
        frames, randaugment.parse(prep.randaugment),
        tf.random.experimental.stateless_fold_in(seed, RANDAUGMENT_STREAM),
        fill=randaugment.fill_of(prep.mean))
  return frames


def eval_views(sampled, prep: Preprocessing, clips: int = 1):
  """uint8 [clips * views, T, crop, crop, 3] from the sampled JPEG frames of
  `clips` clips ([clips * T], `eval_frame_indices`): the views of clip 0,
  then those of clip 1, ... Every frame of a video has one size, so all
  clips are cut at the same windows."""
  frames = ops.decode_frames(sampled)
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  windows = ops.view_windows(height, width, prep.crop_size,
                             prep.eval_short_side or prep.crop_size,
                             prep.eval_views)
  views = ops.to_uint8(ops.crop_views(frames, windows, prep.crop_size))
  size = prep.crop_size
  views = tf.reshape(views, [prep.eval_views, clips, -1, size, size, 3])
  return tf.reshape(tf.transpose(views, [1, 0, 2, 3, 4, 5]),
                    [clips * prep.eval_views, -1, size, size, 3])


def preprocess_eval(encoded, *, num_frames: int, prep: Preprocessing,
                    reverse: bool = False, clips: int = 1):
  """uint8 [clips * views, T, crop, crop, 3] from every JPEG frame of a
  clip: the middle frame of each segment of each clip, each view."""
  indices = eval_frame_indices(tf.shape(encoded)[0], num_frames, reverse,
                               clips)
  return eval_views(tf.gather(encoded, indices), prep, clips)


def _traced(fn: Callable) -> Callable:
  """fn for tf.data to trace as written, without autograph's rewrite: the
  pipeline's functions branch with tf ops only, and rewriting them costs
  seconds each time a pipeline is built (every run, every evaluation)."""
  return tf.autograph.experimental.do_not_convert(fn)


class NumpyStream:
  """A tf.data pipeline as an iterator of numpy trees, closed before exit.

  Records are fetched by a py_function. A tf.data iterator destroyed while
  the interpreter shuts down waits forever for the py_function calls still
  in flight (their threads may no longer take the GIL): the exit hangs. So
  the iterator is dropped by close(), at exit, and at once when the pipeline
  fails or an exception (KeyboardInterrupt) interrupts a fetch, after the
  references to it from that exception's traceback are cleared. A stream
  nobody closed is dropped by `_Reaper`'s thread once collected.

  Args:
    dataset: the pipeline.
    recover: called as recover(index, reason) when the pipeline fails at the
      element of that index; returns (that element, computed another way; a
      dataset of the elements after it) or raises. None: an InputError.
  """

  def __init__(self, dataset: tf.data.Dataset,
               recover: Callable[[int, str], tuple] | None = None):
    self._holder = [iter(dataset.as_numpy_iterator())]
    self._recover = recover
    self.position = 0  # elements returned
    weakref.finalize(self, _reaper().drop, self._holder)

  def __iter__(self):
    return self

  def __next__(self):
    if not self._holder:
      raise StopIteration
    try:
      element = next(self._holder[0])
    except tf.errors.OpError as e:
      reason = _reason(e)
      _drop_frames(e)
    except BaseException as e:  # the end, or an interrupt
      _drop_frames(e)
      self.close()
      raise
    else:
      self.position += 1
      return element
    self.close()  # before anything else can fail
    if self._recover is None:
      raise InputError(f"The input pipeline failed at batch "
                       f"{self.position}: {reason}.")
    element, rest = self._recover(self.position, reason)
    self._holder.append(iter(rest.as_numpy_iterator()))
    self.position += 1
    return element

  def close(self) -> None:
    """Stops the pipeline's threads; the stream ends."""
    self._holder.clear()


class _Reaper:
  """Destroys the tf.data iterators of collected streams on its own thread.

  Destroying an iterator waits for its reads in flight. Garbage collection
  runs finalizers on whichever thread allocates, one of those reads
  included, or one holding a lock they wait for (ArrayRecord's reads go
  through concurrent.futures, whose submit() takes a process-wide lock):
  destroyed there, the iterator would wait for itself forever. At exit,
  when that thread stops, iterators are dropped at once on the main thread.
  """

  def __init__(self):
    self._queue = queue.SimpleQueue()  # put() is safe inside a finalizer
    self._exiting = False
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name="tf-iterator-reaper")
    self._thread.start()
    atexit.register(self._stop)

  def drop(self, holder: list) -> None:
    if self._exiting:
      holder.clear()
    else:
      self._queue.put(holder)

  def _run(self) -> None:
    while (holder := self._queue.get()) is not None:
      holder.clear()

  def _stop(self) -> None:
    self._exiting = True
    self._queue.put(None)
    self._thread.join(timeout=60)


@functools.cache
def _reaper() -> _Reaper:
  return _Reaper()


def shard_rows(batch: int, granule: int, shards: Sequence[int]) -> np.ndarray:
  """Rows of a `batch` split into `granule` equal shards that `shards` hold.

  Shard k is rows [k b / granule, (k + 1) b / granule), as the mesh places
  them (sharding.batch_sharding); the rows come in shard order.
  """
  per = batch // granule
  return np.concatenate([np.arange(k * per, (k + 1) * per) for k in shards]
                        ).astype(np.int64)


def _check_shards(granule: int, shards: Sequence[int] | None) -> list[int]:
  shards = list(range(granule)) if shards is None else sorted(set(shards))
  if not shards or not all(0 <= k < granule for k in shards):
    raise ValueError(f"Batch shards {shards} are not a non-empty subset of "
                     f"the {granule} shards 0..{granule - 1} of the mesh.")
  return shards


class _Records:
  """Several sources, read by (source, position).

  Position j of a source is record `shuffle_epoch(j % n)` in training (a
  fresh permutation of all n records every epoch), record j at evaluation.

  Args:
    sources: the sources.
    ids: their global dataset ids (default: 0, 1, ...).
    on_corrupt: "stop" or "skip" (`usable`).
    frames_for: (source, record, example seed) -> the frame indices the
      pipeline samples from that record for that seed (for replacements).
  """

  def __init__(self, sources: Sequence[Source],
               ids: Sequence[int] | None = None, *, on_corrupt: str = "stop",
               frames_for: Callable | None = None):
    self.on_corrupt = check_on_corrupt(on_corrupt)
    self._frames_for = frames_for
    self._logged = set()  # replacements already logged
    self.sources = list(sources)
    # Global dataset ids: each dataset gets its own permutations, even where
    # two datasets hold records in the same order (e.g. the mini digits).
    self.ids = list(range(len(sources)) if ids is None else ids)
    self.sizes = [s.num_examples for s in sources]
    empty = [s.name for s in sources if s.num_examples == 0]
    if empty:
      raise ValueError(f"Datasets {empty} have no examples in their split.")
    self._offsets = np.cumsum([0] + self.sizes[:-1]).astype(np.int64)
    self._counts = np.concatenate([s.frame_counts() for s in sources])

  def record(self, source, position, shuffle_seed=None):
    """Record index (int64) of a position; shuffled if seeded."""
    n = tf.gather(tf.constant(self.sizes, tf.int64), source)
    index = position % n
    if shuffle_seed is not None:
      epoch = position // n
      dataset_id = tf.gather(tf.constant(self.ids, tf.int64), source)
      epoch_seed = tf.random.experimental.stateless_fold_in(
          tf.stack([tf.cast(shuffle_seed, tf.int64), dataset_id]), epoch)
      index = tf.random.experimental.index_shuffle(index, seed=epoch_seed,
                                                   max_index=n - 1)
    return index

  def frame_count(self, source, record):
    """Frames stored for a record (1 for an image)."""
    return tf.gather(tf.constant(self._counts),
                     tf.gather(tf.constant(self._offsets), source) + record)

  def read(self, source, record, frame_indices, seeds):
    """(JPEGs string [R, T], label int32 [R], replaced int32 [R]) of a batch
    of R records: frames `frame_indices [R, T]` of each. One Python call per
    batch. A record that cannot be read fails the call ("stop") or is
    replaced (`usable`, with the row's seed in `seeds [R, 2]`; "skip"):
    `replaced` is 1 on those rows."""
    shape = tf.shape(frame_indices)
    encoded, label, replaced = tf.py_function(
        self._read, [source, record, frame_indices, seeds],
        (tf.string, tf.int32, tf.int32))
    return (tf.reshape(encoded, shape), tf.reshape(label, shape[:1]),
            tf.reshape(replaced, shape[:1]))

  def _read(self, source, record, frame_indices, seeds):
    source, record = source.numpy(), record.numpy()
    frame_indices, seeds = frame_indices.numpy(), seeds.numpy()
    frames = np.empty(frame_indices.shape, object)
    labels = np.empty(len(source), np.int32)
    replaced = np.zeros(len(source), np.int32)
    for s in np.unique(source):
      rows = np.flatnonzero(source == s)
      try:
        jpegs, labels[rows] = self.sources[s].read(record[rows],
                                                   frame_indices[rows])
        frames[rows] = np.asarray(jpegs, object).reshape(len(rows), -1)
      except Exception:  # pylint: disable=broad-except
        if self.on_corrupt == "stop":
          raise  # the pipeline fails; its owner names the record
        for i in rows:
          used, labels[i], jpegs = self.usable(s, record[i],
                                               frame_indices[i], seeds[i])
          frames[i] = np.asarray(jpegs, object)
          replaced[i] = used != record[i]
    return frames.ravel(), labels, replaced

  def usable(self, source: int, record: int, indices, seed,
             process: Callable | None = None) -> tuple[int, int, object]:
    """(record, label, JPEGs or `process(JPEGs)`) of the first record that
    serves among `record` and, in "skip" mode, the REPLACEMENT_TRIES records
    after it (in record order, cyclically): the first whose frames read
    and, with `process`, process without an error. `record` reads its frame
    `indices`, a replacement the frames the pipeline would sample from it
    for `seed`. Raises the CorruptData that names `record` where none
    serves."""
    n = self.sizes[source]
    tries = 1 if self.on_corrupt == "stop" else min(n, REPLACEMENT_TRIES + 1)
    failure = None
    for k in range(tries):
      r = (int(record) + k) % n
      frames = np.asarray(indices if k == 0 else
                          self._frames_for(source, r, seed))
      try:
        jpegs, labels = self.sources[source].read([r], frames[None])
        output = jpegs if process is None else process(jpegs)
      except Exception as e:  # pylint: disable=broad-except
        failure = failure or e
        continue
      if k and (source, int(record)) not in self._logged:
        self._logged.add((source, int(record)))
        logging.warning("%s: record %d cannot be read or decoded; record %d "
                        "stands in for it (config.input.on_corrupt='skip').",
                        self.sources[source].name, record, r)
      return r, int(labels[0]), output
    raise self.named(source, int(record), indices, failure, tried=tries - 1)

  def named(self, source: int, record: int, indices, failure: Exception,
            tried: int = 0):
    """The CorruptData for `record` of `source`, whose frame `indices`
    failed with `failure`; it names the first of those frames that cannot
    be read or decoded on its own, if one cannot."""
    src = self.sources[source]
    frame, reason = None, _reason(failure)
    for f in dict.fromkeys(np.asarray(indices).ravel().tolist()):
      try:
        (jpeg, *_), _ = src.read([record], np.asarray([[f]]))
        tf.io.decode_jpeg(jpeg, channels=3)
      except Exception as e:  # pylint: disable=broad-except
        frame, reason = f, _reason(e)
        break
    if tried:
      reason += (f" (nor could any of the {tried} records after it stand "
                 f"in for it)")
    return src.broken(record, frame if src.kind == "video" else None, reason)


class _Part:
  """One part (videos or images) of the co-training batches: the datasets
  drawn into it, and the ops that turn a step into this process's rows, run
  either as a tf.data pipeline (`dataset`) or row by row (`rows_of`).

  Args:
    part: "video" or "image".
    ids: the global ids of its datasets (indices into `sources`).
    sources, prep, flips, weights, seed: as TrainIterator's.
    batch: the part's global batch size.
    rows: the rows of that batch this process loads.
    on_corrupt: "stop" or "skip".
  """

  def __init__(self, part: str, ids: Sequence[int], sources, prep, flips,
               weights, seed: int, batch: int, rows: np.ndarray,
               on_corrupt: str):
    self.ids = list(ids)
    self.prep, self.batch, self.seed = prep, batch, seed
    self.num_frames = prep.frames_of(sources[ids[0]])
    self.records = _Records([sources[i] for i in ids], ids=ids,
                            on_corrupt=on_corrupt,
                            frames_for=self._frames_for)
    self.log_probs = tf.math.log(tf.constant(
        [[weights[i] / sum(weights[j] for j in ids) for i in ids]]))
    self.part_seed = tf.constant([seed, PARTS.index(part) * 65536], tf.int64)
    self.global_ids = tf.constant(ids, tf.int32)
    self.flip = tf.constant([bool(flips[i]) for i in ids])
    self.rows = tf.constant(rows, tf.int64)

  def draw(self, consumed, step):
    """(consumed after the step, (this process's rows' source, position,
    consumed after)): the whole batch's datasets and positions."""
    step_seed = tf.random.experimental.stateless_fold_in(self.part_seed, step)
    source = tf.random.stateless_categorical(self.log_probs, self.batch,
                                             seed=step_seed)[0]
    onehot = tf.one_hot(source, len(self.ids), dtype=tf.int64)
    earlier = tf.cumsum(onehot, axis=0, exclusive=True)  # in this step
    position = (tf.gather(consumed, source) +
                tf.reduce_sum(earlier * onehot, axis=1))
    after = consumed + tf.reduce_sum(onehot, axis=0)
    return after, (tf.cast(tf.gather(source, self.rows), tf.int32),
                   tf.gather(position, self.rows), after)

  def locate(self, source, position):
    """A row's (source, record, example seed, frame indices)."""
    record = self.records.record(source, position, shuffle_seed=self.seed)
    example_seed = self._example_seed(source, position)
    indices = train_frame_indices(self.records.frame_count(source, record),
                                  example_seed, self.num_frames)
    return source, record, example_seed, indices

  def _example_seed(self, source, position):
    return tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(
            self.part_seed, tf.cast(tf.gather(self.global_ids, source),
                                    tf.int64)), position)

  def _frames_for(self, source, record, seed):
    """The frames a row of `seed` samples from `record` (a replacement)."""
    return train_frame_indices(self.records.frame_count(source, record),
                               tf.constant(seed, tf.int64),
                               self.num_frames).numpy()

  def _preprocess(self, encoded, source, example_seed):
    return preprocess_train(encoded, example_seed,
                            flip=tf.gather(self.flip, source), prep=self.prep)

  def dataset(self, step: int, consumed: Sequence[int]) -> tf.data.Dataset:
    """(this process's examples, consumed counts after the step) of every
    step from `step` on, `consumed` examples of each dataset read before."""
    records, global_ids, num_rows = self.records, self.global_ids, \
        len(self.rows)

    def read(source, record, example_seed, indices):  # a step's rows
      encoded, label, replaced = records.read(source, record, indices,
                                              example_seed)
      return encoded, label, source, example_seed, replaced

    def preprocess(encoded, label, source, example_seed, replaced):
      return {"frames": self._preprocess(encoded, source, example_seed),
              "label": label, "dataset": tf.gather(global_ids, source),
              "replaced": replaced}

    steps = tf.data.Dataset.range(step, 2**62).scan(
        tf.constant(consumed, tf.int64), _traced(self.draw))
    examples = (steps.map(_traced(lambda source, position, _: (source,
                                                                position)))
                .unbatch()
                .map(_traced(self.locate))
                .batch(num_rows, drop_remainder=True)
                .map(_traced(read), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
                .unbatch()
                .map(_traced(preprocess), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
                .batch(num_rows, drop_remainder=True))
    return tf.data.Dataset.zip(examples, steps.map(_traced(lambda *x: x[-1])))

  def rows_of(self, step: int, consumed: Sequence[int]) -> tuple:
    """The element `dataset(step, consumed)` starts with, computed row by
    row with the same ops: a row whose frames cannot be read or decoded is
    named ("stop": CorruptData) or replaced (`_Records.usable`, "skip")."""
    _, (sources, positions, after) = self.draw(
        tf.constant(consumed, tf.int64), tf.constant(step, tf.int64))
    frames, labels, replaced = [], [], []
    for source, position in zip(sources, positions):
      _, record, example_seed, indices = self.locate(source, position)
      used, label, clip = self.records.usable(
          int(source), int(record), indices.numpy(), example_seed.numpy(),
          process=lambda jpegs, s=source, e=example_seed: self._preprocess(
              tf.constant(jpegs, tf.string), s, e).numpy())
      frames.append(clip)
      labels.append(label)
      replaced.append(int(used != int(record)))
    examples = {"frames": np.stack(frames),
                "label": np.asarray(labels, np.int32),
                "dataset": tf.gather(self.global_ids, sources).numpy(),
                "replaced": np.asarray(replaced, np.int32)}
    return examples, after.numpy()


class TrainIterator:
  """Endless co-training batches (this process's rows), with a saveable
  position.

  Inside each part, every example's dataset is drawn with probability
  proportional to the dataset's weight (its size, or config weight); each
  dataset is read in a fresh random order every epoch and never runs dry.
  The draws and positions are those of the whole global batch; this process
  then loads the rows of its `shards` only.

  Args:
    sources: the training splits, in head order.
    prep: preprocessing settings.
    flips: per source, whether training flips horizontally.
    global_batch: examples per step over all processes.
    seed: the data seed.
    weights: per source sampling weight (default: its number of examples).
    granule: batch shards of the mesh (each part is a multiple of it).
    shards: the batch shards this process loads (default: all), as
      `sharding.process_batch_shards` gives them.
    micro_batches: the step's gradient accumulation: each part is then a
      multiple of granule x micro_batches, so every micro-batch has rows on
      every shard.
    video_share: fraction of the batch for videos (default: by weight).
    state: a `state()` of an earlier iterator, to continue exactly there.
    threads: tf.data threads (None: TF's default, all cores).
    on_corrupt: a record or frame that cannot be read or decoded stops the
      run with a CorruptData naming it ("stop"), or is replaced by the next
      usable record of its dataset and counted ("skip"; `corrupt_skipped`).
  """

  def __init__(self, sources: Sequence[Source], prep: Preprocessing, *,
               flips: Sequence[bool], global_batch: int, seed: int = 0,
               weights: Sequence[float] | None = None, granule: int = 1,
               shards: Sequence[int] | None = None, micro_batches: int = 1,
               video_share: float | None = None, state: dict | None = None,
               threads: int | None = None, on_corrupt: str = "stop"):
    check_sources(sources, prep, flips)
    check_on_corrupt(on_corrupt)
    self.names = [s.name for s in sources]
    self.shards = _check_shards(granule, shards)
    weights = sampling_weights(sources, weights)
    self.global_batch_sizes = mixture_split(
        [s.kind for s in sources], weights, global_batch, granule=granule,
        micro_batches=micro_batches, video_share=video_share)
    self._step = 0
    self._consumed = {name: 0 for name in self.names}
    self._skipped = {name: 0 for name in self.names}
    if state is not None:
      self._restore(state)
    self._parts = {}
    for part in PARTS:
      ids = [i for i, s in enumerate(sources) if s.kind == part]
      if ids:
        self._parts[part] = _Part(
            part, ids, sources, prep, flips, weights, seed,
            self.global_batch_sizes[part],
            shard_rows(self.global_batch_sizes[part], granule, self.shards),
            on_corrupt)
    self._threads = threads
    self._stream = NumpyStream(self._dataset(self._step, self._consumed),
                               recover=self._recover)

  def _restore(self, state: dict) -> None:
    if sorted(state["consumed"]) != sorted(self.names):
      raise ValueError(f"The saved data state is for datasets "
                       f"{sorted(state['consumed'])}, not {sorted(self.names)}"
                       f"; a run cannot resume with a different mixture.")
    self._step = int(state["step"])
    self._consumed = {k: int(v) for k, v in state["consumed"].items()}

  def _counts(self, part: str, consumed: dict) -> list[int]:
    return [consumed[self.names[i]] for i in self._parts[part].ids]

  def _dataset(self, step: int, consumed: dict) -> tf.data.Dataset:
    """Every step's element from `step` on, `consumed` read before it."""
    dataset = tf.data.Dataset.zip(
        {part: p.dataset(step, self._counts(part, consumed))
         for part, p in self._parts.items()}).prefetch(2)
    if self._threads:
      options = tf.data.Options()
      options.threading.private_threadpool_size = self._threads
      dataset = dataset.with_options(options)
    return dataset

  def _recover(self, _, reason: str) -> tuple:
    """The element of the step whose pipeline failed, row by row, and the
    pipeline of the steps after it."""
    logging.info("The input pipeline failed at step %d (%s); reading that "
                 "batch row by row.", self._step, reason)
    element = {part: p.rows_of(self._step, self._counts(part, self._consumed))
               for part, p in self._parts.items()}
    after = dict(self._consumed)
    for part, (_, consumed) in element.items():
      for i, count in zip(self._parts[part].ids, consumed):
        after[self.names[i]] = int(count)
    return element, self._dataset(self._step + 1, after)

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    element = next(self._stream)
    self._step += 1
    batch = {}
    for part, (examples, consumed) in element.items():
      for i, count in zip(self._parts[part].ids, consumed):
        self._consumed[self.names[i]] = int(count)
      examples = dict(examples)
      replaced = examples.pop("replaced")
      for i in examples["dataset"][replaced > 0]:
        self._skipped[self.names[i]] += 1
      batch[part] = examples
    return batch

  def corrupt_skipped(self) -> dict[str, int]:
    """Per dataset, the rows replaced so far ("skip") in the batches this
    iterator returned (this process's rows; 0 in "stop" mode)."""
    return dict(self._skipped)

  def close(self) -> None:
    """Stops the pipeline's threads."""
    self._stream.close()

  def state(self) -> dict:
    """The position after the last batch returned: {"step", "consumed"}.

    The same on every process (counts of the global batches), so it restores
    onto any number of processes.
    """
    return {"step": self._step, "consumed": dict(self._consumed)}


def eval_num_batches(source: Source, global_batch: int) -> int:
  """Global batches that cover the split once."""
  return math.ceil(source.num_examples / global_batch)


def eval_batches(source: Source, prep: Preprocessing, *, global_batch: int,
                 reverse: bool = False, granule: int = 1,
                 shards: Sequence[int] | None = None,
                 on_corrupt: str = "stop") -> NumpyStream:
  """Every example of the split once, all views of a video together.

  Global batch b holds records b x global_batch + row; this process yields
  the rows of its `shards` (of `granule`; default all). Yields `frames`
  [b, clips * views, T, crop, crop, 3] (`eval_views`; an image has 1 clip),
  `label` [b], `mask` [b] (0 on the padding
  that fills the last batch), `broken` [b] and `record` [b] (the record
  index). Every process yields the same number of batches. A record that
  cannot be read or decoded stops the evaluation with the CorruptData naming
  it ("stop"), or gets mask 0 and broken 1, so that it is counted apart
  ("skip"; logged).
  """
  if global_batch % granule:
    raise ValueError(f"Eval batch size {global_batch} is not divisible by "
                     f"the {granule} batch shards of the mesh.")
  num_frames, clips = prep.frames_of(source), prep.clips_of(source.kind)
  records = _Records([source], on_corrupt=on_corrupt,
                     frames_for=lambda _, record, __: eval_frame_indices(
                         records.frame_count(0, record), num_frames,
                         reverse, clips).numpy())
  rows = shard_rows(global_batch, granule, _check_shards(granule, shards))
  num_batches = eval_num_batches(source, global_batch)

  def locate(batch, row):
    position = batch * global_batch + row
    valid = position < source.num_examples
    record = records.record(0, tf.where(valid, position, 0))
    indices = eval_frame_indices(records.frame_count(0, record), num_frames,
                                 reverse, clips)
    return record, indices, valid

  def read(record, indices, valid):
    encoded, label, replaced = records.read(
        tf.zeros_like(record, tf.int32), record, indices,
        tf.zeros([tf.size(record), 2], tf.int64))
    return encoded, label, record, valid, replaced != 0

  def preprocess(encoded, label, record, valid, broken):
    return {"frames": eval_views(encoded, prep, clips), "label": label,
            "mask": tf.cast(valid & ~broken, tf.int32),
            "broken": tf.cast(valid & broken, tf.int32),
            "record": tf.cast(record, tf.int32)}

  def batches(start):
    row_dataset = tf.data.Dataset.from_tensor_slices(rows)
    return (tf.data.Dataset.range(start, num_batches)
            .flat_map(_traced(lambda b: row_dataset.map(
                _traced(lambda r: (b, r)))))
            .map(_traced(locate))
            .batch(len(rows))
            .map(_traced(read), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
            .unbatch()
            .map(_traced(preprocess), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
            .batch(len(rows)).prefetch(2))

  def recover(batch, reason):  # that batch row by row, then the others
    logging.info("The evaluation pipeline of %s failed at batch %d (%s); "
                 "reading that batch row by row.", source.name, batch, reason)
    out = {"frames": [], "label": [], "mask": [], "broken": [], "record": []}
    for row in rows:
      record, indices, valid = locate(tf.constant(batch, tf.int64),
                                      tf.constant(row))
      used, label, views = records.usable(
          0, int(record), indices.numpy(), None,
          process=lambda jpegs: eval_views(tf.constant(jpegs, tf.string),
                                           prep, clips).numpy())
      out["frames"].append(views)
      out["label"].append(label)
      out["mask"].append(int(bool(valid) and used == int(record)))
      out["broken"].append(int(bool(valid) and used != int(record)))
      out["record"].append(int(record))
    element = {k: np.stack(v) if k == "frames" else np.asarray(v, np.int32)
               for k, v in out.items()}
    return element, batches(batch + 1)

  return NumpyStream(batches(0), recover=recover)


def to_global(local_batch, mesh):
  """Global jax.Arrays over the mesh's batch axes from this process's rows.

  `local_batch` holds the rows of `sharding.process_batch_shards(mesh)`, in
  that order (as TrainIterator and eval_batches yield them); every device
  gets its shard's rows, whichever processes share that shard.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from cover_jax import sharding  # pylint: disable=import-outside-toplevel
  shards = sharding.process_batch_shards(mesh)
  slot = {k: i for i, k in enumerate(shards)}
  granule = sharding.batch_shards(mesh)

  def place(x):
    per = x.shape[0] // len(shards)

    def rows(index):  # a device's slice of the global array
      start = slot[(index[0].start or 0) // per] * per
      return x[start:start + per][(slice(None),) + tuple(index[1:])]
    return jax.make_array_from_callback(
        (per * granule,) + x.shape[1:], sharding.batch_sharding(mesh, x.ndim),
        rows)
  return jax.tree.map(place, local_batch)
