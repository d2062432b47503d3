"""Merging methods against hand computations and the cards' properties (12a, 12b)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.merging import methods as m

KEY = jax.random.key(0)


def _tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(4, 6)) * scale, jnp.float32),
          "b": jnp.asarray(rng.normal(size=(6,)) * scale, jnp.float32)}  # fmt: skip


def _all_methods(base, models):
  a, b = models[0], models[-1]
  return {
    "task_arithmetic": m.task_arithmetic(base, models),
    "ties": m.ties(base, models, density=0.5),
    "dare": m.dare(base, models, density=0.7, key=KEY),
    "dare_ties": m.dare(base, models, density=0.7, key=KEY, then="ties"),
    "breadcrumbs": m.breadcrumbs(base, models, density=0.8, outliers=0.1),
    "slerp": m.slerp(a, b, 0.3),
    "model_stock": m.model_stock(base, models),
    "bai": m.bai(a, b, base, w=0.4, v=0.7),
  }


def test_merging_identical_models_is_the_identity_for_every_method():
  x = _tree(0)
  for name, out in _all_methods(x, [x, x]).items():
    for k in x:
      np.testing.assert_allclose(out[k], x[k], rtol=1e-6, atol=1e-6, err_msg=name)


def test_task_arithmetic_by_hand():
  base, a, b = _tree(0), _tree(1), _tree(2)
  out = m.task_arithmetic(base, [a, b], weights=[0.5, 2.0], scale=0.3)
  want = base["w"] + 0.3 * (0.5 * (a["w"] - base["w"]) + 2.0 * (b["w"] - base["w"]))
  np.testing.assert_allclose(out["w"], want, rtol=1e-6)


def test_ties_on_identical_task_vectors_returns_the_trimmed_vector():
  base, a = _tree(0), _tree(1)
  out = m.ties(base, [a, a, a], density=0.25)
  tau = np.asarray(a["w"] - base["w"])
  keep = np.abs(tau) >= np.sort(np.abs(tau).ravel())[-6]  # top 25% of 24 entries
  np.testing.assert_allclose(out["w"] - base["w"], np.where(keep, tau, 0), rtol=1e-6, atol=1e-7)


def test_ties_sign_election_ignores_disagreeing_entries():
  base = {"x": jnp.zeros(3)}
  models = [{"x": jnp.asarray([1.0, -2.0, 3.0])}, {"x": jnp.asarray([3.0, 1.0, -1.0])},
            {"x": jnp.asarray([-1.0, -4.0, 2.0])}]  # fmt: skip
  out = m.ties(base, models, density=1.0)["x"]
  # entry 0: sum +3 -> mean of (1, 3) = 2; entry 1: sum -5 -> mean of (-2, -4) = -3;
  # entry 2: sum +4 -> mean of (3, 2) = 2.5 (the disagreeing -1 ignored).
  np.testing.assert_allclose(out, [2.0, -3.0, 2.5])


def test_dare_is_unbiased_and_drops_the_expected_fraction():
  base, a = _tree(0), _tree(1)
  tau = np.asarray(a["w"] - base["w"])
  outs = [np.asarray(m.dare(base, [a], density=0.3, key=jax.random.key(s))["w"] - base["w"])
          for s in range(2000)]  # fmt: skip
  np.testing.assert_allclose(np.mean(outs, axis=0), tau, atol=0.15 * np.abs(tau).max())
  kept = np.mean([np.mean(o != 0) for o in outs])
  assert abs(kept - 0.3) < 0.01
  again = m.dare(base, [a], density=0.3, key=jax.random.key(5))
  np.testing.assert_array_equal(
    again["w"], m.dare(base, [a], density=0.3, key=jax.random.key(5))["w"]
  )


def test_breadcrumbs_keeps_the_middle_band():
  base = {"x": jnp.zeros(10)}
  a = {"x": jnp.arange(1.0, 11.0)}  # |tau| = 1..10
  out = m.breadcrumbs(base, [a], density=0.5, outliers=0.2)["x"]
  # drop the largest 20% (10, 9) and everything below the top 70% (1, 2, 3)
  np.testing.assert_allclose(out, [0, 0, 0, 4, 5, 6, 7, 8, 0, 0])


def test_slerp_endpoints_norm_and_parallel_fallback():
  a, b = _tree(1), _tree(2)
  for t, want in ((0.0, a), (1.0, b)):
    out = m.slerp(a, b, t)
    np.testing.assert_allclose(out["w"], want["w"], rtol=1e-5, atol=1e-6)
  # Orthogonal unit vectors: the midpoint stays on the unit circle (a lerp would not).
  x, y = {"v": jnp.asarray([1.0, 0.0])}, {"v": jnp.asarray([0.0, 1.0])}
  mid = m.slerp(x, y, 0.5)["v"]
  np.testing.assert_allclose(mid, [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)
  par = m.slerp({"v": jnp.asarray([1.0, 2.0])}, {"v": jnp.asarray([2.0, 4.0])}, 0.5)["v"]
  np.testing.assert_allclose(par, [1.5, 3.0], rtol=1e-5)


def test_model_stock_by_hand():
  base = {"v": jnp.zeros(2)}
  a, b = {"v": jnp.asarray([1.0, 0.0])}, {"v": jnp.asarray([1.0, 1.0])}
  cos = 1 / np.sqrt(2)
  t = 2 * cos / (1 + cos)
  np.testing.assert_allclose(
    m.model_stock(base, [a, b])["v"], t * np.asarray([1.0, 0.5]), rtol=1e-6
  )


def test_bai_endpoints_reproduce_the_inputs():
  i, d, p = _tree(1), _tree(2), _tree(3)
  for w, v, want in ((1, 1, i), (0, 1, d), (0.3, 0, p), (1, 0, p)):
    out = m.bai(i, d, p, w=w, v=v)
    np.testing.assert_array_equal(out["w"], want["w"])
  out = m.bai(i, d, p, w=0.25, v=0.5)["w"]
  np.testing.assert_allclose(out, 0.5 * (0.25 * i["w"] + 0.75 * d["w"]) + 0.5 * p["w"], rtol=1e-6)


def test_bf16_leaves_merge_in_f32_and_keep_dtype_and_shape():
  base = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(0))
  a = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _tree(1))
  for name, out in _all_methods(base, [a, a]).items():
    assert jax.tree.map(lambda x: (x.dtype, x.shape), out) == jax.tree.map(
      lambda x: (x.dtype, x.shape), base
    ), name


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda: m.ties(_tree(0), [_tree(1)], density=1.5), "density"),
    (lambda: m.dare(_tree(0), [_tree(1)], density=0.0, key=KEY), "density > 0"),
    (lambda: m.dare(_tree(0), [_tree(1)], density=0.5, key=KEY, then="x"), "then="),
    (lambda: m.model_stock(_tree(0), [_tree(1)]), "at least 2"),
    (lambda: m.slerp(_tree(0), _tree(1), 2.0), "in \\[0, 1\\]"),
    (lambda: m.task_arithmetic(_tree(0), [{"w": jnp.zeros((4, 6))}]), "structure"),
    (lambda: m.task_arithmetic({"w": jnp.zeros(3)}, [{"w": jnp.zeros(4)}]), "model 0 \\[4\\]"),
    (lambda: m.task_arithmetic(_tree(0), []), "at least one"),
    (lambda: m.bai(_tree(0), _tree(1), _tree(2), w=1.2), "w must"),
    (lambda: m.breadcrumbs(_tree(0), [_tree(1)], density=0.9, outliers=0.2), "outliers"),
  ],
)
def test_bad_arguments_are_refused(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_merge_alignment_of_tied_heads_and_padded_vocabularies():
  from flax import nnx

  from jaxpost import models
  from jaxpost.merging import cli

  def model(vocab, tie, seed):
    cfg = models.named_config("tiny", vocab_size=vocab, n_layers=1, d_model=16, mlp_dim=32,
                              n_heads=2, n_kv_heads=1, head_dim=8, tie_embeddings=tie)  # fmt: skip
    return models.Decoder(cfg, rngs=nnx.Rngs(seed))

  tokens = jnp.asarray([[1, 2, 3]], jnp.int32)
  tied = model(40, True, 0)
  before = tied(tokens)
  with pytest.raises(ValueError, match="merge.untie=True"):
    cli._align([tied, model(40, False, 1)], "error", False)
  a, b = cli._align([tied, model(40, False, 1)], "error", True)
  assert a.lm_head is not None and not a.config.tie_embeddings
  np.testing.assert_allclose(a(tokens), before, rtol=1e-6)  # untying keeps the function
  with pytest.raises(ValueError, match="merge.vocab='shortest'"):
    cli._align([model(40, False, 0), model(48, False, 1)], "error", False)
  padded = model(48, False, 1)
  short = padded.embed[...][:40]
  a, b = cli._align([model(40, False, 0), padded], "shortest", False)
  assert b.config.vocab_size == 40 and b.embed[...].shape == (40, 16)
  np.testing.assert_array_equal(b.embed[...], short)
  assert b.lm_head.kernel[...].shape == (16, 40)
