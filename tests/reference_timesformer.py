"""An independent, functional PyTorch TimeSformer written from the published
semantics of the official implementation (facebookresearch/TimeSformer):

- input `[B, 3, T, H, W]`; a stride-p conv per frame; the class token and the
  position embedding (resized with 2-D nearest interpolation when the grid
  differs) added per frame; the time embedding (1-D nearest) added to the
  patch tokens; tokens ordered with time fastest;
- divided blocks: temporal attention over the patch tokens of each location,
  `temporal_fc`, residual; spatial attention per frame with the class token
  repeated, per-frame class outputs averaged, residual; MLP with exact GELU;
- space_only: a ViT per frame, tokens averaged over frames before the norm;
- LayerNorm eps 1e-6, the class token through the final norm and the head.

State dicts use the official key names (without the `model.` prefix).
"""

import torch
import torch.nn.functional as F


def random_state_dict(gen, *, width=32, depth=2, mlp_dim=64, patch=4, grid=3,
                      frames=4, classes=7, divided=True, qkv_bias=True):
  w = lambda *s, scale=0.2: torch.randn(*s, generator=gen) * scale
  sd = {
      "cls_token": w(1, 1, width),
      "pos_embed": w(1, 1 + grid * grid, width),
      "patch_embed.proj.weight": w(width, 3, patch, patch),
      "patch_embed.proj.bias": w(width),
      "norm.weight": 1 + w(width), "norm.bias": w(width),
      "head.weight": w(classes, width), "head.bias": w(classes),
  }
  if divided:
    sd["time_embed"] = w(1, frames, width)
  for i in range(depth):
    b = f"blocks.{i}."
    attentions = ["attn"] + (["temporal_attn"] if divided else [])
    norms = ["norm1", "norm2"] + (["temporal_norm1"] if divided else [])
    for a in attentions:
      sd[b + f"{a}.qkv.weight"] = w(3 * width, width)
      if qkv_bias:
        sd[b + f"{a}.qkv.bias"] = w(3 * width)
      sd[b + f"{a}.proj.weight"] = w(width, width)
      sd[b + f"{a}.proj.bias"] = w(width)
    for n in norms:
      sd[b + f"{n}.weight"] = 1 + w(width)
      sd[b + f"{n}.bias"] = w(width)
    if divided:
      sd[b + "temporal_fc.weight"] = w(width, width)
      sd[b + "temporal_fc.bias"] = w(width)
    sd[b + "mlp.fc1.weight"] = w(mlp_dim, width)
    sd[b + "mlp.fc1.bias"] = w(mlp_dim)
    sd[b + "mlp.fc2.weight"] = w(width, mlp_dim)
    sd[b + "mlp.fc2.bias"] = w(width)
  return sd


def _mha(x, sd, prefix, num_heads):
  n, length, width = x.shape
  qkv = F.linear(x, sd[prefix + ".qkv.weight"], sd.get(prefix + ".qkv.bias"))
  q, k, v = qkv.reshape(n, length, 3, num_heads, -1).unbind(2)  # [n, L, h, d]
  scores = torch.einsum("nqhd,nkhd->nhqk", q, k) * q.shape[-1] ** -0.5
  out = torch.einsum("nhqk,nkhd->nqhd", scores.softmax(-1), v)
  return F.linear(out.reshape(n, length, width), sd[prefix + ".proj.weight"],
                  sd[prefix + ".proj.bias"])


def _ln(x, sd, prefix):
  return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"],
                      sd[prefix + ".bias"], eps=1e-6)


def _mlp(x, sd, prefix):
  y = F.gelu(F.linear(x, sd[prefix + ".fc1.weight"], sd[prefix + ".fc1.bias"]))
  return F.linear(y, sd[prefix + ".fc2.weight"], sd[prefix + ".fc2.bias"])


def logits(sd, video, num_heads):
  """video: float tensor [B, 3, T, H, W]; returns [B, classes]."""
  b, _, t, _, _ = video.shape
  frames = video.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (b t) c h w
  x = F.conv2d(frames, sd["patch_embed.proj.weight"],
               sd["patch_embed.proj.bias"],
               stride=sd["patch_embed.proj.weight"].shape[-1])
  gh, gw = x.shape[-2:]
  x = x.flatten(2).transpose(1, 2)  # [(b t), s, d]
  width = x.shape[-1]
  pos = sd["pos_embed"][0]
  side = int(round((pos.shape[0] - 1) ** 0.5))
  grid = pos[1:].T.reshape(1, width, side, side)
  grid = F.interpolate(grid, size=(gh, gw), mode="nearest")
  pos = torch.cat([pos[:1], grid.reshape(width, -1).T])
  x = torch.cat([sd["cls_token"].expand(b * t, 1, width), x], 1) + pos
  divided = "time_embed" in sd
  depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
  if not divided:
    for i in range(depth):
      x = x + _mha(_ln(x, sd, f"blocks.{i}.norm1"), sd, f"blocks.{i}.attn",
                   num_heads)
      x = x + _mlp(_ln(x, sd, f"blocks.{i}.norm2"), sd, f"blocks.{i}.mlp")
    x = x.reshape(b, t, -1, width).mean(1)
  else:
    s = gh * gw
    cls = x[:b, :1]  # identical for every frame
    patches = x[:, 1:].reshape(b, t, s, width)
    time = F.interpolate(sd["time_embed"].transpose(1, 2), size=t,
                         mode="nearest").transpose(1, 2)[0]  # [t, d]
    patches = patches + time[None, :, None, :]
    xp = patches.permute(0, 2, 1, 3).reshape(b, s * t, width)  # time fastest
    for i in range(depth):
      p = f"blocks.{i}."
      xt = xp.reshape(b * s, t, width)
      res = _mha(_ln(xt, sd, p + "temporal_norm1"), sd, p + "temporal_attn",
                 num_heads)
      res = F.linear(res.reshape(b, s * t, width), sd[p + "temporal_fc.weight"],
                     sd[p + "temporal_fc.bias"])
      xp = xp + res
      xs = xp.reshape(b, s, t, width).permute(0, 2, 1, 3).reshape(b * t, s, width)
      xs = torch.cat([cls.repeat_interleave(t, 0), xs], 1)
      res = _mha(_ln(xs, sd, p + "norm1"), sd, p + "attn", num_heads)
      res_cls = res[:, :1].reshape(b, t, width).mean(1, keepdim=True)
      res_patch = res[:, 1:].reshape(b, t, s, width).permute(0, 2, 1, 3)
      full = torch.cat([cls, xp], 1) + torch.cat(
          [res_cls, res_patch.reshape(b, s * t, width)], 1)
      full = full + _mlp(_ln(full, sd, p + "norm2"), sd, p + "mlp")
      cls, xp = full[:, :1], full[:, 1:]
    x = torch.cat([cls, xp], 1)
  feature = _ln(x, sd, "norm")[:, 0]
  return F.linear(feature, sd["head.weight"], sd["head.bias"])
