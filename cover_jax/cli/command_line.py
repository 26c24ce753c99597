"""Command-line mistakes as one line each, before anything runs.

absl and ml_collections report a mistyped `--config.FIELD=VALUE`, a value of
the wrong type or a missing config file as chained tracebacks (a missing
file only when the config is first used, after TensorFlow and JAX started).
`parse_flags`, main.py's `flags_parser`, parses the flags and turns those
errors into one line naming the field and the closest known names, so that
nothing starts (and nothing is written) for a command that cannot run.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Sequence

from absl import flags
import ml_collections

FLAGS = flags.FLAGS
CONFIG_FLAG = "config"


class CommandLineError(Exception):
  """A command-line mistake, with the one-line message that explains it."""


def parse_flags(argv: Sequence[str]) -> list[str]:
  """FLAGS(argv), exiting with one line (status 1) on a mistake."""
  prog = os.path.basename(argv[0]) if argv else "main.py"
  try:
    return check_and_parse(list(argv))
  except CommandLineError as e:
    raise SystemExit(f"{prog}: error: {e}") from None


def check_and_parse(argv: list[str]) -> list[str]:
  """FLAGS(argv); raises CommandLineError explaining what is wrong."""
  path_and_arg = flag_value(argv, CONFIG_FLAG)
  if path_and_arg is not None:
    path = path_and_arg.partition(":")[0]
    if not os.path.isfile(path):  # config_flags reads it relative to cwd
      raise CommandLineError(f"No config file {path} "
                             f"(--{CONFIG_FLAG}={path_and_arg}).")
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    raise CommandLineError(explain(e, argv, path_and_arg)) from None


def flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value of --name in argv (--name=V or --name V), else None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def overrides(argv: Sequence[str], name: str = CONFIG_FLAG
              ) -> list[tuple[str, str]]:
  """(field path, argument as typed) of each --name.FIELD override."""
  found = []
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf"--{name}\.([\w.]+)(=.*)?", arg, re.DOTALL)
    if match:
      typed = arg if match.group(2) or i + 1 >= len(argv) else (
          f"{arg} {argv[i + 1]}")
      found.append((match.group(1), typed))
  return found


def explain(error: Exception, argv: Sequence[str],
            path_and_arg: str | None) -> str:
  """One line for an error FLAGS(argv) raised."""
  config = None
  if path_and_arg is not None:
    try:  # the config again, as --config loaded it, to name its fields
      from configs import args  # pylint: disable=import-outside-toplevel
      config = args.load(path_and_arg)
    except Exception as e:  # pylint: disable=broad-except
      return f"--{CONFIG_FLAG}={path_and_arg}: {last_line(e)}"
  if config is not None:
    for field, typed in overrides(argv):
      problem = unknown_field(config, field)
      if problem:
        return f"{typed}: {problem}"
    match = re.match(rf"flag --{CONFIG_FLAG}\.([\w.]+)=(.*?): (.*)",
                     str(error), re.DOTALL)
    if match:
      field, value, reason = match.groups()
      return (f"--{CONFIG_FLAG}.{field}={value}: "
              f"{wrong_type(config, field, value, reason)}")
  return last_line(error)


def unknown_field(config: ml_collections.ConfigDict, field: str) -> str | None:
  """Why `field` ("a.b.c") names no field of `config`, else None."""
  holder, done = config, []
  for key in field.split("."):
    if not isinstance(holder, (ml_collections.ConfigDict, dict)):
      return (f"config.{'.'.join(done)} is a value "
              f"({type(holder).__name__}), not a group of fields.")
    if key not in holder:
      prefix = "".join(f"{k}." for k in done)
      close = difflib.get_close_matches(key, list(holder.keys()), n=3,
                                        cutoff=0)
      known = ", ".join(f"config.{prefix}{k}" for k in close)
      return (f"no such field config.{prefix}{key}; closest known: "
              f"{known}.")
    holder = holder[key]
    done.append(key)
  return None


def wrong_type(config: ml_collections.ConfigDict, field: str, value: str,
               reason: str) -> str:
  """The sentence for a value that does not parse as `field`'s type."""
  *parents, key = field.split(".")
  holder = config
  for parent in parents:
    holder = holder[parent]
  kind = holder.get_type(key).__name__
  article = "an" if kind[0] in "aeiou" else "a"
  return (f"config.{field} holds {article} {kind} (now {holder[key]!r}); "
          f"{value!r} is not one ({last_line(reason)}).")


def last_line(error) -> str:
  """The last line of an error's text (config_flags embeds tracebacks)."""
  lines = [line for line in str(error).splitlines() if line.strip()]
  return lines[-1].strip() if lines else type(error).__name__
