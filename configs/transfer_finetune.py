r"""Transfer: fine-tune a checkpoint of ours on one dataset, with a new head.

The paper's transfer study (Zhang et al. 2021, arXiv:2112.07175, 4.3,
Fig. 3): a model trained on dataset A (standard paradigm) or co-trained by
CoVeR is fine-tuned, every layer, on a target B and evaluated on B. The
figure's bars are not in the text; the text gives CoVeR's gains over the
standard paradigm: on K400 as target +1.3 (K400->K400), +1.7 (SSv2->K400),
+0.4 (MiT->K400); on SSv2 as target +2.0, +1.8 (K400->SSv2), +1.1
(MiT->SSv2).

  arg                    target, model, input (default ssv2,b16,8x224)
  :ssv2                  SSv2 from a B/16 8x224 checkpoint (e.g. a
                         cover_b16_i21k.py or timesformer_b16_k400.py run)
  :k400,l16,16x448       K400 from an L/16 16x448 checkpoint (cover_l16_*)
  :digits_motion         the laptop version: a cover_mini.py checkpoint,
                         its model, input and optimizer

Every layer trains; the new head is "<target>_transfer" (fresh even when the
checkpoint has a head for the target). Recipe: the paper gives none for
transfer, so its fine-tuning recipe (4.1): batch 128, SGD momentum 0.9, lr
5e-3 / 5e-4 from epoch 11 / 5e-5 from epoch 15, 20 epochs; no flip on SSv2.

Launch:

  python main.py --config=configs/transfer_finetune.py:ssv2 \
      --workdir=/runs/transfer_ssv2 --config.init_from=/runs/cover_b16_i21k_k400

  python main.py --config=configs/transfer_finetune.py:digits_motion \
      --workdir=/tmp/transfer --config.init_from=/tmp/cover   # laptop

Needs:
  - init_from (no default: each transfer has its own source): a run of
    ours (its workdir, its checkpoints directory or one step directory)
    whose model matches the model tokens; a ViT .npz or a TimeSformer .pyth
    works too (then this is the standard paradigm).
  - the target prepared in data_dir at the input setting's short side
    (short320 for 8x224, short512 for 16x448; imagenet2012 for imagenet).
"""

from configs import transfer


def get_config(arg=None):
  return transfer.config(arg, linear_probe=False)
