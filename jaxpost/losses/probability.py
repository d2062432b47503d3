"""Probability-based SFT objectives (methods/sft_distill_detect.md, 9a and 9b).

Both replace the per-token -log p(y_t) of cross-entropy by a function of the gold
token's probability p_t = p_theta(y_t | prefix) that cares less about tokens the model
finds unlikely.

**Beyond Log Likelihood** (arXiv 2510.00526, ``beyond_ll``): L = E sum_t f(p_t) with the
family f_alpha(p) = (1 - p^alpha) / alpha (alpha -> 0: -log p; alpha = 1: 1 - p). The
gradient w.r.t. the gold logit is -p^alpha (1 - p): alpha > 0 leans on tokens the model
already finds likely (prior-leaning, better when the mean gold probability is high),
alpha -> 0 on the unlikely ones (NLL, better when it is low). The paper's thresholded
variants keep only tokens with p >= q (``keep="top"``) or p <= q (``keep="bottom"``);
with ``alpha = 1`` they are OnlyTopP / OnlyBottomP, with ``alpha = 0`` OnlyTopLogP /
OnlyBottomLogP. The authors' code divides by the number of *kept* tokens
(``normalize="kept"``); ``"mask"`` divides by every counted token instead.

**DFT** (Dynamic Fine-Tuning, arXiv 2508.05629, ``dft``): L = -E sum_t sg(p_t) log p_t,
cross-entropy with each token's gradient rescaled by its own (stop-gradient)
probability; its gradient is exactly that of sum_t (1 - p_t), beyond_ll at alpha = 1.
Kept as its own loss because it is the form ASFT anchors and the one users ask for.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import FusedHead, target_stats
from jaxpost.losses.registry import register
from jaxpost.types import Batch

KEEPS = ("all", "top", "bottom")
NORMALIZES = ("mask", "kept")


def f_alpha(logp: jax.Array, alpha: float) -> jax.Array:
  """(1 - p^alpha) / alpha from log p, = -log p at alpha = 0 (its limit).

  ``-expm1(alpha log p) / alpha`` keeps full precision for small alpha, where 1 - p^alpha
  would cancel.
  """
  if alpha == 0:
    return -logp
  return -jnp.expm1(alpha * logp) / alpha


def keep_mask(p: jax.Array, keep: str, q: float) -> jax.Array:
  """1[p >= q] (top), 1[p <= q] (bottom) or ones (all), f32, no gradient."""
  p = jax.lax.stop_gradient(p)
  if keep == "top":
    return (p >= q).astype(jnp.float32)
  if keep == "bottom":
    return (p <= q).astype(jnp.float32)
  return jnp.ones_like(p)


def _check_beyond_ll(*, keep, normalize, reduction, **_) -> None:
  if normalize == "kept" and reduction != "token_mean":
    raise ValueError("normalize='kept' divides by the kept tokens: use reduction='token_mean'")
  if keep == "all" and normalize == "kept":
    raise ValueError("normalize='kept' only differs with a threshold: set keep='top' | 'bottom'")


BEYOND_LL_RULES = {
  "alpha": fields.num(ge=0),
  "keep": fields.one_of(KEEPS),
  "q": fields.num(ge=0, le=1),
  "normalize": fields.one_of(NORMALIZES),
  "reduction": fields.one_of(reduce.REDUCTIONS),
}


@register("beyond_ll", family="token", rules=BEYOND_LL_RULES, check=_check_beyond_ll)
def beyond_ll(
  outputs: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  alpha: float = 1.0,
  keep: str = "all",
  q: float = 0.2,
  normalize: str = "mask",
  reduction: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Beyond-Log-Likelihood objective L = reduce_t keep_t f_alpha(p_t) (module docstring).

  Args:
    outputs: [B, T, V] logits or a ``FusedHead``.
    batch: uses targets, loss_mask, segment_ids, and ``weights`` when given (each
      token's f is multiplied by its weight).
    norm: global normalisers.
    alpha: exponent of f_alpha (0 = NLL, 1 = the paper's "-p" objective, the default:
      its best row on math, where the gold tokens are already likely).
    keep: "all", "top" (tokens with p >= q) or "bottom" (p <= q).
    q: the threshold of ``keep`` (the paper's tables use 0.2).
    normalize: "mask" (divide by the counted tokens, additive over micro-batches) or
      "kept" (by the kept tokens, the authors' code). "kept" uses each micro-batch's
      own kept fraction, so under gradient accumulation it is a ratio estimate of the
      full-batch value, exact with one micro-batch.
    reduction: "token_mean" or "sequence_mean".

  Returns:
    (loss f32[], metrics: nll, gold_prob (the paper's diagnostic: mean p of the gold
    tokens), kept_frac), additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  mask = batch.loss_mask
  stats = target_stats(outputs, batch.targets, mask)
  p = jnp.exp(stats.logp)
  kept = keep_mask(p, keep, q) * (mask > 0)
  per_token = f_alpha(stats.logp, alpha) * kept * batch.token_weights
  loss = reduce.reduce(per_token, mask, batch.segment_ids, norm, reduction)
  kept_frac = reduce.token_mean(kept, mask, norm)
  if normalize == "kept":
    # sum / N_kept = (sum / N) / (N_kept / N); the fraction is this micro-batch's own.
    local = jnp.sum(kept) / jnp.maximum(jnp.sum(mask > 0), 1.0)
    loss = loss / jnp.maximum(jax.lax.stop_gradient(local), 1e-6) * (jnp.sum(kept) > 0)
  metrics = {
    "nll": reduce.token_mean(-stats.logp, mask, norm),
    "gold_prob": reduce.token_mean(p, mask, norm),
    "kept_frac": kept_frac,
  }
  return loss, metrics


@register("dft", family="token", rules={"reduction": fields.one_of(reduce.REDUCTIONS)})
def dft(
  outputs: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  reduction: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Dynamic Fine-Tuning: L = -reduce_t sg(p_t) log p_t (module docstring).

  Token-level, as the paper insists: a sequence-level weight p(y | x) underflows.

  Args:
    outputs: [B, T, V] logits or a ``FusedHead``.
    batch: uses targets, loss_mask, segment_ids, and ``weights`` when given.
    norm: global normalisers.
    reduction: "token_mean" or "sequence_mean".

  Returns:
    (loss f32[], metrics: nll, gold_prob), additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  mask = batch.loss_mask
  stats = target_stats(outputs, batch.targets, mask)
  p = jax.lax.stop_gradient(jnp.exp(stats.logp))
  per_token = dft_per_token(stats.logp) * batch.token_weights
  loss = reduce.reduce(per_token, mask, batch.segment_ids, norm, reduction)
  metrics = {
    "nll": reduce.token_mean(-stats.logp, mask, norm),
    "gold_prob": reduce.token_mean(p, mask, norm),
  }
  return loss, metrics


def dft_per_token(logp: jax.Array) -> jax.Array:
  """-sg(p) log p per token, from log p (gradient: that of 1 - p)."""
  return -jax.lax.stop_gradient(jnp.exp(logp)) * logp
