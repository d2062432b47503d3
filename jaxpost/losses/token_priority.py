"""Token Priority: SFT as one token-weighted objective (methods/sft_distill_detect.md, 6).

"Supervised Fine-Tuning Needs to Unlock the Potential of Token Priority",
arXiv 2602.01227 (seeds 000/001), argues that SFT should weight each token by a
priority rather than supervise all tokens uniformly, in two regimes: *positive
priority* (w_t >= 0: filter noise by down-weighting or dropping tokens) and *signed
priority* (w_t < 0 on spans marked undesirable: unlearn them). The paper gives no
formula (NOT FOUND); this is the card's unified reading, ours:

  L = -(1/N) sum_t w_t log p(y_t),    N = counted tokens (or sequences) of the loss mask

  w_t = s_t * r(role_t) * sg[p(y_t)]^prob_power * 1[sg p(y_t) >= min_prob]

where s_t is the batch's per-token weight (``Batch.weights``; the loss mask when absent),
r a per-role factor (prompt / think / answer spans of the template, and tokens the data
marks: ``ROLE_MARKED``), sg a stop-gradient.
w = 1 gives the NLL, prob_power = 1 gives DFT's gradient ("On the Generalization of SFT",
sg(p) * grad log p), min_prob = q gives Beyond-Log-Likelihood's thresholded objective.
``priority="positive"`` clips w at 0 (a negative entry drops the token); ``"signed"``
keeps negative weights, whose tokens are then pushed down: ``negative="ascent"``
differentiates w_t log p (gradient ascent on the token: the sign of its gradient
flips), ``negative="unlikelihood"`` uses |w_t| * -log(1 - p(y_t)), which is bounded.
The normaliser is always counted on the loss mask, so re-weighting never changes how
many tokens there are (a dropped token still counts in N, as in masking by weight).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import FusedHead, reduced_nll, target_stats
from jaxpost.losses.registry import register
from jaxpost.types import ROLE_ANSWER, ROLE_MARKED, ROLE_PROMPT, ROLE_THINK, Batch

PRIORITIES = ("positive", "signed")
NEGATIVES = ("ascent", "unlikelihood")


RULES = {
  "priority": fields.one_of(PRIORITIES),
  "negative": fields.one_of(NEGATIVES),
  "prob_power": fields.num(ge=0),
  "min_prob": fields.num(ge=0, lt=1),
  "prompt_weight": fields.num(),
  "think_weight": fields.num(),
  "answer_weight": fields.num(),
  "marked_weight": fields.num(),
  "reduction": fields.one_of(reduce.REDUCTIONS),
}


def _check(*, priority, prompt_weight, think_weight, answer_weight, marked_weight, **_) -> None:
  """Negative role weights only make sense with signed priorities."""
  if priority == "positive":
    for name, value in (
      ("prompt_weight", prompt_weight),
      ("think_weight", think_weight),
      ("answer_weight", answer_weight),
      ("marked_weight", marked_weight),
    ):
      if value < 0:
        raise ValueError(f"{name}={value!r} < 0 needs priority='signed'")


def token_weights(
  batch: Batch,
  logp: jax.Array | None,
  *,
  priority: str = "positive",
  prob_power: float = 0.0,
  min_prob: float = 0.0,
  prompt_weight: float = 0.0,
  think_weight: float = 1.0,
  answer_weight: float = 1.0,
  marked_weight: float = 1.0,
) -> jax.Array:
  """The stop-gradient priority w_t of every target, f32[B, T] (0 off the loss mask).

  Args:
    batch: uses loss_mask, roles and the optional ``weights``.
    logp: f32[B, T] log p(y_t), needed when ``prob_power`` or ``min_prob`` is set.
    priority, prob_power, min_prob, *_weight: see the module docstring.
  """
  w = batch.token_weights
  role_w = jnp.select(
    [
      batch.roles == ROLE_PROMPT,
      batch.roles == ROLE_THINK,
      batch.roles == ROLE_ANSWER,
      batch.roles == ROLE_MARKED,
    ],
    [prompt_weight, think_weight, answer_weight, marked_weight],
    1.0,
  )
  w = w * role_w
  if prob_power or min_prob:
    p = jnp.exp(jax.lax.stop_gradient(logp.astype(jnp.float32)))
    if prob_power:
      w = w * p**prob_power
    if min_prob:
      w = w * (p >= min_prob)
  if priority == "positive":
    w = jnp.maximum(w, 0.0)
  return jax.lax.stop_gradient(jnp.where(batch.loss_mask > 0, w, 0.0))


@register("token_priority", family="token", check=_check, rules=RULES)
def token_priority(
  outputs: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  priority: str = "positive",
  negative: str = "ascent",
  prob_power: float = 0.0,
  min_prob: float = 0.0,
  prompt_weight: float = 0.0,
  think_weight: float = 1.0,
  answer_weight: float = 1.0,
  marked_weight: float = 1.0,
  reduction: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Token-weighted NLL L = -(1/N) sum_t w_t log p(y_t) (see the module docstring).

  Args:
    outputs: [B, T, V] logits or a ``FusedHead``.
    batch: uses targets, loss_mask, segment_ids, roles and ``weights`` (None = the mask).
    norm: global normalisers (counted on the loss mask).
    priority: "positive" (w clipped at 0) or "signed" (negative w pushes tokens down).
    negative: how a negative weight acts: "ascent" (w log p) or "unlikelihood"
      (|w| * -log(1 - p)).
    prob_power: alpha of the sg(p)^alpha factor (1 = DFT; 0 = off).
    min_prob: q of the 1[p >= q] factor (Beyond Log Likelihood; 0 = off).
    prompt_weight, think_weight, answer_weight: per-role factors of the template's
      spans (prompt targets are masked out by the loss mask in SFT data anyway).
    marked_weight: the factor of tokens the data marks (``ROLE_MARKED``, e.g. the
      injected noise or bad mode of ``data.corrupt``): 0 drops them (positive
      priority), < 0 unlearns them (signed priority).
    reduction: "token_mean" or "sequence_mean".

  Returns:
    (loss f32[], metrics: nll, weight_mean, negative_frac), additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  mask = batch.loss_mask
  roles = dict(
    prompt_weight=prompt_weight,
    think_weight=think_weight,
    answer_weight=answer_weight,
    marked_weight=marked_weight,
  )

  def reduce_fn(x):
    return reduce.reduce(x, mask, batch.segment_ids, norm, reduction)

  data_dependent = prob_power or min_prob
  unlikelihood = priority == "signed" and negative == "unlikelihood"
  if not (data_dependent or unlikelihood):
    # Weights known before the forward: the loss is linear in the per-token nll, so a
    # fused head forms the gradient in its forward pass.
    w = token_weights(batch, None, priority=priority, **roles)
    loss, stats = reduced_nll(outputs, batch.targets, mask, lambda nll: reduce_fn(w * nll))
  else:
    stats = target_stats(outputs, batch.targets, mask)
    w = token_weights(
      batch, stats.logp, priority=priority, prob_power=prob_power, min_prob=min_prob, **roles
    )
    per_token = w * -stats.logp
    if unlikelihood:
      # -log(1 - p), computed as -log(-expm1(log p)); p -> 1 is clamped to stay finite.
      push_down = -jnp.log(jnp.maximum(-jnp.expm1(stats.logp), 1e-6))
      per_token = jnp.where(w < 0, -w * push_down, per_token)
    loss = reduce_fn(per_token)
  metrics = {
    "nll": reduce.token_mean(-stats.logp, mask, norm),
    "weight_mean": reduce.token_mean(w, mask, norm),
    "negative_frac": reduce.token_mean((w < 0).astype(jnp.float32), mask, norm),
  }
  return loss, metrics
