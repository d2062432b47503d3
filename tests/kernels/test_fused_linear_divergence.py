"""fused_linear_divergence: f64 ground truth, paths agree, masking, memory, numerics."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from pallas_kernels.fused_linear_divergence import (
  TopK,
  fused_linear_divergence,
  fused_linear_divergence_sum,
)

N, D, DT, V = 37, 12, 9, 53  # deliberately not multiples of any block


def _inputs(dtype=jnp.float32, n=N, d=D, v=V, seed=0):
  k = jax.random.split(jax.random.key(seed), 7)
  return dict(
    h=jax.random.normal(k[0], (n, d)).astype(dtype),
    w=(0.6 * jax.random.normal(k[1], (d, v))).astype(dtype),
    ht=jax.random.normal(k[2], (n, DT)).astype(dtype),
    wt=(0.6 * jax.random.normal(k[3], (DT, v))).astype(dtype),
    labels=jax.random.randint(k[4], (n,), 0, v),
    mask=(jnp.arange(n) % 5) != 0,
    g=jax.random.normal(k[5], (n,)),
    weights=jax.random.uniform(k[6], (n,), minval=0.2, maxval=2.0),
  )


def _naive_np(x, kind, beta, temperature, label_smoothing=0.0):
  """Per-token loss/lse/entropy straight from the definitions, in NumPy f64."""
  f = lambda a: np.asarray(a, np.float64)  # noqa: E731
  zs = f(x["h"]) @ f(x["w"]) / temperature
  zt = f(x["ht"]) @ f(x["wt"]) / temperature
  lse_s = np.log(np.sum(np.exp(zs - zs.max(1, keepdims=True)), 1)) + zs.max(1)
  lse_t = np.log(np.sum(np.exp(zt - zt.max(1, keepdims=True)), 1)) + zt.max(1)
  s, t = zs - lse_s[:, None], zt - lse_t[:, None]
  ps, pt = np.exp(s), np.exp(t)
  fkl = np.sum(pt * (t - s), 1)
  rkl = np.sum(ps * (s - t), 1)
  if kind == "ce":
    y = np.asarray(x["labels"])
    loss = -(1 - label_smoothing) * s[np.arange(len(y)), y] - label_smoothing * s.mean(1)
  elif kind == "fkl" or (kind == "jsd" and beta == 0):
    loss = fkl
  elif kind == "rkl" or (kind == "jsd" and beta == 1):
    loss = rkl
  elif kind == "weighted_rkl":
    loss = np.asarray(x["weights"], np.float64) * rkl
  else:
    m = beta * pt + (1 - beta) * ps
    loss = beta * np.sum(pt * (t - np.log(m)), 1) + (1 - beta) * np.sum(ps * (s - np.log(m)), 1)
  mask = np.asarray(x["mask"])
  return np.where(mask, loss, 0), np.where(mask, lse_s, 0), np.where(mask, -np.sum(ps * s, 1), 0)


def _run(x, kind, impl, *, beta=0.5, temperature=1.0, teacher="hidden", chunk_size=8, **kw):
  t = {"hidden": (x["ht"], x["wt"]), "logits": None}[teacher] if kind != "ce" else None
  if kind != "ce" and teacher == "logits":
    t = jnp.dot(x["ht"], x["wt"], preferred_element_type=jnp.float32)

  def objective(h, w):
    st = fused_linear_divergence(
      h,
      w,
      kind=kind,
      teacher=t,
      labels=x["labels"],
      mask=x["mask"],
      weights=x["weights"],
      beta=beta,
      temperature=temperature,
      implementation=impl,
      chunk_size=chunk_size,
      **kw,
    )
    # Random per-token cotangents on every differentiable output (z-loss style on lse).
    g = x["g"].astype(st.loss.dtype)
    value = jnp.sum(g * st.loss) + jnp.sum(0.1 * g * st.student_lse)
    return value + jnp.sum(0.3 * g * st.entropy), st

  grad_fn = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
  (value, stats), grads = grad_fn(x["h"], x["w"])
  return stats, value, grads


CASES = [
  ("ce", 0.5, 1.0),
  ("fkl", 0.5, 2.0),
  ("rkl", 0.5, 0.5),
  ("weighted_rkl", 0.5, 1.0),
  ("jsd", 0.0, 1.0),
  ("jsd", 0.1, 1.0),
  ("jsd", 0.5, 2.0),
  ("jsd", 1.0, 0.5),
]


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("kind,beta,temperature", CASES)
def test_f64_xla_matches_definitions_and_autodiff(x64, kind, beta, temperature):
  x = _inputs(jnp.float64)
  stats, _, grads = _run(x, kind, "xla", beta=beta, temperature=temperature)
  loss, lse, ent = _naive_np(x, kind, beta, temperature)
  np.testing.assert_allclose(stats.loss, loss, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(stats.student_lse, lse, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(stats.entropy, ent, rtol=1e-10, atol=1e-12)
  _, _, ref_grads = _run(x, kind, "reference", beta=beta, temperature=temperature)
  for got, want in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["ce", "fkl", "rkl", "jsd"])
def test_check_grads_xla_path(x64, kind):
  x = _inputs(jnp.float64, n=11, d=5, v=13)
  t = None if kind == "ce" else (x["ht"][:11], x["wt"][:, :13])

  def f(h, w):
    st = fused_linear_divergence(
      h, w, kind=kind, teacher=t, labels=x["labels"], mask=x["mask"], beta=0.3,
      temperature=1.5, implementation="xla", chunk_size=8, label_smoothing=0.1 * (kind == "ce"),
    )  # fmt: skip
    return st.loss * x["g"] + 0.2 * st.student_lse + 0.1 * st.entropy

  check_grads(f, (x["h"], x["w"]), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def _err(a, gt):
  return np.max(np.abs(np.asarray(a, np.float64) - np.asarray(gt, np.float64)))


@pytest.mark.parametrize(
  "kind,dtype,tol",
  [
    ("ce", jnp.float32, 1e-5),
    ("jsd", jnp.float32, 1e-5),
    ("ce", jnp.bfloat16, 2e-2),
    ("fkl", jnp.bfloat16, 2e-2),
    ("rkl", jnp.bfloat16, 2e-2),
  ],
)
def test_fused_error_no_worse_than_naive_same_dtype(kind, dtype, tol):
  """Cut Cross-Entropy's criterion: |fused - gt| <= |naive - gt| + tol (value and grads)."""
  x = _inputs(dtype, n=64, d=32, v=300)
  with jax.enable_x64(True):
    x64_inputs = {k: (v.astype(jnp.float64) if v.dtype == dtype else v) for k, v in x.items()}
    _, gt_value, gt_grads = _run(x64_inputs, kind, "reference", chunk_size=16)
  _, fused_value, fused_grads = _run(x, kind, "xla", chunk_size=16)
  _, naive_value, naive_grads = _run(x, kind, "reference", chunk_size=16)
  scale = max(1.0, float(np.abs(gt_value)))
  assert _err(fused_value, gt_value) <= _err(naive_value, gt_value) + tol * scale
  for f, n, gt in zip(fused_grads, naive_grads, gt_grads, strict=True):
    gscale = max(1.0, float(np.max(np.abs(gt))))
    assert _err(f, gt) <= _err(n, gt) + 5 * tol * gscale


@pytest.mark.parametrize(
  "kind,beta,temperature", CASES[:4] + [("jsd", 0.5, 2.0), ("jsd", 1.0, 1.0)]
)
def test_pallas_interpret_equals_reference(kind, beta, temperature):
  x = _inputs(jnp.float32, n=21, d=8, v=150)  # 2 vocab blocks of 128, rows padded
  _, value, grads = _run(x, kind, "pallas", beta=beta, temperature=temperature, chunk_size=16)
  _, ref_value, ref_grads = _run(x, kind, "reference", beta=beta, temperature=temperature)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
  for got, want in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_pallas_teacher_logits_and_label_smoothing():
  x = _inputs(jnp.float32, n=10, d=8, v=140)
  for kind, kw in (("fkl", {"teacher": "logits"}), ("ce", {"label_smoothing": 0.1})):
    stats, value, grads = _run(x, kind, "pallas", chunk_size=8, **kw)
    ref_stats, ref_value, ref_grads = _run(x, kind, "reference", **kw)
    np.testing.assert_allclose(stats.loss, ref_stats.loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.student_max, ref_stats.student_max, rtol=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_masked_rows_zero_loss_zero_grad_even_with_nan_inputs(impl):
  x = _inputs(jnp.float32, n=12, d=6, v=20)
  bad = ~x["mask"]
  x["h"] = jnp.where(bad[:, None], jnp.nan, x["h"])
  x["ht"] = jnp.where(bad[:, None], jnp.inf, x["ht"])
  for kind in ("ce", "rkl", "jsd"):
    stats, value, (dh, dw) = _run(x, kind, impl, chunk_size=8)
    assert np.all(np.asarray(stats.loss)[np.asarray(bad)] == 0)
    assert np.isfinite(value) and np.all(np.isfinite(dw))
    assert np.all(np.asarray(dh)[np.asarray(bad)] == 0)
  x["mask"] = jnp.zeros_like(x["mask"])
  stats, value, (dh, dw) = _run(x, "fkl", impl, chunk_size=8)
  assert float(value) == 0.0 and not np.any(dh) and not np.any(dw)


def test_teacher_gets_no_gradient():
  x = _inputs()

  def f(ht):
    st = fused_linear_divergence(x["h"], x["w"], kind="fkl", teacher=(ht, x["wt"]), chunk_size=8)
    return jnp.sum(st.loss)

  assert not np.any(jax.grad(f)(x["ht"]))


def test_top_k_teacher_is_a_true_divergence():
  x = _inputs(jnp.float32, n=16, d=8, v=30)
  zt = jnp.dot(x["ht"][:16], x["wt"][:, :30])
  t_logp = jax.nn.log_softmax(zt)
  full = fused_linear_divergence(x["h"], x["w"], kind="fkl", teacher=zt).loss
  # k = V: no tail, the bucketed divergence is the full one.
  ids = jnp.argsort(-t_logp, axis=-1)
  all_v = TopK(ids, jnp.take_along_axis(t_logp, ids, -1))
  np.testing.assert_allclose(
    fused_linear_divergence(x["h"], x["w"], kind="fkl", teacher=all_v).loss, full, rtol=1e-4
  )
  for kind in ("fkl", "rkl", "jsd"):
    top5 = TopK(ids[:, :5], jnp.take_along_axis(t_logp, ids[:, :5], -1))
    got = fused_linear_divergence(x["h"], x["w"], kind=kind, teacher=top5, chunk_size=8).loss
    dense = fused_linear_divergence(x["h"], x["w"], kind=kind, teacher=zt).loss
    assert np.all(np.asarray(got) >= -1e-6)  # a divergence...
    assert np.all(np.asarray(got) <= np.asarray(dense) + 1e-5)  # ...coarser than the full one

    # The XLA path's gradient equals plain autodiff of the same bucketed definition.
    def fn(h, w, impl, kind=kind, top5=top5):
      st = fused_linear_divergence(h, w, kind=kind, teacher=top5, implementation=impl)
      return jnp.sum(x["g"][:16] * st.loss)

    for a, b in zip(
      jax.grad(fn, (0, 1))(x["h"], x["w"], "xla"),
      jax.grad(fn, (0, 1))(x["h"], x["w"], "reference"),
      strict=True,
    ):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="top-k"):
    fused_linear_divergence(x["h"], x["w"], kind="fkl", teacher=top5, implementation="pallas")


def test_equal_distributions_give_zero():
  x = _inputs()
  for kind in ("fkl", "rkl", "jsd"):
    st = fused_linear_divergence(x["h"], x["w"], kind=kind, teacher=(x["h"], x["w"]))
    np.testing.assert_allclose(st.loss, 0.0, atol=2e-6)


def test_memory_no_full_logits_buffer():
  """The compiled fwd+bwd of the XLA path holds no f32[N, V] buffer."""
  n, d, v, chunk = 2048, 64, 4096, 256
  h = jax.ShapeDtypeStruct((n, d), jnp.float32)
  w = jax.ShapeDtypeStruct((d, v), jnp.float32)

  def loss(impl):
    def f(h, w, ht, wt):
      st = fused_linear_divergence(
        h, w, kind="jsd", teacher=(ht, wt), implementation=impl, chunk_size=chunk
      )
      return jnp.sum(st.loss)

    return jax.jit(jax.grad(f, argnums=(0, 1))).lower(h, w, h, w).compile()

  fused, naive = loss("xla"), loss("reference")
  full = f"f32[{n},{v}]"
  assert full in naive.as_text()  # the pattern does find full logits when they exist
  assert full not in fused.as_text()
  assert not re.search(rf"\[{n},{v}\]", fused.as_text())
  fused_tmp = fused.memory_analysis().temp_size_in_bytes
  naive_tmp = naive.memory_analysis().temp_size_in_bytes
  assert fused_tmp < 0.25 * naive_tmp, (fused_tmp, naive_tmp)
  assert fused_tmp < 12 * chunk * v * 4 + 4 * d * v * 4  # O(chunk * V) plus dW carries


def test_dw_accumulated_in_vocab_blocks(monkeypatch):
  """dW += h^T dz one vocabulary block at a time (two full 128-column blocks and a
  44-column tail here) gives the reference gradient, and the compiled program holds no
  [D, V] product beside the accumulator (the temporary is smaller than dW itself)."""
  from pallas_kernels.fused_linear_divergence import ops

  monkeypatch.setattr(ops, "_DW_BLOCK_BYTES", 1)  # -> the minimum block, 128 columns
  x = _inputs(jnp.float32, n=21, d=8, v=300)
  _, value, grads = _run(x, "jsd", "xla")
  _, value_ref, grads_ref = _run(x, "jsd", "reference")
  np.testing.assert_allclose(value, value_ref, rtol=1e-5)
  for got, want in zip(grads, grads_ref, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

  n, d, v, chunk = 64, 64, 16384, 8
  monkeypatch.setattr(ops, "_DW_BLOCK_BYTES", 4 * d * 1024)
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v), (n, d), (d, v))]

  def f(h, w, ht, wt):
    total, _ = fused_linear_divergence_sum(
      h, w, kind="fkl", teacher=(ht, wt), token_weights=jnp.ones(n), chunk_size=chunk
    )
    return total

  compiled = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*shapes).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < d * v * 4


def test_bad_inputs_raise():
  x = _inputs()
  with pytest.raises(ValueError, match="unknown kind"):
    fused_linear_divergence(x["h"], x["w"], kind="kl")
  with pytest.raises(ValueError, match="needs labels"):
    fused_linear_divergence(x["h"], x["w"], kind="ce")
  with pytest.raises(ValueError, match="needs a teacher"):
    fused_linear_divergence(x["h"], x["w"], kind="rkl")
  with pytest.raises(ValueError, match="temperature"):
    fused_linear_divergence(x["h"], x["w"], kind="ce", labels=x["labels"], temperature=0.0)
  with pytest.raises(ValueError, match="beta"):
    fused_linear_divergence(x["h"], x["w"], kind="jsd", teacher=(x["ht"], x["wt"]), beta=1.5)
  with pytest.raises(ValueError, match="weights"):
    fused_linear_divergence(x["h"], x["w"], kind="weighted_rkl", teacher=(x["ht"], x["wt"]))


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("kind", ["ce", "fkl", "jsd"])
def test_gradient_in_forward_equals_general_path(kind, impl):
  """sum_n c_n loss_n with the gradient built in the forward == the per-token VJP path."""
  x = _inputs(jnp.float32, n=21, d=8, v=140)
  t = None if kind == "ce" else (x["ht"], x["wt"])
  kw = dict(kind=kind, teacher=t, labels=x["labels"], mask=x["mask"], beta=0.3, temperature=1.3)

  def general(h, w):
    return jnp.sum(x["g"] * fused_linear_divergence(h, w, implementation="reference", **kw).loss)

  def fast(h, w):
    total, stats = fused_linear_divergence_sum(
      h, w, token_weights=x["g"], implementation=impl, chunk_size=8, **kw
    )
    return 2.0 * total + 0.0 * jnp.sum(stats.loss)  # stats carry no gradient

  value, grads = jax.value_and_grad(general, (0, 1))(x["h"], x["w"])
  value_f, grads_f = jax.value_and_grad(fast, (0, 1))(x["h"], x["w"])
  np.testing.assert_allclose(value_f, 2 * value, rtol=1e-5, atol=1e-5)
  for got, want in zip(grads_f, grads, strict=True):
    np.testing.assert_allclose(got, 2 * want, rtol=1e-4, atol=1e-5)


def test_gradient_in_forward_costs_the_floor():
  """XLA-counted FLOPs: ~8 N D V for the fast path, ~12 N D V with the backward's recompute."""
  n, d, v, chunk = 512, 64, 1024, 128
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v), (n, d), (d, v))]

  def flops(fast):
    def f(h, w, ht, wt):
      if fast:
        total, _ = fused_linear_divergence_sum(
          h, w, kind="fkl", teacher=(ht, wt), token_weights=jnp.ones(n), chunk_size=chunk
        )
        return total
      return jnp.sum(
        fused_linear_divergence(h, w, kind="fkl", teacher=(ht, wt), chunk_size=chunk).loss
      )

    cost = jax.jit(jax.value_and_grad(f, (0, 1))).lower(*shapes).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"] * (n // chunk) / (8 * n * d * v)  # a loop body is counted once

  assert 0.95 < flops(True) < 1.15
  assert 1.4 < flops(False) < 1.6
