"""Supervised fine-tuning losses."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost.losses import reduce
from jaxpost.losses.registry import register
from jaxpost.types import Batch


def token_logp(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Log-prob of each target token, the log-normaliser and the max logit, in f32.

  Args:
    logits: [B, T, V] any float dtype.
    targets: i32[B, T].

  Returns:
    (logp f32[B, T], logz f32[B, T], is_top bool[B, T]); ``is_top`` says the target is
    the model's top-1 token (ties count as top-1).
  """
  chex.assert_rank(logits, 3)
  logits = logits.astype(jnp.float32)
  # One max pass serves both the stable logsumexp and the top-1 check.
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
  logz = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - logz, logz, picked >= top


@register("cross_entropy")
def cross_entropy(
  logits: jax.Array,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  reduction: str = "token_mean",
  label_smoothing: float = 0.0,
  z_loss: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked next-token cross-entropy.

  loss = reduce_t( -(1 - eps) log p(y_t) - eps * mean_v log p(v) + z * logZ_t^2 )

  Args:
    logits: [B, T, V] model outputs.
    batch: the batch; uses targets, loss_mask, segment_ids.
    norm: global normalisers.
    reduction: 'token_mean' (every token weighs the same) or 'sequence_mean'
      (every example weighs the same).
    label_smoothing: eps, mass spread uniformly over the vocabulary.
    z_loss: coefficient of the log-normaliser penalty (PaLM-style stabiliser).

  Returns:
    (loss f32[], metrics) with metrics additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  logp, logz, is_top = token_logp(logits, batch.targets)
  nll = -logp
  if label_smoothing:
    mean_logp = jnp.mean(logits.astype(jnp.float32), axis=-1) - logz
    nll = (1.0 - label_smoothing) * nll - label_smoothing * mean_logp
  if z_loss:
    nll = nll + z_loss * jnp.square(logz)
  mask = batch.loss_mask
  loss = reduce.reduce(nll, mask, batch.segment_ids, norm, reduction)
  correct = is_top.astype(jnp.float32)
  metrics = {
    "nll": reduce.token_mean(-logp, mask, norm),
    "token_accuracy": reduce.token_mean(correct, mask, norm),
  }
  return loss, metrics
