"""Dataset names as configs spell them, and the prepared builder behind each.

A name is `BUILDER` or `BUILDER/CONFIG`: `kinetics400` (default config,
frames stored at short side 320), `kinetics400/short512`,
`digits_motion/train10` (a tenth of its training digits), `video_folder/NAME`.
Any other TFDS dataset (e.g. `imagenet2012`) is read too once prepared in the
ArrayRecord format. The mini datasets are built on first use; the others are
prepared once with `python -m data.prepare`.

A data dir is a local path (`~` expanded) or a URI (gs://): every check here
goes through etils.epath (cover_jax/storage.py), never os.path.
"""

from __future__ import annotations

import importlib
import os
import re

from etils import epath
import tensorflow_datasets as tfds

from cover_jax import storage
from data import features

# name -> "module:class"; imported only when used.
BUILDERS = {
    "digits_image": "data.digits:DigitsImage",
    "digits_appearance": "data.digits:DigitsAppearance",
    "digits_motion": "data.digits:DigitsMotion",
    "kinetics400": "data.kinetics:Kinetics400",
    "kinetics600": "data.kinetics:Kinetics600",
    "kinetics700": "data.kinetics:Kinetics700",
    "ssv2": "data.ssv2:Ssv2",
    "moments_in_time": "data.moments:MomentsInTime",
    "video_folder": "data.folder:VideoFolder",
    "image_folder": "data.folder:ImageFolder",
}
# Made from data shipped with scikit-learn: no manual files, built on first use.
BUILT_ON_FIRST_USE = ("digits_image", "digits_appearance", "digits_motion")
# Folder datasets are named by the user: the config part is required.
NAMED_BY_USER = ("video_folder", "image_folder")

DEFAULT_DATA_DIR = os.path.expanduser("~/tensorflow_datasets")
# What storage's errors call a data dir that cannot be read.
_WHAT = "data_dir"


def expand(data_dir: str | os.PathLike | None) -> str:
  """The data dir as messages show it: DEFAULT_DATA_DIR for None, `~`
  expanded, a URI as given."""
  return os.path.expanduser(os.fspath(data_dir or DEFAULT_DATA_DIR))


def builder_class(base: str) -> type[tfds.core.DatasetBuilder]:
  """The builder class registered under `base` (e.g. "kinetics400")."""
  if base not in BUILDERS:
    raise KeyError(base)
  module, cls = BUILDERS[base].split(":")
  return getattr(importlib.import_module(module), cls)


def prepared_folder_datasets(data_dir: str) -> list[str]:
  """`video_folder/NAME` and `image_folder/NAME` datasets found in data_dir."""
  found = []
  for base in NAMED_BY_USER:
    root = epath.Path(expand(data_dir)) / base
    found += [f"{base}/{c}" for c in sorted(storage.list_dir(root, _WHAT))
              if _latest_version_dir(root / c)]
  return found


def known_names(data_dir: str | None = None) -> list[str]:
  """Every name `load_builder` accepts without a TFDS-catalogue lookup."""
  names = [n for n in BUILDERS if n not in NAMED_BY_USER]
  if data_dir:
    names += prepared_folder_datasets(data_dir)
  return names


def _is_prepared(version_dir: epath.Path) -> bool:
  """Whether `version_dir` holds a finished TFDS dataset (TFDS writes
  dataset_info.json into its "incomplete.*" folder just before renaming it;
  data.prepare uploads it last)."""
  return storage.exists(version_dir / "dataset_info.json", _WHAT)


def _latest_version_dir(config_dir: epath.Path) -> str | None:
  """The newest complete version directory under `config_dir`, if any."""
  versions = [v for v in storage.list_dir(config_dir, _WHAT)
              if re.fullmatch(r"\d+\.\d+\.\d+", v)
              and _is_prepared(config_dir / v)]
  if not versions:
    return None
  newest = max(versions, key=lambda v: tuple(map(int, v.split("."))))
  return os.fspath(config_dir / newest)


def _prepare_hint(base: str, data_dir: str, config: str = "") -> str:
  """The command that prepares `base`/`config` in data_dir (gs:// too:
  data.prepare prepares locally, then uploads)."""
  if base in NAMED_BY_USER:
    flag = "--videos" if base == "video_folder" else "--images"
    return (f"python -m data.prepare folder {flag}=ROOT "
            f"--name={config or 'NAME'} --data_dir={data_dir}")
  if base in BUILT_ON_FIRST_USE:
    return (f"python -m data.prepare {base}{'/' + config if config else ''} "
            f"--data_dir={data_dir}")
  # Config names as data.video_builder.config_name writes them.
  match = re.fullmatch(r"short(\d+)(?:_fps([\dp]+))?", config)
  flags = ""
  if match and match.group(1) != "320":  # 320: data.prepare's default
    flags += f" --short_side={match.group(1)}"
  if match and match.group(2):
    flags += f" --fps={match.group(2).replace('p', '.')}"
  return (f"python -m data.prepare {base} --manual_dir=DIR "
          f"--data_dir={data_dir}{flags}")


def _tfds_hint(name: str, data_dir: str) -> str:
  """The command that prepares the TFDS catalogue dataset `name`; for a
  URI, locally and then copied (TFDS's ArrayRecord writer cannot write
  gs://; rsync copies only what an interrupted copy left out)."""
  build = (f"tfds build {name} --manual_dir=DIR --data_dir={{}} "
           f"--file_format={features.FILE_FORMAT}")
  if not storage.is_uri(data_dir):
    return build.format(data_dir)
  local = os.path.join(DEFAULT_DATA_DIR, name)
  return (f"{build.format(DEFAULT_DATA_DIR)}, then gcloud storage rsync "
          f"--recursive {local} {data_dir.rstrip('/')}/{name}")


def _builder_dir(base: str, config: str, data_dir: str) -> str | None:
  """The prepared directory of one of our datasets, if any: a folder
  dataset's newest version; for the others exactly the version this code
  builds, never a stale one."""
  config_dir = epath.Path(data_dir) / base / config
  if base in NAMED_BY_USER:
    return _latest_version_dir(config_dir) if config else None
  version_dir = config_dir / str(builder_class(base).VERSION)
  return os.fspath(version_dir) if _is_prepared(version_dir) else None


def _default_config(base: str) -> str:
  cls = builder_class(base)
  return cls.BUILDER_CONFIGS[0].name if cls.BUILDER_CONFIGS else ""


def preparation(name: str, data_dir: str | None = None) -> str | None:
  """The command that prepares `name`, or None when nothing is to be done
  (prepared, or a mini dataset built on first use in a local data dir).
  Reads directories only: nothing is opened or built.

  Raises ValueError for a name of ours with no config part that needs one,
  OSError for a data dir that cannot be read.
  """
  data_dir = expand(data_dir)
  base, _, config = name.partition("/")
  if base in BUILT_ON_FIRST_USE and not storage.is_uri(data_dir):
    return None
  if base in BUILDERS:
    if not config and base not in NAMED_BY_USER:
      config = _default_config(base)
    if _builder_dir(base, config, data_dir):
      return None
    return _prepare_hint(base, data_dir, config)
  # A TFDS catalogue dataset: prepared if some version (of some config,
  # when the name has none) has its dataset_info.json.
  root = epath.Path(data_dir) / name
  candidates = [root] + ([root / c for c in sorted(
      storage.list_dir(root, _WHAT))] if not config else [])
  if any(_latest_version_dir(c) for c in candidates):
    return None
  return _tfds_hint(name, data_dir)


def prepare_command(name: str, data_dir: str | None = None) -> str:
  """The command that prepares `name` in data_dir, prepared or not (e.g. to
  prepare a damaged dataset again once its folder is deleted)."""
  data_dir = expand(data_dir)
  base, _, config = name.partition("/")
  if base not in BUILDERS:
    return _tfds_hint(name, data_dir)
  if not config and base not in NAMED_BY_USER:
    config = _default_config(base)
  return _prepare_hint(base, data_dir, config)


def load_builder(name: str, data_dir: str | None = None
                 ) -> tfds.core.DatasetBuilder:
  """The prepared builder for `name`, building the mini datasets on first
  use in a local data dir.

  Raises ValueError naming the known datasets for an unknown name, and the
  command that prepares a dataset that is known but not prepared.
  """
  data_dir = expand(data_dir)
  base, _, config = name.partition("/")
  if base in BUILDERS:
    cls = builder_class(base)
    if not config:
      if base in NAMED_BY_USER:
        raise ValueError(f"Dataset {name!r} needs the name it was prepared "
                         f"under: {base}/NAME (prepared here: "
                         f"{prepared_folder_datasets(data_dir) or 'none'}).")
      config = _default_config(base)
    prepared = _builder_dir(base, config, data_dir)
    if prepared:
      return tfds.builder_from_directory(prepared)
    if base in BUILT_ON_FIRST_USE:
      configs = [f"{base}/{c.name}" for c in cls.BUILDER_CONFIGS]
      if f"{base}/{config}" not in configs:  # TFDS's own message lists none
        raise ValueError(f"Unknown dataset {name!r}. {base} has: "
                         f"{', '.join(configs)}.")
      if not storage.is_uri(data_dir):  # ArrayRecord writes local files only
        builder = cls(data_dir=data_dir, file_format=features.FILE_FORMAT,
                      **({"config": config} if config else {}))
        builder.download_and_prepare()
        return builder
    raise ValueError(
        f"Dataset {name!r} is not prepared in {data_dir} (no "
        f"{data_dir}/{base}/{config}/<version>/dataset_info.json). Prepare "
        f"it once with: {_prepare_hint(base, data_dir, config)}")
  try:
    tfds.builder_cls(base)  # the catalogue only: reads no directory
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"Unknown dataset {name!r}. Known datasets: "
                     f"{', '.join(known_names(data_dir))}; or any prepared "
                     f"TFDS dataset name (e.g. imagenet2012).") from None
  # Checked before tfds.builder, which warns about the version folder it
  # looks for even when there is none.
  if preparation(name, data_dir) is not None:
    raise ValueError(f"TFDS dataset {name!r} is not prepared in {data_dir}. "
                     f"Prepare it once with: {_tfds_hint(name, data_dir)}")
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise ValueError(f"TFDS dataset {name!r} is not prepared in {data_dir}. "
                     f"Prepare it once with: {_tfds_hint(name, data_dir)}")
  return builder
