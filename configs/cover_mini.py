"""CoVeR on the built-in mini datasets: a tiny TimeSformer for a laptop CPU.

The datasets (digits as images, as appearance videos and as motion videos) and
the training loop land with the data and training issues; today this config
defines the model that `python main.py --mode=describe` reports on.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # name -> number of classes; one head per dataset.
  config.heads = {"digits_image": 10, "digits_appearance": 10,
                  "digits_motion": 8}
  config.model = ml_collections.ConfigDict(dict(
      variant_name=None, width=64, depth=4, num_heads=4, mlp_dim=128,
      patch_size=4, num_frames=8, image_size=32))
  config.batch_size = 32
  return config
