r"""CoVeR with TimeSformer-B/16 from an ImageNet-21k ViT-B/16, 8x224.

The paper (Zhang et al. 2021, arXiv:2112.07175) reports no ImageNet-21k
TimeSformer-B/16 CoVeR number: this is the affordable CoVeR run, the
co-training counterpart of timesformer_b16_k400.py (the standard paradigm:
the same model, input and initialisation fine-tuned on K400 alone, 78.1 on
K400 and 58.8 on SSv2 in the paper's Table 2 for the SSv2 run). Their
difference is what co-training buys (for L/16, Table 1: +2.4 on K400).

  arg        mixture                  input
  k400       K400+SSv2+MiT+ImNet      8 frames at 224 (appendix B "standard")
  k600, k700 the same with K600/K700
  ,16x448    16 frames at 448: the input of appendix B's B/16 runs (JFT-3B,
             Fig. 4, where L/16 beats B/16 by 3.2 / 2.8 / 3.9 / 2.1 / 5.2
             points on K400 / K600 / K700 / SSv2 / MiT)
  ,no_images ... the ablations of cover_l16_jft.py (configs/ablations.py):
             no_D, no_images, image_weight=W, D_weight=W, D_sample=S

Recipe: paper 4.1, which appendix B applies to B/16 too ("the same learning
rate scheduling and ... the same data augmentation"): batch 128, SGD
momentum 0.9, lr 5e-3 / 5e-4 from epoch 11 / 5e-5 from epoch 15, 20 epochs,
ImageNet loss weight 0.5, no flip on SSv2.

Launch on every host:

  python main.py --config=configs/cover_b16_i21k.py:k400 \
      --workdir=gs://BUCKET/cover_b16_i21k_k400 \
      --config.init_from=/path/to/ViT-B_16.npz --config.data_dir=/data/tfds

Needs:
  - init_from (default "ViT-B_16.npz", in the working directory; give its
    path): an ImageNet-21k ViT-B/16 .npz with a class token (Google's
    vision_transformer release, imagenet21k/ or augreg/). If it has a
    pre-logits layer, add --config.model.representation_size=768.
  - prepared datasets in data_dir: kinetics400 (or 600/700; frames at short
    side 320, the data.prepare default), ssv2, moments_in_time and
    imagenet2012 (tfds build imagenet2012 --file_format=array_record). For
    ",16x448": the short512 copies (--short_side=512).
"""

from configs import base


def get_config(arg=None):
  return base.cover(arg, model="B/16", default_input="8x224",
                    init_from="ViT-B_16.npz")
