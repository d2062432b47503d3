"""Intervals for a mean over seeds: Student t, percentile bootstrap, paired differences.

A sweep has few seeds per cell (3-5), so a mean alone says little; every number the report
prints comes with an interval from here. Only numpy and scipy, so notebooks can use it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

METHODS = ("t", "bootstrap")
N_RESAMPLES = 10000


def _sample(values: Sequence[float] | np.ndarray, confidence: float) -> np.ndarray:
  """The values as a 1-D float array; an empty sample or a confidence outside (0, 1) raises."""
  x = np.asarray(values, dtype=np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError("no values: an interval needs at least one (two for a finite one)")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  return x


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
  """mean +- t_{(1+c)/2, n-1} * s / sqrt(n); (nan, nan) for n=1, which has no spread to use."""
  x = _sample(values, confidence)
  if x.size < 2:
    return math.nan, math.nan
  half = sps.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
  return float(x.mean() - half), float(x.mean() + half)


def bootstrap_means(values, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
  """The means of ``n_resamples`` resamples (with replacement) of ``values``.

  One ``default_rng(seed).integers(0, n, (B, n))`` draw: the same resamples, bit for bit,
  as ``scipy.stats.bootstrap(..., rng=np.random.default_rng(seed))`` (its default batch
  draws them in one call), so results can be checked against scipy.
  """
  x = np.asarray(values, dtype=np.float64).reshape(-1)
  rng = np.random.default_rng(seed)
  return x[rng.integers(0, x.size, (n_resamples, x.size))].mean(axis=1)


def bootstrap_interval(
  values, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean: quantiles (1-c)/2 and (1+c)/2 of the means.

  Agrees with ``scipy.stats.bootstrap(..., method="percentile")`` to rounding (the same
  resamples; scipy's quantile interpolates with an algebraically equal but differently
  rounded formula). n=1 gives (nan, nan) like ``t_interval``: every resample is the one
  value, and a zero-width interval would claim a certainty one seed cannot give.
  """
  x = _sample(values, confidence)
  if x.size < 2:
    return math.nan, math.nan
  alpha = (1 - confidence) / 2
  low, high = np.quantile(bootstrap_means(x, n_resamples, seed), [alpha, 1 - alpha])
  return float(low), float(high)


def summarize(values, confidence: float = 0.95, method: str = "t") -> dict:
  """n, mean, std (ddof=1; nan for n=1) and the interval (low, high) of the mean."""
  if method not in METHODS:
    raise ValueError(f"unknown interval method {method!r}; expected one of {METHODS}")
  x = _sample(values, confidence)
  interval = t_interval if method == "t" else bootstrap_interval
  low, high = interval(x, confidence)
  std = float(x.std(ddof=1)) if x.size > 1 else math.nan
  return {"n": int(x.size), "mean": float(x.mean()), "std": std, "low": low, "high": high}


def paired_difference(
  a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95, method: str = "t"
) -> dict:
  """Summary of a[seed] - b[seed] over the seeds both have, plus ``seeds`` (sorted).

  Pairing by seed removes the variance the two arms share (same data order, same init),
  so the interval is tighter than comparing two independent means, and honest only when
  the seeds really are matched; unmatched seeds are left out rather than imputed.
  """
  seeds = sorted(set(a) & set(b))
  if not seeds:
    raise ValueError(
      f"no common seed to pair: one side has seeds {sorted(a)}, the other {sorted(b)}"
    )
  d = [a[s] - b[s] for s in seeds]
  return {**summarize(d, confidence, method), "seeds": seeds}
