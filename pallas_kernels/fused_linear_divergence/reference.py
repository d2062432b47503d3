"""Per-token divergences from full logits: the plain-JAX reference.

Everything here takes materialised logits ``[N, V]``. The XLA path of ``ops.py`` calls
``token_divergence`` on one token chunk at a time (so a chunk's logits are the only
``[C, V]`` buffers), and ``reference_divergence`` is the unfused ground truth the tests
and benchmarks compare against (plain ``jax.grad``, no ``custom_vjp``).

Conventions (shared with ``ops.py`` and ``kernel.py``):
  * Logits are divided by the temperature before anything else: s = log_softmax(z_s / T),
    t = log_softmax(z_t / T). Losses are *not* multiplied by T^2; the caller does that if
    it follows the Hinton convention.
  * fkl  = KL(p_t || p_s) = sum_v p_t (t - s)            (forward KL, mode covering)
  * rkl  = KL(p_s || p_t) = sum_v p_s (s - t)            (reverse KL, mode seeking)
  * jsd  = beta KL(p_t || M) + (1 - beta) KL(p_s || M),  M = beta p_t + (1 - beta) p_s.
    beta = 0 is defined as fkl and beta = 1 as rkl (the generalised JSD of GKD,
    arXiv 2306.13649, whose plain formula degenerates to 0 at both ends; JSD / beta
    tends to fkl as beta -> 0 and JSD / (1 - beta) to rkl as beta -> 1).
  * weighted_rkl = w * rkl with a per-token, stop-gradient weight w (Skill-SD's
    importance-weighted reverse KL).
  * ce   = -(1 - eps) s[y] - eps mean_v s[v]              (label-smoothed cross-entropy)
  * 0 log 0 = 0: a teacher that puts no mass on a token (logit -inf) contributes nothing.
  * A top-k teacher (ids, log-probs) is compared on k + 1 buckets: its k tokens and one
    bucket for the rest of the vocabulary, whose mass is 1 - sum(exp(logp)). The student
    is coarse-grained onto the same buckets, so the value is a true divergence between
    two distributions (and, by the data-processing inequality, a lower bound on the
    full-vocabulary one). Teacher log-probs are used as given (no temperature).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

KINDS = ("ce", "fkl", "rkl", "jsd", "weighted_rkl")
TEACHER_KINDS = ("fkl", "rkl", "jsd", "weighted_rkl")


@flax.struct.dataclass
class TopK:
  """A teacher given as its top-k tokens.

  Attributes:
    ids: i32[N, k] distinct token ids.
    logp: f32[N, k] the teacher's log-probabilities of those tokens (sum of exp <= 1).
  """

  ids: jax.Array
  logp: jax.Array


@flax.struct.dataclass
class TokenStats:
  """Per-token outputs, all f32[N].

  Attributes:
    loss: the divergence (or cross-entropy) of each token; 0 on masked rows.
    student_lse: log-normaliser of the student's logits / T.
    teacher_lse: log-normaliser of the teacher's logits / T (0 for ce and top-k).
    student_max: max of the student's logits / T (no gradient); the label is the
      model's top-1 token when its logit equals this.
    entropy: entropy of the student's softmax(logits / T).
    label_logit: the label's logit / T (ce only, else 0; no gradient). With
      ``student_lse`` it gives the unsmoothed log-prob, and ``label_logit ==
      student_max`` says the label is the top-1 token (exact: both are the same float).
  """

  loss: jax.Array
  student_lse: jax.Array
  teacher_lse: jax.Array
  student_max: jax.Array
  entropy: jax.Array
  label_logit: jax.Array


def acc_dtype(*arrays) -> jnp.dtype:
  """f32, or f64 when an input is f64 (the f64 ground-truth tests)."""
  return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def _xlogy_diff(p: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """p * (a - b) with 0 where p == 0 (double where: no NaN value or gradient)."""
  safe = p > 0
  diff = jnp.where(safe, a, 0.0) - jnp.where(safe, b, 0.0)
  return jnp.where(safe, p * diff, 0.0)


def divergence(s: jax.Array, t: jax.Array, kind: str, beta: float) -> jax.Array:
  """Divergence between two normalised log-distributions over the last axis.

  Args:
    s: f32[N, M] student log-probs.
    t: f32[N, M] teacher log-probs (may hold -inf).
    kind: fkl | rkl | weighted_rkl (same value as rkl) | jsd.
    beta: JSD mixing weight of the teacher (see module docstring).

  Returns:
    f32[N].
  """
  if kind == "jsd" and beta == 0.0:
    kind = "fkl"
  if kind == "jsd" and beta == 1.0:
    kind = "rkl"
  ps, pt = jnp.exp(s), jnp.exp(t)
  if kind == "fkl":
    return jnp.sum(_xlogy_diff(pt, t, s), axis=-1)
  if kind in ("rkl", "weighted_rkl"):
    return jnp.sum(_xlogy_diff(ps, s, t), axis=-1)
  if kind == "jsd":
    log_m = jnp.logaddexp(jnp.log(beta) + t, jnp.log1p(-beta) + s)
    kl_t = jnp.sum(_xlogy_diff(pt, t, log_m), axis=-1)
    kl_s = jnp.sum(_xlogy_diff(ps, s, log_m), axis=-1)
    return beta * kl_t + (1.0 - beta) * kl_s
  raise ValueError(f"unknown divergence {kind!r}; expected one of {TEACHER_KINDS}")


def _bucket_logps(s: jax.Array, zs: jax.Array, lse_s: jax.Array, top: TopK):
  """Student and teacher log-probs on the k + 1 buckets of a top-k teacher."""
  ids = top.ids.astype(jnp.int32)
  s_top = jnp.take_along_axis(s, ids, axis=-1)  # [N, k]
  # Student tail: logsumexp over the tokens that are *not* in the teacher's top k,
  # computed directly (not as log(1 - sum p)) so a tiny tail keeps its precision.
  rows = jnp.arange(zs.shape[0])[:, None]
  rest = jnp.ones(zs.shape, bool).at[rows, ids].set(False)
  # When the k ids cover the whole vocabulary the tail bucket does not exist: both tails
  # are -inf (mass 0), whatever rounding left in the teacher's 1 - sum(p).
  empty = ~jnp.any(rest, axis=-1)
  z_rest = jnp.where(rest & ~empty[:, None], zs, jnp.where(empty[:, None], 0.0, -jnp.inf))
  s_tail = jnp.where(empty, -jnp.inf, jax.nn.logsumexp(z_rest, axis=-1) - lse_s)  # [N]
  t_top = top.logp.astype(s.dtype)
  t_mass = jnp.sum(jnp.exp(t_top), axis=-1)
  t_tail = jnp.log1p(-jnp.minimum(t_mass, 1.0))  # -inf when the top k hold all the mass
  t_tail = jnp.where(empty, -jnp.inf, t_tail)
  s_b = jnp.concatenate([s_top, s_tail[:, None]], axis=-1)
  t_b = jnp.concatenate([t_top, t_tail[:, None]], axis=-1)
  return s_b, t_b


def token_divergence(
  zs: jax.Array,
  teacher: jax.Array | TopK | None,
  labels: jax.Array | None,
  mask: jax.Array,
  weights: jax.Array | None,
  *,
  kind: str,
  beta: float = 0.5,
  label_smoothing: float = 0.0,
) -> TokenStats:
  """Per-token statistics from student logits (already divided by T).

  Args:
    zs: f32[N, V] student logits / T.
    teacher: f32[N, V] teacher logits / T, a ``TopK``, or None (ce).
    labels: i32[N] targets (ce only).
    mask: bool[N] rows that count; other rows give 0 loss and 0 gradient even if
      their inputs are garbage.
    weights: f32[N] per-token weights (weighted_rkl only; no gradient).
    kind: one of ``KINDS``.
    beta: JSD mixing weight.
    label_smoothing: eps of the ce loss.

  Returns:
    ``TokenStats``.
  """
  f32 = acc_dtype(zs)
  zs = jnp.where(mask[:, None], zs.astype(f32), 0.0)
  top = jax.lax.stop_gradient(jnp.max(zs, axis=-1))
  lse_s = top + jnp.log(jnp.sum(jnp.exp(zs - top[:, None]), axis=-1))
  s = zs - lse_s[:, None]
  entropy = -jnp.sum(jnp.exp(s) * s, axis=-1)
  lse_t = jnp.zeros_like(lse_s)
  label_logit = jnp.zeros_like(lse_s)
  if kind == "ce":
    if labels is None:
      raise ValueError("kind='ce' needs labels")
    label_logit = jnp.take_along_axis(zs, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]
    loss = lse_s - label_logit
    if label_smoothing:
      loss = (1.0 - label_smoothing) * loss - label_smoothing * jnp.mean(s, axis=-1)
  elif kind in TEACHER_KINDS:
    if teacher is None:
      raise ValueError(f"kind={kind!r} needs a teacher")
    if isinstance(teacher, TopK):
      s_b, t_b = _bucket_logps(s, zs, lse_s, teacher)
    else:
      zt = jnp.where(mask[:, None], jax.lax.stop_gradient(teacher).astype(f32), 0.0)
      lse_t = jax.nn.logsumexp(zt, axis=-1)
      s_b, t_b = s, zt - lse_t[:, None]
    loss = divergence(s_b, jax.lax.stop_gradient(t_b), kind, beta)
    if kind == "weighted_rkl":
      if weights is None:
        raise ValueError("kind='weighted_rkl' needs per-token weights")
      loss = jax.lax.stop_gradient(weights.astype(f32)) * loss
  else:
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
  zero = jnp.zeros_like(loss)
  return TokenStats(
    loss=jnp.where(mask, loss, zero),
    student_lse=jnp.where(mask, lse_s, zero),
    teacher_lse=jnp.where(mask, jax.lax.stop_gradient(lse_t), zero),
    student_max=jnp.where(mask, top, zero),
    entropy=jnp.where(mask, entropy, zero),
    label_logit=jnp.where(mask, jax.lax.stop_gradient(label_logit), zero),
  )


def reference_divergence(
  h: jax.Array,
  w: jax.Array,
  teacher,
  labels: jax.Array | None = None,
  mask: jax.Array | None = None,
  weights: jax.Array | None = None,
  *,
  kind: str,
  beta: float = 0.5,
  temperature: float = 1.0,
  label_smoothing: float = 0.0,
) -> TokenStats:
  """Unfused reference: full ``[N, V]`` logits, then ``token_divergence``.

  ``teacher`` is None, a ``TopK``, teacher logits ``[N, V]``, or a ``(hidden, weight)``
  pair; matmuls accumulate in f32 like the fused paths.
  """
  n = h.shape[0]
  mask = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
  zs = jnp.dot(h, w, preferred_element_type=acc_dtype(h, w)) / temperature
  if isinstance(teacher, tuple):
    ht, wt = teacher
    teacher = jnp.dot(ht, wt, preferred_element_type=acc_dtype(ht, wt)) / temperature
  elif teacher is not None and not isinstance(teacher, TopK):
    teacher = teacher.astype(acc_dtype(teacher)) / temperature
  return token_divergence(
    zs,
    teacher,
    labels,
    mask,
    weights,
    kind=kind,
    beta=beta,
    label_smoothing=label_smoothing,
  )
