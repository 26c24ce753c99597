"""cover_jax.models.attention against autodiff of a plain softmax attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cover_jax.models import attention


def _plain(query, key, value):
  """Textbook attention in float32, differentiated by JAX itself."""
  q, k, v = (x.astype(jnp.float32) for x in (query, key, value))
  logits = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, -1), v)


def _inputs(dtype, shape=(2, 7, 3, 8), seed=0):
  """query, key, value, output cotangent. numpy's generator: jax.random
  compiles programs (dear ones: random bits) for every shape."""
  rng = np.random.default_rng(seed)
  # Logits of a few units, as trained models have, so the softmax is peaked.
  return [jnp.asarray((2.0 * rng.standard_normal(shape, np.float32)).astype(
      dtype)) for _ in range(4)]


def _value_and_grads(fn, q, k, v, d_out):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(d_out))


def _jitted_value_and_grads(*fns):
  """The value and gradients of each of `fns`, in one compiled program (op
  by op, every primitive of every shape compiles one of its own)."""
  return jax.jit(lambda q, k, v, d_out, d_out32: [
      _value_and_grads(fn, q, k, v, d_out32 if exact else d_out)
      for fn, exact in fns])


# Keys shorter than head_dim (probabilities normalised, as jax.nn does) and
# longer (the output normalised late): both code paths.
SHAPES = pytest.mark.parametrize("shape", [(2, 7, 3, 8), (2, 33, 4, 16)],
                                 ids=["short_keys", "long_keys"])


@SHAPES
def test_float32_values_and_gradients_equal_autodiff(shape):
  q, k, v, d_out = _inputs(jnp.float32, shape)
  ours, plain = _jitted_value_and_grads(
      (attention.dot_product_attention, False), (_plain, False))(
          q, k, v, d_out, d_out)
  for name, a, b in zip(("out", "d_query", "d_key", "d_value"), ours, plain):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5, err_msg=name)
  # Not a trivially small gradient: the comparison has something to compare.
  assert float(jnp.abs(ours[1]).max()) > 0.1


@SHAPES
def test_bf16_values_and_gradients_as_close_to_float32_as_jax_xla_path(shape):
  q, k, v, d_out = _inputs(jnp.bfloat16, shape, seed=1)
  ours, jax_xla, exact = _jitted_value_and_grads(
      (attention.dot_product_attention, False),
      (lambda *a: jax.nn.dot_product_attention(*a, implementation="xla"),
       False),
      (_plain, True))(q, k, v, d_out, np.asarray(d_out, np.float32))
  assert ours[0].dtype == jnp.bfloat16
  if shape[1] <= shape[-1]:  # jax.nn's forward pass exactly
    np.testing.assert_array_equal(np.asarray(ours[0], np.float32),
                                  np.asarray(jax_xla[0], np.float32))
  # The late normalisation rounds differently from jax.nn (the output once,
  # not the probabilities and then the output), so compare both with the
  # float32 truth rather than with each other.
  for name, a, b, ref in zip(("out", "d_query", "d_key", "d_value"), ours,
                             jax_xla, exact):
    a, b, ref = (np.asarray(x, np.float32) for x in (a, b, ref))
    scale = np.abs(ref).max()
    err_ours, err_jax = (np.abs(x - ref).max() / scale for x in (a, b))
    assert err_ours < (0.01 if name == "out" else 0.03), (name, err_ours)
    assert err_ours < 2 * err_jax + 0.01, (name, err_ours, err_jax)


# (Without remat, jit(grad) against autodiff is the float32 test above: it
# compares jitted values and gradients too.)
@SHAPES
def test_gradients_under_jit_and_remat(shape):
  q, k, v, d_out = _inputs(jnp.float32, shape, seed=2)
  fn = jax.checkpoint(attention.dot_product_attention,
                      policy=jax.checkpoint_policies.dots_saveable)
  loss = lambda *a: jnp.sum(fn(*a) * d_out)
  plain_loss = lambda *a: jnp.sum(_plain(*a) * d_out)
  ours, plain = jax.jit(lambda *a: (jax.grad(loss, argnums=(0, 1, 2))(*a),
                                    jax.grad(plain_loss, argnums=(0, 1, 2))(
                                        *a)))(q, k, v)
  for a, b in zip(ours, plain):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
