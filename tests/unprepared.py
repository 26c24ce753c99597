"""What preflight lists for the headline config (configs/cover_l16_jft.py)
with nothing prepared: each missing dataset with the command that prepares
it, then the missing init_from."""


def headline_missing(data_dir) -> list[str]:
  prepare = f"--manual_dir=DIR --data_dir={data_dir}"
  return [
      f"dataset 'imagenet2012' (config.datasets.imagenet, split 'train') is "
      f"not prepared: tfds build imagenet2012 {prepare} "
      f"--file_format=array_record",
      f"dataset 'kinetics400/short512' (config.datasets.kinetics400, split "
      f"'train') is not prepared: python -m data.prepare kinetics400 "
      f"{prepare} --short_side=512",
      f"dataset 'moments_in_time/short512' (config.datasets.moments_in_time,"
      f" split 'train') is not prepared: python -m data.prepare "
      f"moments_in_time {prepare} --short_side=512",
      f"dataset 'ssv2/short512' (config.datasets.ssv2, split 'train') is not "
      f"prepared: python -m data.prepare ssv2 {prepare} --short_side=512",
      "config.init_from ViT-L_16_JFT-3B.npz does not exist: give "
      "--config.init_from=PATH (a ViT .npz, a TimeSformer .pyth or a run of "
      "ours)."]
