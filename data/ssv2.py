"""Something-Something-v2 from the official files.

`something-something-v2-labels.json` maps the 174 class names to indices;
the train and validation files list entries {"id", "label", "template",
"placeholders"}. The class of an entry is its template without brackets
("Putting [something] on [something]" -> "Putting something on something");
"label" is the template with the objects filled in. Videos are `<id>.webm`,
anywhere under the manual dir. Left/right classes: a flip changes the label.
"""

from __future__ import annotations

import json

from data import video_builder

_PREFIX = "something-something-v2-"
_INSTRUCTIONS = f"""\
Something-Something-v2: put the official files in manual_dir:
  manual_dir/{_PREFIX}labels.json, {_PREFIX}train.json and
    {_PREFIX}validation.json (or the same names under manual_dir/labels/)
  manual_dir/**/<id>.webm: the videos, in any folder, e.g. the extracted
    20bn-something-something-v2/ folder.
Download them from
https://www.qualcomm.com/developer/software/something-something-v-2-dataset."""


def _candidates(name: str) -> tuple[str, str]:
  return _PREFIX + name, "labels/" + _PREFIX + name


class Ssv2(video_builder.SourceFileBuilder):
  """Something-Something-v2: 174 classes of object motion, 220k videos."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  HOMEPAGE = ("https://www.qualcomm.com/developer/software/"
              "something-something-v-2-dataset")
  FLIP_CHANGES_LABEL = True
  MANUAL_FILES = {
      "labels": _candidates("labels.json"),
      "train": _candidates("train.json"),
      "validation": _candidates("validation.json"),
  }
  LABELS_FROM = "labels"

  def _label_names(self):
    return _load_json(self._manual_files["labels"]).keys()

  def _split_sources(self):
    videos = video_builder.files_by_stem(self._manual_dir, (".webm",))
    sources = {}
    for split in ("train", "validation"):
      path = self._manual_files[split]
      sources[split] = []
      for number, entry in enumerate(_load_json(path)):
        try:
          video_id, template = str(entry["id"]), entry["template"]
        except (KeyError, TypeError) as e:
          raise ValueError(f"{path}, entry {number}: not an SSv2 entry with "
                           f"'id' and 'template': {entry!r}") from e
        label = template.replace("[", "").replace("]", "")
        self.check_label(label, f"{path}, entry {number} (id {video_id})")
        sources[split].append(
            video_builder.Source(video_id, label, videos.get(video_id)))
    return sources


def _load_json(path: str):
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); download it "
                       f"again.") from e
