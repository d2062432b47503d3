"""FLaG against the baselines on synthetic stored features."""

import numpy as np

from jaxpost.detection import compare, features


def _synthetic(n, seed):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(n, 8)).astype(np.float32)
  y = (h[:, 0] + 0.5 * h[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(int)
  tokens = rng.normal(size=(n, len(features.TOKEN_STATS))).astype(np.float32)
  inst = rng.normal(size=(n, len(features.INSTABILITY_STATS))).astype(np.float32)
  return {"last.L0": h, "tokens": tokens, "instability": inst}, y


def test_every_detector_is_fitted_and_scored_with_intervals():
  train, y_train = _synthetic(600, 0)
  calib, y_calib = _synthetic(200, 2)
  test, y_test = _synthetic(300, 1)
  settings = compare.HeadSettings(groups=4, proj_dim=8, steps=150, lr=0.02, mlp_hidden=16)
  scorers = compare.fit_detectors(
    train, y_train, families=["last.L0", "tokens"], probe_family="last.L0", settings=settings
  )
  assert set(scorers) == {
    "flag", "flag_k1", "linear_probe", "mlp_probe", "mahalanobis", "max_sequence_probability",
    "perplexity", "mean_entropy", "max_entropy", "instability",
  }  # fmt: skip
  table = compare.compare(scorers, calib, y_calib, test, y_test, n_boot=50)
  for name in ("flag", "linear_probe", "mlp_probe"):  # the label lives in the hidden state
    assert table[name]["auroc"].value > 0.85, (name, table[name]["auroc"])
  for name in ("perplexity", "mean_entropy"):  # noise features: near chance
    assert abs(table[name]["auroc"].value - 0.5) < 0.12
  for row in table.values():
    for m in compare.METRICS:  # (ECE's interval too: the bootstrap's bias is shifted out)
      assert row[m].low <= row[m].value <= row[m].high, (m, row[m])
  md = compare.to_markdown(table)
  assert md.count("\n") == len(table) + 2 and "| flag |" in md


def test_platt_calibration_recovers_a_calibrated_score():
  rng = np.random.default_rng(0)
  logit = rng.normal(scale=2.0, size=20000)
  y = (rng.random(20000) < 1 / (1 + np.exp(-logit))).astype(int)
  p = compare.calibrator(logit, y)(logit)
  np.testing.assert_allclose(p, 1 / (1 + np.exp(-logit)), atol=0.03)
  separable = compare.calibrator(np.array([-1.0, -0.5, 0.5, 1.0]), np.array([0, 0, 1, 1]))
  assert np.all(np.isfinite(separable(np.array([-5.0, 5.0]))))
