"""SFT objectives anchored to a frozen reference model (methods/sft_distill_detect.md, 9c, 9d).

Both are ``distill``-family losses: the "teacher" the train step reads is the frozen
*reference*, normally the model the run starts from (``teacher.init_from`` =
``train.init_from``, or ``teacher.gguf`` = ``model.gguf``).

**ASFT** (Anchored SFT, arXiv 2509.23753, ``asft``): DFT plus a forward KL to the
reference at every supervised position, over the full vocabulary (through the fused
divergence kernel when the head is fused):

  L = reduce_t [ sg(p_t) (-log p_t) + lambda KL(pi_ref(.|s_t) || pi_theta(.|s_t)) ]

DFT alone drifts from the base (its KL grows); the anchor bounds the drift. The paper's
direction is forward KL (reverse collapsed in its ablation) and lambda is 0.05 in the
ICLR version (the code's README suggests 0.03 under bf16): configurable. ``weighting
= "sft"`` swaps DFT for plain cross-entropy (the paper's "SFT+KL" ablation row).

**MinorSFT** (arXiv 2408.10642, ``minor_sft``): sequence-level and reference-relative,
DPO-inspired. With r = log pi_theta(y|x) - log pi_ref(y|x) summed over the response's
m tokens, the paper's gradient is -(2/m) sigma(-beta r) grad log pi_theta(y|x); a loss
with exactly that gradient (our derivation) is

  L_seq = -(2 / (beta m)) log sigma(beta r)                         form = "paper"

while the torchrl implementation drops the 2 / (beta m) factor (form = "unscaled":
-log sigma(beta r)). Sequences whose likelihood already rose above the reference's get
less weight. The deviation metric m_theta = mean over sequences of r / m is logged as
``deviation``. The paper's beta is not found; 0.1 is torchrl's default.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import FusedHead, TopK, reduced_divergence, target_stats
from jaxpost.losses.probability import dft_per_token
from jaxpost.losses.registry import register
from jaxpost.types import Batch

WEIGHTINGS = ("dft", "sft")
MINOR_FORMS = ("paper", "unscaled")


def _reference_model(teacher) -> None:
  if isinstance(teacher, TopK):
    raise ValueError(
      "this loss needs the reference model's full distribution: name a model "
      "(teacher.init_from / teacher.gguf / teacher.hf_dir), not teacher.offline shards"
    )


ASFT_RULES = {
  "kl_weight": fields.num(ge=0),
  "weighting": fields.one_of(WEIGHTINGS),
  "reduction": fields.one_of(reduce.REDUCTIONS),
}


@register("asft", family="distill", rules=ASFT_RULES)
def asft(
  outputs: jax.Array | FusedHead,
  reference: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  kl_weight: float = 0.05,
  weighting: str = "dft",
  reduction: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Anchored SFT: DFT + lambda * forward KL(reference || model) (module docstring).

  Args:
    outputs: the model's [B, T, V] logits or a ``FusedHead``.
    reference: the frozen reference's logits or ``FusedHead`` at the same positions.
    batch: uses targets, loss_mask, segment_ids, and ``weights`` when given (on both
      terms).
    norm: global normalisers.
    kl_weight: lambda of the anchor (0 = DFT, or SFT with weighting="sft").
    weighting: "dft" (sg(p) times the token's cross-entropy) or "sft" (plain
      cross-entropy: SFT + KL).
    reduction: "token_mean" or "sequence_mean".

  Returns:
    (loss f32[], metrics: nll, gold_prob, kl (to the reference, per token)),
    additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  _reference_model(reference)
  mask = batch.loss_mask
  weights = batch.token_weights

  def reduce_fn(x):
    return reduce.reduce(x * weights, mask, batch.segment_ids, norm, reduction)

  stats = target_stats(outputs, batch.targets, mask)
  fit = dft_per_token(stats.logp) if weighting == "dft" else -stats.logp
  loss = reduce_fn(fit)
  kl, kl_stats = reduced_divergence(outputs, reference, mask, reduce_fn, kind="fkl")
  if kl_weight:
    loss = loss + kl_weight * kl
  metrics = {
    "nll": reduce.token_mean(-jax.lax.stop_gradient(stats.logp), mask, norm),
    "gold_prob": reduce.token_mean(jnp.exp(jax.lax.stop_gradient(stats.logp)), mask, norm),
    "kl": reduce.token_mean(jax.lax.stop_gradient(kl_stats.loss), mask, norm),
  }
  return loss, metrics


MINOR_RULES = {"beta": fields.num(gt=0), "form": fields.one_of(MINOR_FORMS)}


@register("minor_sft", family="distill", rules=MINOR_RULES)
def minor_sft(
  outputs: jax.Array | FusedHead,
  reference: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  beta: float = 0.1,
  form: str = "paper",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MinorSFT: mean over sequences of -(2/(beta m)) log sigma(beta r) (module docstring).

  Each packed segment is one sequence; r sums the segment's counted tokens (weighted by
  ``batch.weights`` when given) and m counts them.

  Args:
    outputs: the model's [B, T, V] logits or a ``FusedHead``.
    reference: the frozen reference's logits or ``FusedHead`` at the same positions.
    batch: uses targets, loss_mask, segment_ids, weights.
    norm: global normalisers (the mean is over ``norm.sequences``).
    beta: the log-ratio's scale; the weight sigma(-beta r) halves at r = 0.
    form: "paper" (scaled by 2 / (beta m): the paper's gradient) or "unscaled".

  Returns:
    (loss f32[], metrics: nll, deviation (mean r / m), log_ratio (mean r),
    weight (mean sigma(-beta r))), additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  _reference_model(reference)
  mask = batch.loss_mask.astype(jnp.float32)
  stats = target_stats(outputs, batch.targets, mask)
  ref_logp = jax.lax.stop_gradient(target_stats(reference, batch.targets, mask).logp)
  w = batch.token_weights
  r = reduce.segment_sums(w * (stats.logp - ref_logp), batch.segment_ids)[:, 1:]
  m = reduce.segment_sums(mask, batch.segment_ids)[:, 1:]
  on = m > 0
  m_safe = jnp.maximum(m, 1.0)
  per_seq = -jax.nn.log_sigmoid(beta * r)
  if form == "paper":
    per_seq = per_seq * 2.0 / (beta * m_safe)
  seqs = jnp.maximum(norm.sequences, 1.0)

  def seq_mean(x):
    return jnp.sum(jnp.where(on, x, 0.0)) / seqs

  r_sg = jax.lax.stop_gradient(r)
  metrics = {
    "nll": reduce.token_mean(-jax.lax.stop_gradient(stats.logp), mask, norm),
    "deviation": seq_mean(r_sg / m_safe),
    "log_ratio": seq_mean(r_sg),
    "weight": seq_mean(jax.nn.sigmoid(-beta * r_sg)),
  }
  return seq_mean(per_seq), metrics
