"""F²C, flip-flop consistency (arXiv 2510.14242): agree with yourself across prompt formats.

Unsupervised. Every group of K*C consecutive rows is one problem asked in K equivalent
prompt formats, each with the same C answer choices (row ``k*C + c``: format k, choice c;
``data.source=choices``, `jaxpost.data.choices`). The model's score of a choice under a
format is its mean-token log-likelihood l[k, c] over the answer tokens (``ROLE_ANSWER``:
the choice and EOS; ``span="response"``: the whole response, for worked solutions);
format k predicts argmax_c l[k, c]. Then, per problem (the card, after the authors'
``flipflop_trainer.py``):

* consensus: the choice predicted by a strict majority of the formats (count > K/2);
  without one the problem carries no loss;
* CCE = mean over formats of -l[k, consensus] (consensus cross-entropy);
* voters: formats predicting the consensus, each with margin
  m_k = l[k, cons] - max_{c != cons} l[k, c]. All K agree with median margin >= tau:
  "unanimous strong", no alignment term. Otherwise n_T = min(top_k, |voters| - 1)
  teachers (the voters with the largest margins; n_T >= 2 and >= 1 student needed), every
  other format a student;
* flip term: the teachers' mixture M (stop-gradient; log M = logsumexp_teachers log p -
  log n_T) of the consensus answer's next-token distributions, token by token (the
  answer tokens are the same in every format, so the j-th answer token of each row is
  aligned), and L_flip = KL(M || p_student) averaged over the students' answer tokens,
  weighted by w = w_min + (w_max - w_min) sigmoid(delta / w_temperature), delta = mean
  teacher l[., cons] - mean student l[., cons] (no gradient);
* beta_jsd x the generalised Jensen-Shannon divergence among the teachers (mean of
  KL(p_teacher || their mixture), with gradient: it pulls the teachers together);
* per problem: cce_weight x CCE + w x L_flip + beta_jsd x JSD.

The sum over problems is divided by the global number of groups (``norm.sequences /
(K*C)``), so the loss adds up over micro-batches of whole groups; rows after the last
whole group are ignored. The card's "defaults" are per dataset (e.g. COPA: cce 1.0,
tau 1.0, top_k 2, w in [0.005, 0.05], w_temperature 3.0, beta_jsd 0.05, which are the
defaults here; ANLI / RTE values in the card). ``formats`` and ``choices`` are the data's
layout, not tuning knobs: configs/f2c.py sets them from ``data.choice_formats`` /
``data.choices`` and config validation checks they agree.

Readings (the paper is not explicit): alignment compares the first ``align_tokens``
answer tokens (enough for the shipped tasks' answers; longer answers are aligned on
their first tokens only, counted in ``long_answers``); JSD's mixture is not
stop-gradient (the code's generalised JSD); a problem any of whose rows has no answer
token is skipped (a truncated row cannot be scored).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import FusedHead, masked_logits
from jaxpost.losses.pairs import row_logp
from jaxpost.losses.registry import register
from jaxpost.types import ROLE_ANSWER, Batch

_NEG = -1e30  # log of an excluded member of a mixture (finite: 0 * _NEG stays 0)

RULES = {
  "formats": fields.integer(ge=2),
  "choices": fields.integer(ge=2),
  "cce_weight": fields.num(ge=0),
  "tau": fields.num(ge=0),
  "top_k": fields.integer(ge=2),
  "w_min": fields.num(ge=0),
  "w_max": fields.num(ge=0),
  "w_temperature": fields.num(gt=0),
  "beta_jsd": fields.num(ge=0),
  "align_tokens": fields.integer(ge=1),
  "span": fields.one_of(("answer", "response")),
}


def _check(*, w_min: float, w_max: float, **_) -> None:
  if w_min > w_max:
    raise ValueError(f"w_min={w_min} > w_max={w_max}")


def consensus(preds: jax.Array, choices: int) -> tuple[jax.Array, jax.Array]:
  """Strict-majority vote over formats.

  Args:
    preds: i32[..., K] each format's predicted choice.
    choices: C.

  Returns:
    (i32[...] the consensus choice (the plurality choice where there is none),
     bool[...] whether a strict majority (count > K/2) exists).
  """
  counts = jnp.sum(jax.nn.one_hot(preds, choices, dtype=jnp.int32), axis=-2)
  best = jnp.argmax(counts, axis=-1)
  return best, 2 * jnp.max(counts, axis=-1) > preds.shape[-1]


def select_teachers(
  preds: jax.Array, cons: jax.Array, margins: jax.Array, *, tau: float, top_k: int
) -> tuple[jax.Array, jax.Array]:
  """The card's teacher selection, per problem.

  Args:
    preds: i32[E, K] predictions; cons: i32[E] consensus; margins: f32[E, K].
    tau: median margin above which a unanimous problem needs no alignment.
    top_k: most teachers.

  Returns:
    (bool[E, K] teachers, bool[E] whether the alignment term applies).
  """
  k = preds.shape[-1]
  voters = preds == cons[:, None]
  n_voters = jnp.sum(voters, axis=-1)
  strong = (n_voters == k) & (jnp.median(margins, axis=-1) >= tau)
  n_teachers = jnp.minimum(top_k, n_voters - 1)
  rank = jnp.argsort(jnp.argsort(-jnp.where(voters, margins, -jnp.inf), axis=-1), axis=-1)
  teachers = voters & (rank < n_teachers[:, None])
  applies = ~strong & (n_teachers >= 2) & (k - n_teachers >= 1)
  return teachers & applies[:, None], applies


def _aligned(outputs, mask: jax.Array, n: int):
  """The first ``n`` counted positions of each row: (outputs there, f32[B, n] mask)."""
  t = mask.shape[1]
  order = jnp.argsort(jnp.where(mask > 0, 0, t) + jnp.arange(t)[None, :], axis=1)[:, :n]
  on = jnp.take_along_axis(mask, order, axis=1)
  if isinstance(outputs, FusedHead):
    hidden = jnp.take_along_axis(outputs.hidden, order[..., None], axis=1)
    return outputs.replace(hidden=hidden), on
  return jnp.take_along_axis(outputs, order[..., None], axis=1), on


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """KL(p || q) over the last axis (log-probabilities in)."""
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


@register("f2c", family="token", rules=RULES, check=_check)
def f2c(
  outputs: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  formats: int = 2,
  choices: int = 2,
  cce_weight: float = 1.0,
  tau: float = 1.0,
  top_k: int = 2,
  w_min: float = 0.005,
  w_max: float = 0.05,
  w_temperature: float = 3.0,
  beta_jsd: float = 0.05,
  align_tokens: int = 8,
  span: str = "answer",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Flip-flop consistency: consensus cross-entropy plus teacher-mixture alignment.

  See the module docstring for the equations and readings.

  Args:
    outputs: [B, T, V] logits or a ``FusedHead``.
    batch: groups of ``formats * choices`` consecutive rows, row k*C + c = format k
      answered with choice c; uses targets, loss_mask, roles.
    norm: global normalisers (``sequences`` / (K*C) = problems).
    formats: K, prompt formats per problem (the data's).
    choices: C, answer choices per problem (the data's).
    cce_weight: weight of the consensus cross-entropy.
    tau: median voter margin (nats per token) above which a unanimous problem is
      "strong" and gets no alignment term.
    top_k: most teachers among the voters.
    w_min: weight of the flip term at delta -> -inf.
    w_max: its weight at delta -> +inf (w_min <= w_max).
    w_temperature: T_w of the weight's sigmoid.
    beta_jsd: weight of the Jensen-Shannon divergence among the teachers.
    align_tokens: answer tokens aligned across formats (the first ones of each row).
    span: the tokens that score a choice: "answer" (``ROLE_ANSWER``: the choice and EOS)
      or "response" (every counted token: a worked solution's trace and answer).

  Returns:
    (loss f32[], metrics additive over micro-batches of whole groups).
  """
  k, c = formats, choices
  group = k * c
  e = batch.shape[0] // group
  rows = e * group
  answer = batch.loss_mask * (batch.roles == ROLE_ANSWER) if span == "answer" else batch.loss_mask
  answer = answer.at[rows:].set(0.0)  # rows after the last whole group: not read
  logp, n = row_logp(outputs, batch.replace(loss_mask=answer))
  scored = jnp.all((n[:rows] > 0).reshape(e, group), axis=-1)  # every row has its answer
  ell = (logp[:rows] / jnp.maximum(n[:rows], 1.0)).reshape(e, k, c)
  ell_sg = jax.lax.stop_gradient(ell)

  preds = jnp.argmax(ell_sg, axis=-1)  # [E, K]
  cons, majority = consensus(preds, c)
  has_cons = scored & majority
  pick = jax.nn.one_hot(cons, c)[:, None, :]  # [E, 1, C]
  ell_cons = jnp.sum(ell * pick, axis=-1)  # [E, K], with gradient
  rival = jnp.max(jnp.where(pick > 0, -jnp.inf, ell_sg), axis=-1)
  margins = jax.lax.stop_gradient(ell_cons) - rival
  teachers, applies = select_teachers(preds, cons, margins, tau=tau, top_k=top_k)
  applies = applies & has_cons
  teachers = teachers & has_cons[:, None]
  students = ~teachers & applies[:, None]

  # The consensus rows' answer-token distributions, aligned across formats: [E, K, A, V].
  a = min(align_tokens, batch.shape[1])
  dist, on = _aligned(outputs, answer, a)
  log_q = jax.nn.log_softmax(masked_logits(dist, on), axis=-1)
  v = log_q.shape[-1]
  log_q = log_q[:rows].reshape(e, k, c, a, v)
  on = on[:rows].reshape(e, k, c, a)
  log_q = jnp.sum(log_q * pick[..., None, None], axis=2)
  on = jnp.sum(on * pick[..., None], axis=2)
  n_t = jnp.maximum(jnp.sum(teachers, axis=-1), 1)[:, None, None]  # [E, 1, 1]

  def mixture(log_p):  # [E, A, V]: log of the teachers' mean distribution
    members = jnp.where(teachers[..., None, None], log_p, _NEG)
    return jax.nn.logsumexp(members, axis=1) - jnp.log(n_t)

  def token_mean(per_token, who):  # [E, K, A] -> [E]: mean over who's answer tokens
    w = on * who[..., None]
    return jnp.sum(per_token * w, axis=(1, 2)) / jnp.maximum(jnp.sum(w, axis=(1, 2)), 1.0)

  log_m = jax.lax.stop_gradient(mixture(log_q))
  flip = token_mean(_kl(log_m[:, None], log_q), students)
  jsd = token_mean(_kl(log_q, mixture(log_q)[:, None]), teachers)

  def mean_over(x, who):
    return jnp.sum(x * who, axis=-1) / jnp.maximum(jnp.sum(who, axis=-1), 1)

  delta = mean_over(jax.lax.stop_gradient(ell_cons), teachers) - mean_over(
    jax.lax.stop_gradient(ell_cons), students
  )
  weight = w_min + (w_max - w_min) * jax.nn.sigmoid(delta / w_temperature)
  cce = -jnp.mean(ell_cons, axis=-1)

  has, align = has_cons.astype(jnp.float32), applies.astype(jnp.float32)
  per_problem = has * cce_weight * cce + align * (weight * flip + beta_jsd * jsd)
  problems = jnp.maximum(norm.sequences / group, 1.0)
  agree = scored & jnp.all(preds == preds[:, :1], axis=-1)
  sg = jax.lax.stop_gradient
  metrics = {
    "consensus": jnp.sum(has) / problems,
    "agreement": jnp.sum(agree.astype(jnp.float32)) / problems,
    "aligned": jnp.sum(align) / problems,
    "cce": jnp.sum(has * sg(cce)) / problems,
    "flip_kl": jnp.sum(align * sg(flip)) / problems,
    "jsd": jnp.sum(align * sg(jsd)) / problems,
    "flip_weight": jnp.sum(align * weight) / problems,
    "long_answers": jnp.sum((n[:rows] > align_tokens).astype(jnp.float32)) / problems,
  }
  return jnp.sum(per_problem) / problems, metrics
