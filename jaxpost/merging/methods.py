"""Model merging on parameter pytrees: task arithmetic, TIES, DARE, breadcrumbs, SLERP,
model stock and BAI's two-stage merge (plain averaging: ``average``).

Every method is pure and works leaf by leaf: accumulation in float32 (or wider), the
result cast back to the leaf's dtype, shapes and (through elementwise ops) shardings
kept. Task vectors are tau_i = theta_i - theta_0 against a ``base``. Per-leaf choices
where the papers work on the whole flattened vector are stated per method (they match
mergekit's per-tensor behaviour). Specs: ``../shared/methods/sft_distill_detect.md``
sections 12a and 12b.

  task_arithmetic  theta_0 + lambda sum_i w_i tau_i                    (Ilharco et al.)
  ties             trim each tau_i to its top-``density`` |entries| (per leaf), elect
                   the sign of sum_i w_i trimmed_i, average (w-weighted) the entries that
                   agree with it, theta_0 + lambda * that                 (Yadav et al.)
  dare             drop each entry of tau_i with probability 1 - density, rescale the
                   kept by 1 / density (unbiased), then task arithmetic (``then="linear"``)
                   or TIES' sign election and mean (``then="ties"``)    (Yu et al.)
  breadcrumbs      per leaf, drop the largest ``outliers`` fraction of |tau_i| and the
                   smallest, keeping ``density``; then task arithmetic (Davari & Belilovsky)
  slerp            spherical interpolation of two models per leaf, the angle of their
                   normalised vectors, linear when nearly parallel
  model_stock      per leaf t = k cos / (1 + (k - 1) cos), cos the mean pairwise cosine
                   of the k task vectors: t * mean_i theta_i + (1 - t) theta_0 (Jang et al.)
  bai              theta_1 = w theta_instruct + (1 - w) theta_distill, then
                   v theta_1 + (1 - v) theta_pretrain (BAI; the ratios are not published)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost.merging.average import average

METHODS = ("linear", "task_arithmetic", "ties", "dare", "breadcrumbs", "slerp", "model_stock",
           "bai")  # fmt: skip


def _weights(k: int, weights) -> np.ndarray:
  w = np.ones(k) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (k,) or not np.all(np.isfinite(w)):
    raise ValueError(f"weights must be {k} finite numbers, got {weights!r}")
  return w


def _leafwise(fn: Callable, base, models: Sequence, *extra):
  """Applies fn(base_leaf_f32, [model_leaf_f32...], *extra_leaves) -> f32 leaf per leaf,
  checking structures and shapes, casting back to the base leaf's dtype."""
  if not models:
    raise ValueError("a merge needs at least one model")
  base_flat, treedef = jax.tree_util.tree_flatten_with_path(base)
  flats = []
  for i, m in enumerate(models):
    flat, other = jax.tree_util.tree_flatten_with_path(m)
    if other != treedef:
      raise ValueError(f"model {i} has another structure than the base")
    flats.append(flat)
  extra_flats = [jax.tree.leaves(e) for e in extra]
  out = []
  for j, (path, b) in enumerate(base_flat):
    xs = [flat[j][1] for flat in flats]
    for i, x in enumerate(xs):
      if x.shape != b.shape:
        raise ValueError(f"{jax.tree_util.keystr(path)}: model {i} {list(x.shape)}, "
                         f"base {list(b.shape)}")  # fmt: skip
    acc = jnp.result_type(jnp.float32, b.dtype)
    merged = fn(
      jnp.asarray(b, acc), [jnp.asarray(x, acc) for x in xs], *(e[j] for e in extra_flats)
    )
    out.append(merged.astype(b.dtype))
  return jax.tree.unflatten(treedef, out)


def task_arithmetic(base, models: Sequence, *, weights=None, scale: float = 1.0):
  """theta_0 + scale * sum_i w_i (theta_i - theta_0)."""
  w = _weights(len(models), weights)

  def fn(b, xs):
    return b + scale * sum(float(wi) * (x - b) for wi, x in zip(w, xs, strict=True))

  return _leafwise(fn, base, models)


def _top_fraction(tau: jax.Array, density: float) -> jax.Array:
  """bool mask of the ceil(density * n) largest |entries| (ties by position)."""
  n = tau.size
  keep = int(np.ceil(density * n))
  if keep >= n:
    return jnp.ones(tau.shape, bool)
  if keep == 0:
    return jnp.zeros(tau.shape, bool)
  order = jnp.argsort(-jnp.abs(tau).reshape(-1), stable=True)
  mask = jnp.zeros(n, bool).at[order[:keep]].set(True)
  return mask.reshape(tau.shape)


def _elect_and_mean(taus: list[jax.Array], w: np.ndarray) -> jax.Array:
  """TIES' sign election (sign of sum_i w_i tau_i) and the w-weighted mean of the
  entries that agree with it (0 where none does)."""
  total = sum(float(wi) * t for wi, t in zip(w, taus, strict=True))
  sign = jnp.sign(total)
  num = jnp.zeros_like(total)
  den = jnp.zeros_like(total)
  for wi, t in zip(w, taus, strict=True):
    agree = (jnp.sign(t) == sign) & (t != 0)
    num = num + jnp.where(agree, float(wi) * t, 0.0)
    den = den + jnp.where(agree, float(wi), 0.0)
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def ties(base, models: Sequence, *, density: float = 0.2, weights=None, scale: float = 1.0):
  """TIES-merging (module doc); trimming per leaf."""
  _check_density(density)
  w = _weights(len(models), weights)

  def fn(b, xs):
    taus = [jnp.where(_top_fraction(x - b, density), x - b, 0.0) for x in xs]
    return b + scale * _elect_and_mean(taus, w)

  return _leafwise(fn, base, models)


def dare(base, models: Sequence, *, density: float, key: jax.Array, weights=None,
         scale: float = 1.0, then: str = "linear"):  # fmt: skip
  """DARE (module doc): each model's drop mask drawn from ``key`` folded with its index
  and the leaf's position, so a merge is reproducible."""
  _check_density(density)
  if density == 0:
    raise ValueError("DARE needs density > 0 (it rescales the kept entries by 1 / density)")
  if then not in ("linear", "ties"):
    raise ValueError(f"then={then!r}; expected 'linear' or 'ties'")
  w = _weights(len(models), weights)
  n_leaves = len(jax.tree.leaves(base))
  keys = jax.tree.unflatten(jax.tree.structure(base), list(jax.random.split(key, n_leaves)))

  def fn(b, xs, leaf_key):
    taus = []
    for i, x in enumerate(xs):
      keep = jax.random.bernoulli(jax.random.fold_in(leaf_key, i), density, x.shape)
      taus.append(jnp.where(keep, (x - b) / density, 0.0))
    if then == "ties":
      return b + scale * _elect_and_mean(taus, w)
    return b + scale * sum(float(wi) * t for wi, t in zip(w, taus, strict=True))

  return _leafwise(fn, base, models, keys)


def breadcrumbs(base, models: Sequence, *, density: float = 0.9, outliers: float = 0.01,
                weights=None, scale: float = 1.0):  # fmt: skip
  """Model breadcrumbs (module doc): per leaf of each tau_i, the ``outliers`` largest
  |entries| and everything below the top ``outliers + density`` are dropped."""
  _check_density(density)
  if not 0 <= outliers < 1 or outliers + density > 1:
    raise ValueError(f"outliers in [0, 1) with outliers + density <= 1, got {outliers}, {density}")
  w = _weights(len(models), weights)

  def fn(b, xs):
    total = 0.0
    for wi, x in zip(w, xs, strict=True):
      tau = x - b
      keep = _top_fraction(tau, outliers + density) & ~_top_fraction(tau, outliers)
      total = total + float(wi) * jnp.where(keep, tau, 0.0)
    return b + scale * total

  return _leafwise(fn, base, models)


def slerp(a, b, t: float, *, eps: float = 1e-8):
  """Spherical interpolation from ``a`` (t = 0) to ``b`` (t = 1), leaf by leaf."""
  if not 0 <= t <= 1:
    raise ValueError(f"slerp t must be in [0, 1], got {t}")

  def fn(x, ys):
    (y,) = ys
    xf, yf = x.reshape(-1), y.reshape(-1)
    nx, ny = jnp.linalg.norm(xf), jnp.linalg.norm(yf)
    cos = jnp.clip(jnp.dot(xf, yf) / jnp.maximum(nx * ny, eps), -1.0, 1.0)
    omega = jnp.arccos(cos)
    sin = jnp.sin(omega)
    parallel = (sin < 1e-4) | (nx < eps) | (ny < eps)
    safe = jnp.where(parallel, 1.0, sin)
    sa = jnp.where(parallel, 1 - t, jnp.sin((1 - t) * omega) / safe)
    sb = jnp.where(parallel, t, jnp.sin(t * omega) / safe)
    return sa * x + sb * y

  return _leafwise(fn, a, [b])


def model_stock(base, models: Sequence, *, eps: float = 1e-8):
  """Model stock (module doc), per leaf; needs k >= 2 models."""
  k = len(models)
  if k < 2:
    raise ValueError("model stock needs at least 2 fine-tuned models")

  def fn(b, xs):
    taus = [(x - b).reshape(-1) for x in xs]
    cosines = []
    for i in range(k):
      for j in range(i + 1, k):
        num = jnp.dot(taus[i], taus[j])
        den = jnp.maximum(jnp.linalg.norm(taus[i]) * jnp.linalg.norm(taus[j]), eps)
        cosines.append(num / den)
    cos = jnp.clip(sum(cosines) / len(cosines), 0.0, 1.0)
    t = k * cos / (1 + (k - 1) * cos)
    t = jnp.where(sum(jnp.linalg.norm(x) for x in taus) == 0, 1.0, t)  # no change: keep
    return t * (sum(xs) / k) + (1 - t) * b

  return _leafwise(fn, base, models)


def bai(instruct, distill, pretrain, *, w: float = 0.5, v: float = 0.5):
  """BAI's two-stage weighted merge (module doc); w, v in [0, 1]."""
  for name, x in (("w", w), ("v", v)):
    if not 0 <= x <= 1:
      raise ValueError(f"bai {name} must be in [0, 1], got {x}")
  first = average([instruct, distill], [w, 1 - w]) if 0 < w < 1 else (instruct if w else distill)
  if v == 1:
    return first
  if v == 0:
    return pretrain
  return average([first, pretrain], [v, 1 - v])


def _check_density(density: float) -> None:
  if not 0 <= density <= 1:
    raise ValueError(f"density must be in [0, 1], got {density}")
