"""Detection metrics: hand-computed values, naive references, scikit-learn, invariances."""

import itertools

import numpy as np
import pytest

from jaxpost.detection import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _data(n=200, seed=0, ties=False):
  rng = np.random.default_rng(seed)
  y = (rng.random(n) < 0.6).astype(int)
  s = y * 0.8 + rng.normal(size=n)
  if ties:
    s = np.round(s, 1)  # many tied scores
  return s, y


def test_auroc_by_hand():
  # correct answers score 0.9, 0.4; hallucinations 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1,
  # 0.4<0.5, 0.4>0.1) -> 3 of 4.
  assert metrics.auroc([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.75)
  assert metrics.auroc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts 1/2


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_equals_the_pair_count_and_sklearn(ties):
  s, y = _data(ties=ties)
  pairs = [
    1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(s[y == 1], s[y == 0])
  ]
  assert metrics.auroc(s, y) == pytest.approx(np.mean(pairs), abs=1e-12)
  assert metrics.auroc(s, y) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)


def test_ranking_metrics_are_invariant_to_monotone_transforms():
  s, y = _data(seed=1)
  for transform in (np.exp, lambda x: 3 * x - 7, lambda x: np.arctan(x) ** 3):
    t = transform(s)
    assert metrics.auroc(t, y) == pytest.approx(metrics.auroc(s, y), abs=1e-12)
    assert metrics.auprc(t, y) == pytest.approx(metrics.auprc(s, y), abs=1e-12)
    assert metrics.prr(t, y) == pytest.approx(metrics.prr(s, y), abs=1e-12)
    assert metrics.best_accuracy(t, y)[0] == metrics.best_accuracy(s, y)[0]


@pytest.mark.parametrize("ties", [False, True])
def test_auprc_equals_sklearn_average_precision_of_the_hallucinations(ties):
  s, y = _data(seed=2, ties=ties)
  expected = sklearn_metrics.average_precision_score(1 - y, -s)
  assert metrics.auprc(s, y) == pytest.approx(expected, abs=1e-12)


def test_auprc_by_hand():
  # Flagged from the lowest score: 0.1 (halluc.), 0.3 (correct), 0.5 (halluc.), 0.9.
  # Recall steps at 1 (P 1) and 3 (P 2/3): AP = 0.5 * 1 + 0.5 * 2/3.
  assert metrics.auprc([0.1, 0.3, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.5 + 1 / 3)


def test_prr_oracle_random_and_reversed():
  q = np.array([0, 1, 1, 0, 1, 1, 0, 1], float)
  assert metrics.prr(q, q) == pytest.approx(1.0)  # the score is the quality: the oracle
  assert metrics.prr(np.zeros(8), q) <= 0.0  # a constant score is no better than random
  assert metrics.prr(-q, q) < -0.9  # rejecting the best first
  rng = np.random.default_rng(0)
  big = (rng.random(4000) < 0.5).astype(float)
  assert abs(metrics.prr(rng.random(4000), big)) < 0.1  # an uninformative score


def test_prr_by_hand():
  # Scores reject in order answer 2 (q 1), answer 0 (q 0), answer 1 (q 1), answer 3 (q 0).
  s, q = [0.2, 0.5, 0.1, 0.9], [0.0, 1.0, 1.0, 0.0]
  kept_means = [np.mean([0, 1, 1, 0]), np.mean([0, 1, 0]), np.mean([1, 0]), np.mean([0])]
  oracle = [np.mean([0, 1, 1, 0]), np.mean([1, 1, 0]), np.mean([1, 1]), np.mean([1])]
  expected = (np.mean(kept_means) - 0.5) / (np.mean(oracle) - 0.5)
  assert metrics.prr(s, q) == pytest.approx(expected)


def test_ece_and_brier_by_hand():
  p, y = [0.1, 0.2, 0.8, 0.9, 1.0], [0, 1, 1, 1, 1]
  # 2 bins: [0, .5) holds 0.1, 0.2 (acc 1/2, conf .15); [.5, 1] holds .8, .9, 1.0 (acc 1,
  # conf .9).
  assert metrics.ece(p, y, n_bins=2) == pytest.approx(0.4 * 0.35 + 0.6 * 0.1)
  assert metrics.brier(p, y) == pytest.approx(np.mean([0.01, 0.64, 0.04, 0.01, 0.0]))
  assert metrics.ece([0.0, 1.0], [0, 1]) == 0.0 and metrics.brier([0.0, 1.0], [0, 1]) == 0.0


def test_brier_equals_sklearn():
  s, y = _data(seed=3)
  p = 1 / (1 + np.exp(-s))
  assert metrics.brier(p, y) == pytest.approx(sklearn_metrics.brier_score_loss(y, p))


def test_best_accuracy_by_hand():
  acc, t = metrics.best_accuracy([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
  assert acc == pytest.approx(0.75) and t == pytest.approx(0.35)
  assert metrics.best_accuracy([0.3, 0.2], [0, 0]) == (1.0, float("inf"))  # all incorrect


def test_bootstrap_interval_is_reproducible_and_covers_the_value():
  s, y = _data(seed=4)
  a = metrics.bootstrap(metrics.auroc, s, y, n=300, seed=7)
  b = metrics.bootstrap(metrics.auroc, s, y, n=300, seed=7)
  assert a == b and a.resamples == 300
  assert a.low <= a.value <= a.high and a.high - a.low < 0.25
  c = metrics.bootstrap(metrics.auroc, s, y, n=300, seed=8)
  assert (c.low, c.high) != (a.low, a.high)


def test_bias_shifted_interval_keeps_a_biased_statistic_inside():
  # A calibrated predictor: resampling repeats answers, so ECE grows on resamples and
  # its plain percentile interval misses the measured value; the shifted one holds it.
  rng = np.random.default_rng(0)
  p = rng.uniform(size=400)
  y = (rng.uniform(size=400) < p).astype(int)
  plain = metrics.bootstrap(metrics.ece, p, y, n=400, seed=1, method="percentile")
  shifted = metrics.bootstrap(metrics.ece, p, y, n=400, seed=1)
  assert plain.value < plain.low  # the failure the shift corrects
  assert shifted.low <= shifted.value <= shifted.high and shifted.value == plain.value
  assert shifted.high - shifted.low == pytest.approx(plain.high - plain.low, abs=1e-6)
  # An unbiased statistic (the mean) gets (nearly) the plain percentiles.
  a = metrics.bootstrap(lambda x: float(np.mean(x)), p, n=400, seed=1)
  b = metrics.bootstrap(lambda x: float(np.mean(x)), p, n=400, seed=1, method="percentile")
  assert a.low == pytest.approx(b.low, abs=0.01) and a.high == pytest.approx(b.high, abs=0.01)
  with pytest.raises(ValueError, match="method"):
    metrics.bootstrap(metrics.ece, p, y, method="bca")


def test_bootstrap_redraws_resamples_where_the_metric_is_undefined():
  # 1 hallucination in 10: ~35% of resamples miss it and AUROC is undefined there.
  s, y = np.arange(10.0), np.r_[0, np.ones(9, int)]
  out = metrics.bootstrap(metrics.auroc, s, y, n=200, seed=0)
  assert out.resamples == 200 and out.value == 1.0 and out.low == 1.0


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda: metrics.auroc([1.0, 2.0], [1, 1]), "correct and incorrect"),
    (lambda: metrics.auroc([1.0], [1, 0]), "1 scores for 2 labels"),
    (lambda: metrics.auroc([1.0, np.nan], [1, 0]), "finite"),
    (lambda: metrics.auroc([1.0, 2.0], [1, 2]), "0 .hallucination. or 1"),
    (lambda: metrics.ece([1.5, 0.2], [1, 0]), r"\[0, 1\]"),
    (lambda: metrics.prr([1.0, 2.0], [1.0, 1.0]), "different quality"),
  ],
)
def test_bad_inputs_are_refused(call, match):
  with pytest.raises(ValueError, match=match):
    call()
