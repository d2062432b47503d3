"""One-Token Rollout: SFT as token-level on-policy policy gradient (methods/rl.md, 10).

arXiv 2509.26313 (abstract and summaries only). At every supervised position t the
prefix is the ground truth; K candidate tokens a_1..a_K are drawn from the current
policy (at a sampling temperature, no gradient), each is one one-step trajectory
rewarded against the gold token y_t, and the policy-gradient surrogate is minimised:

  l_t = -(1/K) sum_k r(a_k, y_t) log pi(a_k | prefix),
  r = match_reward (a_k = y_t) else mismatch_reward

With r = 1[a = y] the expected gradient is -pi(y) grad log pi(y) = -grad pi(y): DFT's
(a probability-weighted SFT). A negative ``mismatch_reward`` adds the summaries'
second term, pushing down the probability of sampled wrong tokens. Not found in the
sources: the reward values, K, the temperature, whether y_t is always among the
candidates, the normalisation. Ours: +1 / -0.1, K = 8, T = 1, no forced gold
candidate (``include_gold`` adds it as candidate K+1), token mean over the loss mask.

Randomness: each row draws from a key folded from ``seed`` and a hash of the row's
tokens, so a row's candidates do not depend on which micro-batch or device holds it
(the loss stays additive over micro-batches and equal under sharding); a row seen again
in another packing draws anew.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import FusedHead, masked_logits
from jaxpost.losses.registry import register
from jaxpost.types import Batch

RULES = {
  "samples": fields.integer(ge=1),
  "temperature": fields.num(gt=0),
  "match_reward": fields.num(),
  "mismatch_reward": fields.num(),
  "include_gold": fields.FLAG,
  "seed": fields.integer(ge=0),
}


def row_keys(tokens: jax.Array, seed: int) -> jax.Array:
  """One PRNG key per row from ``seed`` and a wrapping uint32 hash of the row's tokens."""
  t = tokens.shape[1]
  powers = jnp.cumprod(jnp.full((t,), 2654435761, jnp.uint32))  # wraps mod 2^32
  hashes = jnp.sum(tokens.astype(jnp.uint32) * powers, axis=1)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), hashes)


def draw_candidates(logits: jax.Array, keys: jax.Array, samples: int, temperature: float):
  """i32[B, K, T] tokens drawn from softmax(logits / temperature), no gradient."""
  scaled = jax.lax.stop_gradient(logits) / temperature

  def per_row(key, row):  # row: [T, V]
    return jax.random.categorical(key, row, axis=-1, shape=(samples, row.shape[0]))

  return jax.vmap(per_row)(keys, scaled).astype(jnp.int32)


@register("one_token_rollout", family="token", rules=RULES)
def one_token_rollout(
  outputs: jax.Array | FusedHead,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  samples: int = 8,
  temperature: float = 1.0,
  match_reward: float = 1.0,
  mismatch_reward: float = -0.1,
  include_gold: bool = False,
  seed: int = 0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The token-level policy-gradient loss of One-Token Rollout (module docstring).

  Args:
    outputs: [B, T, V] logits or a ``FusedHead`` (materialised: the candidates are
      drawn from the full distribution).
    batch: uses tokens (the row hash), targets, loss_mask, and ``weights`` when given.
    norm: global normalisers.
    samples: K, candidates per position.
    temperature: the sampling temperature (log pi is scored at temperature 1).
    match_reward: reward of a candidate equal to the gold token.
    mismatch_reward: reward of any other candidate (< 0 pushes it down).
    include_gold: add the gold token as one more candidate (rewarded as a match).
    seed: folded into every row's key.

  Returns:
    (loss f32[], metrics: nll, match_rate (fraction of drawn candidates equal to the
    gold token), gold_prob), additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  mask = batch.loss_mask
  logits = masked_logits(outputs, mask)
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  drawn = draw_candidates(logits, row_keys(batch.tokens, seed), samples, temperature)
  cands = jnp.moveaxis(drawn, 1, -1)  # [B, T, K]
  if include_gold:
    cands = jnp.concatenate([cands, batch.targets[..., None]], axis=-1)
  logp = jnp.take_along_axis(logp_all, cands, axis=-1)  # [B, T, K']
  match = cands == batch.targets[..., None]
  reward = jnp.where(match, match_reward, mismatch_reward)
  per_token = -jnp.mean(reward * logp, axis=-1)
  loss = reduce.token_mean(per_token * batch.token_weights, mask, norm)
  gold = jnp.take_along_axis(logp_all, batch.targets[..., None], axis=-1)[..., 0]
  gold = jax.lax.stop_gradient(gold)
  metrics = {
    "nll": reduce.token_mean(-gold, mask, norm),
    "match_rate": reduce.token_mean(jnp.mean(drawn == batch.targets[:, None], axis=1), mask, norm),
    "gold_prob": reduce.token_mean(jnp.exp(gold), mask, norm),
  }
  return loss, metrics
