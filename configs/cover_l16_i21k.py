r"""CoVeR with TimeSformer-L/16 from an ImageNet-21k ViT-L/16, 16x448.

Reproduces the paper's ImageNet-21k rows (Zhang et al. 2021,
arXiv:2112.07175, Table 3, also Table 1): TimeSformer-L/16 co-trained on
Kinetics + SSv2 + Moments in Time + ImageNet (ILSVRC-2012: ImageNet-21k is
only the pre-training), top-1 with 1x3 views:

  arg    mixture                 K     SSv2   MiT
  k400   K400+SSv2+MiT+ImNet     83.1  64.2   41.3
  k600   K600+SSv2+MiT+ImNet     84.5  64.7   41.5
  k700   K700+SSv2+MiT+ImNet     74.9  64.7   41.5

Same recipe as cover_l16_jft.py (paper 4.1: 16 frames, 448 crops, batch 128,
SGD momentum 0.9, lr 5e-3 / 5e-4 from epoch 11 / 5e-5 from epoch 15, 20
epochs, ImageNet loss weight 0.5, no flip on SSv2); only the initialisation
differs. Table 3 does not restate the input setting: 4.1's applies to every
main result. ",8x224" gives appendix B's standard input (no i21k number).

Ablations: the arguments of cover_l16_jft.py (configs/ablations.py), e.g.
":k400,no_images" or ":k400,image_weight=0.75"; the paper's ablation numbers
(Tables 5 and 6) are for JFT-3B, none for ImageNet-21k.

Launch on every host:

  python main.py --config=configs/cover_l16_i21k.py:k400 \
      --workdir=gs://BUCKET/cover_l16_i21k_k400 \
      --config.init_from=/path/to/ViT-L_16.npz --config.data_dir=/data/tfds

Needs:
  - init_from (default "ViT-L_16.npz", in the working directory; give its
    path): an ImageNet-21k ViT-L/16 .npz with a class token, e.g. Google's
    vision_transformer release (gs://vit_models/imagenet21k/ or augreg/). If
    it has a pre-logits layer (the original imagenet21k/ViT-L_16.npz does),
    add --config.model.representation_size=1024.
  - prepared datasets, as for cover_l16_jft.py: kinetics400/short512 (or 600/
    700), ssv2/short512, moments_in_time/short512 and imagenet2012.
"""

from configs import base


def get_config(arg=None):
  return base.cover(arg, model="L/16", default_input="16x448",
                    init_from="ViT-L_16.npz")
