"""The report of a prepare run: what was written, and what was not and why.

A 240k-video dataset always has some videos that are gone (Kinetics) or
cannot be decoded; they are skipped, never fatal. The report, saved as
`prepare_report.json` beside the dataset, counts them split by split and
lists each with its reason, so that users see exactly what they train on.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from etils import epath

REPORT_FILE = "prepare_report.json"

# Problem kinds. Truncated videos are written (with the frames that decode);
# the others are not.
MISSING = "missing"        # listed in the annotations, no file found
SKIPPED = "skipped"        # the file does not decode (empty, corrupt...)
TRUNCATED = "truncated"    # decoding stopped early; the frames before kept
DUPLICATE = "duplicate"    # listed twice; the first listing kept

# Per-split counts, in the order they are shown.
COUNTS = ("listed", "written", TRUNCATED, SKIPPED, MISSING, DUPLICATE,
          "decoded", "from_cache")


class Report:
  """Counts and problems of one prepare run, split by split."""

  def __init__(self):
    self._counts: dict[str, collections.Counter] = {}
    self._problems: list[dict[str, str]] = []

  def count(self, split: str, **counts: int):
    """Adds to the counts of `split` (names from COUNTS)."""
    unknown = set(counts) - set(COUNTS)
    if unknown:
      raise ValueError(f"Unknown report counts {sorted(unknown)}.")
    self._counts.setdefault(split, collections.Counter()).update(counts)

  def problem(self, split: str, kind: str, example_id: str, path: str | None,
              reason: str):
    """Records one example that was not written as listed, and why."""
    self.count(split, **{kind: 1})
    self._problems.append(dict(split=split, kind=kind, id=example_id,
                               path=path or "", reason=reason))

  def problems(self, split: str) -> list[dict[str, str]]:
    return [p for p in self._problems if p["split"] == split]

  def to_json(self, **header: Any) -> dict[str, Any]:
    """The report as saved: `header` fields, per-split counts, problems."""
    splits = {split: {name: counts[name] for name in COUNTS}
              for split, counts in self._counts.items()}
    return dict(header, splits=splits, problems=self._problems)

  def write(self, directory: str, **header: Any) -> str:
    """Saves the report in `directory`; returns its path."""
    path = epath.Path(directory) / REPORT_FILE
    path.write_text(json.dumps(self.to_json(**header), indent=1))
    return os.fspath(path)


def read(directory: str) -> dict[str, Any] | None:
  """The report saved in `directory` (a prepared dataset, local or gs://),
  if any."""
  path = epath.Path(directory) / REPORT_FILE
  return json.loads(path.read_text()) if path.exists() else None


def summary(report: dict[str, Any], directory: str) -> str:
  """A few lines for the terminal: counts per split, where the details are."""
  lines = []
  for split, n in report["splits"].items():
    lines.append(
        f"  {split}: {n['written']} written ({n[TRUNCATED]} truncated) of "
        f"{n['listed']} listed; {n[SKIPPED]} skipped, {n[MISSING]} missing, "
        f"{n[DUPLICATE]} duplicates; {n['decoded']} decoded in this run, "
        f"{n['from_cache']} from the decode cache")
  problems = report["problems"]
  if problems:
    lines.append(f"  {len(problems)} problems, each with its reason, in "
                 f"{epath.Path(directory) / REPORT_FILE}")
  return "\n".join(lines)
