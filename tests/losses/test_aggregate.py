"""reduce.aggregate: the four loss-aggregation modes of methods/rl.md section 0."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import reduce


def _two_sequences(first, second):
  """Row 0 holds a length-1 sequence, row 1 a length-3 one; T = 4, one padded slot each."""
  x = jnp.array([[first[0], 0.0, 0.0, 0.0], [*second, 0.0]], jnp.float32)
  mask = jnp.array([[1, 0, 0, 0], [1, 1, 1, 0]], jnp.float32)
  seg = jnp.array([[1, 0, 0, 0], [1, 1, 1, 0]], jnp.int32)
  # Junk at masked slots must never leak.
  x = jnp.where(mask > 0, x, jnp.nan)
  return x, mask, seg, reduce.compute_normalizers(mask, seg)


@pytest.mark.parametrize(
  "mode, kwargs, expected",
  [
    ("token_mean", {}, 1.0),
    ("seq_mean_token_sum", {}, 2.0),
    ("seq_mean_token_mean", {}, 1.0),
    ("seq_mean_token_sum_norm", {"constant": 4.0}, 1.0),
  ],
)
def test_golden_all_ones(mode, kwargs, expected):
  x, mask, seg, norm = _two_sequences([1.0], [1.0, 1.0, 1.0])
  assert float(reduce.aggregate(x, mask, seg, norm, mode, **kwargs)) == pytest.approx(expected)


@pytest.mark.parametrize(
  "mode, kwargs, expected",
  [
    # The card's length-bias example: token-mean 0.5, seq-mean-token-mean 1.0.
    ("token_mean", {}, 0.5),
    ("seq_mean_token_mean", {}, 1.0),
    ("seq_mean_token_sum", {}, 1.0),  # (2 + 0) / 2 sequences
    ("seq_mean_token_sum_norm", {"constant": 4.0}, 0.5),  # 2 / 4
  ],
)
def test_golden_length_bias(mode, kwargs, expected):
  x, mask, seg, norm = _two_sequences([2.0], [0.0, 0.0, 0.0])
  assert float(reduce.aggregate(x, mask, seg, norm, mode, **kwargs)) == pytest.approx(expected)


def test_sum_norm_defaults_to_padded_length():
  x, mask, seg, norm = _two_sequences([1.0], [1.0, 1.0, 1.0])
  x = jnp.concatenate([x, jnp.zeros((2, 4))], axis=1)  # T = 8
  mask = jnp.concatenate([mask, jnp.zeros((2, 4))], axis=1)
  seg = jnp.concatenate([seg, jnp.zeros((2, 4), jnp.int32)], axis=1)
  got = reduce.aggregate(x, mask, seg, norm, "seq_mean_token_sum_norm")
  assert float(got) == pytest.approx(4.0 / 8.0)


def test_packed_row_counts_each_segment_as_a_sequence():
  # Row 0 packs two sequences (lengths 2 and 1); row 1 one of length 1.
  x = jnp.array([[1.0, 3.0, 5.0, 0.0], [7.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]], jnp.float32)
  seg = jnp.array([[1, 1, 2, 0], [1, 0, 0, 0]], jnp.int32)
  norm = reduce.compute_normalizers(mask, seg)
  agg = lambda m: float(reduce.aggregate(x, mask, seg, norm, m))
  assert agg("seq_mean_token_sum") == pytest.approx((4.0 + 5.0 + 7.0) / 3)
  assert agg("seq_mean_token_mean") == pytest.approx((2.0 + 5.0 + 7.0) / 3)
  assert agg("token_mean") == pytest.approx(16.0 / 4)


@pytest.mark.parametrize("mode", reduce.AGGREGATIONS)
def test_micro_batches_add_up(mode):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  mask = jnp.asarray(rng.random((4, 6)) > 0.3, jnp.float32).at[:, 0].set(1.0)
  seg = jnp.where(mask > 0, 1, 0).astype(jnp.int32)
  norm = reduce.compute_normalizers(mask, seg)
  whole = reduce.aggregate(x, mask, seg, norm, mode)
  parts = sum(
    reduce.aggregate(x[s], mask[s], seg[s], norm, mode) for s in (slice(0, 2), slice(2, 4))
  )
  np.testing.assert_allclose(float(parts), float(whole), rtol=1e-6)


def test_errors():
  x, mask, seg, norm = _two_sequences([1.0], [1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="unknown aggregation"):
    reduce.aggregate(x, mask, seg, norm, "mean")
  with pytest.raises(ValueError, match="positive constant"):
    reduce.aggregate(x, mask, seg, norm, "seq_mean_token_sum_norm", constant=0.0)
