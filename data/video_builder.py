"""Shared machinery of the builders whose examples are decoded source files.

Kinetics, Something-Something-v2, Moments in Time and the folder datasets
differ only in where their annotations and files are. Each subclass of
`SourceFileBuilder` says that (`MANUAL_FILES`, `_label_names`,
`_split_sources`); this module does the rest, the same way for all:

1. at construction: find the manual files (one error naming every missing
   one) and the label names (sorted);
2. the decode stage (`decode_stage`): every file decoded once by a pool of
   worker processes into a resumable cache under
   `data_dir/<name>/<config>/.decode_cache/`;
3. the examples, written from the cache as ArrayRecord files, video frames
   in the split's frame store (`data.frame_store`); files that are missing
   or do not decode are skipped and counted;
4. `prepare_report.json` beside the dataset (`prepare_report`); the cache is
   deleted once the dataset is complete.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import glob
import os
import shutil
from typing import Iterable, Iterator, Mapping, Sequence

import tensorflow_datasets as tfds

from data import decode_stage
from data import features
from data import frame_store
from data import prepare_report

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv",
                    ".mpg", ".mpeg", ".ogv", ".3gp", ".ts")
CACHE_DIR = ".decode_cache"
# Stored short side for 224 crops; 512 is the setting for 448 crops.
DEFAULT_SHORT_SIDE = 320


@dataclasses.dataclass(eq=False)
class DecodeConfig(tfds.core.BuilderConfig):
  """A builder config: frames stored at `short_side` pixels and `fps` frames
  per second (None: the source rate)."""
  short_side: int = DEFAULT_SHORT_SIDE
  fps: float | None = None

  def __post_init__(self):
    if not isinstance(self.short_side, int) or self.short_side < 1:
      raise ValueError(f"short_side must be a positive number of pixels, not "
                       f"{self.short_side!r}.")
    if self.fps is not None and not self.fps > 0:
      raise ValueError(f"fps must be positive or None (the source frame "
                       f"rate), not {self.fps!r}.")


def config_name(short_side: int, fps: float | None = None) -> str:
  """`short320`, or `short320_fps12p5` for a frame rate of 12.5."""
  name = f"short{short_side}"
  return name if fps is None else name + f"_fps{fps:g}".replace(".", "p")


def decode_config(short_side: int = DEFAULT_SHORT_SIDE,
                  fps: float | None = None) -> DecodeConfig:
  """The config of these settings, named by `config_name`."""
  rate = "the source frame rate" if fps is None else f"{fps:g} fps"
  return DecodeConfig(name=config_name(short_side, fps),
                      short_side=short_side, fps=fps,
                      description=f"Frames at short side {short_side} px, "
                                  f"{rate}.")


@dataclasses.dataclass(frozen=True)
class Source:
  """One listed example: its id (the example key), label name and file.

  `path` is None where the annotations list a file that is not there.
  """
  id: str
  label: str
  path: str | None


def files_by_stem(root: str, extensions: Sequence[str]) -> dict[str, str]:
  """Files under `root` with one of `extensions`, by name sans extension.

  One walk of the whole tree, so files are found in any layout (flat, per
  class, per split). Where two files share a name, the first in sorted
  order is used.
  """
  found = {}
  for folder, subfolders, names in os.walk(root, followlinks=True):
    subfolders.sort()
    for name in sorted(names):
      stem, extension = os.path.splitext(name)
      if extension.lower() in extensions:
        found.setdefault(stem, os.path.join(folder, name))
  return found


class SourceFileBuilder(frame_store.WritesFrameStore,
                        tfds.core.GeneratorBasedBuilder,
                        skip_registration=True):
  """A dataset of videos (or images) decoded from files the user downloaded.

  Construct with `manual_dir` (where the files are) and optionally
  `num_workers` (decode processes; default: one per CPU, 0: decode in this
  process), plus the usual tfds arguments; the file format defaults to
  ArrayRecord. Subclasses define the class attributes below,
  `_label_names` and `_split_sources`.
  """

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [decode_config(), decode_config(512)]
  MEDIA = features.VIDEO  # or features.IMAGE
  FLIP_CHANGES_LABEL = False
  HOMEPAGE: str | None = None
  # Required files: role -> paths relative to manual_dir where the file may
  # be (the first that exists is used).
  MANUAL_FILES: Mapping[str, Sequence[str]] = {}
  LABELS_FROM = ""  # The MANUAL_FILES role of the file that names the classes.

  def __init__(self, *, manual_dir: str | None = None,
               num_workers: int | None = None, **kwargs):
    if manual_dir is None:
      raise ValueError(
          f"{type(self).__name__} is built from files you download: pass "
          f"manual_dir (python -m data.prepare ... --manual_dir=DIR).\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    self._manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(self._manual_dir):
      raise FileNotFoundError(
          f"manual_dir {self._manual_dir} is not a directory.\n"
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    self._num_workers = os.cpu_count() if num_workers is None else num_workers
    if self._num_workers < 0:
      raise ValueError(f"num_workers must be >= 0, not {num_workers}.")
    self._manual_files = self._find_manual_files()
    self._report = prepare_report.Report()
    kwargs.setdefault("file_format", features.FILE_FORMAT)
    super().__init__(**kwargs)  # Calls _info, which reads the label names.

  @classmethod
  def config_for(cls, short_side: int = DEFAULT_SHORT_SIDE,
                 fps: float | None = None) -> str | DecodeConfig:
    """The `config` argument for these settings: a predefined config by its
    name (tfds refuses a lookalike object), else a new config."""
    config = decode_config(short_side, fps)
    if any(c.name == config.name for c in cls.BUILDER_CONFIGS):
      return config.name
    return config

  # -- What subclasses define ------------------------------------------------

  @abc.abstractmethod
  def _label_names(self) -> Iterable[str]:
    """The class names (any order; stored sorted)."""

  @abc.abstractmethod
  def _split_sources(self) -> dict[str, list[Source]]:
    """Split name -> its listed examples, with labels checked against
    `self.label_names` (an error naming the file and line otherwise)."""

  @property
  def flip_changes_label(self) -> bool:
    """Whether a horizontal flip changes the label (training must not flip)."""
    return self.FLIP_CHANGES_LABEL

  # -- Shared machinery ------------------------------------------------------

  @property
  def label_names(self) -> list[str]:
    return self.info.features["label"].names

  def check_label(self, label: str, where: str):
    """Raises an error naming `where` (file and line) for an unknown label."""
    if label not in self._label_set:
      raise ValueError(
          f"{where}: label {label!r} is not one of the "
          f"{len(self._label_set)} classes of {type(self).__name__} (from "
          f"{self._manual_files[self.LABELS_FROM]}). Are all the annotation "
          f"files from the same release?")

  @functools.cached_property
  def _label_set(self) -> frozenset[str]:
    return frozenset(self.label_names)

  def manual_path(self, *relative: str) -> str:
    return os.path.join(self._manual_dir, *relative)

  def _find_manual_files(self) -> dict[str, str]:
    """Role -> path of each MANUAL_FILES entry; one error names all missing."""
    found, missing = {}, []
    for role, candidates in self.MANUAL_FILES.items():
      path = self._locate(candidates)
      if path:
        found[role] = path
      else:
        looked = ", ".join(self.manual_path(c) for c in candidates)
        missing.append(f"  {candidates[0]} (looked for: {looked})")
    if missing:
      raise FileNotFoundError(
          f"{type(self).__name__}: files not found in manual_dir "
          f"{self._manual_dir}:\n" + "\n".join(missing) +
          f"\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return found

  def _locate(self, candidates: Sequence[str]) -> str | None:
    """The first of `candidates` (relative to manual_dir) that exists."""
    for candidate in candidates:
      if os.path.exists(self.manual_path(candidate)):
        return self.manual_path(candidate)
    return None

  def _metadata(self) -> tfds.core.MetadataDict:
    config = self.builder_config
    return features.metadata(short_side=config.short_side, fps=config.fps,
                             flip_changes_label=self.flip_changes_label)

  def _info(self) -> tfds.core.DatasetInfo:
    names = features.sorted_label_names(self._label_names())
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=features.media_features(self.MEDIA, names),
        metadata=self._metadata(), supervised_keys=(self.MEDIA, "label"), homepage=self.HOMEPAGE)

  @property
  def _cache_dir(self) -> str:
    return os.path.join(os.fspath(self.data_dir_root), self.name,
                        self.builder_config.name, CACHE_DIR)

  def download_and_prepare(self, **kwargs):
    """Prepares the dataset; refuses to reuse one made with other settings.

    One prepare at a time per dataset: a killed run's temporary folders are
    deleted (it resumes from the decode cache, not from them).
    """
    if self.is_prepared():
      if dict(self.info.metadata) != self._metadata():
        raise ValueError(
            f"{self.data_dir} was prepared with {dict(self.info.metadata)}, "
            f"not {dict(self._metadata())}: prepare under another name or "
            f"delete it.")
    else:
      config_dir = os.path.dirname(os.fspath(self.data_dir))
      for stale in glob.glob(os.path.join(config_dir, "incomplete.*")):
        shutil.rmtree(stale, ignore_errors=True)
    super().download_and_prepare(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are in the manual_dir given at construction.
    config = self.builder_config
    decoding = decode_stage.Decoding(self.MEDIA, config.short_side, config.fps)
    presents = {split: self._present(split, sources)
                for split, sources in self._split_sources().items()}
    empty = [split for split, present in presents.items() if not present]
    if empty:
      raise FileNotFoundError(
          f"No file of split(s) {empty} was found in manual_dir "
          f"{self._manual_dir}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    # Every split is decoded before any is written: decoding is the long,
    # resumable part; writing is quick and restarts from the cache.
    generators = {}
    for split, present in presents.items():
      files, counts = decode_stage.decode_all(
          [s.path for s in present], self._cache_dir, decoding,
          num_workers=self._num_workers, desc=f"Decoding {self.name} {split}")
      self._report.count(split, decoded=counts.decoded,
                         from_cache=counts.from_cache)
      generators[split] = self._generate_examples(split, present, files)
    return generators

  def _present(self, split: str, sources: Sequence[Source]) -> list[Source]:
    """The sources with a file, each id once; reports the others."""
    self._report.count(split, listed=len(sources))
    present, seen = [], set()
    for source in sources:
      if source.id in seen:
        self._report.problem(split, prepare_report.DUPLICATE, source.id,
                             source.path, "listed more than once")
      elif source.path is None:
        self._report.problem(split, prepare_report.MISSING, source.id, None,
                             "no file found for it in manual_dir")
      else:
        present.append(source)
      seen.add(source.id)
    return present

  def _generate_examples(self, split: str, sources: Sequence[Source],
                         cache_files: Sequence[str]) -> Iterator:
    written = 0
    for source, cache_file in zip(sources, cache_files):
      entry = decode_stage.read(cache_file)
      if not entry.frames:
        self._report.problem(split, prepare_report.SKIPPED, source.id,
                             source.path, entry.problem)
        continue
      if entry.problem:
        self._report.problem(split, prepare_report.TRUNCATED, source.id,
                             source.path, entry.problem)
      media = (self._stored(split, source.id, entry.frames)
               if self.MEDIA == features.VIDEO else entry.frames[0])
      self._report.count(split, written=1)
      written += 1
      yield source.id, {self.MEDIA: media, "label": source.label,
                        "id": source.id}
    if not written:
      problems = self._report.problems(split)
      raise ValueError(
          f"No example of split {split!r} could be written: all "
          f"{len(problems)} listed are missing or do not decode, e.g. "
          f"{problems[:3]}. Check manual_dir {self._manual_dir}.")

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    # Still in the temporary folder: the report appears with the dataset.
    self._report.write(
        os.fspath(self.data_dir), dataset=self.info.full_name,
        manual_dir=self._manual_dir, **dict(self._metadata()))

  def _post_download_and_prepare_hook(self):
    # The dataset is complete; the cache holds a second copy of it.
    shutil.rmtree(self._cache_dir, ignore_errors=True)
