"""The FLaG head: the card's properties (K = 1 is a logistic probe, group permutation
invariance, a stable log-marginal) and the claim it is built on (heterogeneous error
mechanisms that one linear score cannot separate)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpost.detection import flag, metrics


def _features(n=64, seed=0):
  rng = np.random.default_rng(seed)
  return {"hidden": rng.normal(size=(n, 6)), "stats": rng.normal(size=(n, 3))}


def test_k1_is_a_logistic_probe_after_the_same_training():
  feats = _features(128)
  labels = (feats["hidden"][:, 0] + feats["stats"][:, 1] > 0).astype(int)
  head = flag.FlagHead({"hidden": 6, "stats": 3}, groups=1, proj_dim=0, rngs=nnx.Rngs(0))
  # The probe: log sigmoid(w . x + b) on the concatenated raw features, from the
  # head's own initial detector, trained by the same AdamW on the same minibatches.
  w0, b0 = head.reliability.kernel[...], head.reliability.bias[...]
  trained, _ = flag.train_head(head, feats, labels, steps=40, lr=0.05, batch_size=32, seed=3)

  x = np.concatenate([feats["hidden"], feats["stats"]], axis=1)  # families in name order
  params = {"w": w0, "b": b0}
  opt = optax.adamw(0.05, weight_decay=1e-4)
  state = opt.init(params)

  def loss(p, xb, yb):
    z = (xb @ p["w"] + p["b"])[:, 0]
    return -jnp.mean(yb * jax.nn.log_sigmoid(z) + (1 - yb) * jax.nn.log_sigmoid(-z))

  rng = np.random.default_rng(3)
  for _ in range(40):
    rows = rng.choice(128, size=32, replace=False)
    grads = jax.grad(loss)(params, jnp.asarray(x[rows], jnp.float32), labels[rows])
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  z = (jnp.asarray(x, jnp.float32) @ params["w"] + params["b"])[:, 0]
  scores = trained(feats)
  np.testing.assert_allclose(scores.log_correct, jax.nn.log_sigmoid(z), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scores.log_incorrect, jax.nn.log_sigmoid(-z), rtol=1e-5, atol=1e-6)


def test_early_stopping_returns_the_head_at_its_best_held_out_loss():
  # Few noisy answers and many features: the held-out loss falls, then rises as the
  # head overfits; the head returned is the one at the held-out minimum.
  rng = np.random.default_rng(0)

  def data(n):
    x = rng.normal(size=(n, 40)).astype(np.float32)
    y = (x[:, 0] + 1.5 * rng.normal(size=n) > 0).astype(int)
    return {"x": x}, y

  (train, y), (held, y_held) = data(60), data(400)
  kwargs = dict(steps=200, lr=0.05, batch_size=60, seed=0, weight_decay=0.0)

  def fresh():
    return flag.FlagHead({"x": 40}, groups=1, proj_dim=0, rngs=nnx.Rngs(1))

  def held_loss(head):
    return float(flag.bce_loss(head(held), jnp.asarray(y_held)))

  last, _ = flag.train_head(fresh(), train, y, **kwargs)
  stopped, history = flag.train_head(fresh(), train, y, validation=(held, y_held),
                                     eval_every=25, **kwargs)  # fmt: skip
  assert len(history) == 200  # training itself is unchanged: same minibatches, same steps
  assert held_loss(stopped) < held_loss(last) - 0.05
  # ... and no trained checkpoint it saw was better: retrain to each evaluated step.
  best = min(held_loss(flag.train_head(fresh(), train, y, **{**kwargs, "steps": k})[0])
             for k in range(25, 201, 25))  # fmt: skip
  assert held_loss(stopped) == pytest.approx(best, rel=1e-5)
  # Never the untrained initialisation, even when every trained step is worse there.
  head, _ = flag.train_head(fresh(), train, y, validation=(held, 1 - y_held), eval_every=25,
                            **kwargs)  # fmt: skip
  assert not np.array_equal(head.reliability.kernel[...], fresh().reliability.kernel[...])


@pytest.mark.parametrize("energy", flag.ENERGIES)
def test_permuting_the_groups_leaves_the_scores_unchanged(energy):
  feats = _features()
  head = flag.FlagHead({"hidden": 6, "stats": 3}, groups=5, proj_dim=4, energy=energy,
                       rngs=nnx.Rngs(1))  # fmt: skip
  before = head(feats)
  perm = np.array([3, 0, 4, 1, 2])
  head.reliability.kernel[...] = head.reliability.kernel[...][:, perm]
  head.reliability.bias[...] = head.reliability.bias[...][perm]
  if energy == "dot":
    head.router.kernel[...] = head.router.kernel[...][:, perm]
    head.router.bias[...] = head.router.bias[...][perm]
  else:
    head.centers[...] = head.centers[...][perm]
  after = head(feats)
  # equal up to the summation order of the router's softmax
  np.testing.assert_allclose(after.log_correct, before.log_correct, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(after.log_route, before.log_route[:, perm], rtol=1e-5, atol=1e-6)


def test_the_log_marginals_match_the_naive_sum_and_are_complementary():
  feats = _features()
  head = flag.FlagHead({"hidden": 6, "stats": 3}, groups=8, proj_dim=5, rngs=nnx.Rngs(2))
  s = head(feats)
  h = head.embed(feats)
  pi = jnp.exp(head.route(h))
  p = jax.nn.sigmoid(head.reliability(h))
  np.testing.assert_allclose(jnp.exp(s.log_correct), jnp.sum(pi * p, -1), rtol=1e-5)
  np.testing.assert_allclose(jnp.exp(s.log_correct) + jnp.exp(s.log_incorrect), 1.0, rtol=1e-6)


def test_extreme_inputs_give_no_nan_scores_or_gradients():
  head = flag.FlagHead({"x": 2}, groups=3, proj_dim=0, energy="distance", rngs=nnx.Rngs(0))
  feats = {"x": jnp.array([[1e4, -1e4], [0.0, 0.0], [-3e3, 5e3]])}
  head.reliability.kernel[...] = jnp.full((2, 3), 50.0)
  s = head(feats)
  assert np.all(np.isfinite(s.log_correct)) and np.all(np.isfinite(s.log_incorrect))
  assert np.all(s.log_correct <= 0) and np.all(s.log_incorrect <= 0)
  graphdef, params, rest = nnx.split(head, nnx.Param, ...)
  grads = jax.grad(
    lambda p: flag.bce_loss(nnx.merge(graphdef, p, rest)(feats), jnp.array([1, 0, 1]))
  )(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_ranking_loss_by_hand():
  s = flag.Scores(
    log_correct=jnp.log(jnp.array([0.9, 0.2, 0.6])),
    log_incorrect=jnp.log(jnp.array([0.1, 0.8, 0.4])),
    log_route=jnp.zeros((3, 1)),
  )
  o = np.log([9.0, 0.25, 1.5])  # log-odds
  # pairs (correct, incorrect): (0, 1), (2, 1)
  expected = np.mean([np.log1p(np.exp(-(o[0] - o[1]))), np.log1p(np.exp(-(o[2] - o[1])))])
  assert float(flag.ranking_loss(s, jnp.array([1, 0, 1]))) == pytest.approx(expected, rel=1e-5)
  assert float(flag.ranking_loss(s, jnp.array([1, 1, 1]))) == 0.0


@pytest.mark.parametrize("loss", flag.LOSSES)
def test_groups_separate_what_one_linear_score_cannot(loss):
  """Two error mechanisms: where feature a > 0 a high b means correct, where a < 0 a
  high b means wrong (an XOR). A logistic probe (K = 1) stays near chance; FLaG routes
  on a and gives each group its own detector."""
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 2000))
  feats = {"a": (np.sign(a) + 0.3 * rng.normal(size=2000))[:, None], "b": b[:, None]}
  labels = ((a > 0) == (b > 0)).astype(int)
  train, test = slice(0, 1500), slice(1500, None)
  split = {k: v[train] for k, v in feats.items()}
  held = {k: v[test] for k, v in feats.items()}

  def auroc(groups):
    head = flag.FlagHead({"a": 1, "b": 1}, groups=groups, proj_dim=0, energy="distance",
                         rngs=nnx.Rngs(0))  # fmt: skip
    head, history = flag.train_head(head, split, labels[train], loss=loss, steps=400, lr=0.05)
    assert history[-1] < history[0]
    return metrics.auroc(np.asarray(head(held).log_correct), labels[test])

  assert auroc(1) < 0.6
  assert auroc(4) > 0.9


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="energy"):
    flag.FlagHead({"x": 2}, energy="cosine", rngs=nnx.Rngs(0))
  head = flag.FlagHead({"x": 2}, groups=2, rngs=nnx.Rngs(0))
  with pytest.raises(KeyError, match="families"):
    head({"y": jnp.zeros((1, 2))})
  with pytest.raises(ValueError, match="expected"):
    head({"x": jnp.zeros((1, 3))})
  with pytest.raises(ValueError, match="loss"):
    flag.train_head(head, {"x": np.zeros((4, 2))}, np.zeros(4), loss="hinge")
