"""Supervised fine-tuning losses."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import FusedHead, reduced_nll, target_stats
from jaxpost.losses.registry import register
from jaxpost.types import Batch

RULES = {
  "reduction": fields.one_of(reduce.REDUCTIONS),
  "label_smoothing": fields.num(ge=0, lt=1),
  "z_loss": fields.num(ge=0),
}


@register("cross_entropy", family="token", rules=RULES)
def cross_entropy(
  logits: jax.Array | FusedHead,
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
    logits: [B, T, V] model outputs, or a ``FusedHead`` (same result, no full logits).
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
  mask = batch.loss_mask

  def reduce_fn(x):
    return reduce.reduce(x, mask, batch.segment_ids, norm, reduction)

  if z_loss:
    stats = target_stats(logits, batch.targets, mask, label_smoothing=label_smoothing)
    loss = reduce_fn(stats.nll + z_loss * jnp.square(stats.logz))
  else:
    # Linear in the per-token nll: a fused head computes its gradient in the forward.
    loss, stats = reduced_nll(
      logits, batch.targets, mask, reduce_fn, label_smoothing=label_smoothing
    )
  metrics = {
    "nll": reduce.token_mean(-stats.logp, mask, norm),
    "token_accuracy": reduce.token_mean(stats.is_top, mask, norm),
  }
  return loss, metrics
