"""LfU, Learning-from-the-Undesirable (sft_distill_detect.md, 11; arXiv 2511.13052).

SFT plus a representation-consistency term against an *undesirable* update: one
normalised gradient-ascent step on auxiliary parameters (here per-layer steering
vectors d_l, the paper's RepS variant: h'_l = h_l + d_l) makes the model worse at the
data, and the model is trained so that its hidden states barely move under it:

  d      = alpha * grad_d L_SFT(theta, d)|_{d=0} / ||grad_d L_SFT||      (ascent direction)
  L_cons = mean over counted positions t of (1/L) sum_l || sg(h_{l,t}) - h'_{l,t} ||^2
  L_LfU  = L_SFT + lambda * L_cons

h is the clean forward's stream after each block, h' the steered forward's (the
steering is added to each block's output, so later blocks see it and learn to absorb
it); the gradient of L_cons flows through the steered pass only (the clean target is
stop-gradient) and d itself is a constant of the update. Defaults of the paper:
lambda 5.0, alpha 0.1, all layers.

Ours, stated: the paper's code takes the ascent direction from another batch of the
same data and one auxiliary update for the whole batch; here each row's direction is
its own SFT loss's gradient (d is [B, L, D], normalised per row), so the loss stays
additive over micro-batches and equal under sharding. Positions: the counted target
positions (the paper's "label tokens"). Alpha = 0 gives d = 0 and L_cons = 0: plain SFT.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import target_stats
from jaxpost.losses.registry import register
from jaxpost.types import Batch

RULES = {"weight": fields.num(ge=0), "alpha": fields.num(ge=0)}


def ascent_direction(per_row_loss, steer_shape, alpha: float) -> jax.Array:
  """alpha * g_b / ||g_b|| for each row b, g = d(sum of the rows' losses)/d(steer) at 0.

  ``per_row_loss(steer) -> f32[B]``; rows without a gradient (nothing counted) get 0.
  """
  g = jax.grad(lambda d: jnp.sum(per_row_loss(d)))(jnp.zeros(steer_shape, jnp.float32))
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 2), keepdims=True))
  return jax.lax.stop_gradient(alpha * g / jnp.maximum(norm, 1e-12))


@register("lfu", family="model", rules=RULES)
def lfu(
  model,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  weight: float = 5.0,
  alpha: float = 0.1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_SFT + lambda * L_cons under a per-row normalised ascent step (module docstring).

  Args:
    model: the trained model (``scoring.ModelView``).
    batch: uses tokens, targets, loss_mask, positions, segment_ids, and ``weights``
      when given (the SFT term's per-token weights).
    norm: global normalisers.
    weight: lambda of the consistency term.
    alpha: the length of each row's ascent step in the steering space.

  Returns:
    (loss f32[], metrics: nll, consistency (L_cons), ascent_gain (how much the steering
    raised the SFT loss, a check that the step is an ascent)), additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  mask = batch.loss_mask
  tw = batch.token_weights
  outputs, hidden = model.forward(batch)
  stats = target_stats(outputs, batch.targets, mask)
  sft = reduce.token_mean(-stats.logp * tw, mask, norm)
  metrics = {"nll": reduce.token_mean(-jax.lax.stop_gradient(stats.logp), mask, norm)}
  if not (alpha and weight):
    return sft, metrics
  n_layers, width = len(hidden), hidden[0].shape[-1]
  shape = (batch.shape[0], n_layers, width)
  frozen = jax.lax.stop_gradient(model.state)
  view = type(model)(model.scorer, frozen)  # the direction is a constant of the update

  def per_row_nll(steer):
    out, _ = view.forward(batch, steer=steer)
    logp = target_stats(out, batch.targets, mask).logp
    return jnp.sum(-logp * tw, axis=1)

  steer = ascent_direction(per_row_nll, shape, alpha)
  steered_outputs, steered = model.forward(batch, steer=steer)
  on = (mask > 0)[..., None]
  gap = sum(
    jnp.sum(jnp.where(on, jnp.square(jax.lax.stop_gradient(h) - hp), 0.0), axis=-1)
    for h, hp in zip(hidden, steered, strict=True)
  )  # [B, T]
  cons = reduce.token_mean(gap / n_layers, mask, norm)
  steered_nll = -target_stats(steered_outputs, batch.targets, mask).logp
  metrics["consistency"] = jax.lax.stop_gradient(cons)
  metrics["ascent_gain"] = reduce.token_mean(
    jax.lax.stop_gradient(steered_nll + stats.logp), mask, norm
  )
  return sft + weight * cons, metrics
