"""Experiment configs: one file per experiment, and the helpers they share.

  base.py       the fields every config has, the paper's optimizer
  datasets.py   the known datasets and `config.datasets` entries
  settings.py   input settings (16x448, 8x224), `config.input`, `config.model`
  ablations.py  the paper's ablations as config-argument tokens
  args.py       the config argument's parser and `load`
  transfer.py   fine-tuning or a linear probe on one target dataset
"""
