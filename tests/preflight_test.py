"""Preflight (cover_jax/cli/preflight.py): the headline config with nothing
prepared lists every missing dataset with its command and the missing
init_from, at once, before any dataset is opened or the workdir written."""

import logging
import os

import pytest

from configs import args
from cover_jax.cli import preflight
from data import registry
from tests import unprepared


def jft_config(data_dir, **fields):
  config = args.load("configs/cover_l16_jft.py")
  with config.unlocked():
    config.data_dir = str(data_dir)
    config.update(fields)
  return config


def fake_prepared(data_dir, *parts):
  """An empty dataset_info.json where a prepared version would have one."""
  os.makedirs(os.path.join(data_dir, *parts))
  open(os.path.join(data_dir, *parts, "dataset_info.json"), "w").close()


def test_headline_config_lists_everything_missing(tmp_path):
  data_dir = tmp_path / "tfds"
  workdir = tmp_path / "run"
  assert preflight.missing(jft_config(data_dir), str(workdir), "train") == (
      unprepared.headline_missing(data_dir))
  assert not os.path.exists(data_dir) and not os.path.exists(workdir)


def test_what_is_there_is_not_listed(tmp_path):
  """Prepared datasets and an existing init_from drop out; the prepared
  version must be the one this code builds (a stale one is listed)."""
  data_dir = tmp_path / "tfds"
  fake_prepared(data_dir, "imagenet2012", "5.1.0")
  version = str(registry.builder_class("ssv2").VERSION)
  fake_prepared(data_dir, "ssv2", "short512", version)
  fake_prepared(data_dir, "kinetics400", "short512", "0.0.1")  # stale
  (tmp_path / "vit.npz").touch()
  config = jft_config(data_dir, init_from=str(tmp_path / "vit.npz"))
  assert preflight.missing(config, str(tmp_path / "run"), "train") == [
      unprepared.headline_missing(data_dir)[1],
      unprepared.headline_missing(data_dir)[2]]


def test_main_exits_with_the_list_before_writing(tmp_path, monkeypatch):
  """main.main stops at preflight: one message, no config.json."""
  import main  # pylint: disable=import-outside-toplevel
  flag_values = dict(config=jft_config(tmp_path / "tfds"), mode="train",
                     workdir=str(tmp_path / "run"))
  monkeypatch.setattr(main, "FLAGS", type("Flags", (), {
      "__getattr__": lambda self, name: flag_values.get(name),
      "__getitem__": lambda self, name: type("F", (), {"present": True})})())
  monkeypatch.setattr(main.allocator, "retain_freed_host_memory", lambda: False)
  with pytest.raises(SystemExit) as exit_:
    main.main([])
  lines = "\n".join(
      f"  - {line}" for line in unprepared.headline_missing(tmp_path / "tfds"))
  assert str(exit_.value) == f"This run cannot start; 5 missing:\n{lines}"
  assert not os.path.exists(tmp_path / "run")


def test_unprepared_tfds_dataset_says_how_without_a_tfds_warning(
    tmp_path, caplog):
  """No 'Variant folder .../5.1.0 has no dataset_info.json' about a folder
  that does not exist: the version folder is looked for before tfds is."""
  caplog.set_level(logging.WARNING)
  with pytest.raises(ValueError) as error:
    registry.load_builder("imagenet2012", str(tmp_path))
  assert str(error.value) == (
      f"TFDS dataset 'imagenet2012' is not prepared in {tmp_path}. Prepare "
      f"it once with: tfds build imagenet2012 --manual_dir=DIR "
      f"--data_dir={tmp_path} --file_format=array_record")
  assert not [r for r in caplog.records if "Variant folder" in r.getMessage()]
