"""The dynamic-instability signal's card properties (rl.md section 15)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost.detection import features

NAMES = features.INSTABILITY_STATS


def _stat(out, name):
  return np.asarray(out)[:, NAMES.index(name)]


def _random_p(t=12, v=30, seed=0):
  logits = jax.random.normal(jax.random.key(seed), (1, t, v)) * 3
  return features.topk_distribution(jax.nn.log_softmax(logits), 5)


def test_topk_renormalises_to_one_on_k_tokens():
  p = _random_p()
  np.testing.assert_allclose(jnp.sum(p, -1), 1.0, rtol=1e-6)
  assert np.all(np.sum(np.asarray(p) > 0, -1) == 5)


def test_identical_consecutive_distributions_have_zero_jsd():
  p = jnp.tile(_random_p(t=1), (1, 6, 1))
  out = features.instability(p, jnp.ones((1, 6)))
  assert _stat(out, "jsd_max")[0] == 0.0 and _stat(out, "jsd_mean")[0] == 0.0


def test_jsd_is_between_zero_and_ln2():
  p = _random_p(t=40, seed=1)
  d = features.jsd(p[:, 1:], p[:, :-1])
  assert np.all(d >= 0) and np.all(d <= np.log(2) + 1e-6)
  disjoint = features.jsd(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(disjoint, np.log(2), rtol=1e-6)


def test_one_hot_distributions_have_zero_entropy():
  p = jax.nn.one_hot(jnp.array([[1, 1, 1]]), 4)
  out = features.instability(p, jnp.ones((1, 3)))
  assert _stat(out, "entropy_mean")[0] == 0.0 and _stat(out, "peak")[0] == 0.0


def test_peak_ignores_an_appended_step_below_it():
  p = _random_p(t=10, seed=2)
  base = features.instability(p, jnp.ones((1, 10)))
  one_hot_tail = jnp.concatenate([p, p[:, -1:]], axis=1)  # same as the last: D = 0, H_last
  longer = features.instability(one_hot_tail, jnp.ones((1, 11)))
  # The appended step's I = 0 + H_last <= the current max: S unchanged.
  assert _stat(longer, "peak")[0] == _stat(base, "peak")[0]


def test_prefix_peaks_grow_with_the_window_and_padding_is_ignored():
  p = _random_p(t=20, seed=3)
  mask = jnp.concatenate([jnp.zeros((1, 3)), jnp.ones((1, 17))], axis=1)  # 3 prompt cols
  out = np.asarray(features.instability(p, mask))[0]
  prefix = [out[NAMES.index(f"peak_first_{w}")] for w in features.INSTABILITY_WINDOWS]
  assert prefix == sorted(prefix) and prefix[-1] <= out[NAMES.index("peak")]
  alone = np.asarray(features.instability(p[:, 3:], jnp.ones((1, 17))))[0]
  np.testing.assert_allclose(out, alone, rtol=1e-6)
