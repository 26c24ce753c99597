"""Prepares a dataset once, before training.

  python -m data.prepare kinetics400 --manual_dir=DIR --data_dir=DIR \\
      [--short_side=320] [--fps=F] [--num_workers=N]
      (also kinetics600, kinetics700, ssv2, moments_in_time)
  python -m data.prepare folder --videos=ROOT --name=NAME --data_dir=DIR \\
      [--short_side=320] [--fps=F] [--flip_changes_label] [--num_workers=N]
  python -m data.prepare folder --images=ROOT --name=NAME --data_dir=DIR
  python -m data.prepare digits_motion --data_dir=DIR   (the mini datasets)

Killed and restarted with the same command, it goes on from its decode
cache. It ends with a summary of what was written, skipped and missing; the
full list with reasons is `prepare_report.json` beside the dataset.
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
  parser.add_argument("--data_dir", help="where prepared datasets live "
                                         "(default: ~/tensorflow_datasets)")
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
  """
  # Imported here, not at the top: the spawned decode workers import this
  # module again (as `__mp_main__`) and must not load TensorFlow.
  from data import features, folder, prepare_report, registry, video_builder

  data_dir = os.path.expanduser(args.data_dir or registry.DEFAULT_DATA_DIR)
  names = registry.known_names() + [FOLDER]
  if args.name not in names:
    raise ValueError(f"Unknown dataset {args.name!r}. Known datasets: "
                     f"{', '.join(names)}.")
  common = dict(data_dir=data_dir, file_format=features.FILE_FORMAT)
  if args.name in registry.BUILT_ON_FIRST_USE:
    _refuse(args, _SOURCE_FLAGS + _FOLDER_FLAGS,
            "it is made from data bundled with scikit-learn")
    builder = registry.builder_class(args.name)(**common)
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
  was_prepared = builder.is_prepared()
  builder.download_and_prepare()

  directory = os.fspath(builder.data_dir)
  state = "was already prepared" if was_prepared else "is ready"
  lines = [f"{builder.info.full_name} {state} in {directory}"]
  report = prepare_report.read(directory)
  if report:
    lines.append(prepare_report.summary(report, directory))
  else:
    lines += [f"  {split}: {info.num_examples} examples"
              for split, info in builder.info.splits.items()]
  name = builder.name
  if builder.builder_config:
    name += "/" + builder.builder_config.name
  lines.append(f"Train on it with the dataset name {name!r}.")
  return "\n".join(lines)


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
  except (ValueError, FileNotFoundError) as e:
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
