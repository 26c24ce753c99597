r"""CoVeR's best setting: TimeSformer-L/16 from a JFT ViT-L/16, 16x448.

Reproduces the paper's JFT rows (Zhang et al. 2021, arXiv:2112.07175): one
TimeSformer-L/16 co-trained on Kinetics + SSv2 + Moments in Time + ImageNet,
a head per dataset, top-1 with 1x3 views (Table 4):

  arg    mixture                 JFT-3B: K / SSv2 / MiT    JFT-300M
  k400   K400+SSv2+MiT+ImNet     87.2 / 70.8 / 46.1        86.3 / 69.3 / 45.0
  k600   K600+SSv2+MiT+ImNet     87.9 / 70.9 / 45.9        86.8 / 69.8 / 44.5
  k700   K700+SSv2+MiT+ImNet     79.8 / 70.6 / 45.9        78.5 / 69.7 / 44.8

(also Table 5, last rows; Table 6: ImageNet top-1 86.1 with image loss
weight 0.5). Append ",8x224" for appendix B's standard input (8 frames at
224), Table 7: K400 85.1 / 67.4 / 44.2, K600 85.6 / 67.7 / 44.0, K700 76.2 /
67.9 / 43.9 (JFT-3B).

The ablations (configs/ablations.py; JFT-3B, K / SSv2 / MiT):

  arg                                      Table 5 (k400; k600, k700 alike)
  k400,no_images                           87.2 / 70.6 / 45.9
  k400,no_moments_in_time,no_images        86.4 / 69.9 / -
  k400,no_ssv2,no_moments_in_time,no_images   85.0 (K400 trained alone)
  arg                                      Table 6 (K / SSv2 / MiT / ImNet)
  k400,image_weight=0                      87.2 / 70.6 / 45.9 / -
  k400,image_weight=0.75                   87.2 / 70.6 / 45.8 / 86.6
  Also: no_D, D_weight=W and D_sample=S for a dataset D (kinetics400, ssv2,
  moments_in_time, imagenet); a weight 0 drops the dataset, so
  image_weight=0 is no_images. --config.loss_reduction=weighted_average
  divides the loss by the sum of the weights (appendix A's reading).

The recipe (paper 4.1): 16 frames sampled uniformly over each video, random
448x448 crops and horizontal flips (none on SSv2), images as 1-frame videos
with random 448 crops; batch 128 mixing all datasets in proportion to their
sizes; SGD momentum 0.9, 20 epochs, lr 5e-3, 5e-4 from epoch 11, 5e-5 from
epoch 15; loss weights 1 for videos and 0.5 for ImageNet (Table 6).

Launch on every host of a pod slice (or every node of a GPU cluster):

  python main.py --config=configs/cover_l16_jft.py:k400 \
      --workdir=gs://BUCKET/cover_l16_jft_k400 \
      --config.init_from=/path/to/ViT-L_16_JFT-3B.npz \
      --config.data_dir=/data/tfds

Needs:
  - init_from (default "ViT-L_16_JFT-3B.npz", in the working directory): a
    ViT-L/16 .npz pre-trained on JFT (class token, Google
    vision_transformer / big_vision layout). JFT-300M and JFT-3B checkpoints
    are not public: give your own. Training from scratch is not this
    experiment (--config.init_from= --config.requires_init=False does it).
    If the .npz has a pre-logits layer, add
    --config.model.representation_size=1024.
  - prepared datasets in data_dir: kinetics400/short512 (or 600/700), ssv2/
    short512 and moments_in_time/short512 (python -m data.prepare NAME
    --manual_dir=DIR --data_dir=DIR --short_side=512), and imagenet2012
    (tfds build imagenet2012 --manual_dir=DIR --data_dir=DIR
    --file_format=array_record). For ",8x224": the short320 copies (the
    data.prepare default).
"""

from configs import base


def get_config(arg=None):
  return base.cover(arg, model="L/16", default_input="16x448",
                    init_from="ViT-L_16_JFT-3B.npz")
