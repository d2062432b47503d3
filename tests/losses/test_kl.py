import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import kl


def test_golden_values():
  # pi = 0.5, pi_ref = 0.25: d = log(pi_ref / pi) = -log 2.
  logp = jnp.log(jnp.array([[0.5]]))
  ref = jnp.log(jnp.array([[0.25]]))
  ln2 = np.log(2.0)
  np.testing.assert_allclose(float(kl.k1(logp, ref)[0, 0]), ln2, rtol=1e-6)
  np.testing.assert_allclose(float(kl.k2(logp, ref)[0, 0]), 0.5 * ln2**2, rtol=1e-6)
  np.testing.assert_allclose(float(kl.k3(logp, ref)[0, 0]), 0.5 + ln2 - 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(kl.ESTIMATORS))
def test_zero_at_equality(name):
  logp = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)) - 2.0, jnp.float32)
  np.testing.assert_array_equal(np.asarray(kl.kl_penalty(logp, logp, name)), 0.0)


@pytest.mark.parametrize("name", ["k2", "k3"])
def test_nonnegative(name):
  rng = np.random.default_rng(1)
  logp = rng.normal(size=(4, 64)) * 3
  # Include tiny, huge and exactly-representable gaps.
  d = np.concatenate([rng.normal(size=(4, 32)) * 5, rng.normal(size=(4, 32)) * 1e-7], axis=1)
  out = kl.kl_penalty(jnp.asarray(logp, jnp.float32), jnp.asarray(logp + d, jnp.float32), name)
  assert np.all(np.asarray(out) >= 0.0)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_under_pi(name):
  """sum_v pi(v) k(v) equals the exact KL(pi || pi_ref) for k1 and k3."""
  rng = np.random.default_rng(2)
  logits, ref_logits = rng.normal(size=(2, 7))
  logp = logits - np.log(np.sum(np.exp(logits)))
  ref = ref_logits - np.log(np.sum(np.exp(ref_logits)))
  exact = np.sum(np.exp(logp) * (logp - ref))
  k = np.asarray(kl.kl_penalty(jnp.asarray(logp[None]), jnp.asarray(ref[None]), name))[0]
  np.testing.assert_allclose(np.sum(np.exp(logp) * k), exact, rtol=1e-5)


def test_k2_is_biased():
  """k2's expectation is not the KL (guards against k2 silently aliasing k1/k3)."""
  logp = np.log(np.array([0.7, 0.3]))
  ref = np.log(np.array([0.2, 0.8]))
  exact = np.sum(np.exp(logp) * (logp - ref))
  k = np.asarray(kl.k2(jnp.asarray(logp[None]), jnp.asarray(ref[None])))[0]
  assert abs(np.sum(np.exp(logp) * k) - exact) > 0.05


def test_k3_gradient():
  logp = jnp.array([[-1.0, -2.0, -0.5]])
  ref = jnp.array([[-1.5, -1.0, -0.5]])
  g = jax.grad(lambda z: jnp.sum(kl.k3(z, ref)))(logp)
  np.testing.assert_allclose(np.asarray(g), 1.0 - np.exp(np.asarray(ref - logp)), rtol=1e-6)


def test_f32_from_bf16():
  logp = jnp.full((1, 2), -1.0, jnp.bfloat16)
  ref = jnp.full((1, 2), -2.0, jnp.bfloat16)
  for name in kl.ESTIMATORS:
    assert kl.kl_penalty(logp, ref, name).dtype == jnp.float32


def test_unknown_estimator():
  z = jnp.zeros((1, 1))
  with pytest.raises(ValueError, match="unknown KL estimator 'k4'.*k1"):
    kl.kl_penalty(z, z, "k4")
