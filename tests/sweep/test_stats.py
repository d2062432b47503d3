"""jaxpost.sweep.stats against scipy on fixed data, edge cases, paired differences by hand."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from jaxpost.sweep import stats

X = [0.61, 0.59, 0.66, 0.52, 0.70]


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_t_interval_matches_scipy(confidence):
  x = np.asarray(X)
  want = sps.t.interval(confidence, x.size - 1, loc=x.mean(), scale=sps.sem(x))
  np.testing.assert_allclose(stats.t_interval(X, confidence), want, rtol=1e-12)


def test_t_interval_by_hand():
  # mean 2, s = 1, n = 3: 2 +- t_{.975, 2} / sqrt(3)
  half = sps.t.ppf(0.975, 2) / math.sqrt(3)
  np.testing.assert_allclose(stats.t_interval([1.0, 2.0, 3.0]), (2 - half, 2 + half))


@pytest.mark.parametrize("n,seed,confidence", [(2, 0, 0.95), (5, 3, 0.9), (20, 7, 0.99)])
@pytest.mark.parametrize("vectorized", [True, False])
def test_bootstrap_matches_scipy(n, seed, confidence, vectorized):
  """Same resamples bit for bit; the interval to rounding (scipy's quantile rounds apart)."""
  x = np.random.default_rng(100 + n).normal(size=n)
  res = sps.bootstrap(
    (x,),
    np.mean,
    method="percentile",
    n_resamples=4000,
    confidence_level=confidence,
    rng=np.random.default_rng(seed),
    vectorized=vectorized,
  )
  np.testing.assert_array_equal(stats.bootstrap_means(x, 4000, seed), res.bootstrap_distribution)
  got = stats.bootstrap_interval(x, confidence, n_resamples=4000, seed=seed)
  want = (res.confidence_interval.low, res.confidence_interval.high)
  np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_bootstrap_is_deterministic_and_near_t_for_large_n():
  x = np.random.default_rng(1).normal(size=200)
  assert stats.bootstrap_interval(x, seed=5) == stats.bootstrap_interval(x, seed=5)
  assert stats.bootstrap_interval(x, seed=5) != stats.bootstrap_interval(x, seed=6)
  np.testing.assert_allclose(stats.bootstrap_interval(x), stats.t_interval(x), atol=0.02)


@pytest.mark.parametrize("interval", [stats.t_interval, stats.bootstrap_interval])
def test_one_value_gives_nan_and_none_raises(interval):
  assert all(math.isnan(v) for v in interval([0.5]))
  with pytest.raises(ValueError, match="no values"):
    interval([])
  with pytest.raises(ValueError, match="confidence"):
    interval([1.0, 2.0], confidence=95)


def test_summarize():
  s = stats.summarize([1.0, 2.0, 3.0, 6.0])
  assert s["n"] == 4 and s["mean"] == 3.0
  assert s["std"] == pytest.approx(math.sqrt(14 / 3))  # squares 4+1+0+9 over n-1
  assert (s["low"], s["high"]) == stats.t_interval([1.0, 2.0, 3.0, 6.0])
  b = stats.summarize([1.0, 2.0, 3.0, 6.0], 0.9, method="bootstrap")
  assert (b["low"], b["high"]) == stats.bootstrap_interval([1.0, 2.0, 3.0, 6.0], 0.9)
  one = stats.summarize([0.7])
  assert one["n"] == 1 and one["mean"] == 0.7
  assert math.isnan(one["std"]) and math.isnan(one["low"]) and math.isnan(one["high"])
  with pytest.raises(ValueError, match="no values"):
    stats.summarize([])
  with pytest.raises(ValueError, match="unknown interval method"):
    stats.summarize([1.0, 2.0], method="bca")


def test_paired_difference_by_hand():
  a = {0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0}
  b = {2: 3.0, 0: 0.5, 1: 1.0, 5: 7.0}
  d = stats.paired_difference(a, b)
  # seeds 0, 1, 2: d = 0.5, 1.0, 1.0; mean 5/6; squares (1/3)^2 + 2 (1/6)^2 = 1/6 over 2
  assert d["seeds"] == [0, 1, 2] and d["n"] == 3
  assert d["mean"] == pytest.approx(5 / 6)
  assert d["std"] == pytest.approx(math.sqrt(1 / 12))
  half = sps.t.ppf(0.975, 2) * math.sqrt(1 / 12) / math.sqrt(3)
  assert (d["low"], d["high"]) == pytest.approx((5 / 6 - half, 5 / 6 + half))
  boot = stats.paired_difference(a, b, confidence=0.9, method="bootstrap")
  assert (boot["low"], boot["high"]) == stats.bootstrap_interval([0.5, 1.0, 1.0], 0.9)


def test_paired_difference_without_common_seed():
  with pytest.raises(ValueError, match=r"no common seed.*\[0, 1\].*\[2\]"):
    stats.paired_difference({0: 1.0, 1: 2.0}, {2: 1.0})
