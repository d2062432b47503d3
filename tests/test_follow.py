"""A copy of the student that follows it (lagged / EMA), kept in the optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpost import optim, train
from jaxpost.types import Batch


def _sgd_follow(kind, **kw):
  return optax.chain(optax.sgd(1.0), optim.follow_params(kind, **kw))


def _run(tx, grads_seq, params):
  state = tx.init(params)
  history = []
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    history.append((params, optim.followed_params(state)))
  return history


def test_lagged_copy_syncs_every_n_updates_and_updates_pass_through():
  params = {"w": jnp.zeros(2)}
  grads = [{"w": -jnp.full(2, float(k + 1))} for k in range(5)]  # sgd(1): w += k + 1
  history = _run(_sgd_follow("lagged", every=2), grads, params)
  ws = [float(p["w"][0]) for p, _ in history]
  copies = [float(c["w"][0]) for _, c in history]
  assert ws == [1.0, 3.0, 6.0, 10.0, 15.0]  # the same as sgd alone: a no-op on updates
  assert copies == [0.0, 3.0, 3.0, 10.0, 10.0]  # synced after updates 2 and 4


def test_ema_copy_is_the_moving_average_of_the_parameters():
  params = {"w": jnp.zeros(())}
  grads = [{"w": -jnp.ones(())} for _ in range(3)]  # w = 1, 2, 3
  history = _run(_sgd_follow("ema", decay=0.5), grads, params)
  expected, c = [], 0.0
  for w in (1.0, 2.0, 3.0):
    c = 0.5 * c + 0.5 * w
    expected.append(c)
  np.testing.assert_allclose([float(c["w"]) for _, c in history], expected)


def test_follow_rejects_bad_options_and_absent_copy_reads_none():
  with pytest.raises(ValueError, match="follow kind"):
    optim.follow_params("slow")
  with pytest.raises(ValueError, match="every >= 1"):
    optim.follow_params("lagged", every=0)
  assert optim.followed_params(optax.adam(1e-3).init({"w": jnp.zeros(2)})) is None


def test_train_step_passes_the_copy_as_frozen_teacher():
  """The objective receives frozen["teacher"] = (the copy, rest); the copy trails params."""
  seen = []

  def objective(params, frozen, batch, norm):
    seen.append(frozen["teacher"])
    w, copy = params["w"], jax.lax.stop_gradient(frozen["teacher"][0]["w"])
    return jnp.sum((w - 3.0) ** 2) + 0.0 * jnp.sum(copy), {"copy": jnp.sum(copy)}

  tx = optax.chain(optax.sgd(0.1), optim.follow_params("lagged", every=2))
  state = train.init_train_state({"w": jnp.zeros(2)}, tx, 0)
  step = train.make_train_step(objective, tx, donate=False)
  ones = np.ones((1, 2), np.float32)
  batch = Batch(*(np.ones((1, 2), np.int32),) * 2, ones, *(np.ones((1, 2), np.int32),) * 3)
  copies, params = [], []
  for _ in range(4):
    state, m = step(state, batch, {"rest": {}})
    copies.append(float(m["train/copy"]))
    params.append(np.asarray(state.params["w"]).sum())
  assert copies[0] == 0.0 and copies[1] == 0.0  # the start, until the first sync
  np.testing.assert_allclose(copies[2:], [params[1], params[1]], rtol=1e-6)
  assert len(seen) == 1  # traced once
  with pytest.raises(ValueError, match="choose one"):
    train.with_followed_teacher({"rest": {}, "teacher": 1}, state.opt_state)
