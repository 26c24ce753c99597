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
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence
import weakref

import numpy as np
import tensorflow as tf

from cover_jax.input import ops
from cover_jax.input.source import Source

PARTS = ("video", "image")


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
    mean, std: per-channel normalisation of [0, 1] pixel values, applied
      on the devices (`cover_jax.pixels.normalize`): the pipeline's frames
      are uint8.
  """
  num_frames: int
  crop_size: int
  scale_range: tuple[float, float] = (1.0, 1.25)
  eval_short_side: int | None = None
  eval_views: int = 3
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)

  def frames_of(self, source: Source) -> int:
    return self.num_frames if source.kind == "video" else 1


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


def _example_seeds(seed):
  """(time, crop, flip) seeds of one training example."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, 3))


def train_frame_indices(num_available, seed, num_frames: int):
  """The frames a training clip samples (random within each segment)."""
  seed_time, _, _ = _example_seeds(seed)
  return ops.sample_frame_indices(num_available, num_frames, training=True,
                                  seed=seed_time)


def eval_frame_indices(num_available, num_frames: int, reverse: bool = False):
  """The frames an evaluation clip samples (each segment's middle one)."""
  indices = ops.sample_frame_indices(num_available, num_frames,
                                     training=False)
  return tf.reverse(indices, axis=[0]) if reverse else indices


def preprocess_train(sampled, seed, *, flip, prep: Preprocessing):
  """uint8 [T, crop, crop, 3] from the sampled JPEG frames of a clip: one
  scale-jittered random crop (only its window is decoded), maybe flipped."""
  _, seed_crop, seed_flip = _example_seeds(seed)
  height, width = ops.frame_shape(sampled)
  window = ops.random_crop_window(height, width, prep.crop_size,
                                  prep.scale_range, seed_crop)
  frames = ops.decode_frames(sampled, window)
  # Flip the uint8 window, before the resize: a quarter of the bytes.
  frames = tf.cond(flip, lambda: ops.random_flip(frames, seed_flip),
                   lambda: frames)
  return ops.to_uint8(ops.resize(frames, prep.crop_size))


def eval_views(sampled, prep: Preprocessing):
  """uint8 [views, T, crop, crop, 3] from the sampled JPEG frames of a clip."""
  frames = ops.decode_frames(sampled)
  height, width = tf.shape(frames)[1], tf.shape(frames)[2]
  windows = ops.view_windows(height, width, prep.crop_size,
                             prep.eval_short_side or prep.crop_size,
                             prep.eval_views)
  return ops.to_uint8(ops.crop_views(frames, windows, prep.crop_size))


def preprocess_eval(encoded, *, num_frames: int, prep: Preprocessing,
                    reverse: bool = False):
  """uint8 [views, T, crop, crop, 3] from every JPEG frame of a clip: the
  middle frame of each segment, each view."""
  indices = eval_frame_indices(tf.shape(encoded)[0], num_frames, reverse)
  return eval_views(tf.gather(encoded, indices), prep)


class NumpyStream:
  """A tf.data pipeline as an iterator of numpy trees, closed before exit.

  Records are fetched by a py_function; one still running in a tf.data
  thread while the interpreter shuts down can hang the exit, so the iterator
  is dropped at exit (or by close()) before Python finalises.
  """

  def __init__(self, dataset: tf.data.Dataset):
    self._holder = [iter(dataset.as_numpy_iterator())]
    self._close = weakref.finalize(self, self._holder.clear)

  def __iter__(self):
    return self

  def __next__(self):
    if not self._holder:
      raise StopIteration
    return next(self._holder[0])

  def close(self) -> None:
    """Stops the pipeline's threads; the stream ends."""
    self._close()


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
  """

  def __init__(self, sources: Sequence[Source],
               ids: Sequence[int] | None = None):
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

  def read(self, source, record, frame_indices):
    """(JPEGs string [R, T], label int32 [R]) of a batch of R records:
    frames `frame_indices [R, T]` of each. One Python call per batch."""
    shape = tf.shape(frame_indices)
    encoded, label = tf.py_function(
        self._read, [source, record, frame_indices], (tf.string, tf.int32))
    return tf.reshape(encoded, shape), tf.reshape(label, shape[:1])

  def _read(self, source, record, frame_indices):
    source, record = source.numpy(), record.numpy()
    frame_indices = frame_indices.numpy()
    frames = np.empty(frame_indices.shape, object)
    labels = np.empty(len(source), np.int32)
    for s in np.unique(source):
      rows = source == s
      jpegs, labels[rows] = self.sources[s].read(record[rows],
                                                 frame_indices[rows])
      frames[rows] = np.asarray(jpegs, object).reshape(
          frame_indices[rows].shape)
    return frames.ravel(), labels


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
  """

  def __init__(self, sources: Sequence[Source], prep: Preprocessing, *,
               flips: Sequence[bool], global_batch: int, seed: int = 0,
               weights: Sequence[float] | None = None, granule: int = 1,
               shards: Sequence[int] | None = None, micro_batches: int = 1,
               video_share: float | None = None, state: dict | None = None,
               threads: int | None = None):
    check_sources(sources, prep, flips)
    self.names = [s.name for s in sources]
    self.shards = _check_shards(granule, shards)
    weights = [float(s.num_examples) if w is None else float(w) for s, w in
               zip(sources, weights or [None] * len(sources))]
    part_weight = {part: sum(w for s, w in zip(sources, weights)
                             if s.kind == part) for part in PARTS}
    if global_batch % (granule * micro_batches):
      raise ValueError(
          f"Batch size {global_batch} is not divisible by the {granule} batch "
          f"shards of the mesh x {micro_batches} accumulation steps; choose a "
          f"multiple of {granule * micro_batches}.")
    self.global_batch_sizes = split_batch(
        global_batch, part_weight["video"], part_weight["image"],
        granule=granule * micro_batches, video_share=video_share)
    self._step = 0
    self._consumed = {name: 0 for name in self.names}
    if state is not None:
      self._restore(state)
    self._part_ids = {}
    parts = {}
    for part in PARTS:
      ids = [i for i, s in enumerate(sources) if s.kind == part]
      if not ids:
        continue
      self._part_ids[part] = ids
      parts[part] = self._part(part, ids, sources, prep, flips, weights, seed,
                               shard_rows(self.global_batch_sizes[part],
                                          granule, self.shards))
    dataset = tf.data.Dataset.zip(parts).prefetch(2)
    if threads:
      options = tf.data.Options()
      options.threading.private_threadpool_size = threads
      dataset = dataset.with_options(options)
    self._stream = NumpyStream(dataset)

  def _restore(self, state: dict) -> None:
    if sorted(state["consumed"]) != sorted(self.names):
      raise ValueError(f"The saved data state is for datasets "
                       f"{sorted(state['consumed'])}, not {sorted(self.names)}"
                       f"; a run cannot resume with a different mixture.")
    self._step = int(state["step"])
    self._consumed = {k: int(v) for k, v in state["consumed"].items()}

  def _part(self, part, ids, sources, prep, flips, weights, seed, rows):
    """(this process's examples, consumed counts after the step) per step."""
    records = _Records([sources[i] for i in ids], ids=ids)
    log_probs = tf.math.log(tf.constant(
        [[weights[i] / sum(weights[j] for j in ids) for i in ids]]))
    part_seed = tf.constant([seed, PARTS.index(part) * 65536], tf.int64)
    global_ids = tf.constant(ids, tf.int32)
    flip = tf.constant([bool(flips[i]) for i in ids])
    num_frames = prep.frames_of(sources[ids[0]])
    batch = self.global_batch_sizes[part]
    rows = tf.constant(rows, tf.int64)

    def draw(consumed, step):  # the whole batch's datasets and positions
      step_seed = tf.random.experimental.stateless_fold_in(part_seed, step)
      source = tf.random.stateless_categorical(log_probs, batch,
                                               seed=step_seed)[0]
      onehot = tf.one_hot(source, len(ids), dtype=tf.int64)
      earlier = tf.cumsum(onehot, axis=0, exclusive=True)  # in this step
      position = (tf.gather(consumed, source) +
                  tf.reduce_sum(earlier * onehot, axis=1))
      after = consumed + tf.reduce_sum(onehot, axis=0)
      return after, (tf.cast(tf.gather(source, rows), tf.int32),
                     tf.gather(position, rows), after)

    def locate(source, position):  # a row's record, seed and frames
      record = records.record(source, position, shuffle_seed=seed)
      example_seed = tf.random.experimental.stateless_fold_in(
          tf.random.experimental.stateless_fold_in(
              part_seed, tf.cast(global_ids[source], tf.int64)), position)
      indices = train_frame_indices(records.frame_count(source, record),
                                    example_seed, num_frames)
      return source, record, example_seed, indices

    def read(source, record, example_seed, indices):  # a step's rows
      encoded, label = records.read(source, record, indices)
      return encoded, label, source, example_seed

    def preprocess(encoded, label, source, example_seed):
      frames = preprocess_train(encoded, example_seed, flip=flip[source],
                                prep=prep)
      return {"frames": frames, "label": label,
              "dataset": global_ids[source]}

    start = tf.constant([self._consumed[self.names[i]] for i in ids],
                        tf.int64)
    steps = tf.data.Dataset.range(self._step, 2**62).scan(start, draw)
    examples = (steps.map(lambda source, position, _: (source, position))
                .unbatch()
                .map(locate)
                .batch(len(rows), drop_remainder=True)
                .map(read, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
                .unbatch()
                .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
                .batch(len(rows), drop_remainder=True))
    return tf.data.Dataset.zip(examples, steps.map(lambda *x: x[-1]))

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    element = next(self._stream)
    self._step += 1
    for part, (_, consumed) in element.items():
      for i, count in zip(self._part_ids[part], consumed):
        self._consumed[self.names[i]] = int(count)
    return {part: examples for part, (examples, _) in element.items()}

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
                 shards: Sequence[int] | None = None) -> NumpyStream:
  """Every example of the split once, all views of a video together.

  Global batch b holds records b x global_batch + row; this process yields
  the rows of its `shards` (of `granule`; default all). Yields `frames`
  [b, views, T, crop, crop, 3], `label` [b], `mask` [b] (0 on the padding
  that fills the last batch) and `record` [b] (the record index). Every
  process yields the same number of batches.
  """
  if global_batch % granule:
    raise ValueError(f"Eval batch size {global_batch} is not divisible by "
                     f"the {granule} batch shards of the mesh.")
  records = _Records([source])
  rows = shard_rows(global_batch, granule, _check_shards(granule, shards))
  num_frames = prep.frames_of(source)

  def locate(batch, row):
    position = batch * global_batch + row
    valid = position < source.num_examples
    record = records.record(0, tf.where(valid, position, 0))
    indices = eval_frame_indices(records.frame_count(0, record), num_frames,
                                 reverse)
    return record, indices, valid

  def read(record, indices, valid):
    encoded, label = records.read(tf.zeros_like(record, tf.int32), record,
                                  indices)
    return encoded, label, record, valid

  def preprocess(encoded, label, record, valid):
    return {"frames": eval_views(encoded, prep), "label": label,
            "mask": tf.cast(valid, tf.int32),
            "record": tf.cast(record, tf.int32)}

  row_dataset = tf.data.Dataset.from_tensor_slices(rows)
  dataset = (tf.data.Dataset.range(eval_num_batches(source, global_batch))
             .flat_map(lambda b: row_dataset.map(lambda r: (b, r)))
             .map(locate)
             .batch(len(rows))
             .map(read, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)
             .unbatch()
             .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)
             .batch(len(rows)).prefetch(2))
  return NumpyStream(dataset)


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
