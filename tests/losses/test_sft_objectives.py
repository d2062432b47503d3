"""The SFT-objective family's card properties (methods/sft_distill_detect.md 9a-9d, 10;
rl.md 10): Beyond-LL, DFT, ASFT, MinorSFT, CurioSFT, One-Token Rollout.

References are float64 NumPy on the same logits; gradients are w.r.t. the logits.
The registry contract (jit, bf16, masking, micro-batches, sharding) is
tests/losses/test_contract.py's, for every registered loss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import LOSSES, compute_normalizers
from jaxpost.losses.curio import temperatures, top_k_entropy
from jaxpost.losses.head import FusedHead
from jaxpost.losses.probability import f_alpha
from jaxpost.types import ROLE_ANSWER, ROLE_PAD, ROLE_PROMPT, ROLE_THINK, Batch

P, TH, A, PAD = ROLE_PROMPT, ROLE_THINK, ROLE_ANSWER, ROLE_PAD
V = 7
_ROLES = [[P, TH, TH, A, P, A], [P, TH, A, A, PAD, PAD]]
_SEGMENTS = [[1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 0, 0]]


def _batch(seed=0, roles=_ROLES, segments=_SEGMENTS, targets=None):
  roles = np.asarray(roles, np.int32)
  b, t = roles.shape
  rng = np.random.default_rng(seed)
  return Batch(
    tokens=jnp.asarray(rng.integers(0, V, (b, t)), jnp.int32),
    targets=jnp.asarray(rng.integers(0, V, (b, t)) if targets is None else targets, jnp.int32),
    loss_mask=jnp.asarray(np.isin(roles, (TH, A)), jnp.float32),
    segment_ids=jnp.asarray(segments, jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
    roles=jnp.asarray(roles),
  )


def _logits(batch, seed=0, scale=2.0):
  b, t = batch.shape
  return jnp.asarray(np.random.default_rng(seed + 100).normal(size=(b, t, V)) * scale, jnp.float32)


def _norm(batch):
  return compute_normalizers(batch.loss_mask, batch.segment_ids)


@functools.cache
def _token_fn(name, hparams=()):
  fn = LOSSES.bind(name, dict(hparams))
  return jax.jit(jax.value_and_grad(lambda z, b: fn(z, b, norm=_norm(b)), has_aux=True))


@functools.cache
def _distill_fn(name, hparams=()):
  fn = LOSSES.bind(name, dict(hparams))
  return jax.jit(jax.value_and_grad(lambda z, r, b: fn(z, r, b, norm=_norm(b)), has_aux=True))


def _run(name, logits, batch, **hparams):
  (loss, metrics), g = _token_fn(name, tuple(sorted(hparams.items())))(logits, batch)
  return float(loss), {k: float(v) for k, v in metrics.items()}, np.asarray(g, np.float64)


def _run_distill(name, logits, ref, batch, **hparams):
  (loss, metrics), g = _distill_fn(name, tuple(sorted(hparams.items())))(logits, ref, batch)
  return float(loss), {k: float(v) for k, v in metrics.items()}, np.asarray(g, np.float64)


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _gold(p, targets):
  return np.take_along_axis(p, np.asarray(targets)[..., None], -1)[..., 0]


# ----------------------------------------------------------------------------------------
# Beyond Log Likelihood (9a) and DFT (9b).


def test_f_alpha_tends_to_minus_log_p_and_is_one_minus_p_at_one():
  logp = jnp.log(jnp.asarray([1e-4, 0.01, 0.3, 0.9, 1.0]))
  # the next term of the series is -alpha (log p)^2 / 2: 4e-5 at p = 1e-4, relative 5e-6
  np.testing.assert_allclose(f_alpha(logp, 1e-6), -logp, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f_alpha(logp, 0.0), -logp)
  np.testing.assert_allclose(f_alpha(logp, 1.0), 1 - jnp.exp(logp), rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 3.0])
def test_beyond_ll_gold_logit_gradient_is_p_alpha_times_one_minus_p(alpha):
  batch = _batch()
  logits = _logits(batch)
  loss, metrics, g = _run("beyond_ll", logits, batch, alpha=alpha)
  mask = np.asarray(batch.loss_mask, np.float64)
  n = mask.sum()
  p = _softmax(logits)
  py = _gold(p, batch.targets)
  f = -np.log(py) if alpha == 0 else (1 - py**alpha) / alpha
  np.testing.assert_allclose(loss, np.sum(mask * f) / n, rtol=1e-5)
  onehot = np.eye(V)[np.asarray(batch.targets)]
  # d/dz_y = -p^a (1 - p); d/dz_j = +p^a p_j (j != y): both are p^a (p - onehot).
  expected = mask[..., None] * (py**alpha)[..., None] * (p - onehot) / n
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)
  gold = np.take_along_axis(g, np.asarray(batch.targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(gold, -mask * py**alpha * (1 - py) / n, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(metrics["gold_prob"], np.sum(mask * py) / n, rtol=1e-5)


def test_beyond_ll_thresholds_keep_the_right_tokens_and_q0_is_unthresholded():
  batch = _batch(seed=2)
  logits = _logits(batch, seed=2)
  mask = np.asarray(batch.loss_mask, np.float64)
  py = _gold(_softmax(logits), batch.targets)
  full = _run("beyond_ll", logits, batch)
  top0 = _run("beyond_ll", logits, batch, keep="top", q=0.0)
  assert top0[0] == pytest.approx(full[0], rel=1e-6)
  np.testing.assert_allclose(top0[2], full[2], rtol=1e-6, atol=1e-9)
  q = float(np.median(py[mask > 0]))
  for keep, kept in (("top", py >= q), ("bottom", py <= q)):
    k = mask * kept
    for alpha, f in ((1.0, 1 - py), (0.0, -np.log(py))):
      loss, metrics, _ = _run("beyond_ll", logits, batch, keep=keep, q=q, alpha=alpha)
      np.testing.assert_allclose(loss, np.sum(k * f) / mask.sum(), rtol=1e-5)
      np.testing.assert_allclose(metrics["kept_frac"], k.sum() / mask.sum(), rtol=1e-6)
      # The authors' normalisation: the mean over the kept tokens.
      kept_mean = _run("beyond_ll", logits, batch, keep=keep, q=q, alpha=alpha, normalize="kept")
      np.testing.assert_allclose(kept_mean[0], np.sum(k * f) / k.sum(), rtol=1e-5)


def test_beyond_ll_rejects_kept_normalisation_without_a_threshold():
  with pytest.raises(ValueError, match="only differs with a threshold"):
    LOSSES.bind("beyond_ll", {"normalize": "kept"})


def test_dft_gradient_equals_that_of_one_minus_p_and_its_value_is_weighted_nll():
  batch = _batch(seed=3)
  logits = _logits(batch, seed=3)
  loss, metrics, g = _run("dft", logits, batch)
  _, _, g_p = _run("beyond_ll", logits, batch, alpha=1.0)
  np.testing.assert_allclose(g, g_p, rtol=1e-5, atol=1e-8)
  mask = np.asarray(batch.loss_mask, np.float64)
  py = _gold(_softmax(logits), batch.targets)
  np.testing.assert_allclose(loss, np.sum(mask * py * -np.log(py)) / mask.sum(), rtol=1e-5)
  # and it is the token-priority loss at prob_power = 1 (the same objective, two doors)
  tp = _run("token_priority", logits, batch, prob_power=1.0)
  np.testing.assert_allclose(loss, tp[0], rtol=1e-6)
  np.testing.assert_allclose(g, tp[2], rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------------------
# ASFT (9c) and MinorSFT (9d): a frozen reference.


def test_asft_without_anchor_is_dft_and_its_kl_is_a_golden_forward_kl():
  batch = _batch(seed=4)
  z, ref = _logits(batch, seed=4), _logits(batch, seed=5)
  dft = _run("dft", z, batch)
  a0 = _run_distill("asft", z, ref, batch, kl_weight=0.0)
  assert a0[0] == pytest.approx(dft[0], rel=1e-6)
  np.testing.assert_allclose(a0[2], dft[2], rtol=1e-5, atol=1e-8)
  lam = 0.3
  loss, metrics, _ = _run_distill("asft", z, ref, batch, kl_weight=lam)
  mask = np.asarray(batch.loss_mask, np.float64)
  p, q = _softmax(ref), _softmax(z)
  kl = np.sum(p * (np.log(p) - np.log(q)), -1)
  assert np.all(kl >= 0)
  np.testing.assert_allclose(metrics["kl"], np.sum(mask * kl) / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(loss, dft[0] + lam * metrics["kl"], rtol=1e-5)
  sft_kl = _run_distill("asft", z, ref, batch, kl_weight=lam, weighting="sft")
  ce = _run("cross_entropy", z, batch)
  np.testing.assert_allclose(sft_kl[0], ce[0] + lam * metrics["kl"], rtol=1e-5)


def test_asft_anchor_is_zero_with_zero_gradient_at_the_reference():
  batch = _batch(seed=6)
  z = _logits(batch, seed=6)
  loss, metrics, g = _run_distill("asft", z, z, batch, kl_weight=0.5)
  dft = _run("dft", z, batch)
  assert abs(metrics["kl"]) < 1e-6
  np.testing.assert_allclose(loss, dft[0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g, dft[2], rtol=1e-4, atol=1e-7)


def test_asft_fused_heads_equal_logits():
  batch = _batch(seed=7)
  rng = np.random.default_rng(7)
  b, t = batch.shape
  h, ht = (jnp.asarray(rng.normal(size=(b, t, 5)), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.normal(size=(5, V)), jnp.float32)
  fn = LOSSES.bind("asft", {"kl_weight": 0.2})

  def fused(h):
    return fn(FusedHead(h, w, "xla"), FusedHead(ht, w, "xla"), batch, norm=_norm(batch))[0]

  def plain(h):
    return fn(h @ w, ht @ w, batch, norm=_norm(batch))[0]

  np.testing.assert_allclose(fused(h), plain(h), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(fused)(h), jax.grad(plain)(h), rtol=1e-4, atol=1e-6)


def _seq_logp(batch, z):
  """Per segment: (sum of log p over counted tokens, count), as dicts keyed (row, seg)."""
  py = _gold(_softmax(z), batch.targets)
  mask, seg = np.asarray(batch.loss_mask), np.asarray(batch.segment_ids)
  out = {}
  for (r, t), s in np.ndenumerate(seg):
    if s and mask[r, t]:
      lp, m = out.get((r, s), (0.0, 0))
      out[(r, s)] = (lp + np.log(py[r, t]), m + 1)
  return out


@pytest.mark.parametrize("form", ["paper", "unscaled"])
def test_minor_sft_matches_a_per_sequence_reference(form):
  batch = _batch(seed=8)
  z, ref = _logits(batch, seed=8), _logits(batch, seed=9)
  beta = 0.7
  loss, metrics, _ = _run_distill("minor_sft", z, ref, batch, beta=beta, form=form)
  cur, old = _seq_logp(batch, z), _seq_logp(batch, ref)
  per, dev = [], []
  for key, (lp, m) in cur.items():
    r = lp - old[key][0]
    scale = 2 / (beta * m) if form == "paper" else 1.0
    per.append(scale * np.log1p(np.exp(-beta * r)))
    dev.append(r / m)
  np.testing.assert_allclose(loss, np.mean(per), rtol=1e-5)
  np.testing.assert_allclose(metrics["deviation"], np.mean(dev), rtol=1e-5, atol=1e-7)


def test_minor_sft_at_the_reference_is_sft_scaled_by_one_over_m():
  """At theta = theta_ref each sequence's gradient is (2/m) * 1/2 * grad(-log pi(y|x))."""
  batch = _batch(seed=10)
  z = _logits(batch, seed=10)
  _, metrics, g = _run_distill("minor_sft", z, z, batch, beta=0.1)
  assert metrics["weight"] == pytest.approx(0.5) and abs(metrics["deviation"]) < 1e-7
  # the same gradient: a sequence mean of the token *sum* / m, i.e. sequence_mean CE
  _, _, g_ce = _run("cross_entropy", z, batch, reduction="sequence_mean")
  np.testing.assert_allclose(g, g_ce, rtol=1e-4, atol=1e-7)


def test_minor_sft_weight_falls_as_the_log_ratio_grows():
  batch = _batch(seed=11)
  z = _logits(batch, seed=11)
  onehot = jax.nn.one_hot(batch.targets, V)
  weights = [_run_distill("minor_sft", z + s * onehot, z, batch)[1]["weight"] for s in (0, 1, 2, 4)]
  assert all(a > b for a, b in zip(weights, weights[1:], strict=False))


# ----------------------------------------------------------------------------------------
# CurioSFT (10).


def test_curio_without_the_gap_term_is_cross_entropy():
  batch = _batch(seed=12)
  z, t = _logits(batch, seed=12), _logits(batch, seed=13)
  loss, _, g = _run_distill("curio_sft", z, t, batch, alpha=0.0)
  ce = _run("cross_entropy", z, batch)
  assert loss == pytest.approx(ce[0], rel=1e-6)
  np.testing.assert_allclose(g, ce[2], rtol=1e-5, atol=1e-8)


def test_curio_temperature_stays_in_bounds_and_reaches_the_target_entropy():
  """The card's "tau monotone in the teacher's entropy" holds for the entropy *raise*
  H* - H_now (a sigmoid of H_now), not for tau itself: a sharp distribution needs a
  larger temperature for the same raise, so tau can fall as H_now rises (seen below)."""
  rng = np.random.default_rng(0)
  base = jnp.asarray(rng.normal(size=(64, 50)) * 3, jnp.float32)
  # sharper and sharper copies of the same logits: the entropy falls with the scale
  scales = jnp.asarray([0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 50.0])
  z = base[None] * scales[:, None, None]  # [S, 64, 50]
  tau = np.asarray(temperatures(z))
  assert np.all(tau >= 1.1 - 1e-6) and np.all(tau <= 1.5 + 1e-6)
  h = np.asarray(top_k_entropy(z, jnp.ones(z.shape[:-1])), np.float64)
  assert np.all(np.diff(h, axis=0) < 0)
  goal = h + 0.5 / (1 + np.exp(-2 * (h - 1.2)))
  order = np.argsort(h.ravel())
  assert np.all(np.diff((goal - h).ravel()[order]) >= -1e-12)  # the raise grows with H_now
  assert tau[0].mean() > tau[-2].mean()
  assert np.any(np.diff(tau, axis=0) > 1e-2)  # tau itself is not monotone in H_now
  assert np.all(tau[-1][h[-1] <= 0.03] == pytest.approx(1.1))  # floor -> tau_min
  # inside the bounds the root is found: H(tau) = H*; at tau_max the goal is out of reach
  inside = (tau > 1.1 + 1e-3) & (tau < 1.5 - 1e-3)
  assert inside.any()
  got = np.asarray(top_k_entropy(z, jnp.asarray(tau)))
  np.testing.assert_allclose(got[inside], goal[inside], atol=1e-4)
  assert np.all(got[tau > 1.5 - 1e-3] <= goal[tau > 1.5 - 1e-3] + 1e-4)


def test_curio_stationary_point_is_log_p_teacher_plus_one_over_alpha():
  alpha = 10.0
  teacher = jnp.asarray([[[0.0, 2.0, 1.0, -1.0, 0.5, 0.0, 0.3]]], jnp.float32)  # gold: id 0
  tau = temperatures(teacher)
  t_gold = float(jax.nn.log_softmax(teacher / tau[..., None])[0, 0, 0])
  goal = t_gold + 1 / alpha
  assert goal < 0
  p = np.exp(goal)
  student = jnp.zeros((1, 1, V)).at[0, 0, 0].set(np.log(p * (V - 1) / (1 - p)))
  batch = _batch(roles=[[A]], segments=[[1]], targets=[[0]])
  _, _, g = _run_distill("curio_sft", student, teacher, batch, alpha=alpha)
  np.testing.assert_allclose(g, 0.0, atol=1e-5)
  _, _, g_off = _run_distill("curio_sft", student + 0.5 * jax.nn.one_hot(0, V), teacher, batch)
  assert np.abs(g_off).max() > 1e-3


# ----------------------------------------------------------------------------------------
# One-Token Rollout (rl.md 10).


def test_otr_monte_carlo_gradient_converges_to_minus_grad_p_gold():
  """r = 1[a = y], no negative term: E[-r grad log pi(a)] = -pi(y) grad log pi(y)."""
  batch = _batch(seed=14)
  z = _logits(batch, seed=14, scale=1.0)
  _, _, g = _run("one_token_rollout", z, batch, samples=20000, mismatch_reward=0.0, temperature=1.0)
  _, _, g_exact = _run("beyond_ll", z, batch, alpha=1.0)  # grad of mean(1 - p(y))
  np.testing.assert_allclose(g, g_exact, atol=4e-3)
  assert np.abs(g_exact).max() > 0.02


def test_otr_gives_no_gradient_on_a_one_hot_policy_and_negatives_push_wrong_tokens_down():
  batch = _batch(seed=15)
  onehot = jax.nn.one_hot(batch.targets, V)
  sure = 60.0 * onehot  # every sample is the gold token
  for beta in (0.0, -1.0):
    _, metrics, g = _run("one_token_rollout", sure, batch, mismatch_reward=beta)
    assert metrics["match_rate"] == pytest.approx(1.0)
    np.testing.assert_allclose(g, 0.0, atol=1e-6)
  # a uniform policy: only the negative term acts; every drawn wrong token is pushed down
  flat = jnp.zeros(batch.shape + (V,))
  _, _, g = _run("one_token_rollout", flat, batch, match_reward=0.0, mismatch_reward=-1.0)
  mask = np.asarray(batch.loss_mask) > 0
  gold = np.take_along_axis(g, np.asarray(batch.targets)[..., None], -1)[..., 0]
  # descending the loss lowers sampled wrong tokens, so the gold logit's gradient is < 0
  assert np.all(gold[mask] < 0)


def test_otr_draws_depend_on_the_row_not_its_batch_position():
  batch = _batch(seed=16)
  z = _logits(batch, seed=16)
  fn = LOSSES.bind("one_token_rollout", {})
  swapped = jax.tree.map(lambda x: x[::-1], batch)
  a = fn(z, batch, norm=_norm(batch))[0]
  b = fn(z[::-1], swapped, norm=_norm(swapped))[0]
  np.testing.assert_allclose(a, b, rtol=1e-6)
  c = LOSSES.bind("one_token_rollout", {"seed": 1})(z, batch, norm=_norm(batch))[0]
  assert float(c) != float(a)
