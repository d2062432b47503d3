"""The uncertainty baselines a hallucination detector must beat, as reliability scores.

Every function returns f32[N] with higher = more likely correct, the convention of
``jaxpost.detection.metrics`` (an uncertainty u enters as -u, a monotone transform the
ranking metrics ignore). From stored features (``jaxpost.detection.features``):

  max_sequence_probability   log p(answer) = sum_t log p(y_t)
  perplexity                 -exp(-mean_t log p(y_t))
  mean_entropy, max_entropy  -mean_t H_t, -max_t H_t
  instability                -max_t I_t (the dynamic-instability peak)

Trained on labelled answers (the supervised baselines):

  linear probe       logistic regression on one layer's hidden state (SAPLMA-style):
                     ``flag.FlagHead({family: D}, groups=1, proj_dim=0)``, i.e. FLaG
                     with one group
  MLPProbe           one hidden layer (ReLU) on one family, then a logistic output
  Mahalanobis        -squared Mahalanobis distance to the training answers' hidden states
                     (mean and shrunk covariance, ``fit_on`` all or only correct ones)

From N sampled answers per question: ``semantic_entropy``, the entropy of the
distribution of their final answers (on verifiable tasks answers that mean the same are
the same string, so the clusters are exact).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.detection import features as feats
from jaxpost.detection.flag import Scores


def _token_stat(features: Mapping[str, np.ndarray], name: str) -> np.ndarray:
  return np.asarray(features["tokens"])[:, feats.TOKEN_STATS.index(name)].astype(np.float32)


def max_sequence_probability(features) -> np.ndarray:
  return _token_stat(features, "logp_sum")


def perplexity(features) -> np.ndarray:
  return -np.exp(-_token_stat(features, "logp_mean"))


def mean_entropy(features) -> np.ndarray:
  return -_token_stat(features, "entropy_mean")


def max_entropy(features) -> np.ndarray:
  return -_token_stat(features, "entropy_max")


def instability(features) -> np.ndarray:
  stats = np.asarray(features["instability"])
  return -stats[:, feats.INSTABILITY_STATS.index("peak")].astype(np.float32)


def stored_semantic_entropy(features) -> np.ndarray:
  """-semantic entropy of the answer's question, stored as the ``semantic`` family
  (f32[N, 1], from ``semantic_entropy`` of sampled answers)."""
  return np.asarray(features["semantic"])[:, 0].astype(np.float32)


UNSUPERVISED = {
  "max_sequence_probability": max_sequence_probability,
  "perplexity": perplexity,
  "mean_entropy": mean_entropy,
  "max_entropy": max_entropy,
  "instability": instability,
  "semantic_entropy": stored_semantic_entropy,  # when the features hold it
}


def semantic_entropy(samples: Sequence[Sequence[str]]) -> np.ndarray:
  """-entropy (nats) of each question's sampled final answers, clustered by equality.

  Args:
    samples: per question, the final answers of its N sampled responses ("" for a
      response with no answer counts as its own cluster).
  """
  out = []
  for i, answers in enumerate(samples):
    if not answers:
      raise ValueError(f"question {i} has no sampled answers")
    counts = np.asarray(list(Counter(answers).values()), np.float64)
    p = counts / counts.sum()
    out.append(float(np.sum(p * np.log(p))))  # = -entropy
  return np.asarray(out, np.float32)


class Mahalanobis:
  """-squared Mahalanobis distance to the training answers' hidden states.

  Args:
    shrinkage: covariance = (1 - s) * sample covariance + s * (its mean variance) * I,
      so a few hundred answers in hundreds of dimensions still give an invertible one.
  """

  def __init__(self, shrinkage: float = 0.1):
    if not 0 <= shrinkage <= 1:
      raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    self.shrinkage = shrinkage
    self.mean = self.precision = None

  def fit(self, x: np.ndarray, labels: np.ndarray | None = None, fit_on: str = "all"):
    """Fits on the rows of ``x`` (all, or with ``fit_on="correct"`` those labelled 1)."""
    x = np.asarray(x, np.float64)
    if fit_on == "correct":
      if labels is None:
        raise ValueError("fit_on='correct' needs the labels")
      x = x[np.asarray(labels) == 1]
    elif fit_on != "all":
      raise ValueError(f"fit_on={fit_on!r}; expected 'all' or 'correct'")
    if x.shape[0] < 2:
      raise ValueError(f"Mahalanobis needs >= 2 answers to fit, got {x.shape[0]}")
    self.mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    target = np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    self.precision = np.linalg.pinv((1 - self.shrinkage) * cov + self.shrinkage * target)
    return self

  def __call__(self, x: np.ndarray) -> np.ndarray:
    if self.mean is None:
      raise ValueError("Mahalanobis: fit it first")
    d = np.asarray(x, np.float64) - self.mean
    return (-np.einsum("nd,de,ne->n", d, self.precision, d)).astype(np.float32)


class MLPProbe(nnx.Module):
  """One hidden ReLU layer on one feature family, then a logistic output (``Scores``
  with a single group, so ``flag.train_head`` trains it like FLaG)."""

  def __init__(self, family: str, dim: int, *, hidden: int = 128, rngs: nnx.Rngs):
    self.family = family
    self.hidden = nnx.Linear(dim, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 1, rngs=rngs)

  def __call__(self, features: Mapping[str, jax.Array]) -> Scores:
    z = self.out(jax.nn.relu(self.hidden(jnp.asarray(features[self.family], jnp.float32))))
    return Scores(
      log_correct=jax.nn.log_sigmoid(z[:, 0]),
      log_incorrect=jax.nn.log_sigmoid(-z[:, 0]),
      log_route=jnp.zeros((z.shape[0], 1)),
    )
