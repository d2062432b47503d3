"""Outcome and per-token advantages for the policy losses (methods/rl.md section 1).

Outcome estimators take one scalar reward per sequence and a grouping, given either as
``rewards: f32[P, G]`` (G samples of each of P prompts; ``group_ids`` omitted) or as
``rewards: f32[B]`` with ``group_ids: i32[B]`` (rows sharing an id are one group; ids
need not be contiguous or sorted). The output has the shape of ``rewards``; broadcast it
to tokens with ``broadcast_to_tokens``. Advantages are computed on the global batch,
before any micro-batching, and carry no gradient.

  grpo     A_i = (r_i - mean_g r) / (std_g r + eps)      DeepSeekMath, arXiv 2402.03300
  dr_grpo  A_i = r_i - mean_g r                          Dr. GRPO, arXiv 2503.20783
  rloo     A_i = r_i - mean_{j != i, j in g} r_j         leave-one-out baseline

A group whose rewards are all equal, a group of one sample included, gets advantage
exactly 0 under every estimator, so it gives exactly zero policy gradient. (verl gives
a singleton group mean 0 and std 1, i.e. A = r; we do not follow it.)
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from jaxpost.registry import Registry


def _group_stats(rewards: jax.Array, group_ids: jax.Array | None) -> dict[str, jax.Array]:
  """Per-row statistics of the row's group, each f32[B] (bool for ``uniform``)."""
  r = jnp.asarray(rewards, jnp.float32)
  if group_ids is None:
    chex.assert_rank(r, 2)
    p, g = r.shape
    ids = jnp.repeat(jnp.arange(p), g)  # [P*G], row-major like r.reshape(-1)
    r = r.reshape(-1)
  else:
    chex.assert_rank([r, group_ids], 1)
    chex.assert_equal_shape([r, group_ids])
    ids = group_ids
  # A [B, B] membership matrix avoids a static segment count and works for any ids
  # (B is at most a few thousand rollouts). Masked sums, not matmuls: TPU matmuls
  # default to bf16 passes.
  same = ids[:, None] == ids[None, :]
  row = jnp.broadcast_to(r[None, :], same.shape)
  count = jnp.sum(same, axis=1).astype(jnp.float32)
  total = jnp.sum(jnp.where(same, row, 0.0), axis=1)
  mean = total / count
  sq_dev = jnp.sum(jnp.where(same, jnp.square(row - mean[:, None]), 0.0), axis=1)
  # Exact test for all-equal groups (incl. singletons): sum/count can round away from
  # the common value, and the zero-gradient property must hold exactly.
  uniform = jnp.max(jnp.where(same, row, -jnp.inf), axis=1) == jnp.min(
    jnp.where(same, row, jnp.inf), axis=1
  )
  return dict(r=r, count=count, total=total, mean=mean, sq_dev=sq_dev, uniform=uniform)


def _like(adv: jax.Array, rewards: jax.Array) -> jax.Array:
  return jax.lax.stop_gradient(adv.reshape(jnp.shape(rewards)))


def grpo(
  rewards: jax.Array,
  group_ids: jax.Array | None = None,
  *,
  eps: float = 1e-6,
  ddof: int = 1,
) -> jax.Array:
  """Group z-score: A_i = (r_i - mean_g r) / (std_g r + eps).

  DeepSeekMath (arXiv 2402.03300) outcome supervision. The paper does not say which
  std; ``ddof=1`` (Bessel-corrected) matches verl's ``torch.std``, ``ddof=0`` the
  population std. eps sits outside the sqrt, as in verl.

  Args:
    rewards: f32[P, G], or f32[B] together with group_ids.
    group_ids: optional i32[B] group of each row.
    eps: added to the std so uniform groups give 0, not NaN.
    ddof: delta degrees of freedom of the std.

  Returns:
    f32 advantages shaped like rewards.
  """
  s = _group_stats(rewards, group_ids)
  std = jnp.sqrt(s["sq_dev"] / jnp.maximum(s["count"] - ddof, 1.0))
  adv = jnp.where(s["uniform"], 0.0, (s["r"] - s["mean"]) / (std + eps))
  return _like(adv, rewards)


def dr_grpo(rewards: jax.Array, group_ids: jax.Array | None = None) -> jax.Array:
  """Mean-only baseline: A_i = r_i - mean_g r (Dr. GRPO, arXiv 2503.20783).

  Args:
    rewards: f32[P, G], or f32[B] together with group_ids.
    group_ids: optional i32[B] group of each row.

  Returns:
    f32 advantages shaped like rewards.
  """
  s = _group_stats(rewards, group_ids)
  adv = jnp.where(s["uniform"], 0.0, s["r"] - s["mean"])
  return _like(adv, rewards)


def rloo(rewards: jax.Array, group_ids: jax.Array | None = None) -> jax.Array:
  """Leave-one-out baseline: A_i = r_i - (sum_g r - r_i) / (G - 1).

  Equals G/(G-1) times the Dr. GRPO advantage for a group of size G.

  Args:
    rewards: f32[P, G], or f32[B] together with group_ids.
    group_ids: optional i32[B] group of each row.

  Returns:
    f32 advantages shaped like rewards.
  """
  s = _group_stats(rewards, group_ids)
  baseline = (s["total"] - s["r"]) / jnp.maximum(s["count"] - 1.0, 1.0)
  adv = jnp.where(s["uniform"], 0.0, s["r"] - baseline)
  return _like(adv, rewards)


def token_advantages(token_rewards: jax.Array, mask: jax.Array, gamma: float = 1.0) -> jax.Array:
  """Returns-to-go of per-token rewards: A_t = sum_{s >= t, counted} gamma^(k(s)-k(t)) r_s.

  Process supervision in DeepSeekMath: put each (normalised) step reward on the step's
  last token; with gamma = 1, A_t is the sum of the rewards of the steps ending at or
  after t. Discounting counts only masked-in tokens, so tool/observation tokens in the
  middle of a response neither carry reward nor add a discount step.

  Args:
    token_rewards: f32[B, T] reward at each token (ignored where mask is 0).
    mask: f32[B, T] 1 on counted tokens.
    gamma: discount per counted token.

  Returns:
    f32[B, T] returns-to-go, 0 where mask is 0.
  """
  chex.assert_rank([token_rewards, mask], 2)
  chex.assert_equal_shape([token_rewards, mask])
  r = jnp.where(mask > 0, token_rewards.astype(jnp.float32), 0.0)
  on = mask > 0

  def step(carry, xs):
    r_t, on_t = xs
    carry = jnp.where(on_t, r_t + gamma * carry, carry)
    return carry, jnp.where(on_t, carry, 0.0)

  # Scan over T from the end; xs are [T, B].
  _, out = jax.lax.scan(step, jnp.zeros(r.shape[0], jnp.float32), (r.T, on.T), reverse=True)
  return jax.lax.stop_gradient(out.T)


def broadcast_to_tokens(adv: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-sequence advantages onto their counted tokens.

  Args:
    adv: f32[B] one advantage per row.
    mask: f32[B, T] 1 on counted tokens.

  Returns:
    f32[B, T] adv[b] where mask is 1, else 0.
  """
  chex.assert_rank(adv, 1)
  chex.assert_rank(mask, 2)
  chex.assert_equal_shape_prefix([adv, mask], 1)
  return jnp.where(mask > 0, adv.astype(jnp.float32)[:, None], 0.0)


def informative_groups(rewards: jax.Array) -> jax.Array:
  """DAPO dynamic sampling (arXiv 2503.14476): keep groups whose rewards differ.

  A group whose G rewards are all identical has zero advantage under every estimator
  here, so it gives no policy gradient.

  Args:
    rewards: f32[P, G].

  Returns:
    bool[P], False where all G rewards of the prompt are equal.
  """
  chex.assert_rank(rewards, 2)
  return jnp.max(rewards, axis=1) > jnp.min(rewards, axis=1)


def zero_advantage_fraction(adv: jax.Array, *, atol: float = 0.0) -> jax.Array:
  """Fraction of sequences whose advantage is 0 (|A| <= atol): wasted rollouts.

  Args:
    adv: f32[B] (or f32[P, G]) per-sequence advantages of the global batch.
    atol: tolerance; 0 counts exact zeros, which uniform groups produce.

  Returns:
    f32[] in [0, 1].
  """
  return jnp.mean((jnp.abs(adv) <= atol).astype(jnp.float32))


# Outcome estimators by name (``rl.advantage``).
ADVANTAGES = Registry("advantage")
ADVANTAGES.register("grpo")(grpo)
ADVANTAGES.register("dr_grpo")(dr_grpo)
ADVANTAGES.register("rloo")(rloo)


def get(name: str) -> Callable[..., jax.Array]:
  """Looks up an outcome-advantage estimator by name."""
  return ADVANTAGES.get(name)


def combine(
  rewards: jax.Array,
  token_rewards: dict[str, jax.Array],
  mask: jax.Array,
  *,
  estimator: str,
  group_size: int,
  gamma: float = 1.0,
  baseline: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Token advantages from sequence rewards and token rewards (``rewards/token.py``).

    r'_i = r_i + sum_t outcome_{i,t}                      (token rewards in the return)
    A_i  = estimator(r' grouped by G)                     (group baseline)
    A_{i,t} = A_i + sum_{s >= t} gamma^(s-t) return_{i,s} + direct_{i,t}

  "return" rewards become returns-to-go (per-step process rewards); "direct" ones are
  per-token advantages as they are (e.g. a teacher's log-ratio in on-policy
  distillation, where each token's signal is its own).

  Args:
    rewards: f32[B] sequence rewards, G adjacent rows per prompt.
    token_rewards: f32[B, T] per mode ("outcome", "return", "direct"); a missing mode
      adds nothing.
    mask: f32[B, T] 1 on completion tokens.
    estimator: a key of ``ADVANTAGES``.
    group_size: G.
    gamma: discount of the returns-to-go.
    baseline: (mean f32[P], scale f32[P]) per group, replacing the estimator's own
      statistics: A_i = (r'_i - mean) / scale (Reinforce-Ada's global statistics over
      every sample drawn for a prompt, not only the G kept).

  Returns:
    (token advantages f32[B, T], sequence advantages f32[B], shaped rewards f32[B]).
  """
  chex.assert_rank(mask, 2)
  on = mask > 0
  shaped = jnp.asarray(rewards, jnp.float32)
  if token_rewards.get("outcome") is not None:
    outcome = jnp.where(on, jnp.asarray(token_rewards["outcome"], jnp.float32), 0.0)
    shaped = shaped + jnp.sum(outcome, axis=1)
  if baseline is None:
    seq = get(estimator)(shaped.reshape(-1, group_size)).reshape(-1)
  else:
    mean, scale = (jnp.repeat(jnp.asarray(x, jnp.float32), group_size) for x in baseline)
    seq = (shaped - mean) / scale
  token = broadcast_to_tokens(seq, mask)
  if token_rewards.get("return") is not None:
    token = token + token_advantages(jnp.asarray(token_rewards["return"]), mask, gamma)
  if token_rewards.get("direct") is not None:
    token = token + jnp.where(on, jnp.asarray(token_rewards["direct"], jnp.float32), 0.0)
  return token, seq, shaped
