"""A trained model for serving: TF SavedModel (jax2tf) and jax.export.

    python main.py --mode=export --config=CONFIG --workdir=DIR --export_dir=OUT

OUT/saved_model/   TF SavedModel, signature "serving_default":
                   frames uint8 [batch, T, crop, crop, 3] -> one float32
                   [batch, classes] softmax per head; normalisation inside;
                   the batch size is free. Class names: the asset
                   class_names.json ({head: [name, ...]}).
OUT/model.jax_export   the same function serialised by jax.export (weights
                   inside): `jax.export.deserialize(data).call(frames)`.
OUT/class_names.json   the same class names, beside both.

The frames are the model's input crops (one view; average several views'
probabilities yourself, as --mode=predict does).
"""

from __future__ import annotations

import json
from typing import Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from cover_jax import pixels

SAVED_MODEL = "saved_model"
JAX_EXPORT = "model.jax_export"
CLASS_NAMES = "class_names.json"


def serving_fn(model, mean: Sequence[float], std: Sequence[float]):
  """(params, uint8 frames [b, T, H, W, 3]) -> {head: softmax [b, classes]}.

  The normalisation is training's (`pixels.normalize`): frames / 255, minus
  mean, over std, per channel.
  """
  def serve(params, frames):
    x = pixels.normalize(frames, mean, std)
    logits = model.apply({"params": params}, x, train=False)
    return {h: jax.nn.softmax(v.astype(jnp.float32), axis=-1)
            for h, v in logits.items()}
  return serve


def export(model, params, *, mean, std, class_names: dict[str, list[str]],
           export_dir: str, num_frames: int, crop_size: int) -> dict:
  """Writes the SavedModel, the jax.export artifact and the class names.

  Returns {"saved_model", "jax_export", "class_names"} paths.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel

  out = epath.Path(export_dir)
  out.mkdir(parents=True, exist_ok=True)
  names_path = out / CLASS_NAMES
  names_path.write_text(json.dumps(class_names, indent=2))
  # TF's XlaCallModule cannot read jax's erf lowering: see portable_erf.
  serve = serving_fn(model.clone(portable_erf=True), mean, std)
  params = jax.tree.map(np.asarray, params)
  frame_shape = (num_frames, crop_size, crop_size, 3)

  # jax.export: one artifact, weights as constants, batch symbolic.
  batch, = jax.export.symbolic_shape("b")
  exported = jax.export.export(jax.jit(lambda f: serve(params, f)))(
      jax.ShapeDtypeStruct((batch,) + frame_shape, jnp.uint8))
  (out / JAX_EXPORT).write_bytes(exported.serialize())

  # SavedModel: weights as tf.Variables (not constants in the graph).
  module = tf.Module()
  module.params = tf.nest.map_structure(tf.Variable, params)
  converted = jax2tf.convert(serve, polymorphic_shapes=(None, "(b, ...)"),
                             with_gradient=False)

  @tf.function(input_signature=[tf.TensorSpec((None,) + frame_shape,
                                              tf.uint8, name="frames")],
               autograph=False)
  def serving_default(frames):
    return converted(module.params, frames)

  module.serving_default = serving_default
  module.class_names = tf.saved_model.Asset(str(names_path))
  saved = out / SAVED_MODEL
  tf.saved_model.save(module, str(saved),
                      signatures={"serving_default": serving_default})
  # The asset is copied in as assets/class_names.json.
  return {"saved_model": str(saved), "jax_export": str(out / JAX_EXPORT),
          "class_names": str(names_path)}
