"""FLaG against every baseline on one train / test split of stored features.

``fit_detectors`` fits each detector on the training answers and returns, per detector,
a function from features to reliability scores (higher = more likely correct);
``calibrator`` turns any score into a probability by Platt scaling fitted on held-apart
calibration answers (so the unsupervised scores get an ECE and a Brier score too);
``compare`` evaluates them all on the test answers with bootstrap intervals. The
settings of the detection experiment (in distribution, across levels, across models,
10% of the labels) are choices of which answers train and which test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flax import nnx

from jaxpost.detection import baselines, flag, metrics

Scorer = Callable[[Mapping[str, np.ndarray]], np.ndarray]
METRICS = ("auroc", "auprc", "prr", "ece", "brier", "accuracy")


@dataclasses.dataclass(frozen=True)
class HeadSettings:
  """How the trained detectors are built and trained (FLaG's card defaults where known:
  K = 64; the rest is ours)."""

  groups: int = 64
  proj_dim: int = 32
  energy: str = "dot"
  temperature: float = 1.0
  loss: str = "bce"
  steps: int = 500
  lr: float = 3e-3
  weight_decay: float = 1e-4
  batch_size: int = 256
  eval_every: int = 10  # early stopping: steps between held-out evaluations
  mlp_hidden: int = 128
  mahalanobis_shrinkage: float = 0.1


def _subset(features: Mapping[str, np.ndarray], names: Sequence[str]) -> dict:
  return {k: features[k] for k in names}


def _head_scorer(head, standardize) -> Scorer:
  def score(features):
    return np.asarray(head(standardize(features)).log_correct)

  return score


def fit_detectors(
  train: Mapping[str, np.ndarray],
  labels: np.ndarray,
  *,
  families: Sequence[str],
  probe_family: str,
  settings: HeadSettings = HeadSettings(),
  seed: int = 0,
  validation: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None,
) -> dict[str, Scorer]:
  """{detector name: scorer} fitted on ``train`` (features) and ``labels`` (1 correct):
  the unsupervised scores the features hold, ``flag``, ``flag_k1`` (FLaG with one group,
  i.e. a logistic probe on the same families: what the latent groups add), the linear
  and MLP probes and Mahalanobis on one hidden-state family.

  Args:
    families: the feature families FLaG reads (e.g. last / mean / drift of one layer,
      tokens, instability).
    probe_family: the one hidden-state family the linear / MLP probes and Mahalanobis
      read (SAPLMA-style: one layer's last-token state).
    settings: the trained heads' sizes and training.
    validation: (features, labels) of answers apart from ``train``: each trained head
      stops where its loss there is lowest (``flag.train_head``); None trains every
      head for ``settings.steps``.
  """
  labels = np.asarray(labels)
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("fit_detectors trains on labelled answers only (labels 0 / 1)")
  scorers: dict[str, Scorer] = {
    name: fn for name, fn in baselines.UNSUPERVISED.items() if _has(train, fn)
  }
  s = settings
  standardize = flag.Standardizer.fit(_subset(train, families))
  x = standardize(train)
  train_kwargs = dict(loss=s.loss, steps=s.steps, lr=s.lr, weight_decay=s.weight_decay,
                      batch_size=s.batch_size, seed=seed, eval_every=s.eval_every)  # fmt: skip

  def held(standardizer):
    return None if validation is None else (standardizer(validation[0]), validation[1])

  dims = {k: int(train[k].shape[1]) for k in families}
  head = flag.FlagHead(dims, groups=s.groups, proj_dim=s.proj_dim, energy=s.energy,
                       temperature=s.temperature, rngs=nnx.Rngs(seed))  # fmt: skip
  head, _ = flag.train_head(head, x, labels, validation=held(standardize), **train_kwargs)
  scorers["flag"] = _head_scorer(head, standardize)
  if s.groups > 1:  # the ablation of the groups: the same families and training, K = 1
    one = flag.FlagHead(dims, groups=1, proj_dim=s.proj_dim, rngs=nnx.Rngs(seed))
    one, _ = flag.train_head(one, x, labels, validation=held(standardize), **train_kwargs)
    scorers["flag_k1"] = _head_scorer(one, standardize)

  probe_std = flag.Standardizer.fit(_subset(train, [probe_family]))
  px = probe_std(train)
  d = int(train[probe_family].shape[1])
  linear = flag.FlagHead({probe_family: d}, groups=1, proj_dim=0, rngs=nnx.Rngs(seed))
  linear, _ = flag.train_head(linear, px, labels, validation=held(probe_std), **train_kwargs)
  scorers["linear_probe"] = _head_scorer(linear, probe_std)
  mlp = baselines.MLPProbe(probe_family, d, hidden=s.mlp_hidden, rngs=nnx.Rngs(seed))
  mlp, _ = flag.train_head(mlp, px, labels, validation=held(probe_std), **train_kwargs)
  scorers["mlp_probe"] = _head_scorer(mlp, probe_std)
  maha = baselines.Mahalanobis(s.mahalanobis_shrinkage).fit(px[probe_family], labels, "correct")
  scorers["mahalanobis"] = lambda f: maha(probe_std(f)[probe_family])
  return scorers


def _has(features, fn) -> bool:
  try:
    fn(features)
  except KeyError:
    return False
  return True


def calibrator(train_scores: np.ndarray, labels: np.ndarray, steps: int = 200):
  """Platt scaling: p = sigmoid(a s + b) fitted by Newton's method on the training
  answers (standardised scores, a little L2 so separable data stays finite)."""
  s = np.asarray(train_scores, np.float64)
  y = np.asarray(labels, np.float64)
  mu, sd = s.mean(), max(s.std(), 1e-9)
  z = (s - mu) / sd
  w = np.zeros(2)
  x = np.stack([z, np.ones_like(z)], axis=1)
  for _ in range(steps):
    p = 1 / (1 + np.exp(-(x @ w)))
    grad = x.T @ (p - y) + 1e-3 * w
    hess = x.T @ (x * (p * (1 - p))[:, None]) + 1e-3 * np.eye(2)
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.max(np.abs(step)) < 1e-10:
      break

  def probability(scores):
    zz = (np.asarray(scores, np.float64) - mu) / sd
    return 1 / (1 + np.exp(-(w[0] * zz + w[1])))

  return probability


def compare(
  scorers: Mapping[str, Scorer],
  calibration: Mapping[str, np.ndarray],
  calibration_labels: np.ndarray,
  test: Mapping[str, np.ndarray],
  test_labels: np.ndarray,
  *,
  n_boot: int = 1000,
  seed: int = 0,
) -> dict[str, dict[str, metrics.Interval]]:
  """{detector: {metric: Interval}} on the test answers (``METRICS``; ECE and Brier of
  probabilities Platt-calibrated on the ``calibration`` answers, which should be apart
  from those the heads were fitted on; accuracy at the best threshold)."""
  y = np.asarray(test_labels)
  out = {}
  for name, scorer in scorers.items():
    scores = np.asarray(scorer(test), np.float64)
    probs = calibrator(np.asarray(scorer(calibration)), calibration_labels)(scores)
    out[name] = {
      "auroc": metrics.bootstrap(metrics.auroc, scores, y, n=n_boot, seed=seed),
      "auprc": metrics.bootstrap(metrics.auprc, scores, y, n=n_boot, seed=seed),
      "prr": metrics.bootstrap(metrics.prr, scores, y, n=n_boot, seed=seed),
      "ece": metrics.bootstrap(metrics.ece, probs, y, n=n_boot, seed=seed),
      "brier": metrics.bootstrap(metrics.brier, probs, y, n=n_boot, seed=seed),
      "accuracy": metrics.bootstrap(
        lambda s, t: metrics.best_accuracy(s, t)[0], scores, y, n=n_boot, seed=seed
      ),
    }
  return out


def to_markdown(table: Mapping[str, Mapping[str, metrics.Interval]]) -> str:
  """One row per detector: each metric as value [low, high]."""
  lines = ["| detector | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
  for name, row in table.items():
    cells = [f"{row[m].value:.3f} [{row[m].low:.3f}, {row[m].high:.3f}]" for m in METRICS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
