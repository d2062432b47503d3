"""Masked reductions: the only place jaxpost turns per-token values into scalars.

Normalisers (token and sequence counts) are computed once on the *global* batch
and passed in, so splitting a batch into micro-batches (gradient accumulation) or
across devices changes nothing: each piece contributes ``sum(piece) / global_count``
and the pieces add up to the full-batch value.
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Normalizers:
  """Global counts that divide per-token sums.

  Attributes:
    tokens: f32[] number of counted target tokens (sum of the loss mask).
    sequences: f32[] number of examples (packed segments) with at least one counted token.
  """

  tokens: jax.Array
  sequences: jax.Array


def segment_sums(x: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Per-(row, segment) sums of a token-level array.

  Args:
    x: f32[B, T] values (already masked).
    segment_ids: i32[B, T] segment index within each row (0 = padding).

  Returns:
    f32[B, T] where entry [b, s] is the sum of x over tokens of segment s in row b
    (segment ids are < T, so T slots per row always suffice).
  """
  chex.assert_rank([x, segment_ids], 2)
  chex.assert_equal_shape([x, segment_ids])
  b, t = x.shape
  # One flat segment space: row b, segment s -> b * T + s.
  flat = (jnp.arange(b)[:, None] * t + segment_ids).reshape(-1)
  sums = jax.ops.segment_sum(x.reshape(-1), flat, num_segments=b * t)
  return sums.reshape(b, t)


def compute_normalizers(loss_mask: jax.Array, segment_ids: jax.Array) -> Normalizers:
  """Token and sequence counts of a (global) batch.

  Args:
    loss_mask: f32[B, T] 1 where a target counts.
    segment_ids: i32[B, T] packing segments (0 = padding).
  """
  mask = loss_mask.astype(jnp.float32)
  per_segment = segment_sums(mask, segment_ids)  # [B, T]
  # Slot 0 collects padding; it is never a sequence.
  sequences = jnp.sum((per_segment[:, 1:] > 0).astype(jnp.float32))
  return Normalizers(tokens=jnp.sum(mask), sequences=sequences)


def _safe(d: jax.Array) -> jax.Array:
  # An all-masked batch gives 0 / 1 = 0, never NaN.
  return jnp.maximum(d, 1.0)


def token_mean(x: jax.Array, mask: jax.Array, norm: Normalizers) -> jax.Array:
  """sum_t mask_t x_t / (global counted tokens).

  Args:
    x: f32[B, T] per-token values.
    mask: f32[B, T] 1 where x counts.
    norm: global normalisers.
  """
  chex.assert_equal_shape([x, mask])
  return jnp.sum(jnp.where(mask > 0, x, 0.0)) / _safe(norm.tokens)


def sequence_mean(
  x: jax.Array, mask: jax.Array, segment_ids: jax.Array, norm: Normalizers
) -> jax.Array:
  """Mean over sequences of each sequence's token mean (every example weighs the same).

  Args:
    x: f32[B, T] per-token values.
    mask: f32[B, T] 1 where x counts.
    segment_ids: i32[B, T] packing segments; each segment is one sequence.
    norm: global normalisers.
  """
  chex.assert_equal_shape([x, mask, segment_ids])
  mask = mask.astype(jnp.float32)
  num = segment_sums(jnp.where(mask > 0, x, 0.0), segment_ids)
  den = segment_sums(mask, segment_ids)
  per_seq = jnp.where(den > 0, num / _safe(den), 0.0)[:, 1:]
  return jnp.sum(per_seq) / _safe(norm.sequences)


def token_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
  """sum_t mask_t x_t, with masked entries excluded even if they hold inf/NaN."""
  chex.assert_equal_shape([x, mask])
  return jnp.sum(jnp.where(mask > 0, x, 0.0))


REDUCTIONS = ("token_mean", "sequence_mean")


def reduce(
  x: jax.Array, mask: jax.Array, segment_ids: jax.Array, norm: Normalizers, how: str
) -> jax.Array:
  """Dispatch by name to one of ``REDUCTIONS``."""
  if how == "token_mean":
    return token_mean(x, mask, norm)
  if how == "sequence_mean":
    return sequence_mean(x, mask, segment_ids, norm)
  raise ValueError(f"unknown reduction {how!r}; expected one of {REDUCTIONS}")


# Loss-aggregation modes of the RL losses (verl's ``agg_loss``; methods/rl.md section 0).
AGGREGATIONS = (
  "token_mean",
  "seq_mean_token_sum",
  "seq_mean_token_mean",
  "seq_mean_token_sum_norm",
)


def aggregate(
  x: jax.Array,
  mask: jax.Array,
  segment_ids: jax.Array,
  norm: Normalizers,
  mode: str,
  *,
  constant: float | None = None,
) -> jax.Array:
  """Per-token loss -> scalar under one of the ``AGGREGATIONS`` modes.

  With m the mask and N_seq = ``norm.sequences`` (sequences with a counted token):
    token_mean:              sum_{i,t} m x / sum_{i,t} m                (DAPO, verl default)
    seq_mean_token_sum:      (1 / N_seq) sum_i sum_t m x
    seq_mean_token_mean:     (1 / N_seq) sum_i [sum_t m x / sum_t m]   (GRPO, GSPO)
    seq_mean_token_sum_norm: sum_{i,t} m x / C                          (Dr. GRPO)

  Every mode divides by global counts (or a constant), so the values of row-wise
  micro-batches add up to the full-batch value.

  Args:
    x: f32[B, T] per-token values.
    mask: f32[B, T] 1 where x counts.
    segment_ids: i32[B, T] packing segments; each segment is one sequence.
    norm: global normalisers.
    mode: one of ``AGGREGATIONS``.
    constant: C of ``seq_mean_token_sum_norm``. None uses the padded length T, as verl
      does when ``loss_scale_factor`` is unset. C is not divided by the number of
      sequences (the card's reading of verl), so to get Dr. GRPO's
      (1/G) sum_i sum_t / L_max over the global batch pass C = N_seq * L_max.

  Returns:
    f32[] the aggregated value.
  """
  chex.assert_rank([x, mask, segment_ids], 2)
  chex.assert_equal_shape([x, mask, segment_ids])
  if mode == "token_mean":
    return token_mean(x, mask, norm)
  if mode == "seq_mean_token_mean":
    return sequence_mean(x, mask, segment_ids, norm)
  if mode == "seq_mean_token_sum":
    # Slot 0 of segment_sums is padding, as in sequence_mean.
    sums = segment_sums(jnp.where(mask > 0, x, 0.0), segment_ids)[:, 1:]
    return jnp.sum(sums) / _safe(norm.sequences)
  if mode == "seq_mean_token_sum_norm":
    c = x.shape[1] if constant is None else constant
    if not c > 0:
      raise ValueError(f"seq_mean_token_sum_norm needs a positive constant, got {c!r}")
    return token_sum(x, mask) / c
  raise ValueError(f"unknown aggregation {mode!r}; expected one of {AGGREGATIONS}")
