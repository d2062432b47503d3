"""Detection metrics over per-answer scores, with bootstrap intervals (NumPy, host side).

Convention: ``labels`` are 1 for a correct answer and 0 for a hallucination; ``scores``
are reliabilities, higher = more likely correct (a detector's log p(correct), a probe's
logit, minus an uncertainty). Ranking metrics read only the order of the scores, so any
strictly increasing transform leaves them unchanged; ``probs`` (ECE, Brier) must be
calibrated probabilities of being correct. Detecting hallucinations instead (label 0 as
the positive class) is the same AUROC with the scores negated.

  auroc            P(score of a correct answer > score of a hallucination), ties 1/2
  auprc            average precision of finding the hallucinations (the minority class
                   in most settings) when answers are flagged from the lowest score up
  prr              prediction-rejection ratio (lm-polygraph's PRR): how much of the
                   oracle's gain in kept-answer quality rejection by score achieves,
                   1 = oracle, 0 = random, < 0 worse than random
  ece              expected calibration error over equal-width probability bins
  brier            mean squared error of the probabilities
  best_accuracy    accuracy of "correct iff score >= t" at the best threshold t

``bootstrap`` gives any of them a percentile interval from resampled answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels).reshape(-1)
  if s.shape != y.shape:
    raise ValueError(f"{s.size} scores for {y.size} labels")
  if s.size == 0:
    raise ValueError("no answers to score")
  if not np.all(np.isfinite(s)):
    raise ValueError("scores must be finite (a -inf log-probability: clip it first)")
  if not np.all((y == 0) | (y == 1)):
    raise ValueError("labels must be 0 (hallucination) or 1 (correct)")
  return s, y.astype(np.int64)


def _both_classes(y: np.ndarray, name: str) -> None:
  if y.min() == y.max():
    raise ValueError(f"{name} needs correct and incorrect answers; all labels are {y[0]}")


def _average_ranks(s: np.ndarray) -> np.ndarray:
  """1-based ranks of ``s``, tied values sharing their average rank."""
  order = np.argsort(s, kind="mergesort")
  sorted_s = s[order]
  ranks = np.empty(s.size, np.float64)
  starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
  ends = np.r_[starts[1:], s.size]
  for a, b in zip(starts, ends, strict=True):
    ranks[order[a:b]] = (a + b + 1) / 2.0  # mean of ranks a+1 .. b
  return ranks


def auroc(scores, labels) -> float:
  """Area under the ROC curve of separating correct (1) from incorrect (0) answers by
  score: the Mann-Whitney U statistic over n_1 n_0, ties counted 1/2."""
  s, y = _check(scores, labels)
  _both_classes(y, "AUROC")
  ranks = _average_ranks(s)
  n1, n0 = int(y.sum()), int((1 - y).sum())
  return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def auprc(scores, labels) -> float:
  """Average precision of flagging hallucinations (label 0) from the lowest score up:
  sum over thresholds of (recall step) x precision, tied scores flagged together
  (scikit-learn's ``average_precision_score`` of -scores for the positive class 0)."""
  s, y = _check(scores, labels)
  _both_classes(y, "AUPRC")
  flagged_first = -s  # the least reliable answer is flagged first
  positive = (y == 0).astype(np.float64)
  order = np.argsort(-flagged_first, kind="mergesort")
  fs, pos = flagged_first[order], positive[order]
  last_of_tie = np.r_[fs[1:] != fs[:-1], True]
  tp = np.cumsum(pos)[last_of_tie]
  n_flagged = (np.arange(s.size) + 1)[last_of_tie]
  precision, recall = tp / n_flagged, tp / positive.sum()
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _rejection_auc(order: np.ndarray, quality: np.ndarray) -> float:
  """Mean over rejection rates 0, 1/n, ..., (n-1)/n of the mean quality of the kept
  answers when they are rejected in ``order`` (first = rejected first)."""
  kept_sums = np.cumsum(quality[order][::-1])[::-1]  # quality of answers i.. (kept)
  kept = np.arange(quality.size, 0, -1)
  return float(np.mean(kept_sums / kept))


def prr(scores, quality) -> float:
  """Prediction-rejection ratio: rejecting answers from the lowest score up, the area
  under the kept-answers' mean quality curve, between random rejection (0) and the
  oracle that rejects the worst quality first (1). ``quality`` is per answer (a 0/1
  label, or a graded score); ties in score are broken against the detector (the
  worse-quality answer kept), so a constant score is never better than random."""
  s = np.asarray(scores, np.float64).reshape(-1)
  q = np.asarray(quality, np.float64).reshape(-1)
  if s.shape != q.shape or s.size == 0:
    raise ValueError(f"{s.size} scores for {q.size} quality values")
  if not (np.all(np.isfinite(s)) and np.all(np.isfinite(q))):
    raise ValueError("scores and quality must be finite")
  if q.min() == q.max():
    raise ValueError("PRR needs answers of different quality; all are equal")
  # Lowest score rejected first; among equal scores the higher quality is rejected first.
  by_score = np.lexsort((-q, s))
  oracle = np.argsort(q, kind="mergesort")
  random = float(np.mean(q))  # every rejection rate keeps the mean quality on average
  return (_rejection_auc(by_score, q) - random) / (_rejection_auc(oracle, q) - random)


def ece(probs, labels, n_bins: int = 15) -> float:
  """Expected calibration error: sum over equal-width bins of [0, 1] of the bin's share
  of answers times |accuracy - mean probability| in it (a probability of exactly 1 goes
  to the last bin)."""
  p, y = _check(probs, labels)
  if np.any((p < 0) | (p > 1)):
    raise ValueError("ECE reads probabilities in [0, 1]")
  if n_bins < 1:
    raise ValueError(f"n_bins must be >= 1, got {n_bins}")
  bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
  total = 0.0
  for b in np.unique(bins):
    inside = bins == b
    total += inside.mean() * abs(y[inside].mean() - p[inside].mean())
  return float(total)


def brier(probs, labels) -> float:
  """Mean of (p - y)^2: 0 for certain and right, 1 for certain and wrong."""
  p, y = _check(probs, labels)
  if np.any((p < 0) | (p > 1)):
    raise ValueError("the Brier score reads probabilities in [0, 1]")
  return float(np.mean((p - y) ** 2))


def best_accuracy(scores, labels) -> tuple[float, float]:
  """(accuracy, threshold) of predicting "correct iff score >= threshold" at the best
  threshold (the lowest of equally good ones; +inf = predict all incorrect)."""
  s, y = _check(scores, labels)
  thresholds = np.r_[np.unique(s), np.inf]
  acc = [float(np.mean((s >= t) == (y == 1))) for t in thresholds]
  best = int(np.argmax(acc))
  return acc[best], float(thresholds[best])


@dataclasses.dataclass(frozen=True)
class Interval:
  """A metric's value on all answers and its bootstrap interval.

  Attributes:
    value: the metric on the full set.
    low, high: the interval's ends: percentiles of the resampled values (``bootstrap``).
    resamples: resamples the interval is over; a resample where the metric is
      undefined (e.g. one class only for AUROC) is drawn again, at most ``n`` times.
  """

  value: float
  low: float
  high: float
  resamples: int


def bootstrap(
  metric: Callable[..., float],
  *arrays,
  n: int = 1000,
  alpha: float = 0.05,
  seed: int = 0,
  method: str = "shifted",
) -> Interval:
  """``metric(*arrays)`` and its interval over ``n`` resamples of the answers (the same
  indices drawn from every array), reproducible by ``seed``.

  ``method="percentile"``: the (alpha/2, 1 - alpha/2) percentiles of the resampled
  values. ``"shifted"`` (the default): those percentiles moved by the bootstrap's
  estimate of the statistic's bias, mean(resampled) - value. For an unbiased statistic
  (AUROC, accuracy) the two agree; for a biased one the plain interval need not even
  contain the measured value: ECE grows on resamples (they repeat answers), so its
  percentile interval can lie wholly above the ECE measured. A statistic that is never
  negative keeps a non-negative lower end. (Efron's BC percentiles correct the same
  bias but collapse below the value when nearly every resample lies above it.)"""
  if method not in ("shifted", "percentile"):
    raise ValueError(f"method={method!r}; expected 'shifted' or 'percentile'")
  columns = [np.asarray(a).reshape(-1) for a in arrays]
  size = columns[0].size
  if any(c.size != size for c in columns):
    raise ValueError("bootstrap: every array needs one value per answer")
  value = float(metric(*columns))
  rng = np.random.default_rng(seed)
  values, draws = [], 0
  while len(values) < n and draws < 2 * n:
    draws += 1
    idx = rng.integers(0, size, size)
    try:
      values.append(float(metric(*(c[idx] for c in columns))))
    except ValueError:  # undefined on this resample (one class only): draw again
      continue
  if not values:
    raise ValueError("bootstrap: the metric is undefined on every resample")
  values = np.asarray(values)
  low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  if method == "shifted":
    bias = float(values.mean()) - value
    low, high = low - bias, high - bias
    if value >= 0 and values.min() >= 0:
      low = max(low, 0.0)
  return Interval(value=value, low=float(low), high=float(high), resamples=len(values))
