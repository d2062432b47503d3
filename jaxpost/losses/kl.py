"""Per-token estimators of KL(pi || pi_ref) from sampled-token log-probs.

With tokens sampled from pi and log-ratio d = log pi_ref(y) - log pi(y) (Schulman's
"Approximating KL divergence" note; the k3 form is GRPO's, DeepSeekMath arXiv 2402.03300):
  k1 = -d                   unbiased, can be negative
  k2 = d^2 / 2              biased, >= 0, low variance
  k3 = exp(d) - d - 1       unbiased, >= 0 (GRPO's "unbiased estimator")
All three are exactly 0 where logp == ref_logp. Everything is computed in f32.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp


def _log_ratio(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  chex.assert_rank([logp, ref_logp], 2)
  chex.assert_equal_shape([logp, ref_logp])
  return ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)


def k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k1 = log pi - log pi_ref.

  Args:
    logp: f32[B, T] log-prob of the taken token under the policy.
    ref_logp: f32[B, T] log-prob of the same token under the reference.

  Returns:
    f32[B, T] per-token estimate.
  """
  return -_log_ratio(logp, ref_logp)


def k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k2 = (log pi - log pi_ref)^2 / 2.

  Args:
    logp: f32[B, T] log-prob of the taken token under the policy.
    ref_logp: f32[B, T] log-prob of the same token under the reference.

  Returns:
    f32[B, T] per-token estimate, >= 0.
  """
  return 0.5 * jnp.square(_log_ratio(logp, ref_logp))


def k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k3 = pi_ref/pi - log(pi_ref/pi) - 1.

  Args:
    logp: f32[B, T] log-prob of the taken token under the policy.
    ref_logp: f32[B, T] log-prob of the same token under the reference.

  Returns:
    f32[B, T] per-token estimate, >= 0.
  """
  d = _log_ratio(logp, ref_logp)
  # expm1 keeps k3 accurate (and exactly >= 0 in f32) when d is tiny.
  return jnp.expm1(d) - d


ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
  "k1": k1,
  "k2": k2,
  "k3": k3,
}


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
  """Per-token KL(pi || pi_ref) estimate by estimator name.

  Args:
    logp: f32[B, T] log-prob of the taken token under the policy.
    ref_logp: f32[B, T] log-prob of the same token under the reference.
    estimator: one of ``ESTIMATORS`` ("k1", "k2", "k3").

  Returns:
    f32[B, T] per-token estimate (unmasked; reduce it through ``losses/reduce.py``).
  """
  try:
    fn = ESTIMATORS[estimator]
  except KeyError:
    raise ValueError(
      f"unknown KL estimator {estimator!r}; expected one of {sorted(ESTIMATORS)}"
    ) from None
  return fn(logp, ref_logp)
