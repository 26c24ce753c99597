"""Label maps: what each head's outputs mean, saved with the run.

Training writes every dataset's kind, class names and stored short side to
WORKDIR/label_maps.json, so that predict needs no prepared data to name its
classes.
"""

from __future__ import annotations

import dataclasses
import json

from etils import epath
from ml_collections import ConfigDict

from cover_jax import storage

LABEL_MAPS = "label_maps.json"


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
