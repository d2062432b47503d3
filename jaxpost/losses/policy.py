"""Policy-gradient losses of the GRPO family (methods/rl.md sections 0, 1, 4, 5, 8).

Family "policy" of the loss registry; contract::

    fn(logp: f32[B, T], rollout: Rollout, *, norm: Normalizers,
       entropy: f32[B, T] | None = None, **hparams) -> (loss: f32[], metrics: dict)

``logp`` is the current policy's log-prob of ``rollout.batch.targets`` (the caller
computes it from logits, in f32); the mask is ``rollout.batch.loss_mask``; advantages
are ``rollout.advantages`` (already broadcast to tokens). ``norm`` holds the global
batch counts, so the loss and every metric are additive over row-wise micro-batches,
like the SFT loss. ``entropy`` is the policy's per-token entropy, needed only for an
entropy bonus.

The building blocks are small pure functions in the style of rlax (``token_log_ratio``,
``sequence_log_ratio``, ``sequence_token_log_ratio``, ``turn_log_ratio``,
``clipped_surrogate``, ``dual_clip``, and the importance / prefix weights of
``correction``); ``policy_loss`` composes them, and every registered name is a preset of
its hyperparameters, kept as data in ``PRESETS`` (the config section ``loss.<name>``
starts from the preset):

  name        ratio            clip (low, high)  aggregation               KL
  ppo         token            0.2, 0.2          token_mean                -
  grpo        token            0.2, 0.2          seq_mean_token_mean       k3, 0.04
  dr_grpo     token            0.2, 0.2          seq_mean_token_sum_norm   -
  dapo        token            0.2, 0.28         token_mean                -
  gspo        sequence         3e-4, 4e-4        seq_mean_token_mean       -
  gspo_token  sequence_token   3e-4, 4e-4        seq_mean_token_mean       -

Per-token loss, with ratio x_t (token ratio r_t = pi_theta/pi_old, or a sequence/turn
ratio), advantage A_t and clip range [1 - eps_low, 1 + eps_high]:
  L_t = w_t * max(-A_t x_t, -A_t clip(x_t, 1 - eps_low, 1 + eps_high))
  dual clip (A_t < 0 only): L_t <- min(L_t / w_t, -A_t c) * w_t
  loss = agg(L) + kl_coef * agg(KL_t) - entropy_coef * agg(H_t)
where w_t is an optional stop-gradient weight: the train-inference importance weight
pi_old/mu (``is_level``, ``correction.is_weights``) times MinPRO's prefix factor
(``prefix``). Options that the method cards mark NOT FOUND or [mem] are exposed as
hyperparameters and flagged in ``policy_loss``'s docstring.
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import correction, kl, reduce
from jaxpost.losses.registry import register
from jaxpost.types import Rollout

RATIOS = ("token", "sequence", "sequence_token", "turn")
PREFIXES = ("none", "min_exclusive", "min_inclusive")
IS_LEVELS = ("none", *correction.IS_LEVELS)


# ----------------------------------------------------------------------------------------
# Building blocks: one concept each, f32 math, the mask passed explicitly.


# log r_t = log pi_theta(y_t) - log pi_old(y_t), clamped, 0 off the mask (see there).
token_log_ratio = correction.log_ratio


def sequence_log_ratio(
  log_r: jax.Array, mask: jax.Array, segment_ids: jax.Array, *, max_log: float = 10.0
) -> jax.Array:
  """GSPO's log s_i = mean_t log r_{i,t} over sequence i, on every token of it, <= max_log.

  Args:
    log_r: f32[B, T] token log ratios (``token_log_ratio``).
    mask: f32[B, T] 1 on counted tokens.
    segment_ids: i32[B, T] sequence of each token within its row (packed rows work).
    max_log: upper clamp (verl GSPO: 10).
  """
  return jnp.minimum(correction.group_mean(log_r, mask, segment_ids), max_log)


def sequence_token_log_ratio(
  log_r: jax.Array,
  logp: jax.Array,
  mask: jax.Array,
  segment_ids: jax.Array,
  *,
  max_log: float = 10.0,
) -> jax.Array:
  """GSPO-token: value log s_i, gradient d/dlogp_t = 1 (sg[s_i] pi_t / sg[pi_t] after exp).

  Args:
    log_r: f32[B, T] token log ratios.
    logp: f32[B, T] the current log-probs the gradient flows through.
    mask: f32[B, T] 1 on counted tokens.
    segment_ids: i32[B, T] sequence ids.
    max_log: upper clamp.
  """
  log_s = correction.group_mean(log_r, mask, segment_ids)
  log_s = jax.lax.stop_gradient(log_s) + logp - jax.lax.stop_gradient(logp)
  return jnp.minimum(log_s, max_log)


def turn_log_ratio(
  log_r: jax.Array, mask: jax.Array, turn_ids: jax.Array, *, max_log: float = 10.0
) -> jax.Array:
  """ST-PPO's turn ratio: log w_k = mean_{t in turn k} log r_t on the tokens of turn k.

  Args:
    log_r: f32[B, T] token log ratios.
    mask: f32[B, T] 1 on counted tokens (tool / observation tokens excluded).
    turn_ids: i32[B, T] turn of each token (0 = none).
    max_log: upper clamp.
  """
  return jnp.minimum(correction.group_mean(log_r, mask, turn_ids), max_log)


def clipped_surrogate(
  ratio: jax.Array, adv: jax.Array, *, eps_low: float, eps_high: float
) -> jax.Array:
  """PPO's per-token loss max(-A x, -A clip(x, 1 - eps_low, 1 + eps_high)).

  Args:
    ratio: f32[B, T] ratio x (token, sequence or turn).
    adv: f32[B, T] advantages (0 off the mask).
    eps_low, eps_high: the clip range.
  """
  chex.assert_equal_shape([ratio, adv])
  return jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high))


def dual_clip_loss(pg: jax.Array, adv: jax.Array, *, c: float) -> tuple[jax.Array, jax.Array]:
  """Dual clip: for A < 0 the per-token loss is capped at -A c; returns (loss, capped).

  verl's dual clip, from "Mastering Complex Control in MOBA Games with Deep RL",
  arXiv 1912.09729 (c = 3 in verl).
  """
  cap = -adv * c
  dual = (adv < 0) & (pg > cap)
  return jnp.where(dual, cap, pg), dual


def clip_fractions(
  ratio: jax.Array, adv: jax.Array, *, eps_low: float, eps_high: float
) -> tuple[jax.Array, jax.Array]:
  """Where the clip binds: (A > 0 and x > 1 + eps_high, A < 0 and x < 1 - eps_low)."""
  return (adv > 0) & (ratio > 1.0 + eps_high), (adv < 0) & (ratio < 1.0 - eps_low)


# What each hyperparameter of ``policy_loss`` accepts (every preset shares them).
RULES = {
  "ratio": fields.one_of(RATIOS),
  "clip_eps_low": fields.num(ge=0),
  "clip_eps_high": fields.num(ge=0),
  "dual_clip": fields.FLAG,
  "clip_ratio_c": fields.num(gt=1),
  "agg": fields.one_of(reduce.AGGREGATIONS),
  "agg_constant": fields.num(ge=0),
  "kl_coef": fields.num(ge=0),
  "kl_estimator": fields.one_of(tuple(kl.ESTIMATORS)),
  "entropy_coef": fields.num(ge=0),
  "is_level": fields.one_of(IS_LEVELS),
  "is_mode": fields.one_of(correction.IS_MODES),
  "is_cap": fields.num(gt=0),
  "is_floor": fields.num(ge=0),
  "prefix": fields.one_of(PREFIXES),
  "prefix_behavior": fields.one_of(("old", "sampler")),
  "log_ratio_clamp": fields.num(gt=0),
  "group_log_ratio_max": fields.num(gt=0),
}


def check_hparams(h: dict[str, Any]) -> None:
  """Raises ValueError naming the first bad hyperparameter of ``policy_loss`` in ``h``:
  each value against ``RULES``, then the conditions across them."""
  for name, rule in RULES.items():
    problem = rule.problem(h[name])
    if problem:
      raise ValueError(f"{name}={h[name]!r}: {problem}")
  cap, floor = h["is_cap"], h["is_floor"]
  if floor and floor > cap:
    raise ValueError(f"need is_floor <= is_cap, got is_floor={floor}, is_cap={cap}")


# ----------------------------------------------------------------------------------------
# The composed loss.


def policy_loss(
  logp: jax.Array,
  rollout: Rollout,
  *,
  norm: reduce.Normalizers,
  entropy: jax.Array | None = None,
  ratio: str = "token",
  clip_eps_low: float = 0.2,
  clip_eps_high: float = 0.2,
  dual_clip: bool = False,
  clip_ratio_c: float = 3.0,
  agg: str = "token_mean",
  agg_constant: float = 0.0,
  kl_coef: float = 0.0,
  kl_estimator: str = "k3",
  entropy_coef: float = 0.0,
  is_level: str = "none",
  is_mode: str = "truncate",
  is_cap: float = 2.0,
  is_floor: float = 0.0,
  prefix: str = "none",
  prefix_behavior: str = "old",
  log_ratio_clamp: float = 20.0,
  group_log_ratio_max: float = 10.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped policy-gradient loss with a token, sequence or turn ratio.

  PPO (Proximal Policy Optimization Algorithms, arXiv 1707.06347):
    L = -min(r A, clip(r, 1-eps, 1+eps) A), r_t = pi_theta(y_t) / pi_old(y_t).
  Ratio modes:
    token:          r_t (PPO, GRPO, Dr. GRPO, DAPO).
    sequence:       s_i = exp(mean_t log r_{i,t}) for every token of sequence i (GSPO,
                    arXiv 2507.18071); log s_i clamped <= ``group_log_ratio_max`` as verl.
    sequence_token: s_{i,t} = sg[s_i] * pi_theta(y_t) / sg[pi_theta(y_t)] (GSPO-token);
                    same value and, with sequence-constant A, same gradient as sequence.
    turn:           w_k = exp(mean_{t in turn k} log r_t) shared by the tokens of turn k
                    (ST-PPO Turn-PPO, arXiv 2511.20718; turns from ``rollout.turn_ids``;
                    geometric mean per third-party summary [sum]). Same clamp as GSPO.
                    ST-PPO's clipping-bias normalisation (S-PPO) is NOT FOUND and not
                    implemented.
  Dual clip (verl, from "Mastering Complex Control in MOBA Games with Deep RL",
  arXiv 1912.09729): for A < 0 the per-token loss is capped at -A c (c = 3 in verl).

  Off-policy corrections (stop-gradient weights multiplying the per-token loss):
    is_level:   "none", "token", "sequence" or "geometric": w = pi_old / mu from
                ``rollout.old_logp`` and ``rollout.sampler_logp``, truncated at ``is_cap``
                (``is_mode="truncate"``, TIS) or zeroed outside [is_floor, is_cap]
                (``is_mode="mask"``; floor defaults to 1/cap). MiniRL (arXiv
                2512.01374) truncates the token weight at 5; which factor it truncates
                is NOT FOUND, we truncate the train-inference factor pi_old/mu.
    prefix:     MinPRO (arXiv 2601.22718; objective NOT FOUND, see
                ``correction.prefix_min_log_weight``): "min_exclusive" weights token t by
                sg[min_{i<t} rho_i] (stub w_t = sg[min_{i<t} rho_i] rho_t of the card);
                "min_inclusive" gives w_t = min_{i<=t} rho_i with gradient through rho_t.
                The factor multiplies the clipped term, so clipping still acts on the
                token ratio (where clipping goes is NOT FOUND; this is our choice).
    prefix_behavior: "old" takes rho = pi_theta/pi_old (the card's mu = pi_old);
                "sampler" takes rho = pi_theta/mu from ``rollout.sampler_logp``.

  Args:
    logp: f32[B, T] log-prob of ``rollout.batch.targets`` under the current policy.
    rollout: uses batch.loss_mask, batch.segment_ids, advantages, old_logp, and as
      needed sampler_logp, ref_logp, turn_ids.
    norm: global normalisers.
    entropy: optional f32[B, T] per-token policy entropy (required if entropy_coef > 0).
    ratio: one of ``RATIOS``.
    clip_eps_low: eps_low of the clip range.
    clip_eps_high: eps_high of the clip range (DAPO clip-higher when > eps_low).
    dual_clip: cap the loss of negative-advantage tokens at -A * clip_ratio_c.
    clip_ratio_c: c of the dual clip (> 1).
    agg: aggregation mode, one of ``reduce.AGGREGATIONS``; also used for KL and entropy.
    agg_constant: C of "seq_mean_token_sum_norm" (0: padded length T; the rl recipe
      passes the update's rows x ``rl.max_new_tokens`` when it is 0).
    kl_coef: beta of the KL-to-reference term (uses rollout.ref_logp).
    kl_estimator: "k1", "k2" or "k3".
    entropy_coef: coefficient of the entropy bonus (subtracted from the loss).
    is_level: train-inference IS correction level, one of ``IS_LEVELS`` ("none" = off).
    is_mode: "truncate" or "mask".
    is_cap: upper bound of the IS weight.
    is_floor: lower bound in "mask" mode (0: 1 / is_cap).
    prefix: MinPRO prefix factor, one of ``PREFIXES``.
    prefix_behavior: "old" or "sampler", the denominator of rho in the prefix factor.
    log_ratio_clamp: |log r_t| limit before exp (verl: 20).
    group_log_ratio_max: upper clamp of log s_i / log w_k (verl GSPO: 10).

  Returns:
    (loss f32[], metrics): pg_loss, ratio_mean, clip_frac_low, clip_frac_high and, when
    enabled, dual_clip_frac, kl, entropy, is_weight_mean, is_clipped_frac,
    prefix_weight_mean. All additive over micro-batches.
  """
  check_hparams(locals())  # the arguments, before any other local exists
  batch = rollout.batch
  mask = batch.loss_mask.astype(jnp.float32)
  chex.assert_rank([logp, mask, rollout.advantages, rollout.old_logp], 2)
  chex.assert_equal_shape([logp, mask, rollout.advantages, rollout.old_logp])
  if entropy_coef and entropy is None:
    raise ValueError("entropy_coef > 0 needs the per-token `entropy` argument")

  on = mask > 0
  # Zero junk at masked slots before any exp (see token_log_ratio).
  logp = jnp.where(on, logp.astype(jnp.float32), 0.0)
  adv = jnp.where(on, rollout.advantages.astype(jnp.float32), 0.0)
  log_r = token_log_ratio(logp, rollout.old_logp, mask, clamp=log_ratio_clamp)
  if ratio == "token":
    log_x = log_r
  elif ratio == "turn":
    log_x = turn_log_ratio(log_r, mask, rollout.turn_ids, max_log=group_log_ratio_max)
  elif ratio == "sequence":
    log_x = sequence_log_ratio(log_r, mask, batch.segment_ids, max_log=group_log_ratio_max)
  else:
    log_x = sequence_token_log_ratio(
      log_r, logp, mask, batch.segment_ids, max_log=group_log_ratio_max
    )
  x = jnp.exp(log_x)

  pg = clipped_surrogate(x, adv, eps_low=clip_eps_low, eps_high=clip_eps_high)
  metrics: dict[str, Any] = {}
  if dual_clip:
    pg, dual = dual_clip_loss(pg, adv, c=clip_ratio_c)
    metrics["dual_clip_frac"] = reduce.token_mean(dual.astype(jnp.float32), mask, norm)

  weight = jnp.ones_like(pg)
  if is_level != "none":
    w_is, outside = correction.is_weights(
      rollout.old_logp,
      rollout.sampler_logp,
      mask,
      batch.segment_ids,
      level=is_level,
      mode=is_mode,
      cap=is_cap,
      floor=is_floor or None,
    )
    weight = weight * w_is
    metrics["is_weight_mean"] = reduce.token_mean(w_is, mask, norm)
    metrics["is_clipped_frac"] = reduce.token_mean(outside.astype(jnp.float32), mask, norm)
  if prefix != "none":
    behaviour = rollout.old_logp if prefix_behavior == "old" else rollout.sampler_logp
    log_rho = token_log_ratio(logp, behaviour, mask, clamp=log_ratio_clamp)
    f = jnp.exp(
      correction.prefix_min_log_weight(
        log_rho, mask, segment_ids=batch.segment_ids, inclusive=prefix == "min_inclusive"
      )
    )
    weight = weight * f
    metrics["prefix_weight_mean"] = reduce.token_mean(f, mask, norm)
  pg = pg * weight

  def agg_(v: jax.Array) -> jax.Array:
    return reduce.aggregate(v, mask, batch.segment_ids, norm, agg, constant=agg_constant or None)

  pg_loss = agg_(pg)
  loss = pg_loss
  metrics["pg_loss"] = pg_loss
  metrics["ratio_mean"] = reduce.token_mean(x, mask, norm)
  hi, lo = clip_fractions(x, adv, eps_low=clip_eps_low, eps_high=clip_eps_high)
  metrics["clip_frac_high"] = reduce.token_mean(hi.astype(jnp.float32), mask, norm)
  metrics["clip_frac_low"] = reduce.token_mean(lo.astype(jnp.float32), mask, norm)
  if kl_coef:
    ref = jnp.where(on, rollout.ref_logp.astype(jnp.float32), 0.0)
    kl_value = agg_(kl.kl_penalty(logp, ref, kl_estimator))
    loss = loss + kl_coef * kl_value
    metrics["kl"] = kl_value
  if entropy is not None:
    chex.assert_equal_shape([entropy, mask])
    ent = jnp.where(on, entropy.astype(jnp.float32), 0.0)
    metrics["entropy"] = reduce.token_mean(ent, mask, norm)
    if entropy_coef:
      loss = loss - entropy_coef * agg_(ent)
  return loss, metrics


# ----------------------------------------------------------------------------------------
# Presets: data, not code. Each registered name is ``policy_loss`` with these defaults
# (``functools.partial``), so its signature, and hence its config section, shows them.

PRESETS: dict[str, dict[str, Any]] = {
  # PPO, "Proximal Policy Optimization Algorithms", arXiv 1707.06347, on outcome
  # advantages (no critic): J = E[min(r A, clip(r, 1-eps, 1+eps) A)]; verl's token_mean.
  "ppo": dict(ratio="token", clip_eps_low=0.2, clip_eps_high=0.2, agg="token_mean"),
  # GRPO, DeepSeekMath arXiv 2402.03300: (1/G) sum_i (1/|o_i|) sum_t {clipped - beta KL},
  # KL k3 with beta 0.04; the paper's eps is NOT FOUND, 0.2 is verl's default.
  "grpo": dict(
    ratio="token",
    clip_eps_low=0.2,
    clip_eps_high=0.2,
    agg="seq_mean_token_mean",
    kl_coef=0.04,
    kl_estimator="k3",
  ),
  # Dr. GRPO, arXiv 2503.20783: no 1/|o_i| and no std: sum_i sum_t clipped / C.
  "dr_grpo": dict(
    ratio="token", clip_eps_low=0.2, clip_eps_high=0.2, agg="seq_mean_token_sum_norm"
  ),
  # DAPO, arXiv 2503.14476: clip-higher (0.2, 0.28) and a token-level mean.
  "dapo": dict(ratio="token", clip_eps_low=0.2, clip_eps_high=0.28, agg="token_mean"),
  # GSPO, arXiv 2507.18071: clip s_i = (pi/pi_old)^(1/|y_i|) in [1 - 3e-4, 1 + 4e-4].
  "gspo": dict(ratio="sequence", clip_eps_low=3e-4, clip_eps_high=4e-4, agg="seq_mean_token_mean"),
  # GSPO-token: s_{i,t} = sg[s_i] pi_t / sg[pi_t]; == GSPO with sequence-level A.
  "gspo_token": dict(
    ratio="sequence_token", clip_eps_low=3e-4, clip_eps_high=4e-4, agg="seq_mean_token_mean"
  ),
}


def _check(**hparams: Any) -> None:
  check_hparams(hparams)


def _preset(name: str):
  fn = functools.partial(policy_loss, **PRESETS[name])
  fn.__doc__ = f"``policy_loss`` at the {name!r} preset ``PRESETS[{name!r}]``."
  return register(name, family="policy", check=_check, rules=RULES)(fn)


ppo = _preset("ppo")
grpo = _preset("grpo")
dr_grpo = _preset("dr_grpo")
dapo = _preset("dapo")
gspo = _preset("gspo")
gspo_token = _preset("gspo_token")
