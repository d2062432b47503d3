"""Plain-JAX reference for the log-marginal op, used by the tests.

No ``custom_vjp`` and no guards: values come from ``jax.nn.logsumexp`` and
gradients from ordinary autodiff. On rows whose terms are all -inf the value is
-inf (correct) but the autodiff gradient is NaN (0/0), which is exactly what the
guarded op in ``ops.py`` fixes; compare gradients only on rows with a finite score.
The segment sum is written as a one-hot contraction, a different route from the
``jax.ops.segment_sum`` that ``ops.py`` uses, so the two check each other.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def _compute_dtype(*xs: jax.Array) -> jnp.dtype:
  # At least f32 (bf16 inputs are upcast); f64 stays f64 under jax_enable_x64.
  return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def log_marginal_reference(log_prior: jax.Array, log_p: jax.Array) -> jax.Array:
  """score_i = logsumexp_k(log_prior_ik + log_p_ik), unguarded.

  Args:
    log_prior: f32[I, K] (or bf16) log mixture weights log pi_ik.
    log_p: f32[I, K] (or bf16) component log-likelihoods log p_ik.

  Returns:
    f32[I] log-marginal per row (f64 if the inputs are f64).
  """
  chex.assert_rank([log_prior, log_p], 2)
  chex.assert_equal_shape([log_prior, log_p])
  dtype = _compute_dtype(log_prior, log_p)
  return jax.nn.logsumexp(log_prior.astype(dtype) + log_p.astype(dtype), axis=-1)


def segment_log_likelihood_reference(
  token_logp: jax.Array,
  segment_ids: jax.Array,
  token_weights: jax.Array | None,
  *,
  num_rows: int,
  num_components: int,
) -> jax.Array:
  """log p_ik = sum over tokens t with segment_ids_t == i*K + k of w_t * token_logp_t.

  Args:
    token_logp: f32[N] per-token log-probs.
    segment_ids: i32[N] flat group id i*K + k; ids outside [0, I*K) are ignored.
    token_weights: f32[N] per-token weights, or None for all ones.
    num_rows: I.
    num_components: K.

  Returns:
    f32[I, K] group log-likelihoods (0 for groups without tokens).
  """
  chex.assert_rank([token_logp, segment_ids], 1)
  chex.assert_equal_shape([token_logp, segment_ids])
  dtype = _compute_dtype(token_logp)
  if token_weights is None:
    token_weights = jnp.ones_like(token_logp)
  # Out-of-range ids (negative or >= I*K) match no column of the one-hot.
  onehot = segment_ids[:, None] == jnp.arange(num_rows * num_components)[None, :]  # [N, I*K]
  # where (not multiply) so a -inf/NaN log-prob of a token outside a group never leaks in.
  terms = jnp.where(onehot, (token_weights.astype(dtype) * token_logp.astype(dtype))[:, None], 0.0)
  return jnp.sum(terms, axis=0).reshape(num_rows, num_components)


def segment_log_marginal_reference(
  log_prior: jax.Array,
  token_logp: jax.Array,
  segment_ids: jax.Array,
  token_weights: jax.Array | None = None,
) -> jax.Array:
  """Reference for ``ops.segment_log_marginal``: one-hot segment sum, then logsumexp.

  Args:
    log_prior: f32[I, K] log mixture weights.
    token_logp: f32[N] per-token log-probs.
    segment_ids: i32[N] flat group id i*K + k; out-of-range ids are ignored.
    token_weights: f32[N] or None.

  Returns:
    f32[I] log-marginal per row.
  """
  chex.assert_rank(log_prior, 2)
  num_rows, num_components = log_prior.shape
  log_p = segment_log_likelihood_reference(
    token_logp,
    segment_ids,
    token_weights,
    num_rows=num_rows,
    num_components=num_components,
  )
  return log_marginal_reference(log_prior, log_p)
