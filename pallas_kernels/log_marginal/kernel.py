"""Pallas kernel for the log-marginal forward: a row-blocked, guarded logsumexp.

The kernel computes, for one block of R rows at a time,

  score_i = logsumexp_k(log_prior_ik + log_p_ik)

with the whole K axis as one block, upcast to f32 (f64 stays f64) inside the kernel.
The segment sum that turns per-token log-probs into log p_ik runs in XLA
(``jax.ops.segment_sum`` in ``ops.py``) before this kernel; the backward pass is a
fused elementwise XLA expression in ``ops.py``, so there is no Pallas backward.

Only portable ``jnp`` ops appear in the body (add, max, exp, log, compare, select,
sum), so the same kernel lowers with Mosaic on TPU, with Triton on GPU, and runs with
``interpret=True`` on CPU. Layout rules the caller (``ops.py``) must satisfy:

- I (rows) is a multiple of ``block_rows``: ``ops.py`` pads the rows. Out-of-bounds
  parts of a partial block are garbage on hardware, so no partial blocks are used.
- ``block_rows`` is a power of two and at least 16: TPU tiles second-minor dims in
  multiples of 8 (f32) / 16 (bf16), Triton needs power-of-two block dims.
- K is one full block. TPU accepts any K as a full dimension; Triton needs a power
  of two, so on GPU ``ops.py`` pads K with -inf columns (which add exp(-inf) = 0).
- The output is [I, 1] rather than [I] so every block is 2-D, which keeps TPU
  blocks on the (sublane, lane) grid and avoids 1-D layouts.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def _log_marginal_block(log_prior_ref, log_p_ref, out_ref):
  """One [R, K] block -> [R, 1] guarded logsumexp."""
  dtype = out_ref.dtype
  a = log_prior_ref[...].astype(dtype) + log_p_ref[...].astype(dtype)  # [R, K]
  m = jnp.max(a, axis=1, keepdims=True)  # [R, 1]
  # A row of all -inf (or with a +inf) has a non-finite max; shifting by it would give
  # -inf - -inf = NaN. Shift by 0 instead: an all -inf row then sums to 0 and its log
  # is -inf, a +inf row gives +inf, and a NaN max still propagates. Plain comparisons
  # (not isfinite) because they lower on every backend.
  finite = (m > -jnp.inf) & (m < jnp.inf)
  m = jnp.where(finite, m, 0.0)
  total = jnp.sum(jnp.exp(a - m), axis=1, keepdims=True)  # [R, 1], in [1, K] when finite
  out_ref[...] = (jnp.log(total) + m).astype(out_ref.dtype)


def log_marginal_blocks(
  log_prior: jax.Array,
  log_p: jax.Array,
  *,
  block_rows: int,
  out_dtype: Any = jnp.float32,
  interpret: Any = False,
  compiler_params: Any = None,
) -> jax.Array:
  """Runs the row-blocked Pallas kernel on already padded inputs.

  Args:
    log_prior: f32[I, K] (or bf16) log mixture weights; I % block_rows == 0.
    log_p: f32[I, K] (or bf16) component log-likelihoods, same shape.
    block_rows: R, rows per grid step (power of two, >= 16 for TPU bf16 tiling).
    out_dtype: dtype of the result and of the in-kernel math (f32, or f64 on CPU).
    interpret: False on TPU/GPU; True (or a ``pltpu.InterpretParams``) on CPU.
    compiler_params: backend compiler params (``pltpu.CompilerParams`` selects the
      parallel row axis on TPU, ``pallas.triton.CompilerParams`` the Triton backend
      on GPU); None in interpret mode.

  Returns:
    f32[I, 1] guarded logsumexp of each row.
  """
  chex.assert_rank([log_prior, log_p], 2)
  chex.assert_equal_shape([log_prior, log_p])
  num_rows, num_components = log_prior.shape
  if num_rows % block_rows:
    raise ValueError(f"rows ({num_rows}) must be a multiple of block_rows ({block_rows})")
  block = pl.BlockSpec((block_rows, num_components), lambda n: (n, 0))
  return pl.pallas_call(
    _log_marginal_block,
    out_shape=jax.ShapeDtypeStruct((num_rows, 1), out_dtype),
    grid=(num_rows // block_rows,),
    in_specs=[block, block],
    out_specs=pl.BlockSpec((block_rows, 1), lambda n: (n, 0)),
    interpret=interpret,
    compiler_params=compiler_params,
    name="log_marginal",
  )(log_prior, log_p)
