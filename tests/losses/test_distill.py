"""The ``kd`` loss: the method card's properties (shared/methods/sft_distill_detect.md §16),
hand-computed values, and fused == materialised values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import LOSSES, compute_normalizers
from jaxpost.losses.head import FusedHead, TopK, top_k_teacher
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, Batch

B, T, D, V = 3, 5, 8, 11


def _batch(rng, mask=None) -> Batch:
  mask = np.ones((B, T), np.float32) if mask is None else mask
  mask[0, :2] = 0.0  # a prompt
  return Batch(
    tokens=jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32),
    targets=jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32),
    loss_mask=jnp.asarray(mask),
    segment_ids=jnp.ones((B, T), jnp.int32),
    positions=jnp.tile(jnp.arange(T, dtype=jnp.int32), (B, 1)),
    roles=jnp.asarray(np.where(mask > 0, ROLE_ANSWER, ROLE_PROMPT), jnp.int32),
  )


def _kd(student, teacher, batch, **hparams):
  fn = LOSSES.bind("kd", hparams)
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  return fn(student, teacher, batch, norm=norm)


def _logits(seed, scale=2.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, V)) * scale, jnp.float32)


def _np_kl(p_logits, q_logits):
  """KL(softmax(p) || softmax(q)) per token, in float64 NumPy."""
  p = np.asarray(p_logits, np.float64)
  q = np.asarray(q_logits, np.float64)
  lp = p - np.log(np.exp(p).sum(-1, keepdims=True))
  lq = q - np.log(np.exp(q).sum(-1, keepdims=True))
  return (np.exp(lp) * (lp - lq)).sum(-1)


def test_forward_and_reverse_kl_match_a_hand_computation():
  rng = np.random.default_rng(0)
  batch = _batch(rng)
  s, t = _logits(1), _logits(2)
  mask = np.asarray(batch.loss_mask)
  for divergence, want in (("fkl", _np_kl(t, s)), ("rkl", _np_kl(s, t))):
    loss, metrics = _kd(s, t, batch, divergence=divergence)
    expected = (want * mask).sum() / mask.sum()  # token mean over the loss mask
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["divergence"]), expected, rtol=1e-5)


def test_divergence_is_nonnegative_and_zero_iff_the_teacher_is_the_student():
  rng = np.random.default_rng(1)
  batch = _batch(rng)
  s = _logits(3)
  for divergence in ("fkl", "rkl", "jsd"):
    same, _ = _kd(s, s + 5.0, batch, divergence=divergence)  # a logit shift: same softmax
    assert abs(float(same)) < 1e-6, divergence
    for seed in range(4):
      loss, _ = _kd(s, _logits(10 + seed), batch, divergence=divergence)
      assert float(loss) > 1e-3, divergence


def test_jsd_half_is_symmetric_and_its_endpoints_are_the_kls():
  rng = np.random.default_rng(2)
  batch = _batch(rng)
  s, t = _logits(4), _logits(5)
  ab, _ = _kd(s, t, batch, divergence="jsd", beta=0.5)
  ba, _ = _kd(t, s, batch, divergence="jsd", beta=0.5)
  np.testing.assert_allclose(float(ab), float(ba), rtol=1e-6)
  fkl, _ = _kd(s, t, batch, divergence="fkl")
  rkl, _ = _kd(s, t, batch, divergence="rkl")
  j0, _ = _kd(s, t, batch, divergence="jsd", beta=0.0)
  j1, _ = _kd(s, t, batch, divergence="jsd", beta=1.0)
  assert float(j0) == float(fkl) and float(j1) == float(rkl)
  # Bounded by the binary entropy H_b(beta) (a JSD of two distributions).
  for beta in (0.1, 0.5, 0.9):
    j, _ = _kd(s, t * 10, batch, divergence="jsd", beta=beta)
    assert 0 < float(j) <= -(beta * np.log(beta) + (1 - beta) * np.log(1 - beta)) + 1e-6


def test_temperature_divides_both_and_tau_squared_scales_the_loss():
  rng = np.random.default_rng(3)
  batch = _batch(rng)
  s, t = _logits(6), _logits(7)
  mask = np.asarray(batch.loss_mask)
  tau = 2.0
  plain, _ = _kd(s, t, batch, temperature=tau, tau_squared=False)
  want = (_np_kl(np.asarray(t) / tau, np.asarray(s) / tau) * mask).sum() / mask.sum()
  np.testing.assert_allclose(float(plain), want, rtol=1e-5)
  scaled, _ = _kd(s, t, batch, temperature=tau)
  np.testing.assert_allclose(float(scaled), tau**2 * float(plain), rtol=1e-6)


def test_tau_squared_keeps_the_gradient_scale_across_temperatures():
  """For small logit gaps the soft-target gradient shrinks as 1 / tau^2; the factor
  undoes it (the card's test), so gradient norms stay about constant."""
  rng = np.random.default_rng(4)
  batch = _batch(rng)
  s, t = _logits(8, scale=0.05), _logits(9, scale=0.05)
  norms = []
  for tau in (1.0, 2.0, 4.0):
    g = jax.grad(lambda z, tau=tau: _kd(z, t, batch, temperature=tau)[0])(s)
    norms.append(float(jnp.linalg.norm(g)))
  np.testing.assert_allclose(norms, norms[0], rtol=0.1)
  # Without the factor they fall as 1 / tau^2.
  g4 = jax.grad(lambda z: _kd(z, t, batch, temperature=4.0, tau_squared=False)[0])(s)
  np.testing.assert_allclose(float(jnp.linalg.norm(g4)), norms[0] / 16, rtol=0.1)


def test_hard_label_weight_mixes_in_the_data_cross_entropy():
  rng = np.random.default_rng(5)
  batch = _batch(rng)
  s, t = _logits(10), _logits(11)
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  ce, _ = LOSSES.bind("cross_entropy", {})(s, batch, norm=norm)
  only_ce, metrics = _kd(s, t, batch, hard_label_weight=1.0)
  np.testing.assert_allclose(float(only_ce), float(ce), rtol=1e-6)
  kd, _ = _kd(s, t, batch, temperature=2.0)
  mix, _ = _kd(s, t, batch, temperature=2.0, hard_label_weight=0.3)
  np.testing.assert_allclose(float(mix), 0.3 * float(ce) + 0.7 * float(kd), rtol=1e-6)
  assert float(metrics["nll"]) == pytest.approx(float(ce), rel=1e-6)


def test_top_k_teacher_with_all_tokens_equals_the_full_teacher():
  rng = np.random.default_rng(6)
  batch = _batch(rng)
  s, t = _logits(12), _logits(13)
  for divergence in ("fkl", "rkl", "jsd"):
    full, _ = _kd(s, t, batch, divergence=divergence)
    topv, _ = _kd(s, t, batch, divergence=divergence, top_k=V)
    np.testing.assert_allclose(float(topv), float(full), rtol=1e-5)


def test_top_k_teacher_is_a_bucketed_lower_bound_and_matches_a_precomputed_topk():
  rng = np.random.default_rng(7)
  batch = _batch(rng)
  s, t = _logits(14), _logits(15)
  full, _ = _kd(s, t, batch)
  top3, _ = _kd(s, t, batch, top_k=3)
  assert 0 < float(top3) < float(full)  # data processing: coarse buckets lose information
  # The same loss from a TopK given directly (what an offline shard holds).
  shard = top_k_teacher(t, 3)
  assert isinstance(shard, TopK) and shard.ids.shape == (B, T, 3)
  np.testing.assert_allclose(np.exp(np.asarray(shard.logp)).sum(-1) < 1.0, True)
  given, _ = _kd(s, shard, batch)
  assert float(given) == float(top3)


def _heads(seed, d=D):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(B, T, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, V)) / np.sqrt(d) * 2, jnp.float32)
  return h, w


@pytest.mark.parametrize(
  "hparams",
  [
    dict(divergence="fkl"),
    dict(divergence="rkl"),
    dict(divergence="jsd", beta=0.3),
    dict(divergence="fkl", temperature=2.0, hard_label_weight=0.4),
    dict(divergence="rkl", top_k=4),
    dict(divergence="jsd", reduction="sequence_mean"),
  ],
  ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()),
)
def test_fused_heads_equal_materialised_logits_in_value_and_gradient(hparams):
  """Student and teacher as fused heads (the teacher 12 wide, the student 8): the same
  loss and gradients as the full logits, for every divergence and option."""
  rng = np.random.default_rng(8)
  batch = _batch(rng)
  hs, ws = _heads(20)
  ht, wt = _heads(21, d=12)

  def fused(hs, ws):
    return _kd(FusedHead(hs, ws, "xla", 8), FusedHead(ht, wt, "xla", 8), batch, **hparams)

  def materialised(hs, ws):
    logits = jnp.einsum("btd,dv->btv", hs, ws)
    return _kd(logits, jnp.einsum("btd,dv->btv", ht, wt), batch, **hparams)

  (lf, mf), gf = jax.value_and_grad(fused, argnums=(0, 1), has_aux=True)(hs, ws)
  (lm, mm), gm = jax.value_and_grad(materialised, argnums=(0, 1), has_aux=True)(hs, ws)
  np.testing.assert_allclose(float(lf), float(lm), rtol=1e-5)
  for k in mm:
    np.testing.assert_allclose(float(mf[k]), float(mm[k]), rtol=1e-5, err_msg=k)
  for a, b in zip(gf, gm, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_no_gradient_reaches_the_teacher_and_masked_tokens_give_none():
  rng = np.random.default_rng(9)
  batch = _batch(rng)
  s, t = _logits(16), _logits(17)
  gs, gt = jax.grad(lambda a, b: _kd(a, b, batch, divergence="jsd")[0], argnums=(0, 1))(s, t)
  assert float(jnp.abs(gt).max()) == 0.0
  assert float(jnp.abs(gs[0, :2]).max()) == 0.0  # the masked prompt positions
  assert float(jnp.abs(gs[0, 2:]).max()) > 0.0


@pytest.mark.parametrize(
  "bad,match",
  [
    (dict(divergence="kl"), "divergence"),
    (dict(beta=1.5), "beta"),
    (dict(temperature=0.0), "temperature"),
    (dict(hard_label_weight=2.0), "hard_label_weight"),
    (dict(top_k=-1), "top_k"),
  ],
)
def test_bad_hyperparameters_name_the_field(bad, match):
  with pytest.raises((ValueError, TypeError), match=match):
    LOSSES.bind("kd", bad, where="loss.kd")


def _srkl(student, teacher, batch):
  fn = LOSSES.bind("sampled_rkl", {})
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  return fn(student, teacher, batch, norm=norm)


def test_sampled_rkl_gradient_is_the_log_ratio_times_the_score_by_hand():
  """d/dz_t of mean_t sg(d_t) log p_S(y_t) = d_t (onehot(y_t) - p_S) / N, with
  d_t = log p_S(y_t) - log p_T(y_t); the metric is the mean d_t."""
  rng = np.random.default_rng(10)
  batch = _batch(rng)
  s, t = _logits(18), _logits(19)
  (loss, metrics), g = jax.value_and_grad(lambda z: _srkl(z, t, batch), has_aux=True)(s)
  ls = np.asarray(jax.nn.log_softmax(s), np.float64)
  lt = np.asarray(jax.nn.log_softmax(t), np.float64)
  y = np.asarray(batch.targets)
  mask = np.asarray(batch.loss_mask)
  picked = lambda lp: np.take_along_axis(lp, y[..., None], -1)[..., 0]  # noqa: E731
  d = picked(ls) - picked(lt)
  n = mask.sum()
  want = d[..., None] * (np.eye(V)[y] - np.exp(ls)) * mask[..., None] / n
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(float(metrics["divergence"]), (d * mask).sum() / n, rtol=1e-5)
  np.testing.assert_allclose(float(loss), (d * picked(ls) * mask).sum() / n, rtol=1e-5)


def test_sampled_rkl_is_still_at_the_teacher_and_refuses_a_top_k_teacher():
  rng = np.random.default_rng(11)
  batch = _batch(rng)
  s = _logits(20)
  g = jax.grad(lambda z: _srkl(z, s + 3.0, batch)[0])(s)
  assert float(jnp.abs(g).max()) < 1e-7
  with pytest.raises(ValueError, match="top-k"):
    _srkl(s, top_k_teacher(s, 3), batch)
  # Fused student and teacher heads give the same loss and gradient as their logits.
  hs, ws = _heads(22)
  ht, wt = _heads(23, d=12)
  teacher = FusedHead(ht, wt, "xla", 8)
  fused = jax.grad(lambda h: _srkl(FusedHead(h, ws, "xla", 8), teacher, batch)[0])
  dense = jax.grad(lambda h: _srkl(jnp.einsum("btd,dv->btv", h, ws), ht @ wt, batch)[0])
  np.testing.assert_allclose(np.asarray(fused(hs)), np.asarray(dense(hs)), rtol=1e-4, atol=1e-7)
