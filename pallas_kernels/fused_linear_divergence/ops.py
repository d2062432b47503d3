"""Fused LM head + per-token divergence, without materialising ``[N, V]`` logits.

    stats = fused_linear_divergence(h, w, kind="fkl", teacher=(h_t, w_t), mask=mask)
    loss = jnp.sum(stats.loss * token_weights)      # any per-token weighting is exact

Shapes: ``h: [N, D]`` student hidden states, ``w: [D, V]`` student LM head; the teacher
is one of

  * ``(h_t, w_t)`` with ``h_t: [N, D_t]``, ``w_t: [D_t, V]`` (its logits are fused too),
  * teacher logits ``[N, V]``,
  * ``TopK(ids i32[N, k], logp f32[N, k])`` (its tail mass is one extra bucket); its
    log-probs are used as given, *not* divided by ``temperature`` (only the student's
    logits are), so pass them already at the temperature wanted,
  * None for ``kind="ce"`` (cross-entropy against ``labels: i32[N]``).

Every output is per token (``TokenStats``: loss, student/teacher log-normalisers, the
student's max logit, the student's entropy), so callers apply masks, importance weights
and reductions themselves: the backward pass takes a cotangent per token for ``loss``,
``student_lse`` (z-loss and log-marginals compose through it) and ``entropy``, and
returns gradients for ``h`` and ``w`` only (the teacher is frozen). dW is accumulated in
f32 across token chunks. Rows where ``mask`` is False give 0 loss and exactly 0 gradient.
See ``reference.py`` for the divergence and temperature conventions.

Paths (``implementation``):
  * ``"xla"`` (default on CPU): ``lax.scan`` over token chunks of ``chunk_size`` rows; per
    chunk one f32 ``[C, V]`` logits block for the student (and one for the teacher). The
    backward recomputes a chunk's logits, forms dlogits in f32 and feeds two matmuls
    (dh = dz w^T, dW += h^T dz) whose operands are in the input dtype with f32
    accumulation. Cost: 12 N D V FLOPs with a fused teacher (the 8 N D V floor plus the
    recomputed student and teacher logits).
  * ``"pallas"`` (default on TPU/GPU): ``kernel.py`` streams vocabulary blocks with online
    (max, sum) statistics and never writes logits; the backward kernel writes one token
    chunk's dlogits at a time for the same two matmuls. Runs on CPU only with
    ``interpret=True`` (the default off-accelerator), which the tests use. Top-k
    teachers are XLA-only.
  * ``"reference"``: full logits and plain autodiff (``reference.py``), for tests and
    benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp

from pallas_kernels.fused_linear_divergence import reference
from pallas_kernels.fused_linear_divergence.reference import KINDS, TokenStats, TopK, acc_dtype

IMPLEMENTATIONS = ("xla", "pallas", "reference")

# One f32 [C, V] block per chunk stays near this size (the backward holds a few).
_CHUNK_BYTES = 32 * 2**20


@dataclasses.dataclass(frozen=True)
class _Config:
  kind: str
  beta: float
  temperature: float
  label_smoothing: float
  implementation: str
  chunk_size: int
  interpret: bool


_DW_BLOCK_BYTES = 16 * 2**20  # largest f32 [D, block] piece of h^T dz formed at once


def default_chunk_size(n: int, v: int) -> int:
  """Token rows per chunk so one f32 [C, V] block is about 32 MiB (a multiple of 8)."""
  c = max(8, min(4096, _CHUNK_BYTES // (4 * v)))
  c = c // 8 * 8
  return max(8, min(c, -(-n // 8) * 8))


def fused_linear_divergence(
  h: jax.Array,
  w: jax.Array,
  *,
  kind: str,
  teacher=None,
  labels: jax.Array | None = None,
  mask: jax.Array | None = None,
  weights: jax.Array | None = None,
  beta: float = 0.5,
  temperature: float = 1.0,
  label_smoothing: float = 0.0,
  implementation: str | None = None,
  chunk_size: int | None = None,
  interpret: bool | None = None,
) -> TokenStats:
  """Per-token divergence of softmax(h w / T) from a teacher (or ce against labels).

  Args:
    h: [N, D] student hidden states (any float dtype; matmuls accumulate in f32).
    w: [D, V] student LM head.
    kind: "ce" | "fkl" | "rkl" | "jsd" | "weighted_rkl" (see ``reference.py``).
    teacher: ``(h_t [N, D_t], w_t [D_t, V])``, logits ``[N, V]``, ``TopK`` or None. A
      ``TopK``'s ``logp`` are taken as the teacher's log-probs exactly as given: they are
      not divided by ``temperature``, so for a tempered teacher pass the top k of
      ``log_softmax(z_t / T)``.
    labels: i32[N] targets for ``kind="ce"``.
    mask: bool[N] rows that count (default all).
    weights: f32[N] per-token weights for ``kind="weighted_rkl"`` (no gradient).
    beta: JSD teacher weight; 0 gives fkl, 1 gives rkl.
    temperature: T > 0 dividing the student's logits and a teacher given as logits or
      as ``(h_t, w_t)``; not applied to a ``TopK`` teacher's log-probs (see ``teacher``).
      Losses are not multiplied by T^2.
    label_smoothing: eps for ``kind="ce"``.
    implementation: "xla" | "pallas" | "reference" | None (xla on CPU, else pallas).
    chunk_size: token rows per chunk (default ``default_chunk_size``).
    interpret: run Pallas in interpret mode (default: True unless on TPU/GPU).

  Returns:
    ``TokenStats`` of f32[N] arrays; differentiable in ``h`` and ``w`` through
    ``loss``, ``student_lse`` and ``entropy``.
  """
  args = _validate(**locals())  # the arguments exactly as given
  if args is None:  # implementation == "reference"
    return reference.reference_divergence(
      h,
      w,
      teacher,
      labels,
      mask,
      weights,
      kind=kind,
      beta=beta,
      temperature=temperature,
      label_smoothing=label_smoothing,
    )
  return _fused(*args)


def fused_linear_divergence_sum(
  h: jax.Array, w: jax.Array, *, token_weights: jax.Array, **options
) -> tuple[jax.Array, TokenStats]:
  """sum_n token_weights[n] * loss[n], with its gradient computed in the forward pass.

  The fast path for a training loss whose per-token weights are known up front (mask /
  token count, per-sequence weights, ...): each chunk's logits are computed once and
  both the statistics and dlogits come from them, so the cost is the 8 N D V floor
  (6 with a logits or top-k teacher) instead of the general op's 12. The per-token
  ``TokenStats`` are returned for metrics and carry no gradient; only the sum does.

  Args:
    h: [N, D] student hidden states.
    w: [D, V] student LM head.
    token_weights: f32[N] weight of each token's loss (no gradient).
    **options: the keyword arguments of ``fused_linear_divergence`` (``kind``,
      ``teacher``, ``labels``, ``mask``, ...), with the same meaning and defaults.

  Returns:
    (total f32[], TokenStats without gradient).
  """
  if token_weights.shape != (h.shape[0],):
    raise ValueError(f"token_weights must have shape ({h.shape[0]},), got {token_weights.shape}")
  token_weights = jax.lax.stop_gradient(token_weights)
  if options.get("implementation") == "reference":
    stats = fused_linear_divergence(h, w, **options)
    return jnp.sum(token_weights * stats.loss), jax.lax.stop_gradient(stats)
  bound = inspect.signature(fused_linear_divergence).bind(h, w, **options)
  bound.apply_defaults()
  total, stats = _fused_sum(*_validate(**bound.arguments), token_weights)
  return total, jax.lax.stop_gradient(stats)


def _validate(
  *, h, w, kind, teacher, labels, mask, weights, beta, temperature, label_smoothing,
  implementation, chunk_size, interpret,
):  # fmt: skip
  """Checks the arguments; returns the custom_vjp's inputs, or None for "reference"."""
  if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[0]:
    raise ValueError(f"need h [N, D] and w [D, V]; got {h.shape} and {w.shape}")
  if kind not in KINDS:
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must be in [0, 1], got {beta}")
  n, v = h.shape[0], w.shape[1]
  teacher = _check_teacher(kind, teacher, n, v)
  if kind == "ce" and (labels is None or labels.shape != (n,)):
    raise ValueError(f"kind='ce' needs labels of shape ({n},)")
  if kind == "weighted_rkl" and (weights is None or weights.shape != (n,)):
    raise ValueError(f"kind='weighted_rkl' needs weights of shape ({n},)")
  mask = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask).astype(bool)
  if mask.shape != (n,):
    raise ValueError(f"mask must have shape ({n},), got {mask.shape}")
  on_accelerator = jax.default_backend() in ("tpu", "gpu")
  if implementation is None:
    implementation = "pallas" if on_accelerator and not isinstance(teacher, TopK) else "xla"
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown implementation {implementation!r}; expected {IMPLEMENTATIONS}")
  if implementation == "pallas" and isinstance(teacher, TopK):
    raise ValueError("the Pallas path does not take a top-k teacher; use implementation='xla'")
  if implementation == "reference":
    return None
  cfg = _Config(
    kind=kind,
    beta=float(beta),
    temperature=float(temperature),
    label_smoothing=float(label_smoothing),
    implementation=implementation,
    chunk_size=int(chunk_size or default_chunk_size(n, v)),
    interpret=(not on_accelerator) if interpret is None else bool(interpret),
  )
  if labels is None:
    labels = jnp.zeros((n,), jnp.int32)
  if weights is None:
    weights = jnp.ones((n,), jnp.float32)
  # Zero masked rows up front: dW = h^T dz would turn garbage (NaN) there into NaN
  # even though dz is 0 on those rows.
  h = jnp.where(mask[:, None], h, jnp.zeros((), h.dtype))
  return cfg, h, w, teacher, labels.astype(jnp.int32), mask, weights


def _check_teacher(kind, teacher, n, v):
  if kind == "ce":
    if teacher is not None:
      raise ValueError("kind='ce' takes labels, not a teacher")
    return None
  if teacher is None:
    raise ValueError(f"kind={kind!r} needs a teacher")
  if isinstance(teacher, TopK):
    if teacher.ids.shape != teacher.logp.shape or teacher.ids.shape[0] != n:
      raise ValueError(f"TopK ids/logp must both be [N={n}, k]")
    return teacher
  if isinstance(teacher, tuple):
    ht, wt = teacher
    if ht.shape[0] != n or wt.shape != (ht.shape[1], v):
      raise ValueError(f"teacher (h_t, w_t) must be [N={n}, D_t] and [D_t, V={v}]")
    return (ht, wt)
  if teacher.shape != (n, v):
    raise ValueError(f"teacher logits must be [N={n}, V={v}], got {teacher.shape}")
  return teacher


# ---------------------------------------------------------------------------- chunking


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
  pad = rows - x.shape[0]
  return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x


def _to_chunks(tree, c: int):
  """[N, ...] leaves -> [N / C, C, ...] (rows padded; padded rows are masked out)."""

  def split(x):
    n = x.shape[0]
    rows = -(-n // c) * c
    return _pad_rows(x, rows).reshape(rows // c, c, *x.shape[1:])

  return jax.tree.map(split, tree)


def _from_chunks(x: jax.Array, n: int) -> jax.Array:
  return x.reshape(-1, *x.shape[2:])[:n]


def _teacher_rows(teacher):
  """The per-row part of the teacher (chunked along N) and the shared part (w_t)."""
  if isinstance(teacher, tuple):
    return teacher[0], teacher[1]
  return teacher, None


def _teacher_logits(rows, shared, temperature):
  """Teacher logits / T for one chunk (or the TopK / None as is)."""
  if shared is not None:
    return jnp.dot(rows, shared, preferred_element_type=acc_dtype(rows, shared)) / temperature
  if rows is None or isinstance(rows, TopK):
    return rows
  return rows.astype(acc_dtype(rows)) / temperature


def _student_logits(h_c, w, temperature):
  return jnp.dot(h_c, w, preferred_element_type=acc_dtype(h_c, w)) / temperature


# ------------------------------------------------------------------------- custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(cfg, h, w, teacher, labels, mask, weights) -> TokenStats:
  return _forward(cfg, h, w, teacher, labels, mask, weights)[0]


def _forward(cfg, h, w, teacher, labels, mask, weights):
  if cfg.implementation == "pallas":
    from pallas_kernels.fused_linear_divergence import kernel

    return kernel.forward(cfg, h, w, teacher, labels, mask, weights)
  return _xla_forward(cfg, h, w, teacher, labels, mask, weights), None


def _xla_forward(cfg, h, w, teacher, labels, mask, weights) -> TokenStats:
  n = h.shape[0]
  t_rows, t_shared = _teacher_rows(teacher)
  xs = _to_chunks((h, t_rows, labels, mask, weights), cfg.chunk_size)

  def body(_, chunk):
    h_c, t_c, y_c, m_c, w_c = chunk
    zs = _student_logits(h_c, w, cfg.temperature)
    zt = _teacher_logits(t_c, t_shared, cfg.temperature)
    return None, _token_stats(cfg, zs, zt, y_c, m_c, w_c)

  _, stats = jax.lax.scan(body, None, xs)
  return jax.tree.map(lambda x: _from_chunks(x, n), stats)


def _token_stats(cfg, zs, zt, labels, mask, weights) -> TokenStats:
  return reference.token_divergence(
    zs,
    zt,
    labels,
    mask,
    weights,
    kind=cfg.kind,
    beta=cfg.beta,
    label_smoothing=cfg.label_smoothing,
  )


def _fused_fwd(cfg, h, w, teacher, labels, mask, weights):
  stats, extra = _forward(cfg, h, w, teacher, labels, mask, weights)
  return stats, (h, w, teacher, labels, mask, weights, stats, extra)


def _fused_bwd(cfg, res, g: TokenStats):
  h, w, teacher, labels, mask, weights, stats, extra = res
  f32 = acc_dtype(h, w)
  # Masked rows get exactly zero cotangent, whatever their (possibly garbage) inputs.
  cot = tuple(jnp.where(mask, x.astype(f32), 0.0) for x in (g.loss, g.student_lse, g.entropy))
  dh, dw = _grads(cfg, h, w, teacher, labels, mask, weights, cot, stats, extra)
  return dh, dw, None, None, None, None


def _grads(cfg, h, w, teacher, labels, mask, weights, cot, stats, extra):
  """(dh, dW) for per-token cotangents ``cot`` = (g_loss, g_lse, g_entropy), by chunks."""
  n = h.shape[0]
  f32 = acc_dtype(h, w)
  t_rows, t_shared = _teacher_rows(teacher)
  per_row = (h, t_rows, labels, mask, weights, cot, stats, extra)
  if cfg.implementation == "pallas":
    from pallas_kernels.fused_linear_divergence import kernel

    dlogits_fn = functools.partial(kernel.dlogits, cfg, w, t_shared)
  else:
    dlogits_fn = functools.partial(_xla_dlogits, cfg, w, t_shared)

  def body(dw, chunk):
    dz = dlogits_fn(chunk)  # f32[C, V], gradient w.r.t. the raw logits h_c @ w
    return _accumulate(dw, chunk[0], w, dz)

  dw0 = jnp.zeros(w.shape, f32)
  dw, dh = jax.lax.scan(body, dw0, _to_chunks(per_row, cfg.chunk_size))
  return _from_chunks(dh, n), dw.astype(w.dtype)


def _accumulate(dw, h_c, w, dz):
  """dh_c = dz w^T and dW += h_c^T dz; operands in the input dtype, f32 accumulation.

  h_c^T dz is added one vocabulary block at a time: XLA does not accumulate a matmul
  into its destination, so a whole [D, V] product would be a temporary the size of dW
  itself (297 MiB at D = 512, V = 151936); a block's product is at most
  ``_DW_BLOCK_BYTES``, and each block is added into dW in place.
  """
  f32 = dw.dtype
  dz = dz.astype(h_c.dtype)
  dh_c = jnp.dot(dz, w.T, preferred_element_type=f32).astype(h_c.dtype)
  d, v = dw.shape
  block = min(v, max(128, _DW_BLOCK_BYTES // (4 * d) // 128 * 128))

  def add(start, size, dw):
    part = jnp.dot(
      h_c.T, jax.lax.dynamic_slice_in_dim(dz, start, size, axis=1), preferred_element_type=f32
    )
    old = jax.lax.dynamic_slice_in_dim(dw, start, size, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(dw, old + part, start, axis=1)

  # A loop, not unrolled blocks: XLA would schedule all the blocks' products first.
  dw = jax.lax.fori_loop(0, v // block, lambda j, dw: add(j * block, block, dw), dw)
  if v % block:
    dw = add(v - v % block, v % block, dw)
  return dw, dh_c


def _xla_dlogits(cfg, w, t_shared, chunk) -> jax.Array:
  """dL/d(h_c w) for one chunk: recompute the logits, differentiate the token math."""
  h_c, t_c, y_c, m_c, w_c, cot, _, _ = chunk
  zt = _teacher_logits(t_c, t_shared, cfg.temperature)

  def per_token(zs):
    st = _token_stats(cfg, zs, zt, y_c, m_c, w_c)
    return st.loss, st.student_lse, st.entropy

  _, vjp = jax.vjp(per_token, _student_logits(h_c, w, cfg.temperature))
  (dzs,) = vjp(cot)
  return dzs / cfg.temperature


_fused.defvjp(_fused_fwd, _fused_bwd)


# ----------------------------------------------------------- gradient in the forward pass


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_sum(cfg, h, w, teacher, labels, mask, weights, token_weights):
  stats = _forward(cfg, h, w, teacher, labels, mask, weights)[0]
  return jnp.sum(token_weights * stats.loss), stats


def _fused_sum_fwd(cfg, h, w, teacher, labels, mask, weights, token_weights):
  f32 = acc_dtype(h, w)
  g_loss = jnp.where(mask, token_weights.astype(f32), 0.0)
  if cfg.implementation == "pallas":
    stats, extra = _forward(cfg, h, w, teacher, labels, mask, weights)
    zero = jnp.zeros_like(g_loss)
    dh, dw = _grads(cfg, h, w, teacher, labels, mask, weights, (g_loss, zero, zero), stats, extra)
  else:
    stats, dh, dw = _xla_value_and_grads(cfg, h, w, teacher, labels, mask, weights, g_loss)
  return (jnp.sum(g_loss * stats.loss), stats), (dh, dw)


def _fused_sum_bwd(cfg, res, g):
  dh, dw = res
  g_total = g[0]  # the stats output is stop-gradient'ed by the public wrapper
  return (
    (g_total * dh).astype(dh.dtype),
    (g_total * dw).astype(dw.dtype),
    None,
    None,
    None,
    None,
    None,
  )


def _xla_value_and_grads(cfg, h, w, teacher, labels, mask, weights, g_loss):
  """One scan: each chunk's logits give its statistics and its dlogits."""
  n = h.shape[0]
  t_rows, t_shared = _teacher_rows(teacher)

  def body(dw, chunk):
    h_c, t_c, y_c, m_c, w_c, g_c = chunk
    zt = _teacher_logits(t_c, t_shared, cfg.temperature)

    def per_token(zs):
      st = _token_stats(cfg, zs, zt, y_c, m_c, w_c)
      return st.loss, st

    _, vjp, st = jax.vjp(per_token, _student_logits(h_c, w, cfg.temperature), has_aux=True)
    (dzs,) = vjp(g_c.astype(dw.dtype))
    dw, dh_c = _accumulate(dw, h_c, w, dzs / cfg.temperature)
    return dw, (dh_c, st)

  per_row = (h, t_rows, labels, mask, weights, g_loss)
  dw, (dh, stats) = jax.lax.scan(
    body, jnp.zeros(w.shape, acc_dtype(h, w)), _to_chunks(per_row, cfg.chunk_size)
  )
  stats = jax.tree.map(lambda x: _from_chunks(x, n), stats)
  return stats, _from_chunks(dh, n), dw.astype(w.dtype)


_fused_sum.defvjp(_fused_sum_fwd, _fused_sum_bwd)
