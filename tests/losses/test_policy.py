"""Policy losses (losses/policy.py) and their correction helpers (losses/correction.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import advantages as adv_lib
from jaxpost.losses import compute_normalizers, correction, kl, policy, reduce, registry
from jaxpost.types import Batch, Rollout

POLICY_LOSSES = ("ppo", "grpo", "dr_grpo", "dapo", "gspo", "gspo_token")


def _make(logp_old, adv, mask, *, sampler=None, ref=None, turn_ids=None, seg=None):
  """Rollout from per-token arrays (numpy or lists), prompt-free for hand examples."""
  old = jnp.asarray(logp_old, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  b, t = old.shape
  if seg is None:
    seg = jnp.where(mask > 0, 1, 0)
  batch = Batch(
    tokens=jnp.zeros((b, t), jnp.int32),
    targets=jnp.zeros((b, t), jnp.int32),
    loss_mask=mask,
    segment_ids=jnp.asarray(seg, jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
    roles=jnp.where(mask > 0, 3, 0).astype(jnp.int32),
  )
  return Rollout(
    batch=batch,
    advantages=jnp.asarray(adv, jnp.float32),
    old_logp=old,
    sampler_logp=old if sampler is None else jnp.asarray(sampler, jnp.float32),
    ref_logp=jnp.zeros_like(old) if ref is None else jnp.asarray(ref, jnp.float32),
    group_ids=jnp.arange(b, dtype=jnp.int32),
    turn_ids=jnp.where(mask > 0, 1, 0).astype(jnp.int32)
    if turn_ids is None
    else jnp.asarray(turn_ids, jnp.int32),
  )


def _random(seed=0, b=4, t=8, prompt=2, spread=0.3, seq_adv=True, turns=False):
  """Random rollout: prompt tokens then a completion of random length, right-padded.

  Returns (logp f32[B, T], rollout). Junk (-inf / NaN) sits at masked slots of logp and
  of every stored log-prob, so leaks show up as NaN.
  """
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t - prompt + 1, size=b)
  pos = np.arange(t)[None, :]
  mask = ((pos >= prompt) & (pos < prompt + lengths[:, None])).astype(np.float32)
  seg = (pos < prompt + lengths[:, None]).astype(np.int32)
  old = -rng.uniform(0.2, 3.0, (b, t))
  logp = old + rng.normal(scale=spread, size=(b, t))
  sampler = old + rng.normal(scale=0.2, size=(b, t))
  ref = old + rng.normal(scale=0.3, size=(b, t))
  if seq_adv:
    adv = np.repeat(rng.normal(size=(b, 1)), t, axis=1)
  else:
    adv = rng.normal(size=(b, t))
  adv = adv * mask
  if turns:
    # Turns of 1-3 tokens over the completion (ids 1, 2, ...), 0 elsewhere.
    turn_ids = np.zeros((b, t), np.int32)
    for i in range(b):
      k, left = 1, int(lengths[i])
      start = prompt
      while left > 0:
        n = min(left, int(rng.integers(1, 4)))
        turn_ids[i, start : start + n] = k
        start, left, k = start + n, left - n, k + 1
  else:
    turn_ids = None
  junk = np.where(rng.random((b, t)) > 0.5, -np.inf, np.nan)
  poison = lambda x: np.where(mask > 0, x, junk)
  rollout = _make(
    poison(old), adv, mask, sampler=poison(sampler), ref=poison(ref), turn_ids=turn_ids, seg=seg
  )
  return jnp.asarray(poison(logp), jnp.float32), rollout


def _norm(rollout):
  return compute_normalizers(rollout.batch.loss_mask, rollout.batch.segment_ids)


def _loss_and_grad(fn, logp, rollout, **kw):
  norm = _norm(rollout)
  (loss, metrics), g = jax.value_and_grad(lambda z: fn(z, rollout, norm=norm, **kw), has_aux=True)(
    logp
  )
  return float(loss), metrics, np.asarray(g)


# --------------------------------------------------------------------------------------
# Hand examples: clipping regions, dual clip, clip-higher.

# (A, r) per token of one sequence, old logp = -1.
_CASES_A = [1.0, 1.0, -1.0, -1.0, -1.0, 1.0]
_CASES_R = [1.5, 0.5, 0.5, 1.5, 4.0, 1.25]


def _cases():
  old = np.full((1, 6), -1.0)
  logp = jnp.asarray(old + np.log(_CASES_R), jnp.float32)
  return logp, _make(old, [_CASES_A], np.ones((1, 6)))


@pytest.mark.parametrize(
  "name, kw, losses, grads, frac_hi, frac_lo",
  [
    # Tokens: A>0 r>1+eps clipped; A>0 r<1-eps free; A<0 r<1-eps clipped; A<0 r>1+eps
    # free; A<0 r=4 free (or dual-capped at 3); A>0 r=1.25 clipped at 0.2, free at 0.28.
    ("ppo", {}, [-1.2, -0.5, 0.8, 1.5, 4.0, -1.2], [0, -0.5, 0, 1.5, 4.0, 0], 2, 1),
    ("ppo", {"dual_clip": True}, [-1.2, -0.5, 0.8, 1.5, 3.0, -1.2], [0, -0.5, 0, 1.5, 0, 0], 2, 1),
    ("dapo", {}, [-1.28, -0.5, 0.8, 1.5, 4.0, -1.25], [0, -0.5, 0, 1.5, 4.0, -1.25], 1, 1),
  ],
)
def test_clip_regions_golden(name, kw, losses, grads, frac_hi, frac_lo):
  logp, rollout = _cases()
  loss, metrics, g = _loss_and_grad(registry.get(name), logp, rollout, **kw)
  np.testing.assert_allclose(loss, sum(losses) / 6, rtol=1e-5)
  # dL/dlogp = dL/dr * r; zero exactly where the clip (or the dual clip) binds.
  np.testing.assert_allclose(g[0], np.array(grads) / 6, rtol=1e-5, atol=0)
  np.testing.assert_allclose(float(metrics["clip_frac_high"]), frac_hi / 6, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["clip_frac_low"]), frac_lo / 6, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["ratio_mean"]), np.mean(_CASES_R), rtol=1e-5)
  if kw.get("dual_clip"):
    np.testing.assert_allclose(float(metrics["dual_clip_frac"]), 1 / 6, rtol=1e-6)


def test_dual_clip_constant():
  logp, rollout = _cases()
  loss, _, _ = _loss_and_grad(policy.ppo, logp, rollout, dual_clip=True, clip_ratio_c=2.0)
  # Token 4 (A=-1, r=4) now capped at 2; the others as in the golden case.
  np.testing.assert_allclose(loss, (-1.2 - 0.5 + 0.8 + 1.5 + 2.0 - 1.2) / 6, rtol=1e-5)
  with pytest.raises(ValueError, match="clip_ratio_c=1.0: must be a finite number > 1"):
    _loss_and_grad(policy.ppo, logp, rollout, dual_clip=True, clip_ratio_c=1.0)


# --------------------------------------------------------------------------------------
# NumPy loop reference for GRPO (clip + k3 KL, seq-mean-token-mean).


def _grpo_reference(logp, rollout, eps_lo, eps_hi, beta):
  logp = np.asarray(logp, np.float64)
  old = np.asarray(rollout.old_logp, np.float64)
  ref = np.asarray(rollout.ref_logp, np.float64)
  adv = np.asarray(rollout.advantages, np.float64)
  mask = np.asarray(rollout.batch.loss_mask)
  n_seq = float(np.sum(mask.sum(1) > 0))
  total, grad = 0.0, np.zeros_like(logp)
  for i in range(logp.shape[0]):
    n_i = mask[i].sum()
    for t in range(logp.shape[1]):
      if not mask[i, t]:
        continue
      a = adv[i, t]
      r = np.exp(logp[i, t] - old[i, t])
      free = -a * r
      clipped = -a * min(max(r, 1 - eps_lo), 1 + eps_hi)
      d = ref[i, t] - logp[i, t]
      k3 = np.exp(d) - d - 1
      total += (max(free, clipped) + beta * k3) / (n_i * n_seq)
      d_pg = -a * r if free >= clipped else 0.0
      grad[i, t] = (d_pg + beta * (1 - np.exp(d))) / (n_i * n_seq)
  return total, grad


@pytest.mark.parametrize("seed, spread", [(0, 0.3), (2, 0.6)])
def test_grpo_matches_loop_reference(seed, spread):
  logp, rollout = _random(seed, spread=spread, seq_adv=False)
  loss, metrics, g = _loss_and_grad(policy.grpo, logp, rollout)
  ref_loss, ref_grad = _grpo_reference(logp, rollout, 0.2, 0.2, 0.04)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(g, ref_grad, rtol=1e-4, atol=1e-7)
  # The KL term is exactly beta * kl metric.
  np.testing.assert_allclose(loss - float(metrics["pg_loss"]), 0.04 * float(metrics["kl"]), 1e-5)


# --------------------------------------------------------------------------------------
# Card "Tests for section 1".


def _group_rollout(rewards, estimator, seed=3, t=8):
  """P*G rows with outcome advantages from ``rewards`` f32[P, G]."""
  rewards = jnp.asarray(rewards, jnp.float32)
  b = rewards.size
  logp, rollout = _random(seed, b=b, t=t)
  a = adv_lib.get(estimator)(rewards).reshape(-1)
  return logp, rollout.replace(advantages=adv_lib.broadcast_to_tokens(a, rollout.batch.loss_mask))


@pytest.mark.parametrize(
  "name, estimator", [("grpo", "grpo"), ("dr_grpo", "dr_grpo"), ("dapo", "grpo")]
)
def test_uniform_group_gives_exactly_zero_gradient(name, estimator):
  # Group 0 uniform, group 1 mixed: rows 0-1 must get exactly zero gradient.
  logp, rollout = _group_rollout([[0.3, 0.3], [1.0, 0.0]], estimator)
  _, _, g = _loss_and_grad(registry.get(name), logp, rollout, kl_coef=0.0)
  assert np.all(g[:2] == 0.0)
  assert np.all(np.any(g[2:] != 0.0, axis=1))


def _token_divisor(rollout, agg):
  mask = np.asarray(rollout.batch.loss_mask)
  n_i = mask.sum(1, keepdims=True)
  n_seq = float(np.sum(n_i > 0))
  return {
    "token_mean": mask.sum(),
    "seq_mean_token_mean": n_seq * np.maximum(n_i, 1),
    "seq_mean_token_sum": n_seq,
    "seq_mean_token_sum_norm": mask.shape[1],
  }[agg]


_EXTRAS = [
  {"is_level": "token", "is_mode": "mask"},
  {"is_level": "sequence"},
  {"prefix": "min_exclusive"},
  {"prefix": "min_inclusive", "prefix_behavior": "sampler"},
  {"ratio": "turn"},
]
_ON_POLICY_CASES = [(n, {}) for n in POLICY_LOSSES]
_ON_POLICY_CASES += [(n, e) for n in ("dr_grpo", "gspo") for e in _EXTRAS]


@pytest.mark.parametrize("name, extra", _ON_POLICY_CASES)
def test_on_policy_gradient_is_reinforce(name, extra):
  """At theta = theta_old (and mu = pi_old) the gradient is -m A / norm, clipping inactive."""
  logp, rollout = _random(4, turns=True)
  rollout = rollout.replace(sampler_logp=rollout.old_logp)
  logp = rollout.old_logp
  fn = registry.get(name)
  loss, metrics, g = _loss_and_grad(fn, logp, rollout, kl_coef=0.0, **extra)
  agg = policy.PRESETS[name]["agg"]
  mask = np.asarray(rollout.batch.loss_mask)
  expected = -mask * np.asarray(rollout.advantages) / _token_divisor(rollout, agg)
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
  assert float(metrics["clip_frac_high"]) == 0.0 == float(metrics["clip_frac_low"])
  np.testing.assert_allclose(float(metrics["ratio_mean"]), 1.0, rtol=1e-6)


def test_gspo_constant_token_ratio_gives_sequence_ratio():
  _, rollout = _random(5)
  c = 1.3
  logp = rollout.old_logp + jnp.log(c)
  _, metrics, _ = _loss_and_grad(policy.gspo, logp, rollout)
  np.testing.assert_allclose(float(metrics["ratio_mean"]), c, rtol=1e-5)
  mask = rollout.batch.loss_mask
  lr = correction.log_ratio(logp, rollout.old_logp, mask)
  s = np.exp(np.asarray(correction.group_mean(lr, mask, rollout.batch.segment_ids)))
  np.testing.assert_allclose(s[np.asarray(mask) > 0], c, rtol=1e-5)


@pytest.mark.parametrize(
  "kw",
  [{}, {"clip_eps_low": 0.2, "clip_eps_high": 0.2}, {"agg": "token_mean", "clip_eps_low": 0.1}],
)
@pytest.mark.parametrize("seed, spread", [(6, 2e-4), (7, 0.2)])
def test_gspo_equals_gspo_token(kw, seed, spread):
  logp, rollout = _random(seed, spread=spread)
  # Push one sequence past the log s <= 10 clamp.
  logp = logp.at[0].add(12.0)
  a_loss, a_m, a_g = _loss_and_grad(policy.gspo, logp, rollout, **kw)
  b_loss, b_m, b_g = _loss_and_grad(policy.gspo_token, logp, rollout, **kw)
  np.testing.assert_allclose(a_loss, b_loss, rtol=1e-6)
  np.testing.assert_allclose(a_g, b_g, rtol=1e-5, atol=1e-9)
  for k in a_m:
    np.testing.assert_allclose(float(a_m[k]), float(b_m[k]), rtol=1e-6)
  assert np.all(a_g[0] == 0.0)  # clamped sequence: no gradient
  assert np.any(a_g != 0.0)


# --------------------------------------------------------------------------------------
# Micro-batching, jit, masking, dtypes.

# Every option switched on, in two combinations that between them cover each choice.
_ALL_ON_TOKEN = {
  "ratio": "turn",
  "dual_clip": True,
  "entropy_coef": 0.01,
  "kl_coef": 0.1,
  "kl_estimator": "k2",
  "is_level": "sequence",
  "is_mode": "mask",
  "is_cap": 1.5,
  "prefix": "min_inclusive",
  "prefix_behavior": "sampler",
  "agg": "seq_mean_token_sum",
}
_ALL_ON_SEQUENCE = {
  "entropy_coef": 0.01,
  "kl_coef": 0.1,
  "is_level": "geometric",
  "prefix": "min_exclusive",
  "agg": "seq_mean_token_sum_norm",
  "agg_constant": 5.0,
}
_MICRO_CASES = [(n, {}) for n in POLICY_LOSSES]
_MICRO_CASES += [("ppo", _ALL_ON_TOKEN), ("dapo", {**_ALL_ON_SEQUENCE, "is_level": "token"})]
_MICRO_CASES += [("gspo_token", _ALL_ON_SEQUENCE)]


@pytest.mark.parametrize("name, kw", _MICRO_CASES)
def test_micro_batches_equal_full_batch(name, kw):
  """Rows split into 2 micro-batches: losses, grads and metrics add up to the full batch."""
  logp, rollout = _random(8, b=4, spread=0.25, seq_adv=False, turns=True)
  entropy = jnp.asarray(np.random.default_rng(9).uniform(0, 2, logp.shape), jnp.float32)
  norm = _norm(rollout)
  fn = functools.partial(registry.get(name), norm=norm, **kw)

  def run(lp, ro, ent):
    return jax.value_and_grad(lambda z: fn(z, ro, entropy=ent), has_aux=True)(lp)

  (loss, metrics), g = run(logp, rollout, entropy)
  parts = [slice(0, 2), slice(2, 4)]
  outs = [run(logp[s], jax.tree.map(lambda a, s=s: a[s], rollout), entropy[s]) for s in parts]
  np.testing.assert_allclose(sum(float(o[0][0]) for o in outs), float(loss), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.concatenate([o[1] for o in outs]), g, rtol=1e-5, atol=1e-8)
  for k, v in metrics.items():
    np.testing.assert_allclose(
      sum(float(o[0][1][k]) for o in outs), float(v), rtol=1e-5, atol=1e-7, err_msg=k
    )
  assert np.isfinite(float(loss)) and np.all(np.isfinite(g))
  # Junk at masked slots never leaks into the gradient.
  assert np.all(g[np.asarray(rollout.batch.loss_mask) == 0] == 0.0)


def test_every_policy_loss_jits():
  logp, rollout = _random(23)
  norm = _norm(rollout)
  for name in POLICY_LOSSES:
    fn = registry.get(name)
    eager = fn(logp, rollout, norm=norm)[0]
    jitted = jax.jit(functools.partial(fn, norm=norm))(logp, rollout)[0]
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-5, err_msg=name)


def test_bf16_logp_gives_f32_loss():
  logp, rollout = _random(10)
  a = policy.grpo(logp, rollout, norm=_norm(rollout))[0]
  b = policy.grpo(logp.astype(jnp.bfloat16), rollout, norm=_norm(rollout))[0]
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(float(a), float(b), rtol=5e-2, atol=1e-3)


# --------------------------------------------------------------------------------------
# KL and entropy terms.


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_term(estimator):
  logp, rollout = _random(11)
  base, _, _ = _loss_and_grad(policy.dapo, logp, rollout)
  loss, metrics, _ = _loss_and_grad(policy.dapo, logp, rollout, kl_coef=0.5, kl_estimator=estimator)
  mask = rollout.batch.loss_mask
  expected_kl = reduce.token_mean(
    kl.kl_penalty(
      jnp.where(mask > 0, logp, 0), jnp.where(mask > 0, rollout.ref_logp, 0), estimator
    ),
    mask,
    _norm(rollout),
  )
  np.testing.assert_allclose(float(metrics["kl"]), float(expected_kl), rtol=1e-5)
  np.testing.assert_allclose(loss, base + 0.5 * float(expected_kl), rtol=1e-5)
  with pytest.raises(ValueError, match="kl_estimator=.k9.: must be one of"):
    policy.dapo(logp, rollout, norm=_norm(rollout), kl_coef=0.1, kl_estimator="k9")


def test_kl_zero_when_policy_is_reference():
  logp, rollout = _random(12)
  rollout = rollout.replace(ref_logp=jnp.where(rollout.batch.loss_mask > 0, logp, 0.0))
  with_kl, m, _ = _loss_and_grad(policy.grpo, logp, rollout)
  without, _, _ = _loss_and_grad(policy.grpo, logp, rollout, kl_coef=0.0)
  assert float(m["kl"]) == 0.0
  np.testing.assert_allclose(with_kl, without, rtol=1e-7)


def test_entropy_bonus():
  logp, rollout = _random(13)
  ent = jnp.asarray(np.random.default_rng(0).uniform(0, 3, logp.shape), jnp.float32)
  norm = _norm(rollout)
  base, m0 = policy.grpo(logp, rollout, norm=norm, entropy=ent)
  loss, _ = policy.grpo(logp, rollout, norm=norm, entropy=ent, entropy_coef=0.1)
  mask = rollout.batch.loss_mask
  h = reduce.aggregate(ent, mask, rollout.batch.segment_ids, norm, "seq_mean_token_mean")
  np.testing.assert_allclose(float(loss), float(base) - 0.1 * float(h), rtol=1e-5)
  np.testing.assert_allclose(float(m0["entropy"]), float(reduce.token_mean(ent, mask, norm)))
  with pytest.raises(ValueError, match="entropy"):
    policy.grpo(logp, rollout, norm=norm, entropy_coef=0.1)


# --------------------------------------------------------------------------------------
# Train-inference importance weights.


def test_is_weights_truncate_and_mask_by_hand():
  w_true = np.array([[7.3, 0.3, 1.5, 0.6, 1.0]])
  old = np.full((1, 5), -1.0)
  sampler = old - np.log(w_true)
  mask = np.array([[1, 1, 1, 1, 0]], np.float32)
  seg = np.ones((1, 5), np.int32)
  args = (jnp.asarray(old), jnp.asarray(sampler), jnp.asarray(mask), jnp.asarray(seg))
  w, out = correction.is_weights(*args, level="token", mode="truncate", cap=5.0)
  np.testing.assert_allclose(np.asarray(w)[0, :4], [5.0, 0.3, 1.5, 0.6], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out)[0, :4], [True, False, False, False])
  w, out = correction.is_weights(*args, level="token", mode="mask", cap=2.0)
  np.testing.assert_allclose(np.asarray(w)[0, :4], [0.0, 0.0, 1.5, 0.6], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out)[0, :4], [True, True, False, False])
  w, _ = correction.is_weights(*args, level="token", mode="mask", cap=2.0, floor=0.1)
  np.testing.assert_allclose(np.asarray(w)[0, :4], [0.0, 0.3, 1.5, 0.6], rtol=1e-5)


def test_is_weights_sequence_levels():
  # Row 0: token weights 2 and 3 (+ a masked slot with a huge gap); row 1: one token 0.5.
  w_tok = np.array([[2.0, 3.0, 1e30], [0.5, 1.0, 1.0]])
  old = np.full((2, 3), -1.0)
  sampler = old - np.log(w_tok)
  mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  seg = np.array([[1, 1, 1], [1, 0, 0]], np.int32)
  args = (jnp.asarray(old), jnp.asarray(sampler), jnp.asarray(mask), jnp.asarray(seg))
  w, _ = correction.is_weights(*args, level="sequence", cap=10.0)
  np.testing.assert_allclose(np.asarray(w)[0, :2], [6.0, 6.0], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(w)[1, 0], 0.5, rtol=1e-5)
  w, _ = correction.is_weights(*args, level="geometric", cap=10.0)
  np.testing.assert_allclose(np.asarray(w)[0, :2], [np.sqrt(6.0)] * 2, rtol=1e-5)
  w, out = correction.is_weights(*args, level="sequence", cap=5.0)
  np.testing.assert_allclose(np.asarray(w)[0, :2], [5.0, 5.0], rtol=1e-5)
  assert bool(out[0, 0]) and not bool(out[1, 0])
  with pytest.raises(ValueError, match="unknown IS level"):
    correction.is_weights(*args, level="turn")
  with pytest.raises(ValueError, match="unknown IS mode"):
    correction.is_weights(*args, mode="clip")


@pytest.mark.parametrize("level", correction.IS_LEVELS)
@pytest.mark.parametrize("mode", correction.IS_MODES)
def test_is_weights_are_one_when_sampler_matches(level, mode):
  logp, rollout = _random(14)
  rollout = rollout.replace(sampler_logp=rollout.old_logp)
  base, _, g0 = _loss_and_grad(policy.dapo, logp, rollout)
  loss, m, g = _loss_and_grad(policy.dapo, logp, rollout, is_level=level, is_mode=mode)
  np.testing.assert_allclose(float(m["is_weight_mean"]), 1.0, rtol=1e-6)
  assert float(m["is_clipped_frac"]) == 0.0
  np.testing.assert_allclose(loss, base, rtol=1e-6)
  np.testing.assert_allclose(g, g0, rtol=1e-6)


def test_is_weight_scales_gradient():
  """MiniRL-style TIS at r = 1: gradient = -A min(pi_old/mu, 5) / N per token."""
  old = np.full((1, 6), -1.0)
  sampler = old - np.log([[7.3, 0.5, 1.0, 2.0, 0.2, 5.5]])
  adv = np.array([1.0, -2.0, 0.5, 1.0, 1.0, -1.0])
  rollout = _make(old, [adv], np.ones((1, 6)), sampler=sampler)
  _, m, g = _loss_and_grad(policy.dapo, rollout.old_logp, rollout, is_level="token", is_cap=5.0)
  np.testing.assert_allclose(g[0], -adv * [5.0, 0.5, 1.0, 2.0, 0.2, 5.0] / 6, rtol=1e-5)
  np.testing.assert_allclose(float(m["is_clipped_frac"]), 2 / 6, rtol=1e-6)


# --------------------------------------------------------------------------------------
# MinPRO prefix factor.


def _prefix(log_rho, mask, seg, inclusive):
  return np.exp(
    np.asarray(
      correction.prefix_min_log_weight(
        jnp.asarray(log_rho, jnp.float32),
        jnp.asarray(mask, jnp.float32),
        jnp.asarray(seg, jnp.int32),
        inclusive=inclusive,
      )
    )
  )


def test_prefix_golden():
  rho = np.array([[1.0, 0.5, 2.0, 0.25, 9.0]])
  mask = np.array([[1, 1, 1, 1, 0]])
  seg = np.array([[1, 1, 1, 1, 0]])
  # Exclusive: min over i < t (empty -> 1).
  np.testing.assert_allclose(
    _prefix(np.log(rho), mask, seg, False), [[1, 1, 0.5, 0.5, 1]], rtol=1e-6
  )
  # Inclusive: min_{i<=t} rho_i / rho_t.
  np.testing.assert_allclose(_prefix(np.log(rho), mask, seg, True), [[1, 1, 0.25, 1, 1]], rtol=1e-6)


@pytest.mark.parametrize("inclusive", [False, True])
def test_prefix_all_ones(inclusive):
  ones = np.ones((2, 5))
  np.testing.assert_array_equal(_prefix(np.zeros((2, 5)), ones, ones, inclusive), 1.0)


def test_prefix_min_is_non_increasing_and_bounds_the_product():
  rng = np.random.default_rng(15)
  log_rho = -np.abs(rng.normal(scale=0.5, size=(3, 9)))  # all rho <= 1
  mask = np.ones((3, 9))
  pm = _prefix(log_rho, mask, mask, False)
  assert np.all(np.diff(pm, axis=1) <= 0)
  prod = np.exp(np.concatenate([np.zeros((3, 1)), np.cumsum(log_rho, 1)[:, :-1]], axis=1))
  assert np.all(pm >= prod * (1 - 1e-6))
  assert np.any(pm > prod * 1.01)  # strictly milder somewhere


def test_prefix_tiny_ratio_suppresses_only_later_tokens():
  rng = np.random.default_rng(16)
  log_rho = rng.normal(scale=0.1, size=(1, 8))
  mask = np.ones((1, 8))
  base = _prefix(log_rho, mask, mask, False)
  j, tiny = 3, 1e-3
  log_rho2 = log_rho.copy()
  log_rho2[0, j] = np.log(tiny)
  hit = _prefix(log_rho2, mask, mask, False)
  np.testing.assert_array_equal(hit[0, : j + 1], base[0, : j + 1])
  assert np.all(hit[0, j + 1 :] <= tiny * (1 + 1e-5))


def test_prefix_ignores_masked_tokens():
  log_rho = np.log([[0.9, 1e-4, 0.8, 1.1]])
  mask = np.array([[1, 0, 1, 1]])
  seg = np.ones((1, 4))  # the masked token is inside the sequence (e.g. a tool token)
  np.testing.assert_allclose(_prefix(log_rho, mask, seg, False), [[1, 1, 0.9, 0.8]], rtol=1e-6)
  np.testing.assert_allclose(_prefix(log_rho, mask, seg, True), [[1, 1, 1, 0.8 / 1.1]], rtol=1e-6)


@pytest.mark.parametrize("behavior", ["old", "sampler"])
def test_prefix_weight_in_loss(behavior):
  """Unclipped tokens: dL/dlogp_t = -A F_t r_t / N with F_t = min_{i<t} rho_i."""
  logp, rollout = _random(17, prompt=1, spread=0.3)
  kw = dict(clip_eps_low=10.0, clip_eps_high=10.0, prefix="min_exclusive")
  _, m, g = _loss_and_grad(policy.dapo, logp, rollout, prefix_behavior=behavior, **kw)
  mask = np.asarray(rollout.batch.loss_mask)
  lp = np.where(mask > 0, np.asarray(logp), 0.0)
  old = np.where(mask > 0, np.asarray(rollout.old_logp), 0.0)
  beh = rollout.old_logp if behavior == "old" else rollout.sampler_logp
  rho = lp - np.where(mask > 0, np.asarray(beh), 0.0)
  f = _prefix(rho, mask, rollout.batch.segment_ids, False)
  expected = -np.asarray(rollout.advantages) * f * np.exp(lp - old) * mask / mask.sum()
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(float(m["prefix_weight_mean"]), (f * mask).sum() / mask.sum(), 1e-5)


def _layout(rows, t):
  """Rows of sequences -> ([R, T] array per field, segment ids i32[R, T]).

  Args:
    rows: list of rows, each a list of sequences, each a tuple of equal-length 1-D arrays
      (one per field). Sequence k of a row gets segment id k + 1, in order.
    t: row length; the rest of a row is padding (segment id 0, every field 0).
  """
  fields = [np.zeros((len(rows), t)) for _ in rows[0][0]]
  seg = np.zeros((len(rows), t), np.int32)
  for r, row in enumerate(rows):
    start = 0
    for k, seq in enumerate(row):
      n = len(seq[0])
      for out, values in zip(fields, seq, strict=True):
        out[r, start : start + n] = values
      seg[r, start : start + n] = k + 1
      start += n
  return fields, seg


def _unpacked_at_packed(values, rows, t):
  """Per-token values of the sequences of ``rows``, each alone in a row of ``values``
  (in order), moved to the packed layout ``rows``."""
  seqs = iter(range(values.shape[0]))
  (out,), _ = _layout([[(values[next(seqs), : len(s[0])],) for s in row] for row in rows], t)
  return out


@pytest.mark.parametrize("inclusive", [False, True])
def test_prefix_packed_equals_separate_rows(inclusive):
  """Each sequence of a packed row gets the factors it gets alone in a row (exactly)."""
  rng = np.random.default_rng(30)
  seqs = []
  for n in (5, 4, 6, 3, 7):
    log_rho = rng.normal(scale=0.5, size=n)
    mask = (rng.random(n) > 0.25).astype(np.float64)
    mask[0] = 0.0  # a prompt token first, as in a rollout
    seqs.append((log_rho, mask))
  seqs[0][0][2], seqs[0][1][2] = np.log(1e-3), 1.0  # would drag the next sequences down
  packed = [seqs[:3], seqs[3:]]  # 15 and 10 tokens, then padding
  t = 16
  junk = np.log(1e-4)  # at padding, which must not count
  (log_rho, mask), seg = _layout(packed, t)
  log_rho = np.where(seg > 0, log_rho, junk)
  got = _prefix(log_rho, mask, seg, inclusive)
  alone = [[s] for s in seqs]
  (a_rho, a_mask), a_seg = _layout(alone, t)
  a_rho = np.where(a_seg > 0, a_rho, junk)
  expected = _unpacked_at_packed(_prefix(a_rho, a_mask, a_seg, inclusive), packed, t)
  expected = np.where(seg > 0, expected, 1.0)
  np.testing.assert_array_equal(got, expected)
  # The test can tell: one running minimum along the whole row differs.
  row_wide = _prefix(log_rho, mask, np.ones_like(seg), inclusive)
  assert not np.array_equal(row_wide, got)


def test_prefix_packed_golden():
  # Row 0: sequences [0.5, 2, 0.8] and [(0.01 masked), 0.9, 0.6, 3], then padding.
  # Row 1: sequences [0.25, 4], [0.5, 2, 0.1], [8, 1, 1].
  rho = np.array(
    [
      [0.5, 2.0, 0.8, 0.01, 0.9, 0.6, 3.0, 1e-3],
      [0.25, 4.0, 0.5, 2.0, 0.1, 8.0, 1.0, 1.0],
    ]
  )
  mask = np.array([[1, 1, 1, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 2, 2, 2, 3, 3, 3]])
  # Exclusive: min over counted i < t of t's sequence (empty -> 1).
  exclusive = [[1, 0.5, 0.5, 1, 1, 0.9, 0.6, 1], [1, 0.25, 1, 0.5, 0.5, 1, 8, 1]]
  np.testing.assert_allclose(_prefix(np.log(rho), mask, seg, False), exclusive, rtol=1e-6)
  # Inclusive: min over counted i <= t of t's sequence, over rho_t.
  inclusive = [[1, 0.25, 0.625, 1, 1, 1, 0.2, 1], [1, 0.0625, 1, 0.25, 1, 1, 1, 1]]
  np.testing.assert_allclose(_prefix(np.log(rho), mask, seg, True), inclusive, rtol=1e-6)


def test_prefix_zero_ratio():
  """rho = 0 (log -inf) zeroes the later tokens' factors; no NaN in either reading."""
  with np.errstate(divide="ignore"):
    log_rho = np.log([[1.0, 0.0, 1.5, 0.5]])
  ones = np.ones((1, 4))
  np.testing.assert_array_equal(_prefix(log_rho, ones, ones, False), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(_prefix(log_rho, ones, ones, True), [[1, 1, 0, 0]])


def test_prefix_loss_packed_equals_unpacked():
  """policy_loss with MinPRO on a packed row == the same sequences in rows of their own."""
  rng = np.random.default_rng(31)
  seqs = []
  for n, prompt in ((6, 2), (5, 1), (4, 2)):
    old = -rng.uniform(0.2, 3.0, n)
    logp = old + rng.normal(scale=0.3, size=n)
    logp[prompt] = old[prompt] + np.log(0.2)  # a small ratio early in each sequence
    adv = np.full(n, rng.normal())
    mask = (np.arange(n) >= prompt).astype(np.float64)
    seqs.append((logp, old, adv, mask))
  t = 16
  packed, alone = [seqs], [[s] for s in seqs]

  def loss_and_grad(rows, row_wide=False):
    (logp, old, adv, mask), seg = _layout(rows, t)
    if row_wide:  # one sequence id for the whole row: what ignoring segments amounts to
      seg = (seg > 0).astype(np.int32)
    rollout = _make(old, adv * mask, mask, seg=seg)
    # Wide clip range: every counted token's gradient carries its prefix factor.
    kw = dict(prefix="min_exclusive", clip_eps_low=10.0, clip_eps_high=10.0)
    return mask, *_loss_and_grad(policy.policy_loss, jnp.asarray(logp, jnp.float32), rollout, **kw)

  mask, loss, metrics, grad = loss_and_grad(packed)
  _, loss_alone, metrics_alone, grad_alone = loss_and_grad(alone)
  np.testing.assert_allclose(loss, loss_alone, rtol=1e-6)
  np.testing.assert_allclose(grad, _unpacked_at_packed(grad_alone, packed, t), rtol=1e-6)
  np.testing.assert_allclose(
    float(metrics["prefix_weight_mean"]), float(metrics_alone["prefix_weight_mean"]), rtol=1e-6
  )
  assert np.all(grad[mask > 0] != 0) and np.all(grad[mask == 0] == 0)
  # The test can tell: a prefix running along the whole row gives another loss.
  _, loss_row_wide, _, _ = loss_and_grad(packed, row_wide=True)
  assert abs(loss_row_wide - loss) > 1e-3 * abs(loss)


# --------------------------------------------------------------------------------------
# ST-PPO turn-level ratio.


def test_single_token_turns_equal_token_ppo():
  logp, rollout = _random(18, seq_adv=False)
  mask = np.asarray(rollout.batch.loss_mask)
  turn_ids = np.where(mask > 0, np.cumsum(mask, axis=1), 0).astype(np.int32)
  rollout = rollout.replace(turn_ids=jnp.asarray(turn_ids))
  a = _loss_and_grad(policy.ppo, logp, rollout)
  b = _loss_and_grad(policy.ppo, logp, rollout, ratio="turn")
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
  np.testing.assert_allclose(a[2], b[2], rtol=1e-5, atol=1e-9)


def test_one_turn_per_response_equals_gspo():
  logp, rollout = _random(19, spread=0.1)  # turn_ids = 1 on the whole completion
  a = _loss_and_grad(policy.gspo, logp, rollout)
  b = _loss_and_grad(policy.gspo, logp, rollout, ratio="turn")
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
  np.testing.assert_allclose(a[2], b[2], rtol=1e-5, atol=1e-9)
  assert np.any(a[2] != 0)


def test_turn_ratio_shared_permutation_invariant_and_mask_aware():
  mask = np.array([[1, 1, 0, 1, 1, 1]], np.float32)  # slot 2: a tool-output token
  turns = np.array([[1, 1, 1, 2, 2, 2]], np.int32)
  lr = np.array([[0.1, 0.3, 50.0, -0.2, 0.4, 0.1]], np.float32)
  w = np.exp(np.asarray(correction.group_mean(jnp.asarray(lr), jnp.asarray(mask), turns)))
  np.testing.assert_allclose(w[0, [0, 1]], np.exp(0.2), rtol=1e-6)
  np.testing.assert_allclose(w[0, 3:], np.exp(0.1), rtol=1e-6)
  perm = [1, 0, 2, 5, 3, 4]
  w_perm = np.exp(
    np.asarray(correction.group_mean(jnp.asarray(lr[:, perm]), jnp.asarray(mask), turns))
  )
  np.testing.assert_allclose(w_perm[0, [0, 1, 3, 4, 5]], w[0, [0, 1, 3, 4, 5]], rtol=1e-6)


def test_turn_ratio_ignores_tool_tokens_in_loss():
  logp, rollout = _random(20, turns=True)
  mask = np.asarray(rollout.batch.loss_mask).copy()
  i, t = np.argwhere(mask > 0)[1]
  mask[i, t] = 0.0  # a tool token inside a turn
  rollout = rollout.replace(batch=rollout.batch.replace(loss_mask=jnp.asarray(mask)))
  a = _loss_and_grad(policy.ppo, logp, rollout, ratio="turn")
  b = _loss_and_grad(policy.ppo, logp.at[i, t].add(5.0), rollout, ratio="turn")
  np.testing.assert_allclose(a[0], b[0], rtol=1e-7)
  np.testing.assert_array_equal(a[2], b[2])


def test_turn_equals_token_when_ratio_is_one():
  _, rollout = _random(21, turns=True)
  logp = rollout.old_logp
  a = _loss_and_grad(policy.ppo, logp, rollout)
  b = _loss_and_grad(policy.ppo, logp, rollout, ratio="turn")
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
  np.testing.assert_allclose(a[2], b[2], rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------
# Registry and errors.


def test_registry_and_defaults():
  for name in POLICY_LOSSES:
    assert registry.get(name) is getattr(policy, name)
  assert policy.PRESETS["grpo"]["kl_coef"] == 0.04
  assert (policy.PRESETS["dapo"]["clip_eps_low"], policy.PRESETS["dapo"]["clip_eps_high"]) == (
    0.2,
    0.28,
  )
  assert policy.PRESETS["gspo_token"]["ratio"] == "sequence_token"
  # The preset is what the registered name's signature (so its config section) shows.
  assert registry.hparams("grpo")["kl_coef"] == 0.04
  assert registry.hparams("dapo")["clip_eps_high"] == 0.28
  assert registry.family("dapo") == "policy"


def test_errors():
  logp, rollout = _random(22)
  norm = _norm(rollout)
  with pytest.raises(TypeError):
    policy.grpo(logp, rollout, norm=norm, clip_eps=0.1)
  with pytest.raises(ValueError, match="ratio=.segment.: must be one of"):
    policy.ppo(logp, rollout, norm=norm, ratio="segment")
  with pytest.raises(ValueError, match="prefix=.product.: must be one of"):
    policy.ppo(logp, rollout, norm=norm, prefix="product")
  with pytest.raises(ValueError, match="agg='mean': must be one of"):
    policy.ppo(logp, rollout, norm=norm, agg="mean")


def test_presets_cover_every_policy_loss_and_are_what_it_runs():
  """policy.PRESETS lists each registered policy loss; each is policy_loss at its preset."""
  assert set(policy.PRESETS) == set(POLICY_LOSSES)
  logp, rollout = _random(6)
  logp = logp + 0.3  # ratios away from 1, so the clip ranges matter
  for name, preset in policy.PRESETS.items():
    preset = {k: v for k, v in preset.items() if v is not None}
    want = _loss_and_grad(policy.policy_loss, logp, rollout, **preset)
    got = _loss_and_grad(registry.get(name), logp, rollout)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6, atol=1e-8, err_msg=name)
