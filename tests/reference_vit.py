"""An independent numpy ViT (the published ViT-B semantics) and random ViT
checkpoints written in the layouts of vision_transformer and big_vision."""

import math

import numpy as np


def _layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def random_vit(rng, *, width=32, depth=2, num_heads=4, mlp_dim=64, patch=4,
               grid=4, classes=10, representation_size=None):
  """Random ViT weights as a nested dict in our own reference naming."""
  hd = width // num_heads
  w = lambda *s, scale=0.2: (rng.standard_normal(s) * scale).astype(np.float32)
  vit = dict(
      patch=patch, num_heads=num_heads,
      embedding=dict(kernel=w(patch, patch, 3, width), bias=w(width)),
      cls=w(1, 1, width),
      pos=w(1, 1 + grid * grid, width),
      blocks=[],
      norm=dict(scale=1 + w(width), bias=w(width)),
  )
  for _ in range(depth):
    vit["blocks"].append(dict(
        ln1=dict(scale=1 + w(width), bias=w(width)),
        attn={k: dict(kernel=w(width, num_heads, hd), bias=w(num_heads, hd))
              for k in ("query", "key", "value")},
        ln2=dict(scale=1 + w(width), bias=w(width)),
        mlp=dict(Dense_0=dict(kernel=w(width, mlp_dim), bias=w(mlp_dim)),
                 Dense_1=dict(kernel=w(mlp_dim, width), bias=w(width))),
    ))
    vit["blocks"][-1]["attn"]["out"] = dict(kernel=w(num_heads, hd, width),
                                            bias=w(width))
  feature = width
  if representation_size:
    vit["pre_logits"] = dict(kernel=w(width, representation_size),
                             bias=w(representation_size))
    feature = representation_size
  vit["head"] = dict(kernel=w(feature, classes), bias=w(classes))
  return vit


def _patches(vit, images):
  """Patch embeddings of images [B, H, W, 3]: [B, (H/p) (W/p), width]."""
  p = vit["patch"]
  b, h, w_, c = images.shape
  x = images.reshape(b, h // p, p, w_ // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, -1, p * p * c) @ vit["embedding"]["kernel"].reshape(
      -1, vit["embedding"]["kernel"].shape[-1]) + vit["embedding"]["bias"]


def _attention(blk, x):
  """The attention branch of a block (LayerNorm, attention, projection)."""
  y = _layer_norm(x, **blk["ln1"])
  q, k, v = (np.einsum("bld,dhk->blhk", y, blk["attn"][n]["kernel"]) +
             blk["attn"][n]["bias"] for n in ("query", "key", "value"))
  att = _softmax(np.einsum("bqhk,bvhk->bhqv", q, k) / math.sqrt(q.shape[-1]))
  o = np.einsum("bhqv,bvhk->bqhk", att, v)
  return np.einsum("bqhk,hkd->bqd", o, blk["attn"]["out"]["kernel"]) + blk[
      "attn"]["out"]["bias"]


def _mlp(blk, x):
  y = _layer_norm(x, **blk["ln2"])
  y = _gelu_tanh(y @ blk["mlp"]["Dense_0"]["kernel"] + blk["mlp"]["Dense_0"]["bias"])
  return y @ blk["mlp"]["Dense_1"]["kernel"] + blk["mlp"]["Dense_1"]["bias"]


def _logits(vit, cls_token):
  f = _layer_norm(cls_token, **vit["norm"])
  if "pre_logits" in vit:
    f = np.tanh(f @ vit["pre_logits"]["kernel"] + vit["pre_logits"]["bias"])
  return f @ vit["head"]["kernel"] + vit["head"]["bias"]


def vit_logits(vit, images, *, cls_pos=True):
  """Logits of images [B, H, W, 3]; `cls_pos=False`: big_vision's layout."""
  b = images.shape[0]
  x = _patches(vit, images)
  pos = vit["pos"][0]
  if cls_pos:
    x = np.concatenate([np.repeat(vit["cls"], b, 0), x], 1) + pos
  else:  # big_vision adds the position embedding before the class token
    x = np.concatenate([np.repeat(vit["cls"], b, 0), x + pos[1:]], 1)
  for blk in vit["blocks"]:
    x = x + _attention(blk, x)
    x = x + _mlp(blk, x)
  return _logits(vit, x[:, 0])


def vit_video_logits(vit, videos):
  """Logits of videos [B, T, H, W, 3] of the TimeSformer initialised from
  `vit` (temporal_fc and the time embedding zero, so the temporal branch
  adds nothing), as TimeSformer computes them: in each block, every frame's
  patches attend with one copy of the class token; the class token's update
  is the mean of its copies'; then the MLP on every token."""
  b, t = videos.shape[:2]
  pos = vit["pos"][0]
  patches = _patches(vit, videos.reshape((b * t,) + videos.shape[2:]))
  patches = (patches + pos[1:]).reshape(b, t, -1, patches.shape[-1])
  cls = np.repeat(vit["cls"][:, 0] + pos[0], b, 0)  # [B, width]
  n, d = patches.shape[2:]
  for blk in vit["blocks"]:
    frames = np.concatenate(
        [np.broadcast_to(cls[:, None, None], (b, t, 1, d)), patches], 2)
    update = _attention(blk, frames.reshape(b * t, 1 + n, d)).reshape(
        b, t, 1 + n, d)
    cls = cls + update[:, :, 0].mean(1)
    patches = patches + update[:, :, 1:]
    x = np.concatenate([cls[:, None], patches.reshape(b, t * n, d)], 1)
    x = x + _mlp(blk, x)
    cls, patches = x[:, 0], x[:, 1:].reshape(b, t, n, d)
  return _logits(vit, cls)


def vit_npz_arrays(vit, layout: str) -> dict:
  """Flat '/'-keyed arrays: layout 'original', 'linen', 'big_vision' or
  'big_vision_scanned'."""
  names = dict(original=("LayerNorm_0", "MultiHeadDotProductAttention_1",
                         "LayerNorm_2", "MlpBlock_3"),
               linen=("LayerNorm_0", "MultiHeadDotProductAttention_0",
                      "LayerNorm_1", "MlpBlock_0"))
  ln1, attn, ln2, mlp = names.get(layout, names["linen"])
  flat = {
      "embedding/kernel": vit["embedding"]["kernel"],
      "embedding/bias": vit["embedding"]["bias"],
      "cls": vit["cls"],
      "Transformer/encoder_norm/scale": vit["norm"]["scale"],
      "Transformer/encoder_norm/bias": vit["norm"]["bias"],
      "head/kernel": vit["head"]["kernel"],
      "head/bias": vit["head"]["bias"],
  }
  if "pre_logits" in vit:
    flat["pre_logits/kernel"] = vit["pre_logits"]["kernel"]
    flat["pre_logits/bias"] = vit["pre_logits"]["bias"]
  if layout.startswith("big_vision"):
    flat["pos_embedding"] = vit["pos"][:, 1:]
  else:
    flat["Transformer/posembed_input/pos_embedding"] = vit["pos"]
  blocks = []
  for blk in vit["blocks"]:
    b = {f"{ln1}/{k}": v for k, v in blk["ln1"].items()}
    b.update({f"{ln2}/{k}": v for k, v in blk["ln2"].items()})
    for proj, leaves in blk["attn"].items():
      b.update({f"{attn}/{proj}/{k}": v for k, v in leaves.items()})
    for dense, leaves in blk["mlp"].items():
      b.update({f"{mlp}/{dense}/{k}": v for k, v in leaves.items()})
    blocks.append(b)
  if layout == "big_vision_scanned":
    for key in blocks[0]:
      flat[f"Transformer/encoderblock/{key}"] = np.stack([b[key] for b in blocks])
  else:
    for i, b in enumerate(blocks):
      flat.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in b.items()})
  if layout.startswith("big_vision"):
    flat = {f"params/{k}": v for k, v in flat.items()}
    flat["opt/momentum/cls"] = np.zeros(1, np.float32)  # ignored by loaders
  return flat
