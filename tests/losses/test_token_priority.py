"""Token Priority (losses/token_priority.py): golden values against NumPy references.

L = -(1/N) sum_t w_t log p(y_t), w_t = s_t r(role_t) sg[p_t]^alpha 1[sg p_t >= q], N counted
on the loss mask. Every reference below is float64 NumPy on the same logits; gradients
are w.r.t. the logits (or the LM head's hidden states), where the per-token gradient of
-log p_y is p - onehot(y).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import models, train
from jaxpost.losses import LOSSES, compute_normalizers, token_priority
from jaxpost.losses.head import FusedHead
from jaxpost.registry import HparamError
from jaxpost.types import ROLE_ANSWER, ROLE_PAD, ROLE_PROMPT, ROLE_THINK, Batch

P, TH, A, PAD = ROLE_PROMPT, ROLE_THINK, ROLE_ANSWER, ROLE_PAD
V = 7

# Two rows, row 0 packs two examples; prompt and padding targets are masked: N = 8.
_ROLES = [[P, TH, TH, A, P, A], [P, TH, A, A, PAD, PAD]]
_SEGMENTS = [[1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 0, 0]]


def _batch(roles=_ROLES, segments=None, *, mask=None, weights=None, targets=None, seed=0):
  roles = np.asarray(roles, np.int32)
  b, t = roles.shape
  rng = np.random.default_rng(seed)
  if mask is None:
    mask = np.isin(roles, (TH, A))
  if segments is None:
    segments = np.where(roles != PAD, 1, 0)
  if targets is None:
    targets = rng.integers(0, V, (b, t))
  return Batch(
    tokens=jnp.asarray(rng.integers(0, V, (b, t)), jnp.int32),
    targets=jnp.asarray(targets, jnp.int32),
    loss_mask=jnp.asarray(mask, jnp.float32),
    segment_ids=jnp.asarray(segments, jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
    roles=jnp.asarray(roles),
    weights=None if weights is None else jnp.asarray(weights, jnp.float32),
  )


def _logits(batch, seed=0, scale=2.0):
  b, t = batch.shape
  return jnp.asarray(np.random.default_rng(seed + 100).normal(size=(b, t, V)) * scale, jnp.float32)


def _norm(batch):
  return compute_normalizers(batch.loss_mask, batch.segment_ids)


@functools.cache
def _value_and_grad(name: str, hparams: tuple = ()):
  """Jitted ``(logits, batch) -> ((loss, metrics), dloss/dlogits)``."""
  fn = LOSSES.bind(name, dict(hparams))
  return jax.jit(jax.value_and_grad(lambda z, batch: fn(z, batch, norm=_norm(batch)), has_aux=True))


def _run(name, logits, batch, **hparams):
  (loss, metrics), g = _value_and_grad(name, tuple(sorted(hparams.items())))(logits, batch)
  return float(loss), {k: float(v) for k, v in metrics.items()}, np.asarray(g, np.float64)


def _np_softmax(logits, targets):
  """(p over V, p of the target), float64."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  return p, np.take_along_axis(p, np.asarray(targets)[..., None], -1)[..., 0]


def _np_dnll(logits, targets):
  """d(-log p_y)/dlogits = p - onehot(y), float64 [B, T, V]."""
  p, _ = _np_softmax(logits, targets)
  return p - np.eye(p.shape[-1])[np.asarray(targets)]


# ----------------------------------------------------------------------------------------
# (a) w = 1 is the NLL.


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("weights", [None, "ones"])
def test_unit_weights_equal_cross_entropy_exactly(reduction, weights):
  batch = _batch(segments=_SEGMENTS)
  if weights == "ones":
    batch = batch.replace(weights=jnp.ones(batch.shape, jnp.float32))
  logits = _logits(batch)
  loss, metrics, g = _run("token_priority", logits, batch, reduction=reduction)
  loss_ce, metrics_ce, g_ce = _run("cross_entropy", logits, batch, reduction=reduction)
  assert loss == loss_ce
  np.testing.assert_array_equal(g, g_ce)
  assert metrics["nll"] == metrics_ce["nll"]
  assert metrics["weight_mean"] == 1.0 and metrics["negative_frac"] == 0.0


def test_unit_weights_equal_cross_entropy_on_the_fused_head():
  batch = _batch(segments=_SEGMENTS)
  hidden, weight = _hidden_and_weight(batch)

  def loss(name, h, w):
    return LOSSES.get(name)(FusedHead(h, w, "xla", 0), batch, norm=_norm(batch))[0]

  (l_tp, g_tp), (l_ce, g_ce) = (
    jax.value_and_grad(functools.partial(loss, n), argnums=(0, 1))(hidden, weight)
    for n in ("token_priority", "cross_entropy")
  )
  assert float(l_tp) == float(l_ce)
  for a, b in zip(g_tp, g_ce, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------------
# (b) prob_power = alpha: w = sg(p)^alpha; alpha = 1 is DFT's sg(p) grad(-log p).


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_prob_power_is_dft_gradient(alpha):
  batch = _batch(segments=_SEGMENTS)
  logits = _logits(batch, seed=1)
  loss, metrics, g = _run("token_priority", logits, batch, prob_power=alpha)
  mask = np.asarray(batch.loss_mask, np.float64)
  n = mask.sum()
  _, p_y = _np_softmax(logits, batch.targets)
  w = mask * p_y**alpha  # stop-gradient weight
  np.testing.assert_allclose(loss, np.sum(w * -np.log(p_y)) / n, rtol=1e-5)
  expected = w[..., None] * _np_dnll(logits, batch.targets) / n
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(metrics["weight_mean"], w.sum() / n, rtol=1e-5)
  # Not the NLL gradient: the sg(p) factor matters.
  assert not np.allclose(g, mask[..., None] * _np_dnll(logits, batch.targets) / n, atol=1e-4)


# ----------------------------------------------------------------------------------------
# (c) signed priority flips a negative token's gradient; positive priority drops it.

_NEG = (0, 2)  # a counted (think) token of row 0


def _signed_batches(w=1.5):
  base = _batch(segments=_SEGMENTS)
  weights = np.asarray(base.loss_mask).copy()
  pos, neg = weights.copy(), weights.copy()
  pos[_NEG], neg[_NEG] = w, -w
  return base.replace(weights=jnp.asarray(pos)), base.replace(weights=jnp.asarray(neg))


def test_signed_priority_flips_the_gradient_of_a_negative_token():
  plus, minus = _signed_batches()
  logits = _logits(plus, seed=2)
  loss_p, _, g_p = _run("token_priority", logits, plus, priority="signed")
  loss_m, metrics_m, g_m = _run("token_priority", logits, minus, priority="signed")
  np.testing.assert_array_equal(g_m[_NEG], -g_p[_NEG])
  other = np.ones(plus.shape, bool)
  other[_NEG] = False
  np.testing.assert_array_equal(g_m[other], g_p[other])
  assert np.abs(g_p[_NEG]).max() > 1e-3
  # Ascent: the token's +1.5 nll / N turns into -1.5 nll / N.
  n = float(plus.loss_mask.sum())
  _, p_y = _np_softmax(logits, plus.targets)
  np.testing.assert_allclose(loss_m, loss_p - 2 * 1.5 * -np.log(p_y[_NEG]) / n, rtol=1e-5)
  np.testing.assert_allclose(metrics_m["negative_frac"], 1 / n, rtol=1e-6)


def test_positive_priority_drops_a_negative_token_but_still_counts_it():
  plus, minus = _signed_batches()
  logits = _logits(plus, seed=2)
  loss, metrics, g = _run("token_priority", logits, minus)  # priority="positive"
  _, _, g_p = _run("token_priority", logits, plus)
  assert np.all(g[_NEG] == 0)
  other = np.ones(plus.shape, bool)
  other[_NEG] = False
  np.testing.assert_array_equal(g[other], g_p[other])
  mask = np.asarray(minus.loss_mask, bool)
  _, p_y = _np_softmax(logits, minus.targets)
  kept = mask & other
  # Divided by ALL 8 counted tokens, the dropped one included (not by 7).
  np.testing.assert_allclose(loss, np.sum(-np.log(p_y[kept])) / mask.sum(), rtol=1e-6)
  assert not np.isclose(loss, np.sum(-np.log(p_y[kept])) / kept.sum(), rtol=1e-3)
  assert metrics["negative_frac"] == 0.0
  np.testing.assert_allclose(metrics["weight_mean"], kept.sum() / mask.sum(), rtol=1e-6)


# ----------------------------------------------------------------------------------------
# (d) negative="unlikelihood": |w| * -log(1 - p), by hand.


def test_unlikelihood_by_hand():
  # One row, V = 3. Token 3 is saturated (p = 1 in f32): -log(1 - p) is clamped at
  # -log(1e-6) and has no gradient.
  logits = jnp.asarray([[[2.0, 0, 0], [1.0, 1, 0], [0.0, 0, 3], [30.0, 0, 0]]])
  targets = [[0, 1, 2, 0]]
  weights = [[1.0, -2.0, 0.5, -1.0]]
  batch = _batch([[A, A, A, A]], weights=weights, targets=targets)
  loss, metrics, g = _run(
    "token_priority", logits, batch, priority="signed", negative="unlikelihood"
  )
  e = np.e
  p0 = e**2 / (e**2 + 2)
  p1 = e / (2 * e + 1)  # 1 - p1 = (e + 1) / (2e + 1)
  p2 = e**3 / (e**3 + 2)
  clamp = -np.log(1e-6)
  expected = (-np.log(p0) + 2 * np.log((2 * e + 1) / (e + 1)) - 0.5 * np.log(p2) + clamp) / 4
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  p = _np_softmax(logits, targets)[0]
  onehot = np.eye(3)[targets]
  # d/dz [-log(1 - p_y)] = p_y (onehot - p) / (1 - p_y).
  np.testing.assert_allclose(g[0, 1], 2 / 4 * p1 * (onehot[0, 1] - p[0, 1]) / (1 - p1), rtol=1e-5)
  np.testing.assert_allclose(g[0, 0], 1 / 4 * (p[0, 0] - onehot[0, 0]), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(g[0, 2], 0.5 / 4 * (p[0, 2] - onehot[0, 2]), rtol=1e-5, atol=1e-8)
  assert np.all(g[0, 3] == 0)
  np.testing.assert_allclose(metrics["negative_frac"], 2 / 4, rtol=1e-6)
  np.testing.assert_allclose(metrics["weight_mean"], (1 - 2 + 0.5 - 1) / 4, rtol=1e-6)
  # Pushing a token down lowers its probability (the opposite of the NLL's gradient).
  assert g[0, 1, 1] > 0


# ----------------------------------------------------------------------------------------
# (e) min_prob = q keeps tokens with p >= q; the dropped ones still count in N.


@pytest.mark.parametrize("q, kept", [(0.1, [0, 2]), (0.5, [0]), (0.04, [0, 1, 2])])
def test_min_prob_thresholds_by_hand(q, kept):
  probs = np.array([0.9, 0.05, 0.3])
  rows = np.stack([np.log([p, (1 - p) / 3, (1 - p) / 3, (1 - p) / 3]) for p in probs])
  logits = jnp.asarray(rows[None], jnp.float32)  # [1, 3, 4]; target 0 has p
  batch = _batch([[A, A, A]], targets=[[0, 0, 0]])
  loss, metrics, g = _run("token_priority", logits, batch, min_prob=q)
  np.testing.assert_allclose(loss, np.sum(-np.log(probs[kept])) / 3, rtol=1e-5)
  dropped = sorted(set(range(3)) - set(kept))
  assert np.all(g[0, dropped] == 0)
  dnll = _np_dnll(logits, batch.targets)
  np.testing.assert_allclose(g[0, kept], dnll[0, kept] / 3, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["weight_mean"], len(kept) / 3, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# (f) role factors.


@pytest.mark.parametrize(
  "prompt_w, think_w, answer_w", [(0.0, 0.5, 1.0), (0.25, 0.5, 1.0), (0.0, 1.0, 0.5)]
)
def test_role_weights_by_hand(prompt_w, think_w, answer_w):
  roles = [[P, TH, TH, A, A], [P, TH, A, A, A]]
  mask = np.ones((2, 5))  # the prompt targets count too here, to see prompt_weight
  batch = _batch(roles, mask=mask)
  logits = _logits(batch, seed=3)
  hp = dict(prompt_weight=prompt_w, think_weight=think_w, answer_weight=answer_w)
  loss, _, g = _run("token_priority", logits, batch, **hp)
  r = np.choose(np.asarray(roles) - 1, [prompt_w, think_w, answer_w])
  _, p_y = _np_softmax(logits, batch.targets)
  np.testing.assert_allclose(loss, np.sum(r * -np.log(p_y)) / 10, rtol=1e-6)
  np.testing.assert_allclose(g, r[..., None] * _np_dnll(logits, batch.targets) / 10, atol=1e-7)
  if prompt_w == 0:
    assert np.all(g[:, 0] == 0)


# ----------------------------------------------------------------------------------------
# (g) logits path == FusedHead path.

_D = 5


def _hidden_and_weight(batch, seed=4):
  rng = np.random.default_rng(seed)
  b, t = batch.shape
  hidden = jnp.asarray(rng.normal(size=(b, t, _D)), jnp.float32)
  weight = jnp.asarray(rng.normal(size=(_D, V)) / np.sqrt(_D) * 2, jnp.float32)
  return hidden, weight


@pytest.mark.parametrize(
  "hparams",
  [
    {"think_weight": 0.5},  # linear: the fused op's gradient-in-forward path
    {"priority": "signed", "reduction": "sequence_mean"},  # linear, signed ascent
    {"prob_power": 1.0, "min_prob": 0.05},  # data-dependent weights
    {"priority": "signed", "negative": "unlikelihood", "prob_power": 0.5},
  ],
  ids=["linear", "linear-signed-seq", "dft-threshold", "unlikelihood"],
)
def test_logits_path_equals_fused_head(hparams):
  batch, _ = _signed_batches(w=-0.7)  # weights: one negative token
  hidden, weight = _hidden_and_weight(batch)
  fn = LOSSES.bind("token_priority", hparams)
  norm = _norm(batch)

  def via_logits(h, w):
    logits = jnp.einsum("btd,dv->btv", h, w, precision=jax.lax.Precision.HIGHEST)
    return fn(logits, batch, norm=norm)

  def via_head(h, w):
    return fn(FusedHead(h, w, "xla", 0), batch, norm=norm)

  (loss, metrics), grads = jax.value_and_grad(via_logits, argnums=(0, 1), has_aux=True)(
    hidden, weight
  )
  (loss_f, metrics_f), grads_f = jax.value_and_grad(via_head, argnums=(0, 1), has_aux=True)(
    hidden, weight
  )
  np.testing.assert_allclose(float(loss_f), float(loss), rtol=1e-5)
  for k in metrics:
    np.testing.assert_allclose(float(metrics_f[k]), float(metrics[k]), rtol=1e-5, atol=1e-7)
  for a, b in zip(grads_f, grads, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(grads[0])).max() > 1e-3


# ----------------------------------------------------------------------------------------
# (h) hyperparameter validation names the field.


@pytest.mark.parametrize(
  "hparams, field",
  [
    ({"priority": "x"}, "priority"),
    ({"negative": "x"}, "negative"),
    ({"prob_power": -1.0}, "prob_power"),
    ({"prob_power": "1"}, "prob_power"),
    ({"min_prob": 1.0}, "min_prob"),
    ({"reduction": "sum"}, "reduction"),
    ({"think_weight": -0.5}, "think_weight"),
    ({"prompt_weight": -1.0}, "prompt_weight"),
    ({"answer_weight": -1.0}, "answer_weight"),
    ({"temperature": 1.0}, "temperature"),
  ],
)
def test_validate_hparams_rejects_bad_values_naming_the_field(hparams, field):
  with pytest.raises(HparamError, match=field):
    LOSSES.validate_hparams("token_priority", hparams)


def test_validate_hparams_accepts_negative_role_weights_when_signed():
  ok = {"priority": "signed", "think_weight": -0.5, "answer_weight": -1.0, "prob_power": 2}
  assert LOSSES.validate_hparams("token_priority", ok) == {**ok, "prob_power": 2.0}
  assert LOSSES.family("token_priority") == "token"
  assert LOSSES.get("token_priority") is token_priority.token_priority


# ----------------------------------------------------------------------------------------
# (i) through the train step, on a tiny decoder.


@functools.cache
def _model_parts():
  cfg = models.named_config(
    "tiny", vocab_size=37, n_layers=2, d_model=32, mlp_dim=64, n_heads=4, n_kv_heads=2, head_dim=8
  )
  return train.split_model(models.Decoder(cfg, rngs=nnx.Rngs(0)))


def _lm_batch(weights=None):
  rng = np.random.default_rng(9)
  roles = np.array([[P] * 3 + [TH] * 5 + [A] * 3 + [PAD]] * 4, np.int32)
  roles[1, 8:] = [A, A, PAD, PAD]
  tokens = rng.integers(1, 37, roles.shape)
  return Batch(
    tokens=jnp.asarray(tokens, jnp.int32),
    targets=jnp.asarray(np.roll(tokens, -1, axis=1), jnp.int32),
    loss_mask=jnp.asarray(np.isin(roles, (TH, A)), jnp.float32),
    segment_ids=jnp.asarray(roles != PAD, jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(roles.shape[1], dtype=jnp.int32), roles.shape),
    roles=jnp.asarray(roles),
    weights=None if weights is None else jnp.asarray(weights, jnp.float32),
  )


@functools.cache
def _step_fn(name, hparams=(), microbatches=1):
  graphdef, _, _ = _model_parts()
  objective = train.objective_for(name, graphdef, dict(hparams))

  def run(params, rest, batch):
    loss, metrics, grads, _ = train.accumulate_grads(
      objective, params, {"rest": rest}, batch, microbatches
    )
    return loss, metrics, grads

  return jax.jit(run)


def _step(name, batch, hparams=(), microbatches=1):
  _, params, rest = _model_parts()
  return _step_fn(name, tuple(sorted(dict(hparams).items())), microbatches)(params, rest, batch)


def test_train_step_weights_two_give_twice_cross_entropy():
  loss_ce, _, g_ce = _step("cross_entropy", _lm_batch())
  batch = _lm_batch(weights=np.full((4, 12), 2.0))
  loss, metrics, g = _step("token_priority", batch)
  assert float(loss) == 2 * float(loss_ce)
  assert float(metrics["weight_mean"]) == 2.0
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ce), strict=True):
    np.testing.assert_allclose(np.asarray(a), 2 * np.asarray(b), rtol=1e-6, atol=1e-9)


def test_train_step_signed_unlikelihood_has_finite_grads_and_accumulates():
  rng = np.random.default_rng(10)
  weights = rng.choice([-1.0, 0.5, 1.0], size=(4, 12))
  batch = _lm_batch(weights=weights)
  hp = {"priority": "signed", "negative": "unlikelihood", "prob_power": 0.5, "think_weight": 0.5}
  loss, metrics, g = _step("token_priority", batch, hp)
  leaves = [np.asarray(x) for x in jax.tree.leaves(g)]
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(x)) for x in leaves)
  assert max(np.abs(x).max() for x in leaves) > 1e-4
  assert 0 < float(metrics["negative_frac"]) < 1
  loss2, metrics2, g2 = _step("token_priority", batch, hp, microbatches=2)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)
  for k in metrics:
    np.testing.assert_allclose(float(metrics2[k]), float(metrics[k]), rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(g2), leaves, strict=True):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("marked_weight, priority", [(0.0, "positive"), (-1.0, "signed")])
def test_marked_tokens_take_their_own_weight(marked_weight, priority):
  """Tokens the data marks (ROLE_MARKED, e.g. data.corrupt's noise) are dropped at 0 and
  unlearned below 0; N still counts them."""
  from jaxpost.types import ROLE_MARKED as MK

  roles = [[P, TH, MK, A, P, A], [P, MK, A, A, PAD, PAD]]
  mask = np.isin(roles, (TH, A, MK))
  batch = _batch(roles, _SEGMENTS, mask=mask)
  logits = _logits(batch, seed=3)
  loss, _, _ = _run("token_priority", logits, batch, marked_weight=marked_weight, priority=priority)
  _, p_y = _np_softmax(logits, batch.targets)
  w = np.where(np.asarray(roles) == MK, marked_weight, 1.0) * mask
  np.testing.assert_allclose(loss, np.sum(w * -np.log(p_y)) / mask.sum(), rtol=1e-5)
  assert LOSSES.hparams("token_priority")["marked_weight"] == 1.0


def test_negative_marked_weight_needs_signed_priority():
  with pytest.raises((ValueError, HparamError), match="marked_weight"):
    LOSSES.bind("token_priority", {"marked_weight": -1.0})
