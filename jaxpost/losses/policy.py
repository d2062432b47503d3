"""Policy-gradient losses of the GRPO family (methods/rl.md sections 0, 1, 4, 5, 8).

Contract (differs from the logits-based SFT losses in ``registry``)::

    fn(logp: f32[B, T], rollout: Rollout, *, norm: Normalizers,
       entropy: f32[B, T] | None = None, **hparams) -> (loss: f32[], metrics: dict)

``logp`` is the current policy's log-prob of ``rollout.batch.targets`` (the caller
computes it from logits, in f32); the mask is ``rollout.batch.loss_mask``; advantages
are ``rollout.advantages`` (already broadcast to tokens). ``norm`` holds the global
batch counts, so the loss and every metric are additive over row-wise micro-batches,
like the SFT loss. ``entropy`` is the policy's per-token entropy, needed only for an
entropy bonus.

One mechanism, ``policy_loss``, serves every registered name; the names are presets
of its hyperparameters:

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

from typing import Any

import chex
import jax
import jax.numpy as jnp

from jaxpost.losses import correction, kl, reduce
from jaxpost.losses.registry import register
from jaxpost.types import Rollout

RATIOS = ("token", "sequence", "sequence_token", "turn")
PREFIXES = (None, "min_exclusive", "min_inclusive")


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
  agg_constant: float | None = None,
  kl_coef: float = 0.0,
  kl_estimator: str = "k3",
  entropy_coef: float = 0.0,
  is_level: str | None = None,
  is_mode: str = "truncate",
  is_cap: float = 2.0,
  is_floor: float | None = None,
  prefix: str | None = None,
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
    is_level:   None, "token", "sequence" or "geometric": w = pi_old / mu from
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
    agg_constant: C of "seq_mean_token_sum_norm" (None: padded length T).
    kl_coef: beta of the KL-to-reference term (uses rollout.ref_logp).
    kl_estimator: "k1", "k2" or "k3".
    entropy_coef: coefficient of the entropy bonus (subtracted from the loss).
    is_level: train-inference IS correction level, or None for off.
    is_mode: "truncate" or "mask".
    is_cap: upper bound of the IS weight.
    is_floor: lower bound in "mask" mode (None: 1 / is_cap).
    prefix: MinPRO prefix factor, one of ``PREFIXES``.
    prefix_behavior: "old" or "sampler", the denominator of rho in the prefix factor.
    log_ratio_clamp: |log r_t| limit before exp (verl: 20).
    group_log_ratio_max: upper clamp of log s_i / log w_k (verl GSPO: 10).

  Returns:
    (loss f32[], metrics): pg_loss, ratio_mean, clip_frac_low, clip_frac_high and, when
    enabled, dual_clip_frac, kl, entropy, is_weight_mean, is_clipped_frac,
    prefix_weight_mean. All additive over micro-batches.
  """
  batch = rollout.batch
  mask = batch.loss_mask.astype(jnp.float32)
  chex.assert_rank([logp, mask, rollout.advantages, rollout.old_logp], 2)
  chex.assert_equal_shape([logp, mask, rollout.advantages, rollout.old_logp])
  if ratio not in RATIOS:
    raise ValueError(f"unknown ratio {ratio!r}; expected one of {RATIOS}")
  if prefix not in PREFIXES:
    raise ValueError(f"unknown prefix {prefix!r}; expected one of {PREFIXES}")
  if prefix_behavior not in ("old", "sampler"):
    raise ValueError(f"prefix_behavior must be 'old' or 'sampler', got {prefix_behavior!r}")
  if dual_clip and not clip_ratio_c > 1.0:
    raise ValueError(f"dual clip needs clip_ratio_c > 1, got {clip_ratio_c!r}")
  if entropy_coef and entropy is None:
    raise ValueError("entropy_coef > 0 needs the per-token `entropy` argument")

  on = mask > 0
  # Zero junk at masked slots before any exp (see correction.log_ratio).
  logp = jnp.where(on, logp.astype(jnp.float32), 0.0)
  adv = jnp.where(on, rollout.advantages.astype(jnp.float32), 0.0)
  log_r = correction.log_ratio(logp, rollout.old_logp, mask, clamp=log_ratio_clamp)

  if ratio == "token":
    log_x = log_r
  elif ratio == "turn":
    log_x = jnp.minimum(correction.group_mean(log_r, mask, rollout.turn_ids), group_log_ratio_max)
  else:
    log_s = correction.group_mean(log_r, mask, batch.segment_ids)
    if ratio == "sequence_token":
      # Value log s_i; d/dlogp_t = 1 (times s_i after exp): GSPO-token's gradient form.
      log_s = jax.lax.stop_gradient(log_s) + logp - jax.lax.stop_gradient(logp)
    log_x = jnp.minimum(log_s, group_log_ratio_max)
  x = jnp.exp(log_x)

  unclipped = -adv * x
  clipped = -adv * jnp.clip(x, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
  pg = jnp.maximum(unclipped, clipped)
  metrics: dict[str, Any] = {}
  if dual_clip:
    cap = -adv * clip_ratio_c
    dual = (adv < 0) & (pg > cap)
    pg = jnp.where(dual, cap, pg)
    metrics["dual_clip_frac"] = reduce.token_mean(dual.astype(jnp.float32), mask, norm)

  weight = jnp.ones_like(pg)
  if is_level is not None:
    w_is, outside = correction.is_weights(
      rollout.old_logp,
      rollout.sampler_logp,
      mask,
      batch.segment_ids,
      level=is_level,
      mode=is_mode,
      cap=is_cap,
      floor=is_floor,
    )
    weight = weight * w_is
    metrics["is_weight_mean"] = reduce.token_mean(w_is, mask, norm)
    metrics["is_clipped_frac"] = reduce.token_mean(outside.astype(jnp.float32), mask, norm)
  if prefix is not None:
    behaviour = rollout.old_logp if prefix_behavior == "old" else rollout.sampler_logp
    log_rho = correction.log_ratio(logp, behaviour, mask, clamp=log_ratio_clamp)
    f = jnp.exp(
      correction.prefix_min_log_weight(log_rho, mask, inclusive=prefix == "min_inclusive")
    )
    weight = weight * f
    metrics["prefix_weight_mean"] = reduce.token_mean(f, mask, norm)
  pg = pg * weight

  def agg_(v: jax.Array) -> jax.Array:
    return reduce.aggregate(v, mask, batch.segment_ids, norm, agg, constant=agg_constant)

  pg_loss = agg_(pg)
  loss = pg_loss
  metrics["pg_loss"] = pg_loss
  metrics["ratio_mean"] = reduce.token_mean(x, mask, norm)
  hi = (adv > 0) & (x > 1.0 + clip_eps_high)
  lo = (adv < 0) & (x < 1.0 - clip_eps_low)
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


# Preset defaults; any of them can be overridden by keyword.
PPO_DEFAULTS = dict(ratio="token", clip_eps_low=0.2, clip_eps_high=0.2, agg="token_mean")
GRPO_DEFAULTS = dict(
  ratio="token",
  clip_eps_low=0.2,
  clip_eps_high=0.2,
  agg="seq_mean_token_mean",
  kl_coef=0.04,
  kl_estimator="k3",
)
DR_GRPO_DEFAULTS = dict(
  ratio="token",
  clip_eps_low=0.2,
  clip_eps_high=0.2,
  agg="seq_mean_token_sum_norm",
  agg_constant=None,
)
DAPO_DEFAULTS = dict(ratio="token", clip_eps_low=0.2, clip_eps_high=0.28, agg="token_mean")
GSPO_DEFAULTS = dict(
  ratio="sequence", clip_eps_low=3e-4, clip_eps_high=4e-4, agg="seq_mean_token_mean"
)
GSPO_TOKEN_DEFAULTS = {**GSPO_DEFAULTS, "ratio": "sequence_token"}


def _run(defaults: dict[str, Any], logp, rollout, norm, entropy, hparams):
  return policy_loss(logp, rollout, norm=norm, entropy=entropy, **{**defaults, **hparams})


@register("ppo")
def ppo(
  logp: jax.Array,
  rollout: Rollout,
  *,
  norm: reduce.Normalizers,
  entropy: jax.Array | None = None,
  **hparams: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped surrogate on outcome advantages (no critic here).

  "Proximal Policy Optimization Algorithms", arXiv 1707.06347:
    J = E[ min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t) ].
  Defaults (``PPO_DEFAULTS``): eps 0.2, token_mean aggregation (verl's default), no KL.
  Set ``dual_clip=True`` for verl's dual clip with c = 3.
  Hyperparameters: see ``policy_loss``.
  """
  return _run(PPO_DEFAULTS, logp, rollout, norm, entropy, hparams)


@register("grpo")
def grpo(
  logp: jax.Array,
  rollout: Rollout,
  *,
  norm: reduce.Normalizers,
  entropy: jax.Array | None = None,
  **hparams: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GRPO: PPO with a group baseline and a k3 KL penalty in the loss.

  "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
  arXiv 2402.03300:
    J = E[ (1/G) sum_i (1/|o_i|) sum_t { min(r A, clip(r, 1-eps, 1+eps) A) - beta D_KL } ],
    D_KL = pi_ref/pi - log(pi_ref/pi) - 1.
  Defaults (``GRPO_DEFAULTS``): beta 0.04, k3, seq_mean_token_mean (the 1/|o_i|, 1/G),
  eps 0.2 (the paper's eps is NOT FOUND; 0.2 is verl's default). The KL term reads
  ``rollout.ref_logp``; pass ``kl_coef=0.0`` when there is no reference model.
  Advantages: the caller's, e.g. ``advantages.grpo``.
  Hyperparameters: see ``policy_loss``.
  """
  return _run(GRPO_DEFAULTS, logp, rollout, norm, entropy, hparams)


@register("dr_grpo")
def dr_grpo(
  logp: jax.Array,
  rollout: Rollout,
  *,
  norm: reduce.Normalizers,
  entropy: jax.Array | None = None,
  **hparams: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Dr. GRPO: GRPO without the 1/|o_i| length and std normalisations.

  "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv 2503.20783:
    J = (1/G) sum_i sum_t min(r A, clip(r, 1-eps, 1+eps) A), A = R_i - mean_j R_j.
  Defaults (``DR_GRPO_DEFAULTS``): seq_mean_token_sum_norm with C = ``agg_constant``
  (None: padded length T; see ``reduce.aggregate`` for matching the 1/G), eps 0.2, no
  KL. Advantages: the caller's, e.g. ``advantages.dr_grpo``.
  Hyperparameters: see ``policy_loss``.
  """
  return _run(DR_GRPO_DEFAULTS, logp, rollout, norm, entropy, hparams)


@register("dapo")
def dapo(
  logp: jax.Array,
  rollout: Rollout,
  *,
  norm: reduce.Normalizers,
  entropy: jax.Array | None = None,
  **hparams: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DAPO: clip-higher and a token-level loss.

  "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv 2503.14476:
    J = E[ 1/(sum_i |o_i|) sum_i sum_t min(r A, clip(r, 1-eps_low, 1+eps_high) A) ].
  Defaults (``DAPO_DEFAULTS``): eps_low 0.2, eps_high 0.28, token_mean, no KL. Dynamic
  sampling (``advantages.informative_groups``) and the overlong reward shaping live
  outside the loss.
  Hyperparameters: see ``policy_loss``.
  """
  return _run(DAPO_DEFAULTS, logp, rollout, norm, entropy, hparams)


@register("gspo")
def gspo(
  logp: jax.Array,
  rollout: Rollout,
  *,
  norm: reduce.Normalizers,
  entropy: jax.Array | None = None,
  **hparams: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GSPO: clip a length-normalised sequence ratio.

  "Group Sequence Policy Optimization", arXiv 2507.18071:
    J = E[ (1/G) sum_i min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i) ],
    s_i = (pi_theta(y_i|x) / pi_old(y_i|x))^(1/|y_i|), log s_i clamped <= 10 (verl).
  Defaults (``GSPO_DEFAULTS``): eps_low 3e-4, eps_high 4e-4, seq_mean_token_mean, no KL.
  Hyperparameters: see ``policy_loss``.
  """
  return _run(GSPO_DEFAULTS, logp, rollout, norm, entropy, hparams)


@register("gspo_token")
def gspo_token(
  logp: jax.Array,
  rollout: Rollout,
  *,
  norm: reduce.Normalizers,
  entropy: jax.Array | None = None,
  **hparams: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GSPO-token: GSPO with per-token advantages allowed.

  "Group Sequence Policy Optimization", arXiv 2507.18071:
    s_{i,t} = sg[s_i] * pi_theta(y_{i,t}) / sg[pi_theta(y_{i,t})],
    J = E[ (1/G) sum_i (1/|y_i|) sum_t min(s_{i,t} A_{i,t}, clip(s_{i,t}) A_{i,t}) ].
  Equal to GSPO in value, clipping and gradient when A_{i,t} = A_i.
  Defaults (``GSPO_TOKEN_DEFAULTS``): as ``gspo``.
  Hyperparameters: see ``policy_loss``.
  """
  return _run(GSPO_TOKEN_DEFAULTS, logp, rollout, norm, entropy, hparams)


# Registered policy-loss name -> its preset hyperparameters (what ``rl.*`` fields override).
PRESETS: dict[str, dict[str, Any]] = {
  "ppo": PPO_DEFAULTS,
  "grpo": GRPO_DEFAULTS,
  "dr_grpo": DR_GRPO_DEFAULTS,
  "dapo": DAPO_DEFAULTS,
  "gspo": GSPO_DEFAULTS,
  "gspo_token": GSPO_TOKEN_DEFAULTS,
}
