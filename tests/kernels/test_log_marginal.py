"""log_marginal / segment_log_marginal: XLA path, Pallas kernel (interpret mode), reference.

Ground truth is a naive NumPy float64 loop; Pallas runs with interpret=True on CPU.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.test_util import check_grads

from pallas_kernels.log_marginal import kernel, ops, reference

NEG_INF = -np.inf
GUARDED = ["xla", "pallas"]  # the custom_vjp paths
ALL = GUARDED + ["reference"]


def _kw(impl):
  return {"implementation": impl, "interpret": True if impl == "pallas" else None}


# ---------------------------------------------------------------- NumPy f64 references


def _np_log_marginal(log_prior, log_p):
  a = np.asarray(log_prior, np.float64) + np.asarray(log_p, np.float64)
  out = np.empty(a.shape[0])
  for i, row in enumerate(a):
    m = row.max()
    out[i] = NEG_INF if m == NEG_INF else m + math.log(sum(math.exp(x - m) for x in row))
  return out


def _np_posterior(log_prior, log_p):
  a = np.asarray(log_prior, np.float64) + np.asarray(log_p, np.float64)
  score = _np_log_marginal(log_prior, log_p)
  r = np.zeros_like(a)
  for i in range(a.shape[0]):
    if score[i] != NEG_INF:
      r[i] = np.exp(a[i] - score[i])
  return r


def _np_segment_log_p(token_logp, ids, weights, num_rows, num_components):
  log_p = np.zeros((num_rows, num_components))
  for t, s in enumerate(np.asarray(ids)):
    if 0 <= s < num_rows * num_components:
      log_p[s // num_components, s % num_components] += float(weights[t]) * float(token_logp[t])
  return log_p


def _inputs(seed, num_rows, num_components, neg_inf_frac=0.0):
  """Random log-priors/log-likelihoods; a fraction of terms set to -inf, keeping each row live."""
  rng = np.random.default_rng(seed)
  log_prior = rng.normal(size=(num_rows, num_components)) - 1.0
  log_p = 3.0 * rng.normal(size=(num_rows, num_components)) - 2.0
  if neg_inf_frac:
    dead = rng.random((num_rows, num_components)) < neg_inf_frac
    dead[:, rng.integers(num_components)] = False  # at least one live term per row
    which = rng.random((num_rows, num_components)) < 0.5  # kill through the prior or log p
    log_prior[dead & which] = NEG_INF
    log_p[dead & ~which] = NEG_INF
  return log_prior.astype(np.float32), log_p.astype(np.float32)


def _value_and_vjp(fn, *args, cotangent):
  value, vjp = jax.vjp(jax.jit(fn), *args)
  return value, vjp(cotangent)


# ---------------------------------------------------------------- golden values


@pytest.mark.parametrize("impl", ALL)
def test_golden_two_component_mixture(impl):
  # pi = (1/2, 1/2), p = (0.2, 0.6): marginal 0.4, posterior (0.25, 0.75).
  log_prior = jnp.log(jnp.array([[0.5, 0.5]], jnp.float32))
  log_p = jnp.log(jnp.array([[0.2, 0.6]], jnp.float32))
  fn = lambda a, b: ops.log_marginal(a, b, **_kw(impl))  # noqa: E731
  score, (g_prior, g_p) = _value_and_vjp(fn, log_prior, log_p, cotangent=jnp.array([2.0]))
  np.testing.assert_allclose(score, [math.log(0.4)], rtol=1e-6)
  np.testing.assert_allclose(g_prior, [[0.5, 1.5]], rtol=1e-6)
  np.testing.assert_allclose(g_p, [[0.5, 1.5]], rtol=1e-6)


def test_golden_segment_log_marginal():
  # I = 2 rows, K = 2 components, uniform prior. Row 0: component 0 holds tokens with
  # log-probs -1, -2 (log p = -3), component 1 one token at -0.5. Row 1: component 0
  # one token at -3, component 1 no tokens (log p = 0). Ids -1 and 4 (= I*K) are
  # ignored even though their log-probs are NaN and -inf.
  token_logp = jnp.array([-1.0, -2.0, -0.5, -3.0, jnp.nan, -jnp.inf], jnp.float32)
  ids = jnp.array([0, 0, 1, 2, -1, 4], jnp.int32)
  log_prior = jnp.full((2, 2), math.log(0.5), jnp.float32)
  fn = lambda x: ops.segment_log_marginal(log_prior, x, ids, implementation="xla")  # noqa: E731
  score, (grad,) = _value_and_vjp(fn, token_logp, cotangent=jnp.array([1.0, 3.0]))
  z0 = math.exp(-3.0) + math.exp(-0.5)
  z1 = math.exp(-3.0) + 1.0
  np.testing.assert_allclose(score, [math.log(0.5 * z0), math.log(0.5 * z1)], rtol=1e-6)
  r00, r01, r10 = math.exp(-3.0) / z0, math.exp(-0.5) / z0, math.exp(-3.0) / z1
  np.testing.assert_allclose(grad, [r00, r00, r01, 3.0 * r10, 0.0, 0.0], rtol=1e-6, atol=0)


def test_component_segment_ids_golden():
  rows = jnp.array([0, 0, 1, 2, 1, -1, 1], jnp.int32)
  comps = jnp.array([0, 2, 1, 0, 3, 0, -1], jnp.int32)
  ids = ops.component_segment_ids(rows, comps, num_rows=2, num_components=3)
  # (1, 3) would alias (2, 0) = 6 without the range check; it must be -1.
  np.testing.assert_array_equal(ids, [0, 2, 4, -1, -1, -1, -1])


# ---------------------------------------------------------------- f64 ground truth


@pytest.mark.parametrize("impl", GUARDED)
@pytest.mark.parametrize(
  "shape,neg_inf_frac", [((1, 1), 0.0), ((7, 1), 0.0), ((13, 3), 0.3), ((37, 5), 0.4)]
)
def test_matches_f64_ground_truth(impl, shape, neg_inf_frac):
  log_prior, log_p = _inputs(0, *shape, neg_inf_frac=neg_inf_frac)
  g = np.random.default_rng(1).normal(size=shape[0]).astype(np.float32)
  fn = lambda a, b: ops.log_marginal(a, b, **_kw(impl))  # noqa: E731
  score, (g_prior, g_p) = _value_and_vjp(fn, log_prior, log_p, cotangent=jnp.asarray(g))
  assert score.dtype == jnp.float32 and score.shape == (shape[0],)
  np.testing.assert_allclose(score, _np_log_marginal(log_prior, log_p), rtol=2e-6, atol=2e-6)
  want = _np_posterior(log_prior, log_p) * g[:, None]
  np.testing.assert_allclose(g_prior, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_p, want, rtol=1e-5, atol=1e-6)
  # -inf terms get an exactly zero gradient (partially -inf rows).
  dead = np.isneginf(log_prior + log_p)
  assert np.all(np.asarray(g_prior)[dead] == 0.0)


def test_k1_is_the_identity():
  log_prior, log_p = _inputs(2, 9, 1)
  log_prior[4, 0] = NEG_INF
  g = jnp.arange(1.0, 10.0)
  for impl in GUARDED:
    fn = lambda a, b, impl=impl: ops.log_marginal(a, b, **_kw(impl))  # noqa: E731
    score, (g_prior, _) = _value_and_vjp(fn, log_prior, log_p, cotangent=g)
    # One component: score = log pi + log p exactly, posterior 1 (0 on the -inf row).
    np.testing.assert_array_equal(score, (log_prior + log_p)[:, 0])
    np.testing.assert_array_equal(g_prior[:, 0], np.where(np.arange(9) == 4, 0.0, g))


# ---------------------------------------------------------------- -inf guards


@pytest.mark.parametrize("impl", GUARDED)
def test_all_neg_inf_rows_give_neg_inf_and_zero_gradient(impl):
  log_prior, log_p = _inputs(3, 6, 4)
  log_prior[1] = NEG_INF  # no prior mass
  log_p[3] = NEG_INF  # no likelihood
  log_prior[5, :2] = NEG_INF  # each term killed by one side or the other
  log_p[5, 2:] = NEG_INF
  dead = np.array([False, True, False, True, False, True])
  # A non-finite cotangent on a dead row must not leak into the gradient either.
  g = jnp.array([1.0, jnp.inf, -2.0, 5.0, 0.5, jnp.nan], jnp.float32)
  fn = lambda a, b: ops.log_marginal(a, b, **_kw(impl))  # noqa: E731
  score, (g_prior, g_p) = _value_and_vjp(fn, log_prior, log_p, cotangent=g)
  assert np.all(np.isneginf(np.asarray(score)[dead]))
  np.testing.assert_allclose(
    np.asarray(score)[~dead], _np_log_marginal(log_prior, log_p)[~dead], rtol=2e-6
  )
  for grad in (g_prior, g_p):
    grad = np.asarray(grad)
    assert not np.isnan(grad).any()
    assert np.all(grad[dead] == 0.0)
    want = _np_posterior(log_prior, log_p)[~dead] * np.asarray(g)[~dead, None]
    np.testing.assert_allclose(grad[~dead], want, rtol=1e-5, atol=1e-7)


def test_reference_gradient_is_nan_on_dead_rows():
  # Documents why the guard exists: plain autodiff of logsumexp gives 0/0 there.
  log_prior = jnp.full((1, 3), -jnp.inf)
  grad = jax.jit(jax.grad(lambda a: reference.log_marginal_reference(a, jnp.zeros((1, 3))).sum()))
  assert np.isnan(np.asarray(grad(log_prior))).all()


# ---------------------------------------------------------------- Pallas kernel


@pytest.mark.parametrize("num_rows,block_rows", [(37, 16), (32, 16), (5, None)])
def test_pallas_interpret_matches_reference(num_rows, block_rows):
  log_prior, log_p = _inputs(4, num_rows, 7, neg_inf_frac=0.2)
  log_prior[num_rows // 2] = NEG_INF
  got = jax.jit(
    lambda a, b: ops.log_marginal(
      a, b, implementation="pallas", interpret=True, block_rows=block_rows
    )
  )(log_prior, log_p)
  want = reference.log_marginal_reference(jnp.asarray(log_prior), jnp.asarray(log_p))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_pallas_strict_interpreter_and_pow2_component_padding():
  # TPU interpret mode raising on out-of-bounds reads, with NaN-filled fresh buffers;
  # K = 5 padded to 8 with -inf columns as on GPU (Triton).
  log_prior, log_p = _inputs(5, 21, 5, neg_inf_frac=0.3)
  log_p[3] = NEG_INF
  strict = pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")
  got = ops._pallas_forward(
    jnp.asarray(log_prior),
    jnp.asarray(log_p),
    interpret=strict,
    block_rows=16,
    backend="cpu",
    pow2_components=True,
  )
  np.testing.assert_allclose(got, _np_log_marginal(log_prior, log_p), rtol=2e-6, atol=2e-6)


def test_kernel_rejects_partial_blocks():
  x = jnp.zeros((20, 3))
  with pytest.raises(ValueError, match="multiple of block_rows"):
    kernel.log_marginal_blocks(x, x, block_rows=16, interpret=True)


def test_paths_lower_to_what_they_claim():
  x = jnp.zeros((4, 3))
  jaxpr = lambda impl: str(jax.make_jaxpr(lambda a: ops.log_marginal(a, a, **_kw(impl)))(x))  # noqa: E731
  assert "pallas_call" in jaxpr("pallas")
  assert "pallas_call" not in jaxpr("xla")
  assert "custom_vjp" in jaxpr("xla") and "custom_vjp" not in jaxpr("reference")


# ---------------------------------------------------------------- dtypes and gradients


@pytest.mark.parametrize("impl", GUARDED)
def test_bf16_inputs_use_f32_math(impl):
  log_prior, log_p = _inputs(6, 11, 6, neg_inf_frac=0.2)
  lp, lq = jnp.asarray(log_prior, jnp.bfloat16), jnp.asarray(log_p, jnp.bfloat16)
  fn = lambda a, b: ops.log_marginal(a, b, **_kw(impl))  # noqa: E731
  score, (g_prior, g_p) = _value_and_vjp(fn, lp, lq, cotangent=jnp.ones(11))
  assert score.dtype == jnp.float32
  assert g_prior.dtype == jnp.bfloat16 and g_p.dtype == jnp.bfloat16
  # The bf16 values are exact in f64; only f32 rounding may remain (bf16 math would be
  # off by ~1e-2 here).
  exact = (np.asarray(lp, np.float64), np.asarray(lq, np.float64))
  np.testing.assert_allclose(score, _np_log_marginal(*exact), rtol=2e-6, atol=2e-6)
  # Posterior rounded once to bf16 (8 bits of mantissa).
  np.testing.assert_allclose(
    np.asarray(g_prior, np.float32), _np_posterior(*exact), rtol=8e-3, atol=1e-6
  )


def test_check_grads_xla_f64():
  with jax.enable_x64(True):
    log_prior, log_p = _inputs(7, 5, 4, neg_inf_frac=0.3)
    a, b = jnp.asarray(log_prior, jnp.float64), jnp.asarray(log_p, jnp.float64)
    fn = lambda a, b: ops.log_marginal(a, b, implementation="xla")  # noqa: E731
    assert fn(a, b).dtype == jnp.float64
    check_grads(jax.jit(fn), (a, b), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", GUARDED)
def test_second_derivative_is_finite_and_zero_on_dead_rows(impl):
  # Differentiating the backward differentiates the saved score; both paths route that
  # through the posterior jvp, so dead rows stay exactly 0 (and Pallas never needs a jvp).
  log_prior, log_p = _inputs(11, 5, 3, neg_inf_frac=0.3)
  log_prior[2] = NEG_INF
  f = lambda a: ops.log_marginal(a, jnp.asarray(log_p), **_kw(impl)).sum()  # noqa: E731
  second = jax.jit(jax.grad(lambda a: jnp.sum(jax.grad(f)(a) ** 2)))(jnp.asarray(log_prior))
  second = np.asarray(second)
  assert not np.isnan(second).any()
  np.testing.assert_array_equal(second[2], 0.0)
  # Hand form on live rows: d/da sum_k r_k^2 = 2 r * (r - sum_k r_k^2).
  r = _np_posterior(log_prior, log_p)
  want = 2.0 * r * (r - np.sum(r**2, axis=1, keepdims=True))
  np.testing.assert_allclose(second, want, rtol=1e-5, atol=1e-6)


def test_vmap_over_leading_axis():
  log_prior, log_p = _inputs(12, 6, 3, neg_inf_frac=0.3)
  lp, lq = jnp.asarray(log_prior).reshape(2, 3, 3), jnp.asarray(log_p).reshape(2, 3, 3)
  want = _np_log_marginal(log_prior, log_p).reshape(2, 3)
  for impl in GUARDED:
    got = jax.vmap(lambda a, b, impl=impl: ops.log_marginal(a, b, **_kw(impl)))(lp, lq)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


def test_check_grads_segment_xla_f64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(8)
    log_prior = jnp.asarray(rng.normal(size=(3, 2)))
    token_logp = jnp.asarray(-rng.random(10) * 3.0)
    weights = jnp.asarray(rng.random(10) + 0.5)
    ids = jnp.array([0, 0, 1, 2, 3, 3, 3, 5, -1, 9], jnp.int32)
    fn = lambda lp, x, w: ops.segment_log_marginal(lp, x, ids, w, implementation="xla")  # noqa: E731
    args = (log_prior, token_logp, weights)
    check_grads(jax.jit(fn), args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- segment sums


@pytest.mark.parametrize("impl", ALL)
def test_segment_log_marginal_matches_numpy(impl):
  num_rows, num_components, n = 5, 3, 40
  rng = np.random.default_rng(9)
  log_prior = rng.normal(size=(num_rows, num_components)).astype(np.float32)
  log_prior[1, :] = NEG_INF  # dead row
  log_prior[2, 0] = NEG_INF  # partially -inf
  token_logp = (-3.0 * rng.random(n)).astype(np.float32)
  ids = rng.integers(-2, num_rows * num_components + 2, size=n).astype(np.int32)
  ids[:3] = [-1, 15, 99]
  token_logp[:3] = [np.nan, -np.inf, np.nan]  # ignored tokens
  weights = (rng.random(n) + 0.5).astype(np.float32)
  g = rng.normal(size=num_rows).astype(np.float32)

  fn = lambda x, w: ops.segment_log_marginal(jnp.asarray(log_prior), x, ids, w, **_kw(impl))  # noqa: E731
  score, (grad, _) = _value_and_vjp(fn, token_logp, weights, cotangent=jnp.asarray(g))

  log_p = _np_segment_log_p(token_logp, ids, weights, num_rows, num_components)
  want = _np_log_marginal(log_prior, log_p)
  np.testing.assert_allclose(score, want, rtol=2e-6, atol=2e-6)
  # d score_i / d logp_t = r_{i, k(t)} * w_t * g_i; 0 for ignored tokens.
  r = _np_posterior(log_prior, log_p)
  want_grad = np.zeros(n)
  for t, s in enumerate(ids):
    if 0 <= s < num_rows * num_components:
      i, k = divmod(int(s), num_components)
      want_grad[t] = r[i, k] * weights[t] * g[i]
  live = np.array([0 <= s < 15 and s // 3 != 1 for s in ids])  # tokens outside the dead row
  np.testing.assert_allclose(np.asarray(grad)[live], want_grad[live], rtol=1e-5, atol=1e-7)
  if impl != "reference":  # the reference is unguarded on the dead row
    assert not np.isnan(np.asarray(grad)).any()
    np.testing.assert_array_equal(np.asarray(grad)[~live], 0.0)


def test_segment_log_likelihood_matches_reference_and_numpy():
  rng = np.random.default_rng(10)
  token_logp = (-rng.random(30)).astype(np.float32)
  ids = rng.integers(-1, 13, size=30).astype(np.int32)
  weights = rng.random(30).astype(np.float32)
  kw = {"num_rows": 4, "num_components": 3}
  got = ops.segment_log_likelihood(token_logp, ids, weights, **kw)
  ref = reference.segment_log_likelihood_reference(token_logp, ids, weights, **kw)
  want = _np_segment_log_p(token_logp, ids, weights, 4, 3)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ref, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- dispatch and validation


def test_dispatch_defaults():
  assert ops.default_implementation("cpu") == "xla"
  assert ops.default_implementation("tpu") == "pallas"
  assert ops.default_implementation("gpu") == "pallas"
  assert ops.default_implementation() == "xla"  # tests run on CPU
  assert ops._resolve(None, None) == ("xla", True)
  assert [ops.block_rows_for(*s) for s in [(5, 3), (100, 3), (10**6, 3), (10**6, 40000)]] == [
    16,
    64,
    512,
    16,
  ]


def test_rejects_bad_arguments():
  x = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="implementation"):
    ops.log_marginal(x, x, implementation="triton")
  with pytest.raises(ValueError, match="K >= 1"):
    ops.log_marginal(jnp.zeros((4, 0)), jnp.zeros((4, 0)))
  with pytest.raises(ValueError, match="power of two"):
    ops.log_marginal(x, x, implementation="pallas", block_rows=12)
  with pytest.raises(AssertionError):
    ops.log_marginal(x, jnp.zeros((4, 2)))
