"""Ratio and off-policy-correction helpers for the policy losses (``losses/policy.py``).

Three policies enter a policy update (methods/rl.md section 8, Eq. 5):
  pi_theta  the policy being trained (``logp``),
  pi_old    the policy that sampled, as the trainer computes it (``Rollout.old_logp``),
  mu        the same policy as the sampler computed it (``Rollout.sampler_logp``).
pi_theta / mu = [pi_old / mu] (train-inference mismatch) x [pi_theta / pi_old] (staleness).
The PPO ratio is the second factor; ``is_weights`` corrects the first, and
``prefix_min_log_weight`` (MinPRO) and ``group_mean`` (GSPO, ST-PPO turn ratios) reshape
the second. All math is f32 and every helper takes the loss mask, so padding and
prompt/tool tokens never enter a mean, sum or minimum.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost.losses import reduce

IS_LEVELS = ("token", "sequence", "geometric")
IS_MODES = ("truncate", "mask")


def log_ratio(
  logp: jax.Array, old_logp: jax.Array, mask: jax.Array, *, clamp: float = 20.0
) -> jax.Array:
  """log(pi_theta / pi_old) per token, clamped and zeroed off the mask.

  Zeroing before any exp keeps junk log-probs at masked slots from turning into inf
  in the forward pass or NaN in the backward pass.

  Args:
    logp: f32[B, T] log-prob of the taken token under pi_theta.
    old_logp: f32[B, T] log-prob under pi_old.
    mask: f32[B, T] 1 on counted tokens.
    clamp: |log ratio| limit (verl uses 20); beyond it the gradient is 0.

  Returns:
    f32[B, T] log ratio, 0 where mask is 0.
  """
  chex.assert_rank([logp, old_logp, mask], 2)
  chex.assert_equal_shape([logp, old_logp, mask])
  on = mask > 0
  d = jnp.where(on, logp.astype(jnp.float32), 0.0) - jnp.where(
    on, old_logp.astype(jnp.float32), 0.0
  )
  return jnp.clip(d, -clamp, clamp)


def _gather(per_slot: jax.Array, ids: jax.Array) -> jax.Array:
  # per_slot[b, s] is the value of (row b, id s); read it back at every token.
  return jnp.take_along_axis(per_slot, ids, axis=1)


def group_sum(x: jax.Array, mask: jax.Array, ids: jax.Array) -> jax.Array:
  """Masked sum of x over the tokens of each (row, id), broadcast back to the tokens.

  Args:
    x: f32[B, T] values.
    mask: f32[B, T] 1 where x counts.
    ids: i32[B, T] group of each token within its row (segment or turn id, < T).

  Returns:
    f32[B, T]: at [b, t], the sum of x over counted tokens of row b with id ids[b, t].
  """
  chex.assert_rank([x, mask, ids], 2)
  chex.assert_equal_shape([x, mask, ids])
  return _gather(reduce.segment_sums(jnp.where(mask > 0, x, 0.0), ids), ids)


def group_mean(x: jax.Array, mask: jax.Array, ids: jax.Array) -> jax.Array:
  """Masked mean of x over the tokens of each (row, id), broadcast back to the tokens.

  With ids = segment ids this is GSPO's per-sequence mean log-ratio; with ids = turn
  ids, ST-PPO's per-turn one. Groups with no counted token give 0.

  Args:
    x: f32[B, T] values.
    mask: f32[B, T] 1 where x counts.
    ids: i32[B, T] group of each token within its row (segment or turn id, < T).

  Returns:
    f32[B, T]: at [b, t], the mean of x over counted tokens of row b with id ids[b, t].
  """
  num = group_sum(x, mask, ids)
  den = group_sum(jnp.ones_like(x), mask, ids)
  return jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)


def is_weights(
  old_logp: jax.Array,
  sampler_logp: jax.Array,
  mask: jax.Array,
  segment_ids: jax.Array,
  *,
  level: str = "token",
  mode: str = "truncate",
  cap: float = 2.0,
  floor: float | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Train-inference importance weights w = pi_old / mu, truncated or masked.

  Levels (w is shared by all tokens of a sequence except at "token" level):
    token:      w_t = pi_old(y_t) / mu(y_t)
    sequence:   w   = prod_t pi_old(y_t) / mu(y_t)        (the exact sequence ratio)
    geometric:  w   = (prod_t pi_old(y_t) / mu(y_t))^(1/|y|)
  Modes:
    truncate:   w <- min(w, cap)                           (TIS; MiniRL uses cap = 5)
    mask:       w <- w * 1[floor <= w <= cap]; floor defaults to 1 / cap. Rejected
                tokens still count in the global normaliser, they only add 0.
  The weights do not depend on pi_theta and carry no gradient.

  Args:
    old_logp: f32[B, T] log-prob under pi_old (trainer).
    sampler_logp: f32[B, T] log-prob under mu (sampler).
    mask: f32[B, T] 1 on counted tokens.
    segment_ids: i32[B, T] sequence of each token within its row.
    level: one of ``IS_LEVELS``.
    mode: one of ``IS_MODES``.
    cap: upper bound (> 0).
    floor: lower bound of "mask" mode; None means 1 / cap.

  Returns:
    (w f32[B, T], outside bool[B, T]): the weight of every token and where it was
    truncated or masked; both describe masked-out tokens too (reduce them with the mask).
  """
  chex.assert_rank([old_logp, sampler_logp, mask, segment_ids], 2)
  chex.assert_equal_shape([old_logp, sampler_logp, mask, segment_ids])
  if level not in IS_LEVELS:
    raise ValueError(f"unknown IS level {level!r}; expected one of {IS_LEVELS}")
  if mode not in IS_MODES:
    raise ValueError(f"unknown IS mode {mode!r}; expected one of {IS_MODES}")
  if not cap > 0:
    raise ValueError(f"IS cap must be positive, got {cap!r}")
  on = mask > 0
  d = jnp.where(on, old_logp.astype(jnp.float32), 0.0) - jnp.where(
    on, sampler_logp.astype(jnp.float32), 0.0
  )
  if level == "token":
    log_w = d
  elif level == "sequence":
    log_w = group_sum(d, mask, segment_ids)
  else:
    log_w = group_mean(d, mask, segment_ids)
  log_cap = jnp.log(jnp.float32(cap))
  # Cap in log space: a long sequence's product overflows f32 long before its log does.
  w = jnp.exp(jnp.minimum(log_w, log_cap))
  if mode == "truncate":
    outside = log_w > log_cap
  else:
    lo = 1.0 / cap if floor is None else floor
    outside = (log_w > log_cap) | (log_w < jnp.log(jnp.float32(lo)))
    w = jnp.where(outside, 0.0, w)
  return jax.lax.stop_gradient(w), outside


def _segmented_cummin(x: jax.Array, start: jax.Array) -> jax.Array:
  """Running minimum along axis 1 that restarts wherever ``start`` is True.

  An associative scan over (starts-a-segment, min-since-the-last-start) pairs; +inf is
  the identity of the minimum, so +inf entries never change it.

  Args:
    x: f32[B, T] values.
    start: bool[B, T] True where a new segment begins (at least at t = 0).

  Returns:
    f32[B, T]: at [b, t], min of x[b, s..t] where s <= t is the last start at or before t.
  """

  def combine(a, b):
    a_start, a_min = a
    b_start, b_min = b
    return a_start | b_start, jnp.where(b_start, b_min, jnp.minimum(a_min, b_min))

  return jax.lax.associative_scan(combine, (start, x), axis=1)[1]


def prefix_min_log_weight(
  log_rho: jax.Array, mask: jax.Array, segment_ids: jax.Array, *, inclusive: bool
) -> jax.Array:
  """MinPRO's prefix factor, in log space (methods/rl.md section 4; formula NOT FOUND).

  "A Step Back: Prefix Importance Ratio Stabilizes Policy Optimization",
  arXiv 2601.22718, replaces the exact prefix ratio prod_{i<=t} rho_i by a surrogate
  built from the minimum token ratio of the prefix. The exact objective is not
  available; the card's two readings are exposed:
    inclusive=False:  w_t = sg[min_{i<t} rho_i] * rho_t     (empty prefix -> factor 1)
    inclusive=True:   w_t = min_{i<=t} rho_i, gradient through rho_t only,
                      i.e. factor sg[min_{i<=t} rho_i / rho_t] <= 1 times rho_t.
  This returns log of the stop-gradient factor; the caller multiplies its per-token
  loss (whose gradient carries rho_t) by exp of it. The prefix of token t is the part of
  its own sequence before it: in a packed row the running minimum restarts where the
  segment id changes (a segment is a run of equal ids; packing writes 1, 2, ... and 0
  for padding), so a row holds exactly the factors of its sequences in separate rows.
  Masked tokens are skipped by the running minimum (+inf fill) and get factor 1; a
  prefix minimum of rho = 0 (log -inf) gives factor 0.

  Args:
    log_rho: f32[B, T] per-token log ratio log(pi_theta / behaviour).
    mask: f32[B, T] 1 on counted tokens.
    segment_ids: i32[B, T] sequence of each token within its row (0 = padding).
    inclusive: which reading (see above).

  Returns:
    f32[B, T] log factor, no gradient, 0 where mask is 0.
  """
  chex.assert_rank([log_rho, mask, segment_ids], 2)
  chex.assert_equal_shape([log_rho, mask, segment_ids])
  on = mask > 0
  x = jax.lax.stop_gradient(jnp.where(on, log_rho.astype(jnp.float32), jnp.inf))
  ids = segment_ids.astype(jnp.int32)
  start = jnp.concatenate([jnp.ones_like(ids[:, :1], bool), ids[:, 1:] != ids[:, :-1]], axis=1)
  running = _segmented_cummin(x, start)  # [B, T] min over counted i <= t of t's segment
  if inclusive:
    # running <= x; equal (also both -inf: rho_t = 0 is its own minimum) means factor 1.
    log_f = jnp.where(running < x, running - x, 0.0)
  else:
    # Shift right by one within the segment: min over counted i < t; +inf (empty prefix)
    # means factor 1.
    prev = jnp.concatenate([jnp.full_like(running[:, :1], jnp.inf), running[:, :-1]], axis=1)
    prev = jnp.where(start, jnp.inf, prev)
    log_f = jnp.where(prev < jnp.inf, prev, 0.0)
  return jnp.where(on, log_f, 0.0)
