import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import reduce


def _packed():
  # Row 0: segments 1 (3 counted tokens) and 2 (1 counted); row 1: segment 1 (2 counted) + pad.
  x = jnp.array([[1.0, 2.0, 3.0, 10.0, 0.0], [4.0, 6.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], jnp.float32)
  seg = jnp.array([[1, 1, 1, 2, 2], [1, 1, 1, 0, 0]])
  return x, mask, seg


def test_normalizers_golden():
  _, mask, seg = _packed()
  norm = reduce.compute_normalizers(mask, seg)
  assert float(norm.tokens) == 6.0
  assert float(norm.sequences) == 3.0


def test_token_and_sequence_mean_golden():
  x, mask, seg = _packed()
  norm = reduce.compute_normalizers(mask, seg)
  assert float(reduce.token_mean(x, mask, norm)) == pytest.approx((1 + 2 + 3 + 10 + 4 + 6) / 6)
  # Per-sequence means: 2, 10, 5.
  assert float(reduce.sequence_mean(x, mask, seg, norm)) == pytest.approx((2 + 10 + 5) / 3)


def test_masked_values_never_leak_even_if_nan():
  x, mask, seg = _packed()
  x = x.at[0, 4].set(jnp.nan).at[1, 3].set(jnp.inf)
  norm = reduce.compute_normalizers(mask, seg)
  assert np.isfinite(float(reduce.token_mean(x, mask, norm)))
  assert np.isfinite(float(reduce.sequence_mean(x, mask, seg, norm)))


def test_all_masked_gives_zero_not_nan():
  x = jnp.ones((2, 3))
  mask = jnp.zeros((2, 3))
  seg = jnp.zeros((2, 3), jnp.int32)
  norm = reduce.compute_normalizers(mask, seg)
  assert float(reduce.token_mean(x, mask, norm)) == 0.0
  assert float(reduce.sequence_mean(x, mask, seg, norm)) == 0.0


def test_pieces_add_up_to_the_whole():
  """Micro-batch contributions with global normalisers sum to the full-batch value."""
  x, mask, seg = _packed()
  norm = reduce.compute_normalizers(mask, seg)
  for how in reduce.REDUCTIONS:
    whole = reduce.reduce(x, mask, seg, norm, how)
    parts = sum(
      reduce.reduce(x[i : i + 1], mask[i : i + 1], seg[i : i + 1], norm, how) for i in range(2)
    )
    np.testing.assert_allclose(float(whole), float(parts), rtol=1e-6)


def test_unknown_reduction():
  x, mask, seg = _packed()
  with pytest.raises(ValueError, match="unknown reduction"):
    reduce.reduce(x, mask, seg, reduce.compute_normalizers(mask, seg), "mean")
