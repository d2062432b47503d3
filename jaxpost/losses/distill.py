"""Distillation losses: the student's next-token distribution pulled toward a teacher's.

Family ``distill`` (``losses/registry.py``)::

    loss(outputs, teacher, batch, *, norm, **hparams) -> (loss f32[], metrics)

``outputs`` is the student's f32[B, T, V] logits or ``FusedHead``; ``teacher`` the
frozen teacher's at the same positions: logits, a ``FusedHead`` (its own hidden states
and LM head, read by its own scorer; with a fused student neither [B*T, V] logits
buffer is ever built) or a ``TopK`` of precomputed top-k log-probs (offline shards).
Every divergence goes through ``losses.head`` and so through
``pallas_kernels.fused_linear_divergence``; conventions (the JSD's beta, 0 log 0 = 0,
the top-k tail bucket) are that module's.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import (
  FusedHead,
  TopK,
  reduced_divergence,
  reduced_nll,
  target_stats,
  top_k_teacher,
)
from jaxpost.losses.registry import register
from jaxpost.types import Batch

DIVERGENCES = ("fkl", "rkl", "jsd")

KD_RULES = {
  "divergence": fields.one_of(DIVERGENCES),
  "beta": fields.num(ge=0, le=1),
  "temperature": fields.num(gt=0),
  "tau_squared": fields.FLAG,
  "hard_label_weight": fields.num(ge=0, le=1),
  "top_k": fields.integer(ge=0),
  "reduction": fields.one_of(reduce.REDUCTIONS),
}


@register("kd", family="distill", rules=KD_RULES)
def kd(
  outputs: jax.Array | FusedHead,
  teacher: jax.Array | FusedHead | TopK,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  divergence: str = "fkl",
  beta: float = 0.5,
  temperature: float = 1.0,
  tau_squared: bool = True,
  hard_label_weight: float = 0.0,
  top_k: int = 0,
  reduction: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Off-policy knowledge distillation on the data's tokens (Hinton et al. 2015; GKD).

  loss = a * CE(y_t) + (1 - a) * s * D(p_T^tau || p_S^tau)_t, reduced over the loss mask,

  with p^tau = softmax(z / tau) for both models, s = tau^2 when ``tau_squared`` (Hinton's
  factor: the soft-target gradient shrinks as 1 / tau^2, so this keeps its scale
  comparable across temperatures) else 1, and a = ``hard_label_weight``. D is
  forward KL(p_T || p_S) (mode covering, = soft-label CE - H(p_T)), reverse
  KL(p_S || p_T) (mode seeking) or the generalised JSD(beta) of GKD (arXiv 2306.13649):
  beta KL(p_T || M) + (1 - beta) KL(p_S || M), M = beta p_T + (1 - beta) p_S, with
  beta = 0 exactly forward KL and beta = 1 exactly reverse KL (TRL's convention).

  Args:
    outputs: the student's [B, T, V] logits or a ``FusedHead``.
    teacher: the teacher's logits, ``FusedHead`` or ``TopK`` (no gradient).
    batch: uses targets, loss_mask, segment_ids, and weights when given (each token's
      loss is multiplied by its weight; counts stay those of the mask).
    norm: global normalisers.
    divergence: fkl | rkl | jsd.
    beta: JSD teacher weight in [0, 1].
    temperature: tau, dividing both models' logits in the divergence (the hard-label
      CE stays at tau = 1).
    tau_squared: multiply the divergence by tau^2.
    hard_label_weight: a, the weight of the data's own next token (Hinton's mixture);
      0 = pure distillation.
    top_k: > 0 keeps only the teacher's k most likely tokens plus one bucket for the
      rest of the vocabulary (the form offline teacher shards store); compared with a
      ``TopK`` teacher this is the same loss. Computing it from a live teacher builds
      the teacher's logits.
    reduction: token_mean | sequence_mean.

  Returns:
    (loss f32[], metrics) with metrics additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  mask = batch.loss_mask
  weights = batch.token_weights  # the loss mask unless the batch weights its tokens

  def reduce_fn(x):
    return reduce.reduce(x * weights, mask, batch.segment_ids, norm, reduction)

  if top_k and not isinstance(teacher, TopK):
    teacher = top_k_teacher(teacher, top_k, temperature)
  scale = temperature**2 if tau_squared else 1.0
  div, stats = reduced_divergence(
    outputs, teacher, mask, reduce_fn, kind=divergence, beta=beta, temperature=temperature
  )
  loss = (1.0 - hard_label_weight) * scale * div
  metrics = {
    "divergence": reduce.token_mean(jax.lax.stop_gradient(stats.loss), mask, norm),
    "student_entropy": reduce.token_mean(jax.lax.stop_gradient(stats.entropy), mask, norm),
  }
  if hard_label_weight:
    ce, target = reduced_nll(outputs, batch.targets, mask, reduce_fn)
    loss = loss + hard_label_weight * ce
    metrics["nll"] = reduce.token_mean(-jax.lax.stop_gradient(target.logp), mask, norm)
  return loss, metrics


@register("sampled_rkl", family="distill", rules={"reduction": fields.one_of(reduce.REDUCTIONS)})
def sampled_rkl(
  outputs: jax.Array | FusedHead,
  teacher: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  reduction: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Reverse KL on the student's own sampled tokens, as a per-token advantage.

  For targets y_t drawn from the student p_S (on-policy rows), with the per-token
  log-ratio d_t = log p_S(y_t) - log p_T(y_t):

    loss = reduce_t( sg(d_t) * log p_S(y_t) ),

  whose gradient sg(d_t) * grad log p_S(y_t) is the score-function estimate of the
  gradient of KL(p_S || p_T) at position t (E[grad log p_S] = 0 removes the d_t's own
  dependence), i.e. the advantage -d_t of on-policy distillation (arXiv 2306.13649 §3;
  the per-token form with no discounting over later tokens). Unbiased only on the
  student's own samples: train it with ``gkd.lmbda=1``. The reported ``divergence`` is
  the mean d_t, a one-sample estimate of the reverse KL. A top-k teacher cannot give
  log p_T of a sampled token outside its k, so it needs the teacher's logits or head.

  Args:
    outputs: the student's [B, T, V] logits or a ``FusedHead``.
    teacher: the teacher's logits or ``FusedHead`` at the same positions (no gradient).
    batch: uses targets (the sampled tokens), loss_mask, segment_ids.
    norm: global normalisers.
    reduction: token_mean | sequence_mean.

  Returns:
    (loss f32[], metrics) with metrics additive over micro-batches.
  """
  if isinstance(teacher, TopK):
    raise ValueError("sampled_rkl needs log p_T of every sampled token: not a top-k teacher")
  mask = batch.loss_mask
  if not isinstance(outputs, FusedHead):
    # Materialised logits: zero the uncounted rows first, so garbage (NaN) there cannot
    # reach the gradient through log-softmax's backward (the fused head never sees it).
    outputs = jnp.where(mask[..., None] > 0, outputs, 0.0)
  student = target_stats(outputs, batch.targets, mask)
  t_logp = jax.lax.stop_gradient(target_stats(teacher, batch.targets, mask).logp)
  ratio = jax.lax.stop_gradient(student.logp) - t_logp
  loss = reduce.reduce(ratio * student.logp, mask, batch.segment_ids, norm, reduction)
  metrics = {
    "divergence": reduce.token_mean(ratio, mask, norm),
    "student_entropy": reduce.token_mean(jax.lax.stop_gradient(student.entropy), mask, norm),
  }
  return loss, metrics
