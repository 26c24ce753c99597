"""Softmax attention with fewer passes over the probabilities.

`jax.nn.dot_product_attention(implementation="xla")` computes float32
logits, a float32 softmax and bf16 (the input dtype) probabilities; JAX's
autodiff of it then keeps the float32 logits and differentiates the softmax
through its max and sum reductions, several more passes over the
[heads, queries, keys] matrix, which dominates the memory traffic of
TimeSformer's spatial attention (785 x 785 per head and frame at 448 px).

`dot_product_attention` computes the same function with two changes, both
as flash attention does (without its tiling):
- Where keys outnumber head_dim, the forward pass normalises late: it
  rounds exp(logits - max) to the input dtype and divides the
  [queries, head_dim] output by the row sums, instead of writing the float32
  exponentials and dividing the whole matrix. It differs from the XLA path
  by rounding only (and rounds once where that path rounds twice).
  Shorter keys (temporal attention's 16) keep jax.nn's forward pass.
- The backward pass keeps only those input-dtype exponentials and the row
  sums, and uses softmax's identity dS = P * (dP - rowsum(dO * O)), so the
  big matrix is read once per product.
Values and gradients agree with float32 autodiff to rounding
(tests/attention_test.py); benchmarks/block_plan.py measures what each
change saves in the TPU compiler's estimate of an L/16 block.
"""

import math

import jax
import jax.numpy as jnp


def _normalise_late(query, key) -> bool:
  """Divide the output, not the probabilities, when the output is smaller:
  keys longer than head_dim (spatial attention's 785 against 64, not
  temporal attention's 16)."""
  return key.shape[1] > query.shape[-1]


def _forward(query, key, value):
  """(output, probabilities in the input dtype, row sums or None).

  Late normalisation returns the unnormalised exp(logits - max) and the
  row sums; otherwise the probabilities and None."""
  scale = 1.0 / math.sqrt(query.shape[-1])
  logits = jnp.einsum("btnh,bsnh->bnts", query, key,
                      preferred_element_type=jnp.float32) * scale
  if not _normalise_late(query, key):
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, value), probs, None
  exp = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  row_sums = jnp.sum(exp, axis=-1)  # [b, n, t], of the float32 exponentials
  exp = exp.astype(value.dtype)
  out = jnp.einsum("bnts,bsnh->btnh", exp, value,
                   preferred_element_type=jnp.float32)
  return (out / _per_query(row_sums)).astype(value.dtype), exp, row_sums


def _per_query(row_stat):
  """[b, n, t] row statistics broadcast against [b, t, n, h]."""
  return jnp.swapaxes(row_stat, 1, 2)[..., None]


@jax.custom_vjp
def dot_product_attention(query, key, value):
  """Softmax attention on `[batch, length, heads, head_dim]` arrays, scaled
  by 1/sqrt(head_dim), no mask: `jax.nn.dot_product_attention`'s XLA path
  up to rounding, with fewer passes over the softmax matrix (module doc)."""
  return _forward(query, key, value)[0]


def _fwd(query, key, value):
  out, probs, row_sums = _forward(query, key, value)
  return out, (query, key, value, probs, row_sums, out)


def _bwd(residuals, d_out):
  query, key, value, probs, row_sums, out = residuals
  scale = 1.0 / math.sqrt(query.shape[-1])
  weights, d_out_rows = probs.astype(jnp.float32), d_out
  if row_sums is not None:  # P = probs / row_sums, divided where it is cheap
    weights = weights / row_sums[..., None]  # inside dS's element-wise pass
    d_out_rows = (d_out.astype(jnp.float32) /
                  _per_query(row_sums)).astype(d_out.dtype)
  d_value = jnp.einsum("bnts,btnh->bsnh", probs, d_out_rows)
  d_probs = jnp.einsum("btnh,bsnh->bnts", d_out, value,
                       preferred_element_type=jnp.float32)
  # rowsum(P * dP) = rowsum(dO * O): one pass over [t, h], not over [t, s].
  delta = jnp.einsum("btnh,btnh->bnt", d_out.astype(jnp.float32),
                     out.astype(jnp.float32))
  d_logits = (weights * (d_probs - delta[..., None]) *
              scale).astype(query.dtype)
  d_query = jnp.einsum("bnts,bsnh->btnh", d_logits, key)
  d_key = jnp.einsum("bnts,btnh->bsnh", d_logits, query)
  return d_query, d_key, d_value


dot_product_attention.defvjp(_fwd, _bwd)
