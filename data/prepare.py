"""Prepares a dataset once, before training.

  python -m data.prepare kinetics400 --manual_dir=DIR --data_dir=DIR \\
      [--short_side=320] [--fps=F] [--num_workers=N]
      (also kinetics600, kinetics700, ssv2, moments_in_time)
  python -m data.prepare folder --videos=ROOT --name=NAME --data_dir=DIR \\
      [--short_side=320] [--fps=F] [--flip_changes_label] [--num_workers=N]
  python -m data.prepare folder --images=ROOT --name=NAME --data_dir=DIR
  python -m data.prepare digits_motion[/train10] --data_dir=DIR   (mini)

With --data_dir=gs://BUCKET/DIR the dataset is prepared in a local data dir
(--staging_dir, default ~/tensorflow_datasets: ArrayRecord writes local
files only) and then uploaded, its dataset_info.json last: a dataset on the
bucket is complete once that is there.

Killed and restarted with the same command, it goes on from its decode
cache, or uploads only the files not yet on the bucket. It ends with a
summary of what was written, skipped and missing; the full list with
reasons is `prepare_report.json` beside the dataset.
"""

from __future__ import annotations

import argparse
import os
import sys

FOLDER = "folder"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m data.prepare", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", help="the dataset (e.g. kinetics400), or "
                                   f"'{FOLDER}' for your own files")
  parser.add_argument("--data_dir", help="where prepared datasets live, "
                                         "local or gs:// (default: "
                                         "~/tensorflow_datasets)")
  parser.add_argument("--staging_dir",
                      help="with a gs:// --data_dir: the local data dir to "
                           "prepare in before the upload (default: "
                           "~/tensorflow_datasets); kept, so that a re-run "
                           "resumes")
  parser.add_argument("--manual_dir", help="where the downloaded files are")
  parser.add_argument("--short_side", type=int,
                      help="short side of the stored frames in pixels "
                           "(default 320; 512 for 448 crops)")
  parser.add_argument("--fps", type=float,
                      help="resample videos to this frame rate (default: "
                           "keep the source rate)")
  parser.add_argument("--num_workers", type=int,
                      help="decode processes (default: one per CPU)")
  parser.add_argument("--videos", help=f"{FOLDER}: ROOT of "
                                       "ROOT/<split>/<class>/<video>")
  parser.add_argument("--images", help=f"{FOLDER}: ROOT of "
                                       "ROOT/<split>/<class>/<image>")
  parser.add_argument("--name", dest="dataset_name",
                      help=f"{FOLDER}: the name to prepare it under")
  parser.add_argument("--flip_changes_label", action="store_true",
                      help=f"{FOLDER}: a horizontal flip changes the class "
                           "(e.g. 'swipe left'), so training must not flip")
  return parser


def prepare(args: argparse.Namespace) -> str:
  """Prepares the dataset `args` name; returns the summary to print.

  Raises:
    ValueError, FileNotFoundError: bad flags or manual files, with the fix.
    OSError: a gs:// data_dir that cannot be read or written, with the fix.
  """
  # Imported here, not at the top: the spawned decode workers import this
  # module again (as `__mp_main__`) and must not load TensorFlow.
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from data import features, folder, prepare_report, registry, video_builder

  data_dir = registry.expand(args.data_dir)
  local_dir = _local_dir(args, data_dir)
  names = registry.known_names() + [FOLDER]
  base, _, config = args.name.partition("/")
  if base not in names or (config and base not in registry.BUILT_ON_FIRST_USE):
    raise ValueError(f"Unknown dataset {args.name!r}. Known datasets: "
                     f"{', '.join(names)}.")
  common = dict(data_dir=local_dir, file_format=features.FILE_FORMAT)
  if base in registry.BUILT_ON_FIRST_USE:
    _refuse(args, _SOURCE_FLAGS + _FOLDER_FLAGS,
            "it is made from data bundled with scikit-learn")
    cls = registry.builder_class(base)
    configs = [c.name for c in cls.BUILDER_CONFIGS]
    if config and config not in configs:
      raise ValueError(f"Unknown dataset {args.name!r}. {base} has: "
                       f"{', '.join(f'{base}/{c}' for c in configs)}.")
    builder = cls(**common, **({"config": config} if config else {}))
  else:
    short_side = (video_builder.DEFAULT_SHORT_SIDE if args.short_side is None
                  else args.short_side)
    if args.name == FOLDER:
      _check_folder_flags(args)
      cls = folder.VideoFolder if args.videos else folder.ImageFolder
      config = folder.folder_config(args.dataset_name, short_side, args.fps,
                                    args.flip_changes_label)
      manual_dir = args.videos or args.images
    else:
      cls = registry.builder_class(args.name)
      _check_source_flags(args, cls.MANUAL_DOWNLOAD_INSTRUCTIONS)
      config = cls.config_for(short_side, args.fps)
      manual_dir = args.manual_dir
    builder = cls(manual_dir=manual_dir, config=config,
                  num_workers=args.num_workers, **common)
  if local_dir == data_dir:
    directory = os.fspath(builder.data_dir)
    was_prepared = builder.is_prepared()
    builder.download_and_prepare()
    state = "was already prepared" if was_prepared else "is ready"
    lines = [f"{builder.info.full_name} {state} in {directory}"]
    info = builder.info
  else:
    line, directory = _prepare_and_upload(builder, data_dir)
    lines = [line]
    info = tfds.builder_from_directory(directory).info
  report = prepare_report.read(directory)
  if report:
    lines.append(prepare_report.summary(report, directory))
  else:
    lines += [f"  {split}: {split_info.num_examples} examples"
              for split, split_info in info.splits.items()]
  name = builder.name
  if builder.builder_config:
    name += "/" + builder.builder_config.name
  lines.append(f"Train on it with the dataset name {name!r}.")
  return "\n".join(lines)


def _local_dir(args: argparse.Namespace, data_dir: str) -> str:
  """Where the dataset is written: data_dir itself, or for a URI the local
  staging dir."""
  from cover_jax.storage import is_uri  # pylint: disable=import-outside-toplevel
  from data import registry  # pylint: disable=import-outside-toplevel
  if not is_uri(data_dir):
    if args.staging_dir:
      raise ValueError("--staging_dir applies to a gs:// --data_dir only; "
                       f"{data_dir} is written directly.")
    return data_dir
  local_dir = registry.expand(args.staging_dir)
  if is_uri(local_dir):
    raise ValueError(f"--staging_dir must be a local directory (ArrayRecord "
                     f"writes local files only), not {local_dir}.")
  return local_dir


def _prepare_and_upload(builder, data_dir: str) -> tuple[str, str]:
  """Prepares `builder` in its local data dir unless data_dir (a URI)
  holds it already, then uploads it there; (summary line, the dataset's
  directory on data_dir)."""
  from cover_jax import storage  # pylint: disable=import-outside-toplevel
  version_dir = os.path.relpath(os.fspath(builder.data_dir),
                                os.fspath(builder.data_dir_root))
  target = storage.resolve(data_dir) / version_dir
  if storage.exists(target / "dataset_info.json", "--data_dir"):
    return (f"{builder.info.full_name} was already prepared in {target}",
            os.fspath(target))
  builder.download_and_prepare()  # a no-op when prepared locally already
  copied, there = storage.upload_tree(builder.data_dir, target,
                                      last=("dataset_info.json",))
  return (f"{builder.info.full_name} is ready in {target} (prepared in "
          f"{builder.data_dir}; {copied} files uploaded, {there} were there "
          f"already)", os.fspath(target))


# Flags by the kind of dataset they apply to.
_SOURCE_FLAGS = ("manual_dir", "short_side", "fps", "num_workers")
_FOLDER_FLAGS = ("videos", "images", "dataset_name", "flip_changes_label")


def _refuse(args: argparse.Namespace, flags, why: str):
  """An error for each flag of `flags` that was given."""
  given = [f for f in flags if getattr(args, f) not in (None, False)]
  if given:
    shown = ["--name" if f == "dataset_name" else f"--{f}" for f in given]
    raise ValueError(f"{', '.join(shown)} does not apply to {args.name}: "
                     f"{why}.")


def _check_source_flags(args: argparse.Namespace, instructions: str):
  _refuse(args, _FOLDER_FLAGS, f"those are for '{FOLDER}'")
  if not args.manual_dir:
    raise ValueError(f"{args.name} needs --manual_dir, the folder of the files "
                     f"you downloaded.\n{instructions}")


def _check_folder_flags(args: argparse.Namespace):
  _refuse(args, ("manual_dir",), "give the folder as --videos or --images")
  if bool(args.videos) == bool(args.images):
    raise ValueError(f"{FOLDER} needs exactly one of --videos=ROOT and "
                     "--images=ROOT.")
  if not args.dataset_name:
    raise ValueError(f"{FOLDER} needs --name=NAME, the name to prepare the "
                     "dataset under (then read it as video_folder/NAME or "
                     "image_folder/NAME).")
  if args.images and args.fps is not None:
    raise ValueError("--fps applies to videos only.")


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    print(prepare(args))
  except (ValueError, OSError) as e:  # ours name the problem and the fix
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
