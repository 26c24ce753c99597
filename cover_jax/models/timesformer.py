"""TimeSformer (Bertasius et al. 2021) with one classification head per dataset.

Semantics follow the official PyTorch implementation (facebookresearch/
TimeSformer, `timesformer/models/vit.py`) so that its checkpoints and ViT
checkpoints load exactly:

- patch embedding (a stride-p convolution), a class token, a spatial position
  embedding with a slot for the class token, and a time embedding added to the
  patch tokens only;
- divided space-time blocks: temporal attention over the patch tokens of each
  spatial location (the class token takes no part), its output through
  `temporal_fc` before the residual; spatial attention within each frame with
  the class token repeated per frame, the per-frame class-token outputs averaged;
  then the MLP. Pre-norm, LayerNorm eps 1e-6;
- the final LayerNorm on the class token, then one linear head per dataset.

Internally the tokens are held as `[batch, time, 1 + space, width]` with the
class token replicated in slot 0 of every frame. The copies stay identical (the
spatial update of the class token is averaged over frames and the temporal
branch leaves it alone), so values and gradients equal the official model's,
while every block works on one dense array instead of splitting off the class
token and concatenating it back in every branch.

Images are 1-frame videos through the same parameters: the temporal attention
of a single frame reduces to a feed-forward layer (paper, appendix A).

Deliberate differences from the official code, all training-time only:
stochastic depth drops a whole residual branch per example (the official code
draws its mask per frame and per spatial location), and there is no dropout on
attention probabilities (neither `attention.dot_product_attention` nor
`jax.nn.dot_product_attention` has it; TimeSformer and CoVeR train with it
off).
"""

import functools
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cover_jax.models import attention
from cover_jax.models import posemb

Dtype = Any

# Widths, depths, heads and MLP sizes of the standard ViT family.
VARIANTS = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "H": dict(width=1280, depth=32, num_heads=16, mlp_dim=5120),
}

ATTENTION_TYPES = ("divided_space_time", "space_only")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


def variant(name: str) -> dict:
  """Model fields of a named variant such as "B/16" (width, depth, heads, patch)."""
  size, _, patch = name.partition("/")
  if size not in VARIANTS or not patch.isdigit():
    raise ValueError(
        f"Unknown TimeSformer variant {name!r}; use <size>/<patch> with size "
        f"in {sorted(VARIANTS)}, e.g. 'B/16' or 'H/14'.")
  return dict(VARIANTS[size], patch_size=int(patch))


def _dense_init(names):
  return nn.with_logical_partitioning(
      nn.initializers.truncated_normal(0.02), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


# The remat_policy values that checkpoint nothing. everything_saveable
# recomputes nothing, but a checkpoint still adds optimisation barriers that
# slow the step (benchmarks/block_plan.py). So it means no checkpoint, as
# None does.
NO_REMAT = (None, "everything_saveable")


def _layer_norm(name, dtype, param_dtype):
  return nn.LayerNorm(
      epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                              ("embed",)),
      bias_init=_zeros(("embed",)))


def _drop_path(x, rate, deterministic: bool, module: nn.Module):
  """Stochastic depth: drops the whole branch of an example with prob. `rate`."""
  if deterministic:
    return x
  keep = 1.0 - rate
  mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, mask_shape)
  scale = jnp.where(mask, 1.0 / jnp.maximum(keep, 1e-12), 0.0)
  return x * scale.astype(x.dtype)


# XLA's own float32 erf: x P(x^2) / Q(x^2) on [-4, 4] (xla/client/lib/math).
_ERF_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08,
              -2.10102402082508e-06, -5.69250639462346e-05,
              -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02)
_ERF_BETA = (-1.45660718464996e-05, -2.13374055278905e-04,
             -1.68282697438203e-03, -7.37332916720468e-03,
             -1.42647390514189e-02)


def portable_erf(x):
  """erf from elementary ops (within 5e-7 of lax.erf in float32).

  lax.erf lowers to chlo.erf, which jax.export serialises as a StableHLO
  composite that TensorFlow's XlaCallModule (TF 2.21) cannot read, and whose
  decomposition it cannot shape-refine for a polymorphic batch: exports
  (cover_jax/inference/export.py) compute the exact GELU with this instead.
  """
  x = jnp.clip(x, -4.0, 4.0)
  x2 = x * x
  horner = lambda cs: functools.reduce(lambda r, c: r * x2 + c, cs,
                                       jnp.zeros_like(x2))
  return x * horner(_ERF_ALPHA) / horner(_ERF_BETA)


def gelu(x, approximate: bool, portable: bool = False):
  """GELU. The exact form is written with erf, as PyTorch computes it; on CPU
  it costs half of jax.nn.gelu's erfc form and differs from it by < 1e-6.
  portable: erf from elementary ops (`portable_erf`), for exports."""
  if approximate:
    return nn.gelu(x, approximate=True)
  erf = portable_erf if portable else jax.lax.erf
  # Python-float constants keep bf16 activations in bf16.
  return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))


def _linear_params(module, contracted, features, kernel_axes, contract,
                   use_bias, zero_init, param_dtype):
  """(kernel `[*contracted, *features]`, bias `features` or None) of a
  dense layer, created in `module`'s scope as "kernel" and "bias"."""
  init = _zeros if zero_init else _dense_init
  kernel = module.param("kernel", init(kernel_axes),
                        tuple(contracted) + tuple(features), param_dtype)
  bias = None
  if use_bias:
    bias = module.param("bias", _zeros(kernel_axes[contract:]),
                        tuple(features), param_dtype)
  return kernel, bias


class Linear(nn.Module):
  """Dense layer over the last `contract` axes of its input, with a kernel
  `[*contracted, *features]` whose axes keep their logical names.

  One layer for every dense map of the model. (flax's DenseGeneral initialises
  a flattened kernel, which breaks logical partitioning of kernels with more
  than two axes.)
  """
  features: tuple
  kernel_axes: tuple
  contract: int = 1
  use_bias: bool = True
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    lead, contracted = x.shape[:-self.contract], x.shape[-self.contract:]
    kernel, bias = _linear_params(
        self, contracted, self.features, self.kernel_axes, self.contract,
        self.use_bias, self.zero_init, self.param_dtype)
    kernel = kernel.astype(self.dtype).reshape(int(np.prod(contracted)), -1)
    y = x.astype(self.dtype).reshape(lead + (-1,)) @ kernel
    if bias is not None:
      y = y + bias.astype(self.dtype).reshape(-1)
    return y.reshape(lead + tuple(self.features))


class LinearWeights(nn.Module):
  """The parameters of a `Linear` (same names, shapes and logical axes),
  returned as `(kernel, bias or None)` for a caller that fuses layers."""
  in_features: int
  features: tuple
  kernel_axes: tuple
  use_bias: bool = True
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self):
    return _linear_params(self, (self.in_features,), self.features,
                          self.kernel_axes, 1, self.use_bias, False,
                          self.param_dtype)


class Attention(nn.Module):
  """Multi-head self-attention on tokens `[n, width]` laid out as `sequence`.

  `sequence = (batch, length, groups)` gives the token order, row-major:
  attention runs along `length`, separately for every batch and group index.
  Spatial attention passes `(batch * time, space, 1)`, temporal attention
  `(batch, time, space)`. The groups fold into the heads axis of the
  attention (`attention.dot_product_attention`, or
  `jax.nn.dot_product_attention` for "cudnn"; heads attend independently), so no
  activation is transposed. Projections work on 2-D token matrices, which XLA
  runs as plain GEMMs forward and backward; query, key and value in one.
  """
  num_heads: int
  qkv_bias: bool = True
  dropout_rate: float = 0.0
  deterministic: bool = True
  implementation: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, sequence):
    batch, length, groups = sequence
    width = tokens.shape[-1]
    head_dim = width // self.num_heads
    # One [width, 3 * width] matmul for the three projections (fewer passes
    # over the tokens than three), from the parameters of three Linears, so
    # checkpoints keep query/key/value.
    weights = [LinearWeights(width, (self.num_heads, head_dim),
                             ("embed", "heads", "head_dim"), self.qkv_bias,
                             self.param_dtype, name=name)()
               for name in ("query", "key", "value")]
    kernel = jnp.concatenate([k.astype(self.dtype).reshape(width, -1)
                              for k, _ in weights], axis=1)
    qkv = tokens.astype(self.dtype) @ kernel
    if self.qkv_bias:
      qkv = qkv + jnp.concatenate(
          [b.astype(self.dtype).reshape(-1) for _, b in weights])
    qkv = qkv.reshape(batch, length, groups, 3, self.num_heads, head_dim)
    query, key, value = (
        qkv[:, :, :, i].reshape(batch, length, groups * self.num_heads,
                                head_dim) for i in range(3))
    if self.implementation == "xla":
      out = attention.dot_product_attention(query, key, value)
    else:
      out = jax.nn.dot_product_attention(
          query, key, value, implementation=self.implementation)
    out = Linear(
        features=(width,), kernel_axes=("heads", "head_dim", "embed"),
        contract=2, dtype=self.dtype, param_dtype=self.param_dtype,
        name="out")(out.reshape(-1, self.num_heads, head_dim))
    return nn.Dropout(self.dropout_rate)(out, deterministic=self.deterministic)


class Mlp(nn.Module):
  """Dense -> GELU -> Dense on tokens `[n, width]`, dropout after each."""
  mlp_dim: int
  gelu_approximate: bool = False
  portable_erf: bool = False
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    width = tokens.shape[-1]
    dense = functools.partial(Linear, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    y = dense((self.mlp_dim,), ("embed", "mlp"), name="Dense_0")(tokens)
    y = nn.with_logical_constraint(gelu(y, self.gelu_approximate,
                                        self.portable_erf),
                                   ("activation_batch", "activation_mlp"))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
    y = dense((width,), ("mlp", "embed"), name="Dense_1")(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)


class Block(nn.Module):
  """One TimeSformer block on tokens `[batch, time, 1 + space, width]`.

  Returns `(tokens, None)` so that it can run under `nn.scan`.
  """
  num_heads: int
  mlp_dim: int
  attention_type: str = "divided_space_time"
  qkv_bias: bool = True
  gelu_approximate: bool = False
  portable_erf: bool = False
  dropout_rate: float = 0.0
  stochastic_depth: bool = False
  deterministic: bool = True
  attention_implementation: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, drop_path_rate):
    batch, time, length, width = x.shape
    norm = functools.partial(_layer_norm, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    attention = functools.partial(
        Attention, num_heads=self.num_heads, qkv_bias=self.qkv_bias,
        dropout_rate=self.dropout_rate, deterministic=self.deterministic,
        implementation=self.attention_implementation, dtype=self.dtype,
        param_dtype=self.param_dtype)
    drop_path = functools.partial(
        _drop_path, rate=drop_path_rate, module=self,
        deterministic=self.deterministic or not self.stochastic_depth)
    constrain = functools.partial(
        nn.with_logical_constraint,
        logical_axis_resources=("activation_batch", "activation_time",
                                "activation_length", "activation_embed"))
    # Dense layers see the tokens as one [n, width] matrix (a free reshape).
    tokens = lambda v: v.reshape(-1, width)

    if self.attention_type == "divided_space_time":
      # Temporal attention: each spatial location attends over time.
      y = attention(name="temporal_attention")(
          norm("temporal_norm")(tokens(x)), (batch, time, length))
      y = drop_path(y.reshape(x.shape))
      # Zero, as in TimeSformer: a new model starts as its image model.
      y = Linear((width,), ("embed", "embed_out"), zero_init=True,
                 dtype=self.dtype, param_dtype=self.param_dtype,
                 name="temporal_fc")(tokens(y))
      # The class token (slot 0) takes no part in the temporal branch.
      is_patch = (jnp.arange(length) > 0).astype(y.dtype)[:, None]
      x = constrain(x + y.reshape(x.shape) * is_patch)

    # Spatial attention: each frame attends over its class token and patches.
    y = attention(name="spatial_attention")(
        norm("spatial_norm")(tokens(x)), (batch * time, length, 1))
    y = drop_path(y.reshape(x.shape))
    if self.attention_type == "divided_space_time":
      # One class token per video: average its per-frame updates.
      cls_update = jnp.mean(y[:, :, :1], axis=1, keepdims=True)
      y = jnp.concatenate(
          [jnp.broadcast_to(cls_update, (batch, time, 1, width)), y[:, :, 1:]],
          axis=2)
    x = constrain(x + y)

    y = Mlp(self.mlp_dim, gelu_approximate=self.gelu_approximate,
            portable_erf=self.portable_erf, dropout_rate=self.dropout_rate, deterministic=self.deterministic,
            dtype=self.dtype, param_dtype=self.param_dtype,
            name="mlp")(norm("mlp_norm")(tokens(x)))
    return constrain(x + drop_path(y.reshape(x.shape))), None


class TimeSformer(nn.Module):
  """TimeSformer with one linear head per dataset.

  `model.apply({"params": p}, video, train=False)` takes `video` float
  `[batch, frames, height, width, 3]` (frames=1 for images) and returns
  `{head_name: logits [batch, num_classes]}` in float32 for every head in
  `heads`.

  Parameters are sized for `num_frames` x `image_size`; other inputs are
  accepted: the spatial position embedding is resampled as a 2-D grid and the
  time embedding along time (`posemb_interpolation`, see `posemb.py`). A
  1-frame input uses the time embedding of frame 0.

  Attributes:
    heads: dataset name -> number of classes.
    attention_type: "divided_space_time" (TimeSformer) or "space_only" (a ViT
      applied per frame, class tokens averaged over frames at the end).
    gelu_approximate: True for the tanh GELU that JAX ViT checkpoints were
      trained with, False for the exact GELU of PyTorch checkpoints.
    portable_erf: the exact GELU's erf from elementary ops (`portable_erf`),
      for models exported to TensorFlow; parameters are the same.
    representation_size: optional `pre_logits` Dense+tanh before the heads, as
      in the original ImageNet-21k ViT checkpoints.
    stochastic_depth_rate: drop-path rate of the last block; it grows linearly
      from 0 at the first block.
    dtype / param_dtype: compute dtype (e.g. bfloat16) and parameter dtype.
    attention_implementation: "xla" (any device) or "cudnn" (GPU, bf16/fp16).
    scan_layers: run the blocks under `nn.scan` (parameters of all blocks
      stacked under "encoderblock") instead of a Python loop
      ("encoderblock_0", ...). `scan_params`/`unscan_params` convert.
    remat_policy: None (or "everything_saveable", the same) for no
      rematerialisation, else the name of a `jax.checkpoint_policies`
      policy, e.g. "nothing_saveable" or "dots_with_no_batch_dims_saveable".
  """
  heads: Mapping[str, int]
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  num_frames: int = 8
  image_size: int = 224
  attention_type: str = "divided_space_time"
  qkv_bias: bool = True
  gelu_approximate: bool = False
  portable_erf: bool = False
  representation_size: Optional[int] = None
  posemb_interpolation: str = "linear"
  dropout_rate: float = 0.0
  stochastic_depth_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_implementation: str = "xla"
  scan_layers: bool = False
  remat_policy: Optional[str] = None

  def validate(self):
    """Raises ValueError naming the bad field and the fix."""
    if not self.heads:
      raise ValueError("TimeSformer needs at least one head: heads={name: classes}.")
    for name, classes in self.heads.items():
      if int(classes) < 1:
        raise ValueError(f"Head {name!r} has {classes} classes; need >= 1.")
    if self.width % self.num_heads:
      raise ValueError(
          f"width {self.width} is not divisible by num_heads {self.num_heads}.")
    if self.image_size % self.patch_size:
      raise ValueError(
          f"image_size {self.image_size} is not a multiple of patch_size "
          f"{self.patch_size}.")
    if self.attention_type not in ATTENTION_TYPES:
      raise ValueError(f"attention_type {self.attention_type!r} is not one of "
                       f"{ATTENTION_TYPES}.")
    if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(
          f"attention_implementation {self.attention_implementation!r} is not "
          f"one of {ATTENTION_IMPLEMENTATIONS}.")
    if (self.attention_implementation == "cudnn" and
        jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16)):
      raise ValueError(
          "attention_implementation='cudnn' needs dtype bfloat16 or float16 "
          f"(got {jnp.dtype(self.dtype).name}); use 'xla' for float32.")
    if self.posemb_interpolation not in posemb.METHODS:
      raise ValueError(
          f"posemb_interpolation {self.posemb_interpolation!r} is not one of "
          f"{posemb.METHODS}.")
    if self.remat_policy is not None and not callable(
        getattr(jax.checkpoint_policies, self.remat_policy, None)):
      raise ValueError(
          f"remat_policy {self.remat_policy!r} is not a jax.checkpoint_policies "
          "policy; use None, 'nothing_saveable', 'dots_saveable' or "
          "'dots_with_no_batch_dims_saveable'.")

  def _check_input(self, video):
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(
          f"TimeSformer expects video float [batch, frames, height, width, 3] "
          f"(frames=1 for images), got shape {tuple(video.shape)}.")
    if not jnp.issubdtype(video.dtype, jnp.floating):
      raise TypeError(
          f"TimeSformer expects normalised float frames, got "
          f"{video.dtype}: normalise the pipeline's uint8 pixels with "
          f"cover_jax.pixels.normalize(frames, mean, std) first.")
    _, _, height, width, _ = video.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(
          f"Input {height}x{width} is not a multiple of the patch size "
          f"{self.patch_size}; crop or resize it to e.g. {self.image_size}.")

  @nn.compact
  def __call__(self, video, *, train: bool = False):
    self.validate()
    self._check_input(video)
    deterministic = not train
    batch, time, height, width_px, _ = video.shape
    p, d = self.patch_size, self.width
    grid = (height // p, width_px // p)
    param_grid = (self.image_size // p,) * 2
    divided = self.attention_type == "divided_space_time"

    x = PatchEmbedding(p, d, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="embedding")(video)

    # Class token in slot 0 of every frame, then position embedding.
    cls = self.param("cls", _dense_init(("embed",)), (d,), self.param_dtype)
    x = jnp.concatenate(
        [jnp.broadcast_to(cls.astype(self.dtype), (batch, time, 1, d)), x],
        axis=2)
    pos = self.param("pos_embedding", _dense_init(("length", "embed")),
                     (1 + param_grid[0] * param_grid[1], d), self.param_dtype)
    pos = jnp.concatenate([pos[:1], posemb.resample_grid(
        pos[1:], param_grid, grid, self.posemb_interpolation)])
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    if divided:
      time_emb = self.param("time_embedding", _zeros(("time", "embed")),
                            (self.num_frames, d), self.param_dtype)
      time_emb = posemb.resample_axis(time_emb, 0, time,
                                      self.posemb_interpolation)
      is_patch = (jnp.arange(x.shape[2]) > 0)[:, None]
      x = x + jnp.where(is_patch, time_emb[:, None, :], 0).astype(self.dtype)
      x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(
        x, ("activation_batch", "activation_time", "activation_length",
            "activation_embed"))

    x = self._encoder(x, deterministic)

    cls_out = jnp.mean(x[:, :, 0], axis=1) if not divided else x[:, 0, 0]
    feature = _layer_norm("encoder_norm", self.dtype, self.param_dtype)(cls_out)
    # The clip embedding, for features: apply(..., mutable=["intermediates"]).
    self.sow("intermediates", "cls", feature)
    if self.representation_size is not None:
      feature = nn.tanh(Linear(
          (self.representation_size,), ("embed", "mlp"), dtype=self.dtype,
          param_dtype=self.param_dtype, name="pre_logits")(feature))
      self.sow("intermediates", "pre_logits", feature)
    return Heads(self.heads, param_dtype=self.param_dtype,
                 name="heads")(feature)

  def _encoder(self, x, deterministic):
    block = Block
    if self.remat_policy not in NO_REMAT:
      block = nn.remat(
          Block, policy=getattr(jax.checkpoint_policies, self.remat_policy),
          prevent_cse=not self.scan_layers)
    block_kwargs = dict(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        attention_type=self.attention_type, qkv_bias=self.qkv_bias,
        gelu_approximate=self.gelu_approximate,
        portable_erf=self.portable_erf,
        dropout_rate=self.dropout_rate,
        stochastic_depth=self.stochastic_depth_rate > 0,
        deterministic=deterministic,
        attention_implementation=self.attention_implementation,
        dtype=self.dtype, param_dtype=self.param_dtype)
    # Stochastic depth grows linearly over depth, as in DeiT and TimeSformer.
    drop_rates = np.linspace(0.0, self.stochastic_depth_rate, self.depth,
                             dtype=np.float32)
    if self.scan_layers:
      stack = nn.scan(
          block, variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True}, in_axes=0,
          length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(name="encoderblock", **block_kwargs)(x, drop_rates)
      return x
    for i in range(self.depth):
      x, _ = block(name=f"encoderblock_{i}", **block_kwargs)(
          x, float(drop_rates[i]))
    return x


class PatchEmbedding(nn.Module):
  """Stride-p convolution on every frame, written as one contraction.

  `[batch, time, H, W, 3]` -> `[batch, time, (H/p) * (W/p), width]`, patches
  in row-major order; the kernel has the `[p, p, 3, width]` layout of ViT.
  """
  patch_size: int
  width: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video):
    p = self.patch_size
    batch, time, height, width_px, channels = video.shape
    kernel = self.param(
        "kernel",
        _dense_init(("patch_height", "patch_width", "channels", "embed")),
        (p, p, channels, self.width), self.param_dtype)
    bias = self.param("bias", _zeros(("embed",)), (self.width,),
                      self.param_dtype)
    x = video.astype(self.dtype).reshape(
        batch, time, height // p, p, width_px // p, p, channels)
    x = jnp.einsum("bthpwqc,pqcd->bthwd", x, kernel.astype(self.dtype))
    return x.reshape(batch, time, -1, self.width) + bias.astype(self.dtype)


class Heads(nn.Module):
  """One linear classifier per dataset, stored under `heads/<name>`.

  Always computed in float32, whatever the model's compute dtype: the logits
  feed the softmax and the argmax, and a bf16 matmul would round them to 8
  bits of mantissa (close classes tie). It costs one small matmul.
  """
  heads: Mapping[str, int]
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feature):
    return {
        name: Linear((int(classes),), ("embed", "classes"), dtype=jnp.float32,
                     param_dtype=self.param_dtype, name=name)(feature)
        for name, classes in self.heads.items()
    }


def create(heads: Mapping[str, int], variant_name: Optional[str] = None,
           **fields) -> "TimeSformer":
  """A TimeSformer from a named variant ("B/16") and any field overrides."""
  base = variant(variant_name) if variant_name else {}
  return TimeSformer(heads=dict(heads), **{**base, **fields})


def _block_names(params) -> list:
  names = [k for k in params if k.startswith("encoderblock_")]
  return sorted(names, key=lambda k: int(k.rsplit("_", 1)[1]))


def scan_params(params):
  """Loop-layout parameters ("encoderblock_i") -> scanned ("encoderblock")."""
  params = dict(params)
  names = _block_names(params)
  if not names:
    raise ValueError("No 'encoderblock_<i>' parameters: already scanned?")
  blocks = [params.pop(n) for n in names]
  params["encoderblock"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return params


def unscan_params(params):
  """Scanned parameters ("encoderblock", leading depth axis) -> loop layout."""
  params = dict(params)
  if "encoderblock" not in params:
    raise ValueError("No 'encoderblock' parameters: already unscanned?")
  stacked = params.pop("encoderblock")
  depth = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(depth):
    params[f"encoderblock_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params


def unboxed(tree):
  """`tree` without flax's partitioning boxes, whatever mesh is active.

  (`nn.unbox` also applies a sharding constraint when a mesh is set, which
  fails on shapes and on arrays made outside that mesh.)
  """
  return jax.tree.map(
      lambda x: x.unbox(apply_constraint=False)
      if isinstance(x, nn.Partitioned) else x, tree,
      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def abstract_variables(model: TimeSformer, *, frames: Optional[int] = None):
  """The variables of `model` as shapes, boxed with their logical axis names.

  No parameter is allocated and nothing is compiled (`jax.eval_shape`).
  """
  video = jax.ShapeDtypeStruct(
      (1, frames or model.num_frames, model.image_size, model.image_size, 3),
      jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False),
                        jax.random.PRNGKey(0), video)


def init_params(model: TimeSformer, rng, *, batch: int = 1, frames=None):
  """Unboxed fp parameters of `model`, initialised from `rng` on a dummy input."""
  video = jnp.zeros((batch, frames or model.num_frames, model.image_size,
                     model.image_size, 3), jnp.float32)
  return unboxed(jax.jit(functools.partial(model.init, train=False))(
      rng, video))["params"]
