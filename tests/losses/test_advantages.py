import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import advantages as adv_lib

ESTIMATORS = sorted(adv_lib.ADVANTAGES)


def test_grpo_golden():
  r = jnp.array([[1.0, 0.0, 0.0, 1.0]])
  # mean 0.5; Bessel std sqrt(1/3); population std 0.5.
  np.testing.assert_allclose(
    np.asarray(adv_lib.grpo(r, eps=0.0)), [[0.866025, -0.866025, -0.866025, 0.866025]], rtol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(adv_lib.grpo(r, eps=0.0, ddof=0)), [[1.0, -1.0, -1.0, 1.0]], rtol=1e-6
  )
  # eps sits in the denominator.
  np.testing.assert_allclose(
    np.asarray(adv_lib.grpo(r, eps=0.5, ddof=0)), [[0.5, -0.5, -0.5, 0.5]], rtol=1e-6
  )


def test_dr_grpo_and_rloo_golden():
  r = jnp.array([[1.0, 0.0, 0.0], [3.0, 1.0, 2.0]])
  np.testing.assert_allclose(
    np.asarray(adv_lib.dr_grpo(r)), [[2 / 3, -1 / 3, -1 / 3], [1.0, -1.0, 0.0]], rtol=1e-6
  )
  # Leave-one-out: 1 - 0, 0 - 1/2, 0 - 1/2 ; 3 - 1.5, 1 - 2.5, 2 - 2.
  np.testing.assert_allclose(
    np.asarray(adv_lib.rloo(r)), [[1.0, -0.5, -0.5], [1.5, -1.5, 0.0]], rtol=1e-6
  )


@pytest.mark.parametrize("name", ESTIMATORS)
def test_uniform_group_is_exactly_zero(name):
  # 0.1 is not representable: sum / count rounds, the zero must still be exact.
  r = jnp.array([[0.1, 0.1, 0.1], [1.0, 0.0, 1.0], [7.3, 7.3, 7.3]])
  a = np.asarray(adv_lib.get(name)(r))
  np.testing.assert_array_equal(a[[0, 2]], 0.0)
  assert np.all(a[1] != 0.0)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_singleton_group_is_zero(name):
  r = jnp.array([5.0, 1.0, 2.0])
  ids = jnp.array([0, 1, 1])
  a = np.asarray(adv_lib.get(name)(r, ids))
  assert a[0] == 0.0 and a[1] < 0 < a[2]


@pytest.mark.parametrize("name", ESTIMATORS)
def test_group_ids_layout_matches_grid(name):
  rng = np.random.default_rng(0)
  grid = rng.normal(size=(3, 4)).astype(np.float32)
  perm = rng.permutation(12)
  ids = np.repeat(np.array([7, 2, 40]), 4)  # non-contiguous, unsorted after permuting
  flat = adv_lib.get(name)(jnp.asarray(grid.reshape(-1)[perm]), jnp.asarray(ids[perm]))
  expected = np.asarray(adv_lib.get(name)(jnp.asarray(grid))).reshape(-1)[perm]
  np.testing.assert_allclose(np.asarray(flat), expected, rtol=1e-5, atol=1e-6)


def test_grpo_matches_numpy_per_group():
  rng = np.random.default_rng(1)
  r = rng.normal(size=(5, 6))
  ref = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(adv_lib.grpo(jnp.asarray(r))), ref, rtol=1e-5)


@pytest.mark.parametrize("a, b", [(3.0, -2.0), (0.25, 10.0)])
def test_affine_reward_scaling(a, b):
  r = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8)), jnp.float32)
  s = a * r + b
  np.testing.assert_allclose(
    np.asarray(adv_lib.grpo(s, eps=0.0)), np.asarray(adv_lib.grpo(r, eps=0.0)), atol=1e-4
  )
  np.testing.assert_allclose(
    np.asarray(adv_lib.dr_grpo(s)), a * np.asarray(adv_lib.dr_grpo(r)), atol=1e-4
  )
  np.testing.assert_allclose(
    np.asarray(adv_lib.rloo(s)), a * np.asarray(adv_lib.rloo(r)), atol=1e-4
  )


def test_rloo_is_scaled_dr_grpo():
  r = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5)), jnp.float32)
  np.testing.assert_allclose(
    np.asarray(adv_lib.rloo(r)), 5 / 4 * np.asarray(adv_lib.dr_grpo(r)), rtol=1e-5, atol=1e-6
  )


def _returns_reference(r, m, gamma):
  out = np.zeros_like(r)
  for b in range(r.shape[0]):
    for t in range(r.shape[1]):
      if m[b, t]:
        k, total = 0, 0.0
        for s in range(t, r.shape[1]):
          if m[b, s]:
            total += gamma**k * r[b, s]
            k += 1
        out[b, t] = total
  return out


def test_token_advantages_golden():
  # Step rewards on step-final tokens; slot 2 is a masked tool token carrying junk.
  r = jnp.array([[0.0, 1.0, 100.0, 0.0, -0.5, 0.0]])
  m = jnp.array([[1, 1, 0, 1, 1, 0]], jnp.float32)
  np.testing.assert_allclose(
    np.asarray(adv_lib.token_advantages(r, m)), [[0.5, 0.5, 0.0, -0.5, -0.5, 0.0]], rtol=1e-6
  )
  # gamma = 0.5 counts only counted tokens as steps: slot 1 sees 1 + 0.5 * 0 + 0.25 * -0.5.
  np.testing.assert_allclose(
    np.asarray(adv_lib.token_advantages(r, m, gamma=0.5)),
    [[0.5 - 0.0625, 1.0 - 0.125, 0.0, -0.25, -0.5, 0.0]],
    rtol=1e-6,
  )


def test_token_advantages_loop_reference():
  rng = np.random.default_rng(4)
  r = rng.normal(size=(3, 7)).astype(np.float32)
  m = (rng.random((3, 7)) > 0.3).astype(np.float32)
  got = adv_lib.token_advantages(jnp.asarray(r), jnp.asarray(m), gamma=0.9)
  np.testing.assert_allclose(np.asarray(got), _returns_reference(r, m, 0.9), rtol=1e-5, atol=1e-6)


def test_broadcast_to_tokens():
  a = jnp.array([2.0, -1.0])
  m = jnp.array([[0, 1, 1], [1, 1, 0]], jnp.float32)
  np.testing.assert_array_equal(
    np.asarray(adv_lib.broadcast_to_tokens(a, m)), [[0, 2, 2], [-1, -1, 0]]
  )


def test_informative_groups_and_zero_fraction():
  r = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(np.asarray(adv_lib.informative_groups(r)), [False, True, False])
  a = adv_lib.grpo(r)
  # Two uniform groups (6 rows) plus no exact zero in the mixed group: 6 / 9.
  assert float(adv_lib.zero_advantage_fraction(a)) == pytest.approx(6 / 9)
  assert float(adv_lib.zero_advantage_fraction(jnp.array([1e-3, 0.5]), atol=1e-2)) == 0.5


def test_get_lists_names():
  assert adv_lib.get("rloo") is adv_lib.rloo
  with pytest.raises(KeyError, match="unknown advantage 'gae'.*dr_grpo"):
    adv_lib.get("gae")
