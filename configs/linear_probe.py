r"""Linear probe: a frozen checkpoint of ours, only a new head trains.

The paper's probe (Zhang et al. 2021, arXiv:2112.07175, 3.2): a TimeSformer
trained on K400 (standard paradigm, 224x224), its classification layer
re-initialised and its feature extractor frozen, then trained on SSv2: 19.5%
top-1 on SSv2 ("the feature extraction mechanisms learned by one action
recognition model may have difficulty generalizing"). The default
`:ssv2` with init_from a timesformer_b16_k400.py run reproduces it; from a
cover_b16_i21k.py run it measures how much more general CoVeR's features are
(no paper number).

  arg                    target, model, input (default ssv2,b16,8x224)
  :ssv2                  SSv2 on a B/16 8x224 checkpoint
  :moments_in_time,l16,16x448   MiT on an L/16 16x448 checkpoint
  :digits_motion         the laptop version: a cover_mini.py checkpoint,
                         its model, input and optimizer (e.g. a run trained
                         on the appearance and image sets only, probed on
                         the motion set)

Only the head "<target>_probe" trains (config.optimizer.trainable="heads":
optax.multi_transform freezes everything else, the final LayerNorm too).
Recipe: the paper gives none for the probe, so its fine-tuning recipe (4.1):
batch 128, SGD momentum 0.9, lr 5e-3 / 5e-4 from epoch 11 / 5e-5 from epoch
15, 20 epochs, random crops and flips (none on SSv2).

Launch:

  python main.py --config=configs/linear_probe.py:ssv2 \
      --workdir=/runs/probe_ssv2 --config.init_from=/runs/timesformer_b16_k400

  python main.py --config=configs/linear_probe.py:digits_motion \
      --workdir=/tmp/probe --config.init_from=/tmp/cover   # laptop

Needs:
  - init_from (no default: each probe has its own source): a run of ours
    (its workdir, checkpoints directory or a step directory) whose model
    matches the model tokens.
  - the target prepared in data_dir at the input setting's short side
    (short320 for 8x224, short512 for 16x448; imagenet2012 for imagenet).
"""

from configs import transfer


def get_config(arg=None):
  return transfer.config(arg, linear_probe=True)
