"""Import of pretrained weights into `TimeSformer`.

- `load_vit_npz`: image ViT checkpoints (`.npz`) of
  google-research/vision_transformer (original and Linen naming) and of
  big_vision (keys under `params/`, optionally scanned blocks). Spatial layers
  are copied; the temporal layers start as TimeSformer starts them.
- `load_timesformer_pyth`: the official PyTorch TimeSformer checkpoints.

Both return `(model, params)` with `params` in the loop layout (or scanned if
`scan_layers=True` is among the overrides). Bad files fail with a
`CheckpointError` that names the key and the shapes involved.

Our own training checkpoints (orbax) are `cover_jax.training.checkpointing`'s.
"""

import re
from typing import Any, Mapping, Optional

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from cover_jax.models import posemb
from cover_jax.models.timesformer import (Heads, TimeSformer,
                                          abstract_variables, scan_params,
                                          unboxed)


class CheckpointError(ValueError):
  """A checkpoint that does not match the expected layout or shapes."""


# ----------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------


def _get(flat: Mapping[str, np.ndarray], key: str, path: str) -> np.ndarray:
  if key not in flat:
    near = sorted(k for k in flat if k.split("/")[0] == key.split("/")[0])[:5]
    raise CheckpointError(
        f"{path}: missing key '{key}'"
        + (f" (keys nearby: {near})" if near else "")
        + ". Is this a checkpoint of the expected kind?")
  return np.asarray(flat[key], np.float32)


class _Filler:
  """The model's parameters, filled in from a checkpoint with shape checks.

  Starts from zeros of the right shapes (no forward pass, so loading an L/16
  costs no compile); heads start from a real initialisation because they may
  stay fresh: `fresh_heads` when given (the run's own, so that its seed
  reaches them), else one drawn from `seed`. `done()` refuses to return
  while a parameter was never set.
  """

  def __init__(self, model: TimeSformer, seed: int, path: str,
               fresh_heads: Optional[Mapping[str, Any]] = None):
    self.path = path
    shapes = unboxed(abstract_variables(
        model.clone(scan_layers=False)))["params"]
    self.params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    if fresh_heads is None:
      feature = model.representation_size or model.width
      fresh_heads = unboxed(Heads(
          model.heads, param_dtype=model.param_dtype).init(
              jax.random.PRNGKey(seed), jnp.zeros((1, feature), jnp.float32)
          ))["params"]
    shape_of = lambda tree: jax.tree.map(np.shape, dict(tree))
    if shape_of(fresh_heads) != shape_of(self.params["heads"]):
      raise ValueError(
          f"fresh_heads {shape_of(fresh_heads)} do not fit the model's heads "
          f"{shape_of(self.params['heads'])}.")
    self.params["heads"] = jax.tree.map(np.asarray, dict(fresh_heads))
    names = ("/".join(str(k.key) for k in key_path) for key_path, _ in
             jax.tree_util.tree_flatten_with_path(self.params)[0])
    self.unset = {n for n in names if not n.startswith("heads/")}

  def _node(self, dest: str, source: str):
    *parents, leaf = dest.split("/")
    node = self.params
    for name in parents + [leaf]:
      if not isinstance(node, dict) or name not in node:
        raise CheckpointError(
            f"{self.path}: checkpoint key '{source}' maps to '{dest}', which "
            "this model does not have; check the model overrides.")
      if name != leaf:
        node = node[name]
    return node, leaf

  def get(self, dest: str) -> np.ndarray:
    node, leaf = self._node(dest, dest)
    return node[leaf]

  def put(self, dest: str, value: np.ndarray, source: str):
    """Sets parameter `dest` ('/'-path) from checkpoint key `source`."""
    node, leaf = self._node(dest, source)
    expected = tuple(node[leaf].shape)
    if tuple(value.shape) != expected:
      raise CheckpointError(
          f"{self.path}: checkpoint key '{source}' has shape "
          f"{tuple(value.shape)} but model parameter '{dest}' expects "
          f"{expected}. The overrides (width, depth, num_heads, mlp_dim, "
          "patch_size) must match the checkpoint.")
    node[leaf] = np.asarray(value, node[leaf].dtype)
    self.unset.discard(dest)

  def put_heads(self, kernel: np.ndarray, bias: np.ndarray, source: str):
    """Initialises every head whose class count (and input width) equals the
    checkpoint head's; the others keep their fresh initialisation."""
    for name, head in self.params["heads"].items():
      if kernel.shape == head["kernel"].shape:
        self.put(f"heads/{name}/kernel", kernel, f"{source} kernel")
        self.put(f"heads/{name}/bias", bias, f"{source} bias")

  def done(self, model: TimeSformer):
    if self.unset:
      raise CheckpointError(
          f"{self.path}: the checkpoint has nothing for model parameters "
          f"{sorted(self.unset)[:6]}; remove the overrides that add them "
          "(e.g. representation_size).")
    params = self.params
    if model.scan_layers:
      params = scan_params(params)
    return model, params


# ----------------------------------------------------------------------------
# ViT .npz (vision_transformer and big_vision)
# ----------------------------------------------------------------------------


def _read_npz(path: str) -> dict:
  try:
    # Through epath: the file may be on gs:// (np.load only opens local ones).
    with epath.Path(path).open("rb") as file, np.load(
        file, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not a readable .npz file ({e}).") from e


def _normalise_vit_keys(flat: dict, path: str) -> dict:
  """Canonical vision_transformer keys; big_vision scanned blocks unstacked."""
  if any(k.startswith("params/") for k in flat):  # big_vision
    flat = {k[len("params/"):]: v for k, v in flat.items()
            if k.startswith("params/")}
  scanned = {k: v for k, v in flat.items()
             if k.startswith("Transformer/encoderblock/")}
  if scanned:
    flat = {k: v for k, v in flat.items() if k not in scanned}
    depths = {v.shape[0] for v in scanned.values()}
    if len(depths) != 1:
      raise CheckpointError(
          f"{path}: scanned 'Transformer/encoderblock/' arrays disagree on the "
          f"leading depth axis: {sorted(depths)}.")
    for key, value in scanned.items():
      rest = key[len("Transformer/encoderblock/"):]
      for i in range(value.shape[0]):
        flat[f"Transformer/encoderblock_{i}/{rest}"] = value[i]
  if "embedding/kernel" not in flat:
    raise CheckpointError(
        f"{path}: no 'embedding/kernel' (first keys: {sorted(flat)[:6]}). "
        "Expected a ViT .npz of google-research/vision_transformer or "
        "big_vision.")
  return flat


def _block_modules(flat: dict, prefix: str, path: str) -> dict:
  """Maps our block sub-module names to this checkpoint's, for both namings.

  Original naming numbers modules across types (LayerNorm_0,
  MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3); Linen numbers
  per type (LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
  MlpBlock_0). In both, the first LayerNorm precedes attention.
  """
  names = {k[len(prefix):].split("/")[0] for k in flat if k.startswith(prefix)}

  def of_type(kind):
    found = sorted((n for n in names if re.fullmatch(kind + r"_\d+", n)),
                   key=lambda n: int(n.rsplit("_", 1)[1]))
    return found

  norms = of_type("LayerNorm")
  attention = of_type("MultiHeadDotProductAttention")
  mlp = of_type("MlpBlock")
  if len(norms) != 2 or len(attention) != 1 or len(mlp) != 1:
    raise CheckpointError(
        f"{path}: block '{prefix}' has modules {sorted(names)}; expected two "
        "LayerNorm, one MultiHeadDotProductAttention and one MlpBlock.")
  return dict(spatial_norm=norms[0], mlp_norm=norms[1],
              spatial_attention=attention[0], mlp=mlp[0])


def _vit_structure(flat: dict, path: str) -> dict:
  kernel = _get(flat, "embedding/kernel", path)
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != 3:
    raise CheckpointError(
        f"{path}: 'embedding/kernel' has shape {kernel.shape}; expected a "
        "square RGB patch kernel [p, p, 3, width].")
  depth = len({m.group(1) for k in flat
               for m in [re.match(r"Transformer/encoderblock_(\d+)/", k)] if m})
  if depth == 0:
    raise CheckpointError(f"{path}: no 'Transformer/encoderblock_<i>' blocks.")
  block0 = "Transformer/encoderblock_0/"
  modules = _block_modules(flat, block0, path)
  query = _get(flat, f"{block0}{modules['spatial_attention']}/query/kernel", path)
  mlp_in = _get(flat, f"{block0}{modules['mlp']}/Dense_0/kernel", path)
  fields = dict(width=kernel.shape[-1], depth=depth, num_heads=query.shape[1],
                mlp_dim=mlp_in.shape[-1], patch_size=kernel.shape[0])
  if "pre_logits/kernel" in flat:
    fields["representation_size"] = flat["pre_logits/kernel"].shape[-1]
  return fields


def _vit_position_embedding(flat, path, model) -> tuple:
  """(class-token slot, spatial grid) of the checkpoint's position embedding."""
  if "Transformer/posembed_input/pos_embedding" in flat:  # vision_transformer
    key = "Transformer/posembed_input/pos_embedding"
    pos = _get(flat, key, path).reshape(-1, model.width)
    cls_pos, grid = pos[:1], pos[1:]
  elif "pos_embedding" in flat:  # big_vision: no slot for the class token
    key = "pos_embedding"
    grid = _get(flat, key, path).reshape(-1, model.width)
    cls_pos = np.zeros((1, model.width), np.float32)
  else:
    raise CheckpointError(
        f"{path}: no position embedding ('Transformer/posembed_input/"
        "pos_embedding' or 'pos_embedding'); learned position embeddings are "
        "required.")
  return key, cls_pos, grid


def load_vit_npz(path: str, *, num_frames: int, image_size: int,
                 heads: Mapping[str, int], seed: int = 0,
                 fresh_heads: Optional[Mapping[str, Any]] = None,
                 **overrides):
  """Builds a TimeSformer from an image ViT checkpoint.

  Width, depth, heads, MLP size, patch size and an optional pre-logits layer
  are read from the checkpoint's shapes; `overrides` set any other model
  field (dtype, scan_layers, remat_policy, stochastic_depth_rate, ...).

  Spatial layers are copied. Temporal attention and its LayerNorm start as
  copies of the spatial ones, `temporal_fc` and the time embedding at zero
  (as TimeSformer does), so a 1-frame input reproduces the ViT exactly. The
  position embedding is resampled (linearly, as a 2-D grid) to `image_size`.
  Each head in `heads` whose class count equals the checkpoint head's is
  initialised from it; the others take `fresh_heads` (parameters under the
  heads' names, e.g. the run's own initialisation) or else start fresh from
  `seed`. The GELU is the
  tanh approximation these checkpoints were trained with.

  Returns:
    (model, params) with numpy parameters.
  """
  flat = _normalise_vit_keys(_read_npz(path), path)
  fields = _vit_structure(flat, path)
  fields.update(gelu_approximate=True)
  fields.update(overrides)
  model = TimeSformer(heads=dict(heads), num_frames=num_frames,
                      image_size=image_size, **fields)
  model.validate()
  if "cls" not in flat:
    raise CheckpointError(
        f"{path}: no class token 'cls'. TimeSformer classifies from a class "
        "token; checkpoints pooled by 'gap' or 'map' (big_vision's default) "
        "cannot be used. Use a ViT trained with pool_type='tok'.")
  params = _Filler(model, seed, path, fresh_heads)
  put = lambda dest, source: params.put(dest, _get(flat, source, path), source)
  put("embedding/kernel", "embedding/kernel")
  put("embedding/bias", "embedding/bias")
  params.put("cls", _get(flat, "cls", path).reshape(-1), "cls")
  key, cls_pos, grid = _vit_position_embedding(flat, path, model)
  grid = posemb.resample_grid(
      grid, posemb.square_grid(grid.shape[0], f"'{key}'"),
      (image_size // model.patch_size,) * 2, "linear")
  params.put("pos_embedding", np.concatenate([cls_pos, grid]), key)
  divided = model.attention_type == "divided_space_time"
  if divided:
    params.put("time_embedding", np.zeros((num_frames, model.width)),
               "(zero, as TimeSformer)")

  for i in range(model.depth):
    prefix = f"Transformer/encoderblock_{i}/"
    modules = _block_modules(flat, prefix, path)
    # TimeSformer's initialisation: the temporal layers copy the spatial ones
    # and temporal_fc is zero, so that the block starts as the image block.
    copies = dict(spatial_norm=["spatial_norm"] + divided * ["temporal_norm"],
                  spatial_attention=["spatial_attention"] +
                  divided * ["temporal_attention"],
                  mlp_norm=["mlp_norm"], mlp=["mlp"])
    leaves = dict(spatial_norm=["scale", "bias"], mlp_norm=["scale", "bias"],
                  spatial_attention=[f"{p}/{l}" for p in
                                     ("query", "key", "value", "out")
                                     for l in ("kernel", "bias")],
                  mlp=[f"{d}/{l}" for d in ("Dense_0", "Dense_1")
                       for l in ("kernel", "bias")])
    for module, destinations in copies.items():
      for leaf in leaves[module]:
        for dest in destinations:
          put(f"encoderblock_{i}/{dest}/{leaf}",
              f"{prefix}{modules[module]}/{leaf}")
    if divided:
      for leaf in ("kernel", "bias"):
        dest = f"encoderblock_{i}/temporal_fc/{leaf}"
        params.put(dest, np.zeros_like(params.get(dest)),
                   "(zero, as TimeSformer)")

  for leaf in ("scale", "bias"):
    put(f"encoder_norm/{leaf}", f"Transformer/encoder_norm/{leaf}")
  if model.representation_size is not None:
    put("pre_logits/kernel", "pre_logits/kernel")
    put("pre_logits/bias", "pre_logits/bias")
  if "head/kernel" in flat:
    params.put_heads(_get(flat, "head/kernel", path),
                     _get(flat, "head/bias", path), "head")
  return params.done(model)


# ----------------------------------------------------------------------------
# Official TimeSformer .pyth
# ----------------------------------------------------------------------------


def _read_pyth(path: str, weights_only: bool) -> dict:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "Loading TimeSformer .pyth checkpoints needs PyTorch: "
        "pip install 'cover-jax[torch]' (or pip install torch).") from e
  try:
    with epath.Path(path).open("rb") as f:  # local or gs://
      checkpoint = torch.load(f, map_location="cpu", weights_only=weights_only)
  except Exception as e:  # torch raises many types for bad files
    raise CheckpointError(
        f"{path}: could not be read by torch.load ({type(e).__name__}: {e}). "
        "If it holds objects other than tensors and you trust it, pass "
        "weights_only=False.") from e
  state = checkpoint
  if isinstance(checkpoint, dict):
    for key in ("model_state", "state_dict", "model"):
      if isinstance(checkpoint.get(key), dict):
        state = checkpoint[key]
        break
  if not isinstance(state, dict) or not state:
    raise CheckpointError(
        f"{path}: no state dict found (expected a dict with 'model_state').")
  flat = _TrackedKeys()
  for key, value in state.items():
    name = key
    while name.startswith(("module.", "model.")):
      name = name.split(".", 1)[1]
    flat[name] = value.detach().cpu().float().numpy()
  return flat


class _TrackedKeys(dict):
  """A dict that remembers which keys were read, to report unused ones."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.read = set()

  def __getitem__(self, key):
    self.read.add(key)
    return super().__getitem__(key)

  def unread(self) -> list:
    return sorted(set(self) - self.read)


def _timesformer_structure(flat: dict, path: str, num_heads: int) -> dict:
  conv = _get(flat, "patch_embed.proj.weight", path)
  if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
    raise CheckpointError(
        f"{path}: 'patch_embed.proj.weight' has shape {conv.shape}; expected "
        "[width, 3, p, p].")
  width, patch = conv.shape[0], conv.shape[-1]
  depth = len({m.group(1) for k in flat
               for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
  if depth == 0:
    raise CheckpointError(f"{path}: no 'blocks.<i>.' parameters.")
  divided = "blocks.0.temporal_attn.qkv.weight" in flat
  if not divided and "time_embed" in flat:
    raise CheckpointError(
        f"{path}: has 'time_embed' but no temporal attention: a "
        "'joint_space_time' TimeSformer, which is not supported (use "
        "divided_space_time or space_only checkpoints).")
  pos = _get(flat, "pos_embed", path)
  side = posemb.square_grid(pos.shape[1] - 1, "'pos_embed'")[0]
  fields = dict(
      width=width, depth=depth, num_heads=num_heads,
      mlp_dim=_get(flat, "blocks.0.mlp.fc1.weight", path).shape[0],
      patch_size=patch, image_size=side * patch,
      attention_type="divided_space_time" if divided else "space_only",
      qkv_bias="blocks.0.attn.qkv.bias" in flat)
  if divided:
    fields["num_frames"] = _get(flat, "time_embed", path).shape[1]
  return fields


def load_timesformer_pyth(path: str, *, num_heads: int = 12,
                          heads: Optional[Mapping[str, int]] = None,
                          seed: int = 0,
                          fresh_heads: Optional[Mapping[str, Any]] = None,
                          weights_only: bool = True, **overrides):
  """Builds a TimeSformer from an official TimeSformer `.pyth` checkpoint.

  Reads the state dict under `model_state` (keys prefixed `model.` and/or
  `module.`), with fused `qkv` projections and a convolutional patch
  embedding. The number of attention heads is not recorded in the file:
  `num_heads` (12 for the released TimeSformer-B models). The model has one
  head, "timesformer", unless `heads` says otherwise (heads whose class count
  equals the checkpoint's are initialised from it, the others as in
  `load_vit_npz`: from `fresh_heads` or `seed`). GELU is exact and
  embeddings are resampled with the official code's nearest-neighbour rule
  (`posemb_interpolation="nearest"`), so logits equal the PyTorch model's at
  any input size. `overrides` set other model fields; `num_frames` or
  `image_size` resize the embeddings the same way.

  torch is an optional dependency (`pip install 'cover-jax[torch]'`).
  """
  flat = _read_pyth(path, weights_only)
  fields = _timesformer_structure(flat, path, num_heads)
  native_size = fields["image_size"]
  head_kernel = flat.get("head.weight")
  if heads is None:
    if head_kernel is None:
      raise CheckpointError(
          f"{path}: no 'head.weight'; pass heads={{name: classes}}.")
    heads = {"timesformer": head_kernel.shape[0]}
  fields.update(gelu_approximate=False, posemb_interpolation="nearest")
  fields.update(overrides)
  model = TimeSformer(heads=dict(heads), **fields)
  model.validate()
  if model.width % num_heads:
    raise CheckpointError(
        f"{path}: width {model.width} is not divisible by num_heads "
        f"{num_heads}.")
  params = _Filler(model, seed, path, fresh_heads)
  head_dim = model.width // model.num_heads

  def put(dest, source, transform=lambda x: x):
    params.put(dest, transform(_get(flat, source, path)), source)

  linear = lambda w: w.T
  put("embedding/kernel", "patch_embed.proj.weight",
      lambda w: w.transpose(2, 3, 1, 0))
  put("embedding/bias", "patch_embed.proj.bias")
  put("cls", "cls_token", lambda w: w.reshape(-1))
  pos = _get(flat, "pos_embed", path)[0]
  grid = posemb.resample_grid(
      pos[1:], (native_size // model.patch_size,) * 2,
      (model.image_size // model.patch_size,) * 2, "nearest")
  params.put("pos_embedding", np.concatenate([pos[:1], grid]), "pos_embed")
  if model.attention_type == "divided_space_time":
    time_emb = _get(flat, "time_embed", path)[0]
    params.put("time_embedding",
               posemb.resample_axis(time_emb, 0, model.num_frames, "nearest"),
               "time_embed")

  def put_attention(dest, source):
    qkv = _get(flat, f"{source}.qkv.weight", path)
    if qkv.shape != (3 * model.width, model.width):
      raise CheckpointError(
          f"{path}: '{source}.qkv.weight' has shape {qkv.shape}; expected "
          f"{(3 * model.width, model.width)}.")
    # Output index of the fused projection: (q|k|v, head, channel).
    kernels = qkv.reshape(3, model.num_heads, head_dim, model.width)
    kernels = kernels.transpose(0, 3, 1, 2)
    for i, proj in enumerate(("query", "key", "value")):
      params.put(f"{dest}/{proj}/kernel", kernels[i], f"{source}.qkv.weight")
    if model.qkv_bias:
      bias = _get(flat, f"{source}.qkv.bias", path).reshape(
          3, model.num_heads, head_dim)
      for i, proj in enumerate(("query", "key", "value")):
        params.put(f"{dest}/{proj}/bias", bias[i], f"{source}.qkv.bias")
    put(f"{dest}/out/kernel", f"{source}.proj.weight",
        lambda w: w.T.reshape(model.num_heads, head_dim, model.width))
    put(f"{dest}/out/bias", f"{source}.proj.bias")

  def put_norm(dest, source):
    put(f"{dest}/scale", f"{source}.weight")
    put(f"{dest}/bias", f"{source}.bias")

  def put_linear(dest, source):
    put(f"{dest}/kernel", f"{source}.weight", linear)
    put(f"{dest}/bias", f"{source}.bias")

  for i in range(model.depth):
    src, dst = f"blocks.{i}", f"encoderblock_{i}"
    put_norm(f"{dst}/spatial_norm", f"{src}.norm1")
    put_attention(f"{dst}/spatial_attention", f"{src}.attn")
    if model.attention_type == "divided_space_time":
      put_norm(f"{dst}/temporal_norm", f"{src}.temporal_norm1")
      put_attention(f"{dst}/temporal_attention", f"{src}.temporal_attn")
      put_linear(f"{dst}/temporal_fc", f"{src}.temporal_fc")
    put_norm(f"{dst}/mlp_norm", f"{src}.norm2")
    put_linear(f"{dst}/mlp/Dense_0", f"{src}.mlp.fc1")
    put_linear(f"{dst}/mlp/Dense_1", f"{src}.mlp.fc2")
  put_norm("encoder_norm", "norm")
  if head_kernel is not None:
    params.put_heads(linear(_get(flat, "head.weight", path)),
                     _get(flat, "head.bias", path), "head")
  unread = [k for k in flat.unread() if not k.startswith("head.")]
  if unread:
    raise CheckpointError(
        f"{path}: keys not understood: {unread[:8]}. This does not look like "
        "an official TimeSformer checkpoint (or the overrides change its "
        "structure, e.g. depth).")
  return params.done(model)
