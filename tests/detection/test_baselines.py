"""Uncertainty baselines: by hand from stored features, and the trained ones learn."""

import numpy as np
import pytest
from flax import nnx

from jaxpost.detection import baselines, features, flag, metrics


def _stored(rows):
  """A features dict with the given token statistics (other columns 0)."""
  tokens = np.zeros((len(rows), len(features.TOKEN_STATS)), np.float32)
  for i, row in enumerate(rows):
    for name, value in row.items():
      if name != "peak":
        tokens[i, features.TOKEN_STATS.index(name)] = value
  inst = np.zeros((len(rows), len(features.INSTABILITY_STATS)), np.float32)
  inst[:, 0] = [r.get("peak", 0.0) for r in rows]
  return {"tokens": tokens, "instability": inst}


def test_token_baselines_by_hand():
  f = _stored([
    {"logp_sum": -2.0, "logp_mean": -0.5, "entropy_mean": 1.0, "entropy_max": 2.0, "peak": 3.0},
    {"logp_sum": -8.0, "logp_mean": -0.1, "entropy_mean": 0.2, "entropy_max": 0.4, "peak": 1.0},
  ])  # fmt: skip
  np.testing.assert_allclose(baselines.max_sequence_probability(f), [-2.0, -8.0])
  np.testing.assert_allclose(baselines.perplexity(f), [-np.exp(0.5), -np.exp(0.1)], rtol=1e-6)
  np.testing.assert_allclose(baselines.mean_entropy(f), [-1.0, -0.2])
  np.testing.assert_allclose(baselines.max_entropy(f), [-2.0, -0.4])
  np.testing.assert_allclose(baselines.instability(f), [-3.0, -1.0])
  assert set(baselines.UNSUPERVISED) == {
    "max_sequence_probability", "perplexity", "mean_entropy", "max_entropy", "instability",
    "semantic_entropy",
  }  # fmt: skip
  stored = {"semantic": np.array([[-0.5], [0.0]], np.float32)}  # the recipe's family
  np.testing.assert_allclose(baselines.stored_semantic_entropy(stored), [-0.5, 0.0])


def test_semantic_entropy_by_hand():
  out = baselines.semantic_entropy([["4", "4", "4", "4"], ["4", "5", "4", "5"], ["1", "2", "3"]])
  np.testing.assert_allclose(out, [0.0, -np.log(2), -np.log(3)], rtol=1e-6)
  with pytest.raises(ValueError, match="no sampled answers"):
    baselines.semantic_entropy([[]])


def test_mahalanobis_by_hand_and_shrinkage():
  x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
  m = baselines.Mahalanobis(shrinkage=0.0).fit(x)
  # mean 0, covariance diag(2/3, 8/3): d^2 of (1, 2) = 1.5 + 1.5
  np.testing.assert_allclose(m(np.array([[1.0, 2.0]])), [-3.0], rtol=1e-6)
  wide = np.random.default_rng(0).normal(size=(5, 40))  # fewer answers than dimensions
  assert np.all(np.isfinite(baselines.Mahalanobis(0.1).fit(wide)(wide)))
  correct_only = baselines.Mahalanobis(0.0).fit(x, np.array([1, 1, 0, 0]), fit_on="correct")
  np.testing.assert_allclose(correct_only.mean, [0.0, 0.0])
  with pytest.raises(ValueError, match="labels"):
    baselines.Mahalanobis().fit(x, fit_on="correct")


def test_supervised_probes_learn_a_hidden_direction():
  rng = np.random.default_rng(1)
  h = rng.normal(size=(1200, 16))
  labels = (h[:, 3] - 0.5 * h[:, 7] > 0).astype(int)
  train, test = slice(0, 900), slice(900, None)
  for head in (
    flag.FlagHead({"h": 16}, groups=1, proj_dim=0, rngs=nnx.Rngs(0)),  # the linear probe
    baselines.MLPProbe("h", 16, hidden=32, rngs=nnx.Rngs(0)),
  ):
    head, _ = flag.train_head(head, {"h": h[train]}, labels[train], steps=300, lr=0.02)
    score = np.asarray(head({"h": h[test]}).log_correct)
    assert metrics.auroc(score, labels[test]) > 0.95
