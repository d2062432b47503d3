"""Pallas kernels for the fused LM head + divergence (TPU Mosaic / GPU; interpret on CPU).

Forward (``_stats_kernel``): a (row block, vocab block) grid, vocab innermost and
sequential. Each step computes one logits tile ``h_blk @ w_blk`` (and the teacher's)
in f32 and folds it into per-row online accumulators, rescaled whenever the running
max grows (the flash-attention trick), so logits never leave the kernel:

  m, l = running max and sum_v exp(z - m)                      (student and teacher)
  a_s  = sum_v exp(z_s - m_s) z_s                              (entropy)
  d_ts = sum_v exp(z_t - m_t) (z_t - z_s),  d_st = sum_v exp(z_s - m_s) (z_s - z_t)
  plus the label's logit and sum_v z_s (label smoothing).

Then, in XLA and O(N): lse = m + log l, entropy = lse_s - a_s / l_s,
fkl = d_ts / l_t - lse_t + lse_s, rkl = d_st / l_s - lse_s + lse_t. JSD needs the two
log-normalisers before it can form log M, so it runs a second pass (``_jsd_kernel``)
that also returns K = sum_v p_s (s - log M) for the backward.

Backward (``_dlogits_kernel``): for one token chunk, recompute each tile and write
dL/dz in closed form (g = per-token cotangent, p = softmax, s, t = log-probs):

  ce   g (p_s - (1 - eps) onehot(y) - eps / V)
  fkl  g (p_s - p_t)
  rkl  g p_s ((s - t) - rkl)
  jsd  g (1 - beta) p_s ((s - log M) - K)
  + g_lse p_s - g_H p_s (s + H),  all divided by T.

The chunk's dlogits then feed two XLA matmuls in ``ops.py`` (dh, and dW with f32
accumulation), as the GPU design of ``shared/design/kernels.md`` recommends. Kernel
bodies use only portable ``jnp`` ops (no atomics); vocabulary padding is masked to
-inf inside the kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.fused_linear_divergence.reference import TokenStats, acc_dtype

# Accumulator columns of the forward kernel's [rows, _NACC] output.
_M_S, _L_S, _A_S, _PICK, _SUM, _M_T, _L_T, _D_TS, _D_ST = range(9)
_NACC = 16  # padded so a row of accumulators is one aligned tile
# Per-row inputs of the dlogits kernel.
_LSE_S, _LSE_T, _AUX, _ENT, _G_LOSS, _G_LSE, _G_ENT = range(7)
_NROW = 8

BLOCK_ROWS = 128
BLOCK_VOCAB = 512


def _blocks(n: int, v: int) -> tuple[int, int]:
  bn = min(BLOCK_ROWS, -(-n // 8) * 8)
  bv = min(BLOCK_VOCAB, -(-v // 128) * 128)
  return bn, bv


def _pad(x: jax.Array, axis: int, size: int) -> jax.Array:
  pad = size - x.shape[axis]
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def _compiler_params():
  if jax.default_backend() == "tpu":
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))
  return None


def _tiles(h_ref, w_ref, t_refs, *, fused_teacher, temperature, v, bv):
  """Student (and teacher) logits / T of the current tile, padding columns at -inf."""
  j = pl.program_id(1)
  f32 = acc_dtype(h_ref, w_ref)
  zs = jnp.dot(h_ref[...], w_ref[...], preferred_element_type=f32) / temperature
  cols = j * bv + jax.lax.broadcasted_iota(jnp.int32, zs.shape, 1)
  valid = cols < v
  zs = jnp.where(valid, zs, -jnp.inf)
  zt = None
  if fused_teacher is True:
    ht_ref, wt_ref = t_refs
    zt = jnp.dot(ht_ref[...], wt_ref[...], preferred_element_type=f32) / temperature
  elif fused_teacher is False:
    (zt_ref,) = t_refs
    zt = zt_ref[...].astype(f32) / temperature
  if zt is not None:
    zt = jnp.where(valid, zt, -jnp.inf)
  return zs, zt, cols, valid


def _online(m_old, z):
  """New running max and rescale factor for a [rows, cols] tile."""
  m_new = jnp.maximum(m_old, jnp.max(z, axis=1, keepdims=True))
  return m_new, jnp.exp(m_old - m_new)


def _stats_kernel(*refs, fused_teacher, temperature, v, bv):
  n_t = {True: 2, False: 1, None: 0}[fused_teacher]
  h_ref, w_ref, *rest = refs
  t_refs, (y_ref, acc_ref) = rest[:n_t], rest[n_t:]
  zs, zt, cols, valid = _tiles(
    h_ref, w_ref, t_refs, fused_teacher=fused_teacher, temperature=temperature, v=v, bv=bv
  )

  @pl.when(pl.program_id(1) == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)
    for k in (_M_S, _M_T):
      acc_ref[:, k : k + 1] = jnp.full((acc_ref.shape[0], 1), -jnp.inf, acc_ref.dtype)

  acc = acc_ref[...]
  col = lambda k: acc[:, k : k + 1]  # noqa: E731
  m_s, alpha_s = _online(col(_M_S), zs)
  e_s = jnp.where(valid, jnp.exp(zs - m_s), 0.0)
  zs0 = jnp.where(valid, zs, 0.0)  # finite copy for products (exp already 0 there)
  new = {
    _M_S: m_s,
    _L_S: col(_L_S) * alpha_s + jnp.sum(e_s, axis=1, keepdims=True),
    _A_S: col(_A_S) * alpha_s + jnp.sum(e_s * zs0, axis=1, keepdims=True),
    _PICK: col(_PICK) + jnp.sum(jnp.where(cols == y_ref[...], zs0, 0.0), axis=1, keepdims=True),
    _SUM: col(_SUM) + jnp.sum(zs0, axis=1, keepdims=True),
  }
  if zt is not None:
    m_t, alpha_t = _online(col(_M_T), zt)
    live_t = zt > -jnp.inf  # teacher logits may be -inf on purpose (0 log 0 = 0)
    e_t = jnp.where(live_t, jnp.exp(zt - m_t), 0.0)
    zt0 = jnp.where(live_t, zt, 0.0)
    new[_M_T] = m_t
    new[_L_T] = col(_L_T) * alpha_t + jnp.sum(e_t, axis=1, keepdims=True)
    new[_D_TS] = col(_D_TS) * alpha_t + jnp.sum(e_t * (zt0 - zs0), axis=1, keepdims=True)
    # Where the teacher has no mass but the student does, rkl is +inf (a true value).
    diff_st = jnp.where(e_s > 0, jnp.where(live_t, zs0 - zt0, jnp.inf), 0.0)
    new[_D_ST] = col(_D_ST) * alpha_s + jnp.sum(e_s * diff_st, axis=1, keepdims=True)
  for k, value in new.items():
    acc_ref[:, k : k + 1] = value


def _jsd_kernel(*refs, fused_teacher, temperature, v, bv, beta):
  n_t = 2 if fused_teacher else 1
  h_ref, w_ref, *rest = refs
  t_refs, (lse_ref, out_ref) = rest[:n_t], rest[n_t:]
  zs, zt, _, valid = _tiles(
    h_ref, w_ref, t_refs, fused_teacher=fused_teacher, temperature=temperature, v=v, bv=bv
  )

  @pl.when(pl.program_id(1) == 0)
  def _init():
    out_ref[...] = jnp.zeros(out_ref.shape, out_ref.dtype)

  s, t, log_m, p_s, p_t = _jsd_terms(zs, zt, lse_ref[...], beta)
  kl_s = jnp.where(p_s > 0, p_s * (s - log_m), 0.0)
  kl_t = jnp.where(p_t > 0, p_t * (t - log_m), 0.0)
  jsd = jnp.sum(beta * kl_t + (1.0 - beta) * kl_s, axis=1, keepdims=True)
  k_s = jnp.sum(kl_s, axis=1, keepdims=True)
  out_ref[...] += jnp.concatenate([jsd, k_s], axis=1)


def _jsd_terms(zs, zt, lse, beta):
  """Log-probs, log M and probabilities of one tile; padded/zero-mass entries are safe."""
  live_s, live_t = zs > -jnp.inf, zt > -jnp.inf
  s = jnp.where(live_s, zs - lse[:, 0:1], 0.0)
  t = jnp.where(live_t, zt - lse[:, 1:2], 0.0)
  p_s = jnp.where(live_s, jnp.exp(s), 0.0)
  p_t = jnp.where(live_t, jnp.exp(t), 0.0)
  log_m = jnp.log(jnp.maximum(beta * p_t + (1.0 - beta) * p_s, jnp.finfo(s.dtype).tiny))
  return s, t, log_m, p_s, p_t


def _dlogits_kernel(*refs, fused_teacher, temperature, v, bv, kind, beta, label_smoothing):
  n_t = {True: 2, False: 1, None: 0}[fused_teacher]
  h_ref, w_ref, *rest = refs
  t_refs, (y_ref, row_ref, dz_ref) = rest[:n_t], rest[n_t:]
  zs, zt, cols, valid = _tiles(
    h_ref, w_ref, t_refs, fused_teacher=fused_teacher, temperature=temperature, v=v, bv=bv
  )
  row = row_ref[...]
  r = lambda k: row[:, k : k + 1]  # noqa: E731
  s = jnp.where(valid, zs - r(_LSE_S), 0.0)
  p_s = jnp.where(valid, jnp.exp(s), 0.0)
  if kind == "ce":
    target = (1.0 - label_smoothing) * (cols == y_ref[...]) + label_smoothing / v
    grad = p_s - jnp.where(valid, target, 0.0)
  elif kind == "fkl" or (kind == "jsd" and beta == 0.0):
    p_t = jnp.where(zt > -jnp.inf, jnp.exp(zt - r(_LSE_T)), 0.0)
    grad = p_s - p_t
  elif kind in ("rkl", "weighted_rkl") or (kind == "jsd" and beta == 1.0):
    t = jnp.where(zt > -jnp.inf, zt - r(_LSE_T), -jnp.inf)
    diff = jnp.where(p_s > 0, s - t, 0.0)
    grad = p_s * (diff - r(_AUX))
  else:  # jsd
    lse = jnp.concatenate([r(_LSE_S), r(_LSE_T)], axis=1)
    s_, _, log_m, p_s_, _ = _jsd_terms(zs, zt, lse, beta)
    grad = (1.0 - beta) * p_s_ * ((s_ - log_m) - r(_AUX))
  dz = r(_G_LOSS) * grad + r(_G_LSE) * p_s - r(_G_ENT) * p_s * (s + r(_ENT))
  dz_ref[...] = jnp.where(valid, dz / temperature, 0.0).astype(dz_ref.dtype)


def _call(kernel, h, w, teacher, extra_in, extra_specs, out_shape, out_spec, *, interpret, v, bv):
  """pallas_call over a (row block, vocab block) grid with the teacher's operands."""
  bn = h.shape[0] if h.shape[0] < BLOCK_ROWS else BLOCK_ROWS
  n_rows, d = h.shape
  grid = (n_rows // bn, w.shape[1] // bv)
  operands = [h, w]
  specs = [
    pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
    pl.BlockSpec((d, bv), lambda i, j: (0, j)),
  ]
  if isinstance(teacher, tuple):
    ht, wt = teacher
    operands += [ht, wt]
    specs += [
      pl.BlockSpec((bn, ht.shape[1]), lambda i, j: (i, 0)),
      pl.BlockSpec((wt.shape[0], bv), lambda i, j: (0, j)),
    ]
  elif teacher is not None:
    operands.append(teacher)
    specs.append(pl.BlockSpec((bn, bv), lambda i, j: (i, j)))
  specs += [spec(bn) for spec in extra_specs]
  return pl.pallas_call(
    kernel,
    out_shape=out_shape,
    grid=grid,
    in_specs=specs,
    out_specs=out_spec(bn),
    interpret=interpret,
    compiler_params=_compiler_params(),
  )(*operands, *extra_in)


def _row_spec(width):
  return lambda bn: pl.BlockSpec((bn, width), lambda i, j: (i, 0))


def _prepare(cfg, h, w, teacher, mask, rows):
  """Zeroes masked rows (so garbage there cannot reach a NaN) and pads to whole blocks."""
  v = w.shape[1]
  bn, bv = _blocks(rows, v)
  n_pad = -(-h.shape[0] // bn) * bn
  v_pad = -(-v // bv) * bv
  keep = mask[:, None]
  h = _pad(jnp.where(keep, h, 0), 0, n_pad)
  w = _pad(w, 1, v_pad)
  if isinstance(teacher, tuple):
    ht, wt = teacher
    teacher = (_pad(jnp.where(keep, ht, 0), 0, n_pad), _pad(wt, 1, v_pad))
  elif teacher is not None:
    teacher = _pad(_pad(jnp.where(keep, teacher, 0), 0, n_pad), 1, v_pad)
  return h, w, teacher, n_pad, bv


def _fused_kind(teacher):
  if isinstance(teacher, tuple):
    return True
  return None if teacher is None else False


def forward(cfg, h, w, teacher, labels, mask, weights):
  """Per-token ``TokenStats`` and the backward's per-row extra (rkl or JSD's K)."""
  n, v = h.shape[0], w.shape[1]
  f32 = acc_dtype(h, w)
  hp, wp, tp, n_pad, bv = _prepare(cfg, h, w, teacher, mask, n)
  fused = _fused_kind(teacher)
  common = dict(fused_teacher=fused, temperature=cfg.temperature, v=v, bv=bv)
  y = _pad(labels.astype(jnp.int32)[:, None], 0, n_pad)
  acc = _call(
    functools.partial(_stats_kernel, **common),
    hp,
    wp,
    tp,
    [y],
    [_row_spec(1)],
    jax.ShapeDtypeStruct((n_pad, _NACC), f32),
    _row_spec(_NACC),
    interpret=cfg.interpret,
    v=v,
    bv=bv,
  )[:n]
  c = lambda k: acc[:, k]  # noqa: E731
  lse_s = c(_M_S) + jnp.log(c(_L_S))
  entropy = lse_s - c(_A_S) / c(_L_S)
  lse_t = jnp.zeros_like(lse_s)
  extra = jnp.zeros_like(lse_s)
  if cfg.kind == "ce":
    loss = lse_s - c(_PICK)
    if cfg.label_smoothing:
      mean_s = c(_SUM) / v - lse_s
      loss = (1.0 - cfg.label_smoothing) * loss - cfg.label_smoothing * mean_s
  else:
    lse_t = c(_M_T) + jnp.log(c(_L_T))
    fkl = c(_D_TS) / c(_L_T) - lse_t + lse_s
    rkl = c(_D_ST) / c(_L_S) - lse_s + lse_t
    beta = cfg.beta
    if cfg.kind == "fkl" or (cfg.kind == "jsd" and beta == 0.0):
      loss = fkl
    elif cfg.kind in ("rkl", "weighted_rkl") or (cfg.kind == "jsd" and beta == 1.0):
      loss, extra = rkl, rkl
    else:
      lse = _pad(jnp.stack([lse_s, lse_t], axis=1), 0, n_pad)
      jsd_k = _call(
        functools.partial(_jsd_kernel, beta=beta, **common),
        hp,
        wp,
        tp,
        [lse],
        [_row_spec(2)],
        jax.ShapeDtypeStruct((n_pad, 2), f32),
        _row_spec(2),
        interpret=cfg.interpret,
        v=v,
        bv=bv,
      )[:n]
      loss, extra = jsd_k[:, 0], jsd_k[:, 1]
    if cfg.kind == "weighted_rkl":
      loss = weights.astype(f32) * loss
  zero = jnp.zeros_like(loss)
  stats = TokenStats(
    loss=jnp.where(mask, loss, zero),
    student_lse=jnp.where(mask, lse_s, zero),
    teacher_lse=jnp.where(mask, lse_t, zero),
    student_max=jnp.where(mask, c(_M_S), zero),
    entropy=jnp.where(mask, entropy, zero),
    label_logit=jnp.where(mask, c(_PICK) if cfg.kind == "ce" else zero, zero),
  )
  return stats, jnp.where(mask, extra, zero)


def dlogits(cfg, w, t_shared, chunk) -> jax.Array:
  """dL/d(h_c w) of one token chunk (f32[C, V]), recomputing its logits tile by tile."""
  h_c, t_c, y_c, m_c, w_c, (g_loss, g_lse, g_ent), stats, extra = chunk
  rows, v = h_c.shape[0], w.shape[1]
  f32 = acc_dtype(h_c, w)
  teacher = None if t_c is None else ((t_c, t_shared) if t_shared is not None else t_c)
  hp, wp, tp, n_pad, bv = _prepare(cfg, h_c, w, teacher, m_c, rows)
  row = jnp.zeros((rows, _NROW), f32)
  for k, x in (
    (_LSE_S, stats.student_lse),
    (_LSE_T, stats.teacher_lse),
    (_AUX, extra),
    (_ENT, stats.entropy),
    (_G_LOSS, g_loss * w_c.astype(f32) if cfg.kind == "weighted_rkl" else g_loss),
    (_G_LSE, g_lse),
    (_G_ENT, g_ent),
  ):
    row = row.at[:, k].set(x.astype(f32))
  kernel = functools.partial(
    _dlogits_kernel,
    fused_teacher=_fused_kind(teacher),
    temperature=cfg.temperature,
    v=v,
    bv=bv,
    kind=cfg.kind,
    beta=cfg.beta,
    label_smoothing=cfg.label_smoothing,
  )
  dz = _call(
    kernel,
    hp,
    wp,
    tp,
    [_pad(y_c.astype(jnp.int32)[:, None], 0, n_pad), _pad(row, 0, n_pad)],
    [_row_spec(1), _row_spec(_NROW)],
    jax.ShapeDtypeStruct((n_pad, wp.shape[1]), f32),
    lambda bn: pl.BlockSpec((bn, bv), lambda i, j: (i, j)),
    interpret=cfg.interpret,
    v=v,
    bv=bv,
  )
  return dz[:rows, :v]
