"""Dataset names as configs spell them, and the prepared builder behind each.

A name is `BUILDER` or `BUILDER/CONFIG`: `kinetics400` (default config,
frames stored at short side 320), `kinetics400/short512`,
`digits_motion/train10` (a tenth of its training digits), `video_folder/NAME`.
Any other TFDS dataset (e.g. `imagenet2012`) is read too once prepared in the
ArrayRecord format. The mini datasets are built on first use; the others are
prepared once with `python -m data.prepare`.
"""

from __future__ import annotations

import importlib
import os
import re

import tensorflow_datasets as tfds

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
    root = os.path.join(data_dir, base)
    if os.path.isdir(root):
      found += [f"{base}/{c}" for c in sorted(os.listdir(root))
                if _latest_version_dir(os.path.join(root, c))]
  return found


def known_names(data_dir: str | None = None) -> list[str]:
  """Every name `load_builder` accepts without a TFDS-catalogue lookup."""
  names = [n for n in BUILDERS if n not in NAMED_BY_USER]
  if data_dir:
    names += prepared_folder_datasets(data_dir)
  return names


def _latest_version_dir(config_dir: str) -> str | None:
  """The newest complete version directory under `config_dir`, if any."""
  if not os.path.isdir(config_dir):
    return None
  # Only finished versions: TFDS writes dataset_info.json into its
  # "incomplete.*" folder just before renaming it.
  versions = [v for v in os.listdir(config_dir)
              if re.fullmatch(r"\d+\.\d+\.\d+", v) and os.path.isfile(
                  os.path.join(config_dir, v, "dataset_info.json"))]
  if not versions:
    return None
  newest = max(versions, key=lambda v: tuple(map(int, v.split("."))))
  return os.path.join(config_dir, newest)


def _prepare_hint(base: str, data_dir: str, config: str = "") -> str:
  """The command that prepares `base`/`config` in data_dir."""
  if base in NAMED_BY_USER:
    flag = "--videos" if base == "video_folder" else "--images"
    return (f"python -m data.prepare folder {flag}=ROOT "
            f"--name={config or 'NAME'} --data_dir={data_dir}")
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
  """The command that prepares the TFDS catalogue dataset `name`."""
  return (f"tfds build {name} --manual_dir=DIR --data_dir={data_dir} "
          f"--file_format={features.FILE_FORMAT}")


def preparation(name: str, data_dir: str | None = None) -> str | None:
  """The command that prepares `name`, or None when nothing is to be done
  (prepared, or a mini dataset built on first use). Reads directories
  only: nothing is opened or built.

  Raises ValueError for a name of ours with no config part that needs one.
  """
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  base, _, config = name.partition("/")
  if base in BUILT_ON_FIRST_USE:
    return None
  if base in BUILDERS:
    cls = builder_class(base)
    if not config and base not in NAMED_BY_USER:
      config = cls.BUILDER_CONFIGS[0].name if cls.BUILDER_CONFIGS else ""
    config_dir = os.path.join(data_dir, base, config)
    if base in NAMED_BY_USER:
      prepared = config and _latest_version_dir(config_dir)
    else:  # exactly the version this code builds, never a stale one
      prepared = os.path.isfile(os.path.join(config_dir, str(cls.VERSION),
                                             "dataset_info.json"))
    return None if prepared else _prepare_hint(base, data_dir, config)
  # A TFDS catalogue dataset: prepared if some version (of some config,
  # when the name has none) has its dataset_info.json.
  root = os.path.join(data_dir, name)
  candidates = [root] + ([os.path.join(root, c) for c in sorted(
      os.listdir(root))] if os.path.isdir(root) and not config else [])
  if any(_latest_version_dir(c) for c in candidates):
    return None
  return _tfds_hint(name, data_dir)


def load_builder(name: str, data_dir: str | None = None
                 ) -> tfds.core.DatasetBuilder:
  """The prepared builder for `name`, building the mini datasets on first use.

  Raises ValueError naming the known datasets for an unknown name, and the
  command that prepares a dataset that is known but not prepared.
  """
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  base, _, config = name.partition("/")
  if base in BUILDERS:
    cls = builder_class(base)
    if not config:
      if base in NAMED_BY_USER:
        raise ValueError(f"Dataset {name!r} needs the name it was prepared "
                         f"under: {base}/NAME (prepared here: "
                         f"{prepared_folder_datasets(data_dir) or 'none'}).")
      config = cls.BUILDER_CONFIGS[0].name if cls.BUILDER_CONFIGS else ""
    config_dir = os.path.join(data_dir, base, config)
    if base in NAMED_BY_USER:
      prepared = _latest_version_dir(config_dir)
    else:  # exactly the version this code builds, never a stale one
      prepared = os.path.join(config_dir, str(cls.VERSION))
      if not os.path.isfile(os.path.join(prepared, "dataset_info.json")):
        prepared = None
    if prepared:
      return tfds.builder_from_directory(prepared)
    if base in BUILT_ON_FIRST_USE:
      configs = [f"{base}/{c.name}" for c in cls.BUILDER_CONFIGS]
      if f"{base}/{config}" not in configs:  # TFDS's own message lists none
        raise ValueError(f"Unknown dataset {name!r}. {base} has: "
                         f"{', '.join(configs)}.")
      builder = cls(data_dir=data_dir, file_format=features.FILE_FORMAT,
                    **({"config": config} if config else {}))
      builder.download_and_prepare()
      return builder
    raise ValueError(
        f"Dataset {name!r} is not prepared in {data_dir} (no "
        f"{config_dir}/<version>/dataset_info.json). Prepare it once with: "
        f"{_prepare_hint(base, data_dir, config)}")
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
