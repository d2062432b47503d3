"""CurioSFT: entropy-preserving SFT by adaptive self-distillation (sft_distill_detect.md, 10).

"Learning While Staying Curious" (arXiv 2602.02244), as its official code implements it
(the paper's equations were not read). Cross-entropy collapses the entropy of the
next-token distribution; a plain entropy bonus flattens it toward uniform. CurioSFT
instead pulls the model's gold-token log-prob toward a *self-teacher's*: a lagged copy
of the model (``teacher.follow``) whose logits are divided by a per-token temperature
tau_t, high where the teacher is uncertain ("reasoning" tokens) and near its minimum
where it is sure ("factual" tokens):

  l_t = -log p(y_t) + alpha * 1/2 * (log p(y_t) - log p_T^{tau_t}(y_t))^2

  tau_t in [tau_min, tau_max] solves H_k(softmax(z_T / tau)) = H* by bisection, with
  H_k the entropy over the teacher's top k logits, H_now = H_k at tau = 1 and
  H* = H_now + gain * sigmoid(slope * (H_now - center)); tau_t = tau_min when
  H_now <= floor.

Code defaults: alpha 1, [tau_min, tau_max] = [1.1, 1.5], k 512, gain 0.5, slope 2,
center 1.2, floor 0.03, 20 bisection steps; the teacher is synced every 5 steps as
theta_T <- 0.01 theta_T + 0.99 theta (in jaxpost: ``teacher.follow="lagged"``,
``teacher.sync_every=5``, an exact copy instead of the 0.99 mix). Since
H_k(tau) is non-decreasing in tau, bisection finds the root when it lies inside the
bounds and clips to them otherwise. The raise H* - H_now grows with H_now; tau itself
need not (a sharp distribution needs a hotter temperature for the same raise), which
tests/losses/test_sft_objectives.py shows on purpose.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import FusedHead, TopK, masked_logits, target_stats
from jaxpost.losses.registry import register
from jaxpost.types import Batch


def top_k_entropy(logits: jax.Array, tau: jax.Array) -> jax.Array:
  """Entropy of softmax(logits / tau) over the given logits [..., k]; tau [...]."""
  logp = jax.nn.log_softmax(logits / tau[..., None], axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def target_entropy(h_now: jax.Array, gain: float, slope: float, center: float) -> jax.Array:
  """H* = H_now + gain * sigmoid(slope * (H_now - center))."""
  return h_now + gain * jax.nn.sigmoid(slope * (h_now - center))


def temperatures(
  logits: jax.Array,
  *,
  tau_min: float = 1.1,
  tau_max: float = 1.5,
  top_k: int = 512,
  gain: float = 0.5,
  slope: float = 2.0,
  center: float = 1.2,
  floor: float = 0.03,
  steps: int = 20,
) -> jax.Array:
  """Per-token temperature tau_t in [tau_min, tau_max] of the teacher's logits [..., V].

  No gradient. See the module docstring for the rule.
  """
  z = jax.lax.stop_gradient(logits.astype(jnp.float32))
  k = min(top_k, z.shape[-1])
  z = jax.lax.top_k(z, k)[0] if k < z.shape[-1] else z
  ones = jnp.ones(z.shape[:-1], jnp.float32)
  h_now = top_k_entropy(z, ones)
  goal = target_entropy(h_now, gain, slope, center)

  def bisect(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    low = top_k_entropy(z, mid) < goal  # entropy grows with tau: the root lies above mid
    return jnp.where(low, mid, lo), jnp.where(low, hi, mid)

  lo, hi = jax.lax.fori_loop(0, steps, bisect, (tau_min * ones, tau_max * ones))
  tau = 0.5 * (lo + hi)
  return jnp.where(h_now <= floor, tau_min, tau)


RULES = {
  "alpha": fields.num(ge=0),
  "tau_min": fields.num(gt=0),
  "tau_max": fields.num(gt=0),
  "top_k": fields.integer(ge=1),
  "gain": fields.num(ge=0),
  "slope": fields.num(),
  "center": fields.num(),
  "floor": fields.num(ge=0),
  "bisect_steps": fields.integer(ge=1),
}


def _check(*, tau_min, tau_max, **_) -> None:
  if tau_min > tau_max:
    raise ValueError(f"tau_min={tau_min} > tau_max={tau_max}")


@register("curio_sft", family="distill", rules=RULES, check=_check)
def curio_sft(
  outputs: jax.Array | FusedHead,
  teacher: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  alpha: float = 1.0,
  tau_min: float = 1.1,
  tau_max: float = 1.5,
  top_k: int = 512,
  gain: float = 0.5,
  slope: float = 2.0,
  center: float = 1.2,
  floor: float = 0.03,
  bisect_steps: int = 20,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CurioSFT's token loss, token-mean over the loss mask (module docstring).

  Args:
    outputs: the model's [B, T, V] logits or a ``FusedHead``.
    teacher: the self-teacher's logits or ``FusedHead`` (materialised: its top k and
      the gold token's tempered log-prob are read).
    batch: uses targets, loss_mask, and ``weights`` when given.
    norm: global normalisers.
    alpha: weight of the squared log-prob gap (0 = cross-entropy).
    tau_min, tau_max: bounds of the per-token teacher temperature.
    top_k: logits the entropy is measured over.
    gain, slope, center: H* = H_now + gain * sigmoid(slope * (H_now - center)).
    floor: tau = tau_min where the teacher's entropy is at most this.
    bisect_steps: bisection iterations.

  Returns:
    (loss f32[], metrics: nll, gap (mean log p - log p_T^tau), tau, entropy (the model's
    next-token entropy: what the method preserves)), additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  if isinstance(teacher, TopK):
    raise ValueError("curio_sft reads the self-teacher's logits: use teacher.follow")
  mask = batch.loss_mask
  weights = batch.token_weights
  stats = target_stats(outputs, batch.targets, mask)
  z = jax.lax.stop_gradient(masked_logits(teacher, mask))
  tau = temperatures(
    z,
    tau_min=tau_min,
    tau_max=tau_max,
    top_k=top_k,
    gain=gain,
    slope=slope,
    center=center,
    floor=floor,
    steps=bisect_steps,
  )
  t_logp = jax.nn.log_softmax(z / tau[..., None], axis=-1)
  t_gold = jnp.take_along_axis(t_logp, batch.targets[..., None], axis=-1)[..., 0]
  gap = stats.logp - t_gold
  per_token = -stats.logp + alpha * 0.5 * jnp.square(gap)
  loss = reduce.token_mean(per_token * weights, mask, norm)
  metrics = {
    "nll": reduce.token_mean(-jax.lax.stop_gradient(stats.logp), mask, norm),
    "gap": reduce.token_mean(jax.lax.stop_gradient(gap), mask, norm),
    "tau": reduce.token_mean(tau, mask, norm),
    "entropy": reduce.token_mean(jax.lax.stop_gradient(stats.entropy), mask, norm),
  }
  return loss, metrics
