"""Discriminative fine-tuning (losses/discft.py): the card's tests and a numpy reference.

(i) gamma = 1 and m = 1 give every weight 1, so L = -s(y) + s(y'); (ii) the u update is
log((1 - gamma) e^u + gamma mean_j e^{d_j}); (iii) no gradient flows through the weights,
u or the reference; (iv) gamma is 1 at step 0 and gamma_min from half the run on; (v) u
is keyed by the example id, not the batch position, and persists between calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import LOSSES, compute_normalizers, init_state
from jaxpost.losses.discft import gamma_at, update_u
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, Batch

T, V = 7, 11


def _batch(rng, groups: int, m: int, ids, *, empty_rows=()) -> Batch:
  """``groups`` x (1 + m) rows, each a prompt of 2 tokens then a response of 2-5 counted
  targets (rows in ``empty_rows`` count none)."""
  b = groups * (1 + m)
  roles = np.zeros((b, T), np.int32)
  for r in range(b):
    n = 0 if r in empty_rows else int(rng.integers(2, 6))
    roles[r, :2] = ROLE_PROMPT
    roles[r, 2 : 2 + n] = ROLE_ANSWER
  mask = (roles == ROLE_ANSWER).astype(np.float32)
  return Batch(
    tokens=jnp.asarray(rng.integers(0, V, (b, T)), jnp.int32),
    targets=jnp.asarray(rng.integers(0, V, (b, T)), jnp.int32),
    loss_mask=jnp.asarray(mask),
    segment_ids=jnp.ones((b, T), jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (b, T)),
    roles=jnp.asarray(roles),
    example_ids=jnp.asarray(np.repeat(np.asarray(ids), 1 + m), jnp.int32),
  )


def _call(logits, ref, batch, state, *, step=3, total=10, **hp):
  fn = LOSSES.bind("discft", hp)
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  return fn(logits, ref, batch, state, norm=norm, step=step, total_steps=total)


def _row_scores(logits, batch) -> tuple[np.ndarray, np.ndarray]:
  """(summed, mean) target log-probs per row, by a plain log-softmax."""
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  picked = np.take_along_axis(np.asarray(logp), np.asarray(batch.targets)[..., None], -1)[..., 0]
  mask = np.asarray(batch.loss_mask, np.float64)
  total = (picked * mask).sum(1)
  return total, total / np.maximum(mask.sum(1), 1)


def _reference_loss(logits, ref_logits, batch, u, *, form, m, tau, gamma):
  """The module doc's equations in numpy; returns (loss, new u per group, weights)."""
  s_sum, s_mean = _row_scores(logits, batch)
  r_sum, _ = _row_scores(ref_logits, batch)
  s = (s_sum if form == "dft" else s_mean).reshape(-1, 1 + m)
  d = s[:, 1:] / tau
  if form == "dft":
    d = d - r_sum.reshape(-1, 1 + m)[:, 1:]
  ids = np.asarray(batch.example_ids).reshape(-1, 1 + m)[:, 0]
  old = np.asarray(u, np.float64)[ids]
  if gamma == 1.0:
    new = np.log(np.mean(np.exp(d), 1))
  else:
    new = np.log((1 - gamma) * np.exp(old) + gamma * np.mean(np.exp(d), 1))
  weights = np.exp(d - new[:, None])
  loss = np.mean(-s[:, 0] + np.mean(weights * s[:, 1:], 1))
  return loss, new, weights


def _inputs(seed, groups=3, m=2, ids=(4, 0, 2), n=6):
  rng = np.random.default_rng(seed)
  batch = _batch(rng, groups, m, ids)
  logits = jnp.asarray(rng.normal(size=(groups * (1 + m), T, V)) * 1.5, jnp.float32)
  ref = jnp.asarray(rng.normal(size=(groups * (1 + m), T, V)) * 1.5, jnp.float32)
  u = jnp.asarray(rng.normal(size=n) * 2.0, jnp.float32)
  return batch, logits, ref, {"u": u}


def test_gamma_one_and_one_negative_is_gold_minus_negative():
  """Card (i): at step 0 (gamma 1) with m = 1 every weight is 1: L = -s(y) + s(y')."""
  batch, logits, ref, state = _inputs(0, groups=4, m=1, ids=(0, 1, 2, 3))
  loss, metrics, _ = _call(logits, ref, batch, state, step=0, negatives=1)
  assert float(metrics["weight"]) == pytest.approx(1.0, abs=1e-6)
  assert float(metrics["gamma"]) == pytest.approx(1.0, abs=1e-7)

  def plain(x):  # -s(y) + s(y'), mean over examples
    logp = jax.nn.log_softmax(x, axis=-1)
    picked = jnp.take_along_axis(logp, batch.targets[..., None], -1)[..., 0]
    s = jnp.sum(picked * batch.loss_mask, 1).reshape(-1, 2)
    return jnp.mean(-s[:, 0] + s[:, 1])

  np.testing.assert_allclose(float(loss), float(plain(logits)), rtol=1e-6)
  grad = jax.grad(lambda x: _call(x, ref, batch, state, step=0, negatives=1)[0])(logits)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(plain)(logits)), atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 0.85, 0.3, 1e-3])
def test_u_update_is_the_moving_log_mean(gamma):
  """Card (ii): u' = log((1 - gamma) e^u + gamma mean_j e^{d_j}) to 1e-6."""
  rng = np.random.default_rng(1)
  u = rng.normal(size=5) * 3
  d = rng.normal(size=(5, 3)) * 4 - 2
  got = np.asarray(update_u(jnp.asarray(u, jnp.float32), jnp.asarray(d, jnp.float32), gamma))
  if gamma == 1.0:
    want = np.log(np.mean(np.exp(d), 1))
  else:
    want = np.log((1 - gamma) * np.exp(u) + gamma * np.mean(np.exp(d), 1))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", ["dft", "dft2"])
@pytest.mark.parametrize("step", [0, 4, 9])
def test_loss_state_and_gradient_match_numpy_reference(form, step):
  """The whole loss, its next state and its gradient against the equations in numpy,
  the weights held constant (card (iii): sg on the weights)."""
  m, tau = 3, (1.0 if form == "dft" else 0.3)
  batch, logits, ref, state = _inputs(2, groups=3, m=m, ids=(5, 1, 3))
  hp = dict(form=form, negatives=m, tau=tau, gamma_min=0.8, gamma_decay=0.5)
  loss, metrics, nxt = _call(logits, ref, batch, state, step=step, total=10, **hp)
  gamma = float(gamma_at(step, 5.0, 0.8))
  want, new_u, weights = _reference_loss(
    logits, ref, batch, state["u"], form=form, m=m, tau=tau, gamma=gamma
  )
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  u = np.asarray(state["u"]).copy()
  u[[5, 1, 3]] = new_u
  np.testing.assert_allclose(np.asarray(nxt["u"]), u, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["weight"]), weights.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["gamma"]), gamma, rtol=1e-6)

  def surrogate(x):  # -s(y) + (1/m) sum_j c_j s(y'_j) with the weights as constants
    logp = jax.nn.log_softmax(x, axis=-1)
    picked = jnp.take_along_axis(logp, batch.targets[..., None], -1)[..., 0]
    s = jnp.sum(picked * batch.loss_mask, 1)
    if form == "dft2":
      s = s / jnp.maximum(jnp.sum(batch.loss_mask, 1), 1.0)
    s = s.reshape(-1, 1 + m)
    return jnp.mean(-s[:, 0] + jnp.mean(jnp.asarray(weights, jnp.float32) * s[:, 1:], 1))

  grad = jax.grad(lambda x: _call(x, ref, batch, state, step=step, total=10, **hp)[0])(logits)
  np.testing.assert_allclose(
    np.asarray(grad), np.asarray(jax.grad(surrogate)(logits)), rtol=1e-4, atol=1e-6
  )


def test_no_gradient_through_u_or_the_reference():
  """Card (iii): the loss is flat in u and in the reference's outputs."""
  batch, logits, ref, state = _inputs(3)
  g_ref = jax.grad(lambda r: _call(logits, r, batch, state)[0])(ref)
  g_u = jax.grad(lambda u: _call(logits, ref, batch, {"u": u})[0])(state["u"])
  assert not np.any(np.asarray(g_ref)) and not np.any(np.asarray(g_u))


def test_gamma_schedule():
  """Card (iv): 1 at step 0, gamma_min from step max_steps / 2 on, decreasing between."""
  total, low = 100, 0.85
  g = np.asarray([float(gamma_at(t, 0.5 * total, low)) for t in range(total)])
  assert g[0] == 1.0
  assert np.all(g[50:] == np.float32(low))
  assert np.all(np.diff(g[:51]) < 0)
  assert float(gamma_at(0, 0.0, low)) == np.float32(low)  # no decay: gamma_min throughout


def test_u_is_keyed_by_example_id_and_persists_between_calls():
  """Card (v): an example's u follows it to another batch position; others stay."""
  rng = np.random.default_rng(4)
  m, n = 2, 8
  state = init_state("discft", {"negatives": m}, n)
  assert np.asarray(state["u"]).shape == (n,) and not np.any(np.asarray(state["u"]))
  first = _batch(rng, 2, m, (3, 6))
  second = _batch(rng, 3, m, (1, 3, 5))  # example 3 moves from group 0 to group 1
  logits1 = jnp.asarray(rng.normal(size=(6, T, V)), jnp.float32)
  logits2 = jnp.asarray(rng.normal(size=(9, T, V)), jnp.float32)
  ref1, ref2 = jnp.zeros_like(logits1), jnp.zeros_like(logits2)
  _, _, after1 = _call(logits1, ref1, first, state, step=0, negatives=m)
  u1 = np.asarray(after1["u"])
  assert np.all(u1[[0, 1, 2, 4, 5, 7]] == 0) and np.all(u1[[3, 6]] != 0)
  _, _, after2 = _call(logits2, ref2, second, after1, step=7, total=10, negatives=m)
  u2 = np.asarray(after2["u"])
  _, new, _ = _reference_loss(
    logits2, ref2, second, u1, form="dft", m=m, tau=1.0, gamma=float(gamma_at(7, 5.0, 0.85))
  )
  np.testing.assert_allclose(u2[[1, 3, 5]], new, rtol=1e-5, atol=1e-6)
  assert u2[6] == u1[6]  # not in the second batch: kept
  assert np.all(u2[[0, 2, 4, 7]] == 0)


def test_a_group_with_an_empty_row_is_skipped_and_its_u_kept():
  rng = np.random.default_rng(5)
  batch = _batch(rng, 2, 2, (0, 1), empty_rows=(4,))  # group 1's first negative is empty
  logits = jnp.asarray(rng.normal(size=(6, T, V)), jnp.float32)
  state = {"u": jnp.asarray([0.5, -0.25], jnp.float32)}
  loss, _, nxt = _call(logits, jnp.zeros_like(logits), batch, state)
  assert float(np.asarray(nxt["u"])[1]) == -0.25 and float(np.asarray(nxt["u"])[0]) != 0.5
  only = jax.tree.map(lambda a: a[:3], batch)
  alone = _call(logits[:3], jnp.zeros_like(logits[:3]), only, state)[0]
  # The sum over examples is divided by norm.sequences / (1 + m): 5 counted rows / 3.
  np.testing.assert_allclose(float(loss) * 5 / 3, float(alone), rtol=1e-6)


def test_clear_errors():
  batch, logits, ref, state = _inputs(6)
  with pytest.raises(ValueError, match="reference"):
    _call(logits, None, batch, state)
  with pytest.raises(ValueError, match="example_ids"):
    _call(logits, ref, batch.replace(example_ids=None), state)
  with pytest.raises(ValueError, match="example ids"):
    init_state("discft", {}, 0)
  assert init_state("cross_entropy", {}, 0) is None
