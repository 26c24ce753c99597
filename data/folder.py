"""Datasets of the user's own files: `ROOT/<split>/<class>/<file>`.

`VideoFolder` reads any video format FFmpeg reads, `ImageFolder` any image
format PIL reads. The split folders are the splits; the classes are the class
folders of all splits together, sorted. Each dataset is named by the user:
its config (`folder_config`) carries the name, the stored short side, frame
rate, and whether a horizontal flip changes its labels. Prepared datasets are
read as `video_folder/NAME` or `image_folder/NAME`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

from data import features
from data import video_builder

_INSTRUCTIONS = """\
A folder dataset is ROOT/<split>/<class>/<file>, e.g. ROOT/train/juggling/a.mp4
and ROOT/validation/juggling/b.webm. Split folders are the splits (names of
letters, digits and _); the class folders of all splits make the classes.
Files may be in subfolders of a class folder; hidden files are ignored."""


@dataclasses.dataclass(eq=False)
class FolderConfig(video_builder.DecodeConfig):
  """The config of a folder dataset: `name` is the dataset's name."""
  flip_changes_label: bool = False

  def __post_init__(self):
    super().__post_init__()
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.name or ""):
      raise ValueError(
          f"Dataset name {self.name!r} is not valid: use letters, digits, "
          f"'_', '.' and '-', starting with a letter or digit.")


def folder_config(name: str,
                  short_side: int = video_builder.DEFAULT_SHORT_SIDE,
                  fps: float | None = None,
                  flip_changes_label: bool = False) -> FolderConfig:
  """The config that prepares a folder dataset under `name`."""
  return FolderConfig(name=name, short_side=short_side, fps=fps,
                      flip_changes_label=flip_changes_label,
                      description=f"Folder dataset {name!r}.")


class _Folder(video_builder.SourceFileBuilder, skip_registration=True):
  """A dataset of the user's files, `ROOT/<split>/<class>/<file>`.

  Construct with `manual_dir=ROOT` and `config=folder_config(NAME, ...)`.
  """

  BUILDER_CONFIGS = []
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def __init__(self, *, config: FolderConfig | None = None, **kwargs):
    if not isinstance(config, FolderConfig):
      raise ValueError(
          f"{type(self).__name__} needs config=folder_config(NAME, ...), the "
          f"name the dataset is prepared under (got config={config!r}).")
    if self.MEDIA == features.IMAGE and config.fps is not None:
      raise ValueError("fps applies to videos only; leave it unset for "
                       "images.")
    super().__init__(config=config, **kwargs)

  @property
  def flip_changes_label(self) -> bool:
    return self.builder_config.flip_changes_label

  @functools.cached_property
  def _layout(self) -> dict[str, dict[str, list[str]]]:
    """Split -> class -> its files, relative to the split folder, sorted."""
    root = self._manual_dir
    splits = _visible(root)
    if not splits:
      raise ValueError(f"{root} has no split folders.\n{_INSTRUCTIONS}")
    layout = {}
    for split in splits:
      folder = os.path.join(root, split)
      if not os.path.isdir(folder):
        raise ValueError(f"{folder} is a file where a split folder is "
                         f"expected.\n{_INSTRUCTIONS}")
      if not re.fullmatch(r"\w+", split) or split.lower() == "all":
        raise ValueError(f"Split folder {folder}: a split name must be "
                         f"letters, digits and _, and not 'all'; rename it.")
      classes = _visible(folder)
      loose = [c for c in classes if not os.path.isdir(os.path.join(folder, c))]
      if loose or not classes:
        raise ValueError(
            f"{folder} must hold class folders only (found "
            f"{'files ' + str(loose[:3]) if loose else 'nothing'}).\n"
            f"{_INSTRUCTIONS}")
      layout[split] = {c: _files_under(folder, c) for c in classes}
    return layout

  def _label_names(self):
    return {c for classes in self._layout.values() for c in classes}

  def _split_sources(self):
    return {split: [video_builder.Source(relative, label, self.manual_path(
                        split, relative))
                    for label, files in classes.items() for relative in files]
            for split, classes in self._layout.items()}


class VideoFolder(_Folder):
  """Videos in class folders, ROOT/<split>/<class>/<video>."""


class ImageFolder(_Folder):
  """Images in class folders, ROOT/<split>/<class>/<image>."""
  MEDIA = features.IMAGE


def _visible(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _files_under(split_folder: str, label: str) -> list[str]:
  """Visible files under split_folder/label, relative to split_folder."""
  files = []
  for folder, subfolders, names in os.walk(os.path.join(split_folder, label)):
    subfolders[:] = sorted(n for n in subfolders if not n.startswith("."))
    files += [os.path.relpath(os.path.join(folder, n), split_folder)
              for n in sorted(names) if not n.startswith(".")]
  return files
