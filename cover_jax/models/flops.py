"""Analytic forward FLOPs of a TimeSformer (2 FLOPs per multiply-add, as XLA).

Per block, for width d, MLP size m, s patches per frame, n frames and one
video, the multiply-adds are

    divided space-time:  (9 d^2 + 2 d m + 2 (s + 1) d + 2 n d) * n * s
    space only:          (4 d^2 + 2 d m + 2 (s + 1) d) * n * s

(with m = 4d the first is DESIGN.md's `17 d^2 + 2 (s+1) d + 2 n d`): query,
key, value and output projections of both attentions, `temporal_fc`, the MLP,
and the two attention products (QK^T and AV) over s+1 spatial and n temporal
positions. Like the TimeSformer paper, the count charges the class token only
as a key and value; the work done on the class token itself (about 1/s of the
total) is not counted. Patch embedding, the optional pre-logits layer and the
heads are added. Normalisation, softmax and other element-wise work are not
counted (they are not multiply-adds and are a few percent at most).

TimeSformer-B/16 at 8x224 gives 196 G multiply-adds per view: 0.59 T for the
1 temporal x 3 spatial views that the TimeSformer paper reports as "0.59
TFLOPs" (that paper counts multiply-adds).
"""

from typing import Optional


def forward_macs(model, *, batch: int = 1, num_frames: Optional[int] = None,
                 image_size: Optional[int] = None) -> int:
  """Multiply-adds of one forward pass of `model` (a `TimeSformer`)."""
  n = model.num_frames if num_frames is None else num_frames
  size = model.image_size if image_size is None else image_size
  d, m, p = model.width, model.mlp_dim, model.patch_size
  s = (size // p) ** 2
  if model.attention_type == "divided_space_time":
    per_token = 9 * d * d + 2 * d * m + 2 * (s + 1) * d + 2 * n * d
  else:
    per_token = 4 * d * d + 2 * d * m + 2 * (s + 1) * d
  blocks = per_token * n * s * model.depth
  patch_embedding = n * s * p * p * 3 * d
  feature = d
  pre_logits = 0
  if model.representation_size is not None:
    pre_logits = d * model.representation_size
    feature = model.representation_size
  heads = feature * sum(int(c) for c in model.heads.values())
  return batch * (blocks + patch_embedding + pre_logits + heads)


def forward_flops(model, **kwargs) -> int:
  """FLOPs (2 per multiply-add) of one forward pass; see `forward_macs`."""
  return 2 * forward_macs(model, **kwargs)


def train_step_flops(model, **kwargs) -> int:
  """FLOPs of a training step: forward plus backward = 3x forward (no remat)."""
  return 3 * forward_flops(model, **kwargs)
