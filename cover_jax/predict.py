"""A trained model applied to video and image files: classes and features.

    python main.py --mode=predict --config=CONFIG --workdir=DIR \
        --inputs=clip.mp4,photos/ [--output=predictions.jsonl]
    python main.py --mode=features ... --output=features.npz

Each input goes the evaluation's way: decoded with PyAV (data/decode.py, as
`python -m data.prepare` decodes source videos, to JPEG frames at the
dataset's stored short side), then `input.preprocess_eval` (the clip's
evenly spread frames, config.input.eval_views spatial crops), then the
view-averaged softmax of each head (`evaluate.averaged_log_probs`). Videos
are scored by the video datasets' heads, images by the image datasets'
(`--heads` chooses others). Class names come from the label maps that
training saved in the workdir (`label_maps.json`), else from the prepared
datasets, else from `--class_names`.

A file that cannot be read is reported with the reason and the run goes on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from typing import Iterable, Iterator, Sequence

from etils import epath
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict
import numpy as np
import tqdm

from cover_jax import pixels
from cover_jax import storage

LABEL_MAPS = "label_maps.json"
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg",
                    ".mpeg", ".ogv", ".flv", ".wmv", ".3gp", ".ts", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif",
                    ".tiff")


# ----------------------------------------------------------------------------
# Label maps: what each head's outputs mean, saved with the run.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HeadInfo:
  """A head as predict sees it: the kind of input, class names, short side."""
  kind: str
  labels: tuple[str, ...]
  short_side: int | None = None


def write_label_maps(workdir: str, sources) -> None:
  """Saves every dataset's kind, class names and stored short side."""
  maps = {s.name: {"kind": s.kind, "dataset": s.dataset,
                   "labels": list(s.label_names), "short_side": s.short_side}
          for s in sources}
  storage.write_text(storage.resolve(workdir) / LABEL_MAPS,
                     json.dumps(maps, indent=2), "--workdir")


def head_infos(config: ConfigDict, workdir: str,
               class_names: dict[str, str] | None = None
               ) -> dict[str, HeadInfo]:
  """Per head of config.heads: its HeadInfo.

  From WORKDIR/label_maps.json (written by training), else from the prepared
  datasets; `class_names` (head -> a file of one name per line) overrides
  both, for weights from elsewhere (an official TimeSformer .pyth).
  """
  path = storage.resolve(workdir) / LABEL_MAPS
  saved = json.loads(path.read_text()) if path.exists() else {}
  infos = {}
  for name, classes in config.heads.items():
    spec = config.datasets.get(name) if "datasets" in config else None
    entry = saved.get(name)
    if entry is None and spec is not None:
      entry = _from_prepared(config, name, spec)
    kind = entry["kind"] if entry else "video"
    labels = entry["labels"] if entry else [f"class {i}"
                                            for i in range(classes)]
    if class_names and name in class_names:
      labels = read_class_names(class_names[name])
    if len(labels) != classes:
      raise ValueError(f"Head {name!r} has {classes} classes but its class "
                       f"names list {len(labels)}; give a class names file "
                       f"with one name per class (--class_names={name}=FILE).")
    infos[name] = HeadInfo(kind, tuple(labels),
                           entry.get("short_side") if entry else None)
  return infos


def _from_prepared(config, name, spec) -> dict | None:
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel
  try:
    source = inp.open_source(name, spec.get("eval_split") or "test",
                             dataset=spec.get("dataset") or name,
                             data_dir=config.get("data_dir"))
  except ValueError:  # not prepared here: names unknown
    return None
  return {"kind": source.kind, "labels": list(source.label_names),
          "short_side": source.short_side}


def read_class_names(path: str) -> list[str]:
  """Class names from a file: a JSON list, a JSON {name: index} map (the
  official TimeSformer/SlowFast label files), or one name per line."""
  text = epath.Path(path).read_text()
  try:
    value = json.loads(text)
  except json.JSONDecodeError:
    return [line.strip() for line in text.splitlines() if line.strip()]
  if isinstance(value, dict):
    return [name for name, _ in sorted(value.items(), key=lambda kv: kv[1])]
  return [str(v) for v in value]


# ----------------------------------------------------------------------------
# Inputs: files and folders, decoded in parallel.
# ----------------------------------------------------------------------------

def expand_inputs(paths: Sequence[str]) -> list[str]:
  """Files of `paths`, folders searched recursively for videos and images.

  A file named directly is kept whatever its extension (its content is
  probed); a path that does not exist raises.
  """
  files = []
  for path in paths:
    if os.path.isdir(path):
      for root, _, names in sorted(os.walk(path)):
        files += [os.path.join(root, n) for n in sorted(names)
                  if n.lower().endswith(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)]
    elif os.path.exists(path):
      files.append(path)
    else:
      raise FileNotFoundError(f"--inputs: {path} does not exist.")
  return files


def kind_of(path: str) -> str:
  """"image" for image extensions, else "video" (probed by FFmpeg)."""
  return "image" if path.lower().endswith(IMAGE_EXTENSIONS) else "video"


@dataclasses.dataclass
class Decoded:
  """One input: its JPEG frames, or the reason it could not be used."""
  path: str
  kind: str
  frames: list[bytes] = dataclasses.field(default_factory=list)
  error: str | None = None
  note: str | None = None


def decode(path: str, short_side: int) -> Decoded:
  """The input's JPEG frames at `short_side`, as prepare stores them."""
  from data import decode as decoding  # pylint: disable=import-outside-toplevel
  kind = kind_of(path)
  try:
    if kind == "image":
      return Decoded(path, kind, [decoding.decode_image(path, short_side)])
    video = decoding.decode_video(path, short_side)
    return Decoded(path, kind, video.frames, note=video.truncated)
  except decoding.DecodeError as e:
    return Decoded(path, kind, error=e.reason)
  except OSError as e:
    return Decoded(path, kind, error=f"unreadable file: {e}")


def decode_all(paths: Sequence[str], short_sides: dict[str, int], *,
               threads: int | None = None) -> Iterator[Decoded]:
  """Decoded inputs in order, decoded by a thread pool (FFmpeg and PIL
  release the GIL); `short_sides` per kind."""
  threads = threads or min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    yield from pool.map(lambda p: decode(p, short_sides[kind_of(p)]), paths)


# ----------------------------------------------------------------------------
# The model: views -> per-head probabilities and the clip embedding.
# ----------------------------------------------------------------------------

def make_scorer(model, heads: Sequence[str], *, mean: Sequence[float],
                std: Sequence[float]):
  """jitted (params, uint8 views [b, V, T, H, W, 3]) -> ({head: probs},
  features).

  The views are normalised with `mean`, `std` (`pixels.normalize`, as in
  training). Probabilities are the views' averaged softmax (evaluation's own
  function); features are the normalised class token ("cls") and the
  pre-logits (when the model has them), averaged over the views.
  """
  from cover_jax import evaluate  # pylint: disable=import-outside-toplevel

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


def _views(frames: list[bytes], num_frames: int, prep):
  """(views [V, T, crop, crop, 3] uint8, frame indices used)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cover_jax import input as inp  # pylint: disable=import-outside-toplevel
  from cover_jax.input import ops  # pylint: disable=import-outside-toplevel
  encoded = tf.constant(frames)
  indices = ops.sample_frame_indices(len(frames), num_frames, training=False)
  views = inp.preprocess_eval(encoded, num_frames=num_frames, prep=prep)
  return views.numpy(), [int(i) for i in indices.numpy()]


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
        top_k: int = 5, batch_size: int = 8, progress: bool = True
        ) -> list[Result]:
  """Results for `paths`, in order, batched by kind of input.

  heads: the heads to report (default: those of the input's kind).
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
    for decoded in decode_all(paths, short_sides):
      result = Result(decoded.path, decoded.kind, error=decoded.error,
                      note=decoded.note)
      results.append(result)
      if decoded.error is None and decoded.kind not in scorers:
        result.error = (f"no {decoded.kind} head to score it: heads "
                        f"{sorted(infos)}; choose some with --heads")
      if result.error is None:
        num_frames = prep.num_frames if decoded.kind == "video" else 1
        try:
          views, result.frames = _views(decoded.frames, num_frames, prep)
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
