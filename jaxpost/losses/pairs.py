"""Pair losses: a chosen and a rejected response in rows 2i and 2i + 1 (``data.source=pairs``).

Each row's sequence log-likelihood is the sum of log p(y_t) over its counted targets
(one example per row). A pair counts only when both of its rows have counted tokens; a
trailing unpaired row is ignored. Losses are sums over pairs divided by half the global
number of counted sequences (``Normalizers.sequences / 2``, the number of pairs when
every sequence belongs to one), so they add up over micro-batches of whole pairs.

``dpo`` is in the ``distill`` family: its frozen "teacher" (``config.teacher``) is the
reference policy pi_ref, read on the same rows like any frozen model. ``redi`` needs no
reference (``token`` family); nor does ``step_by_step``, whose rows 2i / 2i + 1 are one
teacher record's label and rationale tasks (``data.source=rationales``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import FusedHead, target_stats
from jaxpost.losses.registry import register
from jaxpost.types import Batch


def row_logp(outputs, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(sum of log p(y_t) per row f32[B], counted tokens per row f32[B])."""
  mask = batch.loss_mask
  if not isinstance(outputs, FusedHead):  # garbage (NaN) at uncounted rows: zeroed first
    outputs = jnp.where(mask[..., None] > 0, outputs, 0.0)
  logp = target_stats(outputs, batch.targets, mask).logp
  return jnp.sum(logp * mask, axis=1), jnp.sum(mask, axis=1)


def _pairs(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Rows (2i, 2i + 1) of a per-row array as (chosen [P], rejected [P])."""
  p = x.shape[0] // 2
  pairs = x[: 2 * p].reshape(p, 2)
  return pairs[:, 0], pairs[:, 1]


def _pair_count(norm: reduce.Normalizers) -> jax.Array:
  return jnp.maximum(norm.sequences / 2.0, 1.0)


@register(
  "redi",
  family="token",
  rules={"alpha": fields.num(ge=0), "length_normalize": fields.FLAG},
)
def redi(
  outputs: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  alpha: float = 0.8,
  length_normalize: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """REDI's asymmetric, reference-free objective on (correct, incorrect) pairs.

  loss = mean over pairs of [ -log p(y+) / |y+|  +  alpha * log p(y-) / |y-| ]

  (arXiv 2505.24850: after SFT on the positive traces, the negatives are pushed down
  with a smaller weight alpha than the positives are pulled up, which its authors found
  keeps training stable where a symmetric push collapses). With alpha = 0 this is
  length-normalised SFT on the chosen responses (tested). The card gives alpha in
  (0, 1] and length normalisation; the exact default is not found: 0.8 here.

  Args:
    outputs: [B, T, V] logits or a ``FusedHead``.
    batch: rows 2i (chosen) and 2i + 1 (rejected); uses targets, loss_mask.
    norm: global normalisers.
    alpha: weight of the rejected responses' log-likelihood.
    length_normalize: divide each response's log-likelihood by its token count.

  Returns:
    (loss f32[], metrics) with metrics additive over micro-batches of whole pairs.
  """
  logp, n = row_logp(outputs, batch)
  per_row = logp / jnp.maximum(n, 1.0) if length_normalize else logp
  good, bad = _pairs(per_row)
  n_good, n_bad = _pairs(n)
  valid = ((n_good > 0) & (n_bad > 0)).astype(jnp.float32)
  count = _pair_count(norm)
  loss = jnp.sum(valid * (-good + alpha * bad)) / count
  metrics = {
    "chosen_logp": jnp.sum(valid * jax.lax.stop_gradient(good)) / count,
    "rejected_logp": jnp.sum(valid * jax.lax.stop_gradient(bad)) / count,
  }
  return loss, metrics


@register("dpo", family="distill", rules={"beta": fields.num(gt=0)})
def dpo(
  outputs: jax.Array | FusedHead,
  reference: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  beta: float = 0.1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Direct preference optimisation (arXiv 2305.18290) against a frozen reference.

  loss = mean over pairs of -log sigmoid(beta [(log pi(y+) - log pi_ref(y+))
                                               - (log pi(y-) - log pi_ref(y-))])

  with sequence log-likelihoods summed over each response's tokens. The reference is
  ``config.teacher`` (a frozen model read on the same rows): SODA's is a snapshot of
  the student before DPO (``teacher.init_from`` = the student's start). At the start,
  when the policy is the reference, the loss is exactly log 2 (tested).

  Args:
    outputs: the policy's [B, T, V] logits or a ``FusedHead``.
    reference: the reference's logits or ``FusedHead`` on the same rows (no gradient).
    batch: rows 2i (chosen) and 2i + 1 (rejected); uses targets, loss_mask.
    norm: global normalisers.
    beta: inverse temperature of the implicit reward.

  Returns:
    (loss f32[], metrics: reward accuracy and margin, additive over micro-batches).
  """
  logp, n = row_logp(outputs, batch)
  ref, _ = row_logp(jax.lax.stop_gradient(reference), batch)
  ratio = logp - jax.lax.stop_gradient(ref)
  good, bad = _pairs(ratio)
  n_good, n_bad = _pairs(n)
  valid = ((n_good > 0) & (n_bad > 0)).astype(jnp.float32)
  margin = beta * (good - bad)
  count = _pair_count(norm)
  loss = jnp.sum(valid * -jax.nn.log_sigmoid(margin)) / count
  margin_sg = jax.lax.stop_gradient(margin)
  metrics = {
    "reward_accuracy": jnp.sum(valid * (margin_sg > 0)) / count,
    "reward_margin": jnp.sum(valid * margin_sg) / count,
  }
  return loss, metrics


@register("step_by_step", family="token", rules={"alpha": fields.num(ge=0, le=1)})
def step_by_step(
  outputs: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  alpha: float = 0.5,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Distilling step-by-step (arXiv 2305.02301): label and rationale as two tasks.

  loss = mean over records of [ alpha * CE(label) + (1 - alpha) * CE(rationale) ]

  where CE is a sequence's mean token cross-entropy, the label task's row 2i (the plain
  prompt -> the teacher's answer) and the rationale task's row 2i + 1 (the prompt with
  ``data.pairs.EXPLAIN_PREFIX`` -> the teacher's rationale). One model, both tasks; the
  rationale is training signal only, never generated at inference. The paper's code
  takes the mean over each task's tokens in a batch; a decoder-only student's tasks have
  no fixed lengths, so here (the card's proposal) each sequence is averaged first. With
  alpha = 1 it is length-normalised SFT on the label rows alone (tested). Paper: 0.5.

  Args:
    outputs: [B, T, V] logits or a ``FusedHead``.
    batch: rows 2i (label task) and 2i + 1 (rationale task); uses targets, loss_mask.
    norm: global normalisers.
    alpha: weight of the label task.

  Returns:
    (loss f32[], metrics: each task's mean CE), additive over micro-batches of whole
    records.
  """
  logp, n = row_logp(outputs, batch)
  ce = -logp / jnp.maximum(n, 1.0)
  label, rationale = _pairs(ce)
  n_label, n_rationale = _pairs(n)
  valid = ((n_label > 0) & (n_rationale > 0)).astype(jnp.float32)
  count = _pair_count(norm)
  loss = jnp.sum(valid * (alpha * label + (1.0 - alpha) * rationale)) / count
  metrics = {
    "label_ce": jnp.sum(valid * jax.lax.stop_gradient(label)) / count,
    "rationale_ce": jnp.sum(valid * jax.lax.stop_gradient(rationale)) / count,
  }
  return loss, metrics
