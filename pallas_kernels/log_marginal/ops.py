"""Log-marginal over mixture components: the public op, its gradient and dispatch.

  score_i = logsumexp_k(log pi_ik + log p_ik)

where log pi_ik are log mixture weights (a prior over components) and log p_ik are
component log-likelihoods, given directly (``log_marginal``) or as a weighted segment
sum of token log-probs (``segment_log_marginal``):

  log p_ik = sum_{t : segment_ids_t = i*K + k} w_t * logp_t.

This is FLaG's latent-group aggregation and, in general, any marginal likelihood over
samples or groups (log-mean-exp over K samples is ``log_prior = -log K``).

Axis letters (local to this op): I rows (the items whose marginal is wanted, e.g.
prompts or examples), K components (samples, latent groups; not the K of GQA heads in
``jaxpost/types.py``), N tokens (any token layout, flattened to 1-D).

Conventions:
- Inputs may be f32 or bf16; all math (the sum, the logsumexp, the posterior) runs in
  f32, or f64 when the inputs are f64 under ``jax_enable_x64``. The score is f32[I].
- A row whose terms are all -inf (zero prior mass on every component that can explain
  it) scores -inf and receives an exactly zero gradient, never NaN. A -inf term in an
  otherwise finite row contributes 0 to the score and gets a zero gradient.
- Gradient: d score_i / d log pi_ik = d score_i / d log p_ik = r_ik, the posterior
  r_ik = exp(log pi_ik + log p_ik - score_i) = softmax_k(...). Through the segment sum,
  token t in group (i, k) receives r_ik * w_t * g_i for a cotangent g_i, so per-token
  gradients can flow into a fused LM-head backward without materialising logits.
- ``segment_ids`` are flat group indices i*K + k (``component_segment_ids`` builds them
  from a (row, component) pair). Ids outside [0, I*K), -1 for instance, mark ignored
  tokens: they add nothing and get a zero gradient, whatever their log-prob (even NaN).
  A group with no tokens has log p_ik = 0 (an empty product); exclude a component by
  giving it log pi_ik = -inf. A zero weight multiplies the token's log-prob, so a token
  with weight 0 and log-prob -inf gives NaN: mask tokens through their id instead.

Paths (``implementation``):
- ``"xla"``: guarded logsumexp in plain jnp, which XLA fuses. The default on CPU.
- ``"pallas"``: the row-blocked kernel in ``kernel.py`` (rows padded to a multiple of
  the block here; on GPU, K padded with -inf to a power of two for Triton). The default
  on TPU and GPU. ``interpret`` defaults to True off TPU/GPU, which is how CPU tests run
  it; it also accepts a ``pltpu.InterpretParams``. K above ``MAX_PALLAS_COMPONENTS``
  does not fit one block and falls back to the XLA path.
- ``"reference"``: ``reference.py`` (``jax.nn.logsumexp`` and plain autodiff, no
  custom_vjp): for tests and debugging; its gradient is NaN on all -inf rows.

``"xla"`` and ``"pallas"`` share one ``jax.custom_vjp``; only the forward differs. The
backward is one fused XLA elementwise expression over the saved score:
r = exp(log pi + log p - score), guarded by a double ``where`` so that all -inf rows
give 0. The forward inside it is a ``jax.custom_jvp`` with the same posterior as its
tangent, so second derivatives (which differentiate the saved score) work on both
paths and stay finite on all -inf rows. The segment sum always runs in XLA
(``jax.ops.segment_sum``) before the forward; its transpose (a gather) is what hands
r_ik * g_i back to each token.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.log_marginal import kernel, reference

IMPLEMENTATIONS = ("xla", "pallas", "reference")

# Rows per Pallas block: a power of two (Triton) and >= 16 (TPU sublane tiling of bf16).
MIN_BLOCK_ROWS = 16
MAX_BLOCK_ROWS = 512
# Bytes of one f32 input block. Two inputs, double-buffered, stay within 8 MiB of
# TPU VMEM / GPU shared memory budget for the [R, K] tiles plus temporaries.
BLOCK_BYTES = 2 * 1024 * 1024
# Widest K that still fits one block of MIN_BLOCK_ROWS rows; wider goes to XLA.
MAX_PALLAS_COMPONENTS = BLOCK_BYTES // (4 * MIN_BLOCK_ROWS)

_ACCELERATORS = ("tpu", "gpu", "cuda", "rocm")


def default_implementation(backend: str | None = None) -> str:
  """Default path for a backend: "xla" on CPU (and unknown backends), else "pallas".

  Args:
    backend: a JAX backend name; None means ``jax.default_backend()``.
  """
  backend = jax.default_backend() if backend is None else backend
  return "pallas" if backend in _ACCELERATORS else "xla"


def block_rows_for(num_rows: int, num_components: int) -> int:
  """Rows per Pallas block: a power of two in [16, 512] sized from ``BLOCK_BYTES``.

  Args:
    num_rows: I, rows before padding.
    num_components: K as the kernel sees it (after any padding of K).
  """
  rows = min(
    MAX_BLOCK_ROWS,
    max(BLOCK_BYTES // (4 * max(num_components, 1)), 1),
    max(num_rows, 1),
  )
  rows = 1 << (rows.bit_length() - 1)  # round down to a power of two
  return max(MIN_BLOCK_ROWS, rows)


def _compute_dtype(*xs: jax.Array) -> jnp.dtype:
  # At least f32 (bf16 is upcast); f64 stays f64 under jax_enable_x64.
  return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _xla_forward(log_prior: jax.Array, log_p: jax.Array) -> jax.Array:
  dtype = _compute_dtype(log_prior, log_p)
  a = log_prior.astype(dtype) + log_p.astype(dtype)  # [I, K]
  m = jnp.max(a, axis=-1)  # [I]
  # Non-finite max (all -inf row): shift by 0 so the row gives log(0) = -inf, not NaN.
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  return jnp.log(jnp.sum(jnp.exp(a - m[:, None]), axis=-1)) + m


def _pallas_forward(
  log_prior: jax.Array,
  log_p: jax.Array,
  *,
  interpret: Any,
  block_rows: int | None,
  backend: str,
  pow2_components: bool | None = None,
) -> jax.Array:
  """Pads to the kernel's layout, runs it, and slices the [I] result back out.

  ``pow2_components`` (None = only when compiling for GPU) pads K to a power of two;
  tests set it to exercise that padding in interpret mode.
  """
  dtype = _compute_dtype(log_prior, log_p)
  num_rows, num_components = log_prior.shape
  on_gpu = backend in ("gpu", "cuda", "rocm") and not interpret
  if pow2_components is None:
    pow2_components = on_gpu
  # Triton blocks must be powers of two; K is one block, so pad it with -inf columns,
  # which add exp(-inf) = 0 to every row and leave all -inf rows at -inf.
  k_pad = (1 << (num_components - 1).bit_length()) - num_components if pow2_components else 0
  if num_rows == 0 or num_components + k_pad > MAX_PALLAS_COMPONENTS:
    if num_rows:
      logging.info("log_marginal: K=%d exceeds one Pallas block; using XLA.", num_components)
    return _xla_forward(log_prior, log_p)
  rows = block_rows or block_rows_for(num_rows, num_components + k_pad)
  if rows & (rows - 1):
    raise ValueError(f"block_rows must be a power of two, got {rows}")
  i_pad = -num_rows % rows
  # Pad log_prior with -inf and log_p with 0: padded columns add exp(-inf) = 0, padded
  # rows are all -inf rows (scored -inf by the kernel's guard) and are sliced away.
  log_prior = jnp.pad(log_prior, ((0, i_pad), (0, k_pad)), constant_values=-jnp.inf)
  log_p = jnp.pad(log_p, ((0, i_pad), (0, k_pad)), constant_values=0.0)
  if backend == "tpu" and not interpret:
    params = pltpu.CompilerParams(dimension_semantics=("parallel",))
  elif on_gpu:
    params = pltriton.CompilerParams(num_warps=4, num_stages=1)
  else:
    params = None
  out = kernel.log_marginal_blocks(
    log_prior,
    log_p,
    block_rows=rows,
    out_dtype=dtype,
    interpret=interpret,
    compiler_params=params,
  )  # [I + i_pad, 1]
  return out[:num_rows, 0]


def _posterior(log_prior: jax.Array, log_p: jax.Array, score: jax.Array):
  """(live f32[I] bool, r f32[I, K]): r_ik = exp(log pi_ik + log p_ik - score_i), guarded."""
  dtype = score.dtype
  a = log_prior.astype(dtype) + log_p.astype(dtype)  # [I, K]
  # Double where: on an all -inf row, score = -inf and a - score = -inf - -inf = NaN, so
  # the shift is replaced by 0 first (exp(-inf - 0) = 0) and the row is zeroed after.
  # The inner where is what keeps second derivatives finite: a NaN in the unselected
  # branch of the outer where would still poison its derivative. A NaN score is not
  # "dead" and propagates.
  live = score != -jnp.inf  # [I]
  shift = jnp.where(live, score, 0.0)
  return live, jnp.where(live[:, None], jnp.exp(a - shift[:, None]), 0.0)


# The forward is wrapped in a custom_jvp so that differentiating the saved score (which
# happens only for second and higher derivatives, through the backward below) never
# differentiates the Pallas call (not differentiable) or the raw logsumexp (0 * inf on
# all -inf rows): d score_i = sum_k r_ik (d log pi_ik + d log p_ik).
@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _score(log_prior, log_p, implementation, interpret, block_rows):
  if implementation == "pallas":
    return _pallas_forward(
      log_prior,
      log_p,
      interpret=interpret,
      block_rows=block_rows,
      backend=jax.default_backend(),
    )
  return _xla_forward(log_prior, log_p)


@_score.defjvp
def _score_jvp(implementation, interpret, block_rows, primals, tangents):
  log_prior, log_p = primals
  score = _score(log_prior, log_p, implementation, interpret, block_rows)
  _, r = _posterior(log_prior, log_p, score)
  dtype = score.dtype
  d_a = tangents[0].astype(dtype) + tangents[1].astype(dtype)  # [I, K]
  return score, jnp.sum(r * d_a, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _log_marginal(log_prior, log_p, implementation, interpret, block_rows):
  return _score(log_prior, log_p, implementation, interpret, block_rows)


def _log_marginal_fwd(log_prior, log_p, implementation, interpret, block_rows):
  score = _score(log_prior, log_p, implementation, interpret, block_rows)
  return score, (log_prior, log_p, score)


def _log_marginal_bwd(implementation, interpret, block_rows, residuals, g):
  del implementation, interpret, block_rows  # one backward for every forward path
  log_prior, log_p, score = residuals
  live, r = _posterior(log_prior, log_p, score)  # [I], [I, K]
  # Zeroing dead rows after the product also keeps a non-finite cotangent there out.
  grad = jnp.where(live[:, None], g.astype(score.dtype)[:, None] * r, 0.0)
  return grad.astype(log_prior.dtype), grad.astype(log_p.dtype)


_log_marginal.defvjp(_log_marginal_fwd, _log_marginal_bwd)


def _resolve(implementation: str | None, interpret: Any) -> tuple[str, Any]:
  implementation = default_implementation() if implementation is None else implementation
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if interpret is None:
    interpret = jax.default_backend() not in _ACCELERATORS
  return implementation, interpret


def log_marginal(
  log_prior: jax.Array,
  log_p: jax.Array,
  *,
  implementation: str | None = None,
  interpret: Any = None,
  block_rows: int | None = None,
) -> jax.Array:
  """score_i = logsumexp_k(log_prior_ik + log_p_ik), guarded, with a posterior gradient.

  Example: the log-mean-exp of K sample log-likelihoods per prompt is
  ``log_marginal(jnp.full((I, K), -jnp.log(K)), sample_logp)``.

  Args:
    log_prior: f32[I, K] (or bf16) log mixture weights log pi_ik; -inf = no mass.
    log_p: f32[I, K] (or bf16) component log-likelihoods log p_ik.
    implementation: None (``default_implementation()``), "xla", "pallas" or
      "reference"; see the module docstring.
    interpret: Pallas interpret mode: None = True off TPU/GPU; a bool or a
      ``pltpu.InterpretParams``. Ignored by the other paths.
    block_rows: Pallas rows per block (a power of two); None sizes it from K.

  Returns:
    f32[I] score per row (f64 for f64 inputs); -inf for all -inf rows. Its gradient
    w.r.t. both inputs is the posterior r_ik times the cotangent, and 0 on -inf rows.
  """
  chex.assert_rank([log_prior, log_p], 2)
  chex.assert_equal_shape([log_prior, log_p])
  if log_prior.shape[1] == 0:
    raise ValueError("log_marginal needs at least one component (K >= 1)")
  implementation, interpret = _resolve(implementation, interpret)
  if implementation == "reference":
    return reference.log_marginal_reference(log_prior, log_p)
  return _log_marginal(log_prior, log_p, implementation, interpret, block_rows)


def component_segment_ids(
  row_ids: jax.Array,
  component_ids: jax.Array,
  *,
  num_rows: int,
  num_components: int,
) -> jax.Array:
  """Flat group ids i*K + k from per-token (row, component) ids.

  A token whose row is outside [0, I) or whose component is outside [0, K) gets -1
  (ignored); without this check, component K of row i would alias row i + 1.

  Args:
    row_ids: i32[N] row i of each token.
    component_ids: i32[N] component k of each token.
    num_rows: I.
    num_components: K.

  Returns:
    i32[N] segment ids for ``segment_log_marginal``.
  """
  chex.assert_rank([row_ids, component_ids], 1)
  chex.assert_equal_shape([row_ids, component_ids])
  valid = (row_ids >= 0) & (row_ids < num_rows)
  valid &= (component_ids >= 0) & (component_ids < num_components)
  flat = row_ids.astype(jnp.int32) * num_components + component_ids.astype(jnp.int32)
  return jnp.where(valid, flat, -1)


def segment_log_likelihood(
  token_logp: jax.Array,
  segment_ids: jax.Array,
  token_weights: jax.Array | None = None,
  *,
  num_rows: int,
  num_components: int,
) -> jax.Array:
  """log p_ik = sum_{t : segment_ids_t = i*K + k} w_t * token_logp_t, in XLA.

  Args:
    token_logp: f32[N] (or bf16) per-token log-probs (e.g. log p(y_t | y_<t)).
    segment_ids: i32[N] flat group id i*K + k; ids outside [0, I*K) are ignored.
    token_weights: f32[N] per-token weights, or None for all ones.
    num_rows: I.
    num_components: K.

  Returns:
    f32[I, K] group log-likelihoods; 0 for groups without tokens.
  """
  chex.assert_rank([token_logp, segment_ids], 1)
  chex.assert_equal_shape([token_logp, segment_ids])
  num_groups = num_rows * num_components
  dtype = _compute_dtype(token_logp)
  valid = (segment_ids >= 0) & (segment_ids < num_groups)
  # where before the product: an ignored token's log-prob may be -inf or NaN.
  x = jnp.where(valid, token_logp.astype(dtype), 0.0)
  if token_weights is not None:
    chex.assert_equal_shape([token_logp, token_weights])
    x = x * jnp.where(valid, token_weights.astype(dtype), 0.0)
  # Ignored tokens now add an exact 0 to group 0 instead of relying on scatter's
  # out-of-bounds mode (and a gradient of 0 flows back to them through the where).
  sums = jax.ops.segment_sum(x, jnp.where(valid, segment_ids, 0), num_segments=num_groups)
  return sums.reshape(num_rows, num_components)  # [I, K]


def segment_log_marginal(
  log_prior: jax.Array,
  token_logp: jax.Array,
  segment_ids: jax.Array,
  token_weights: jax.Array | None = None,
  *,
  implementation: str | None = None,
  interpret: Any = None,
  block_rows: int | None = None,
) -> jax.Array:
  """score_i = logsumexp_k(log_prior_ik + sum_{t in (i, k)} w_t * token_logp_t).

  The segment sum runs in XLA; the logsumexp is ``log_marginal`` (same paths, same
  custom_vjp). The gradient w.r.t. token t of group (i, k) is r_ik * w_t * g_i, where
  r is the posterior over components; ignored tokens and all -inf rows get 0.

  Args:
    log_prior: f32[I, K] (or bf16) log mixture weights.
    token_logp: f32[N] (or bf16) per-token log-probs.
    segment_ids: i32[N] flat group id i*K + k (see ``component_segment_ids``); ids
      outside [0, I*K) are ignored tokens.
    token_weights: f32[N] per-token weights (e.g. 1/temperature or IS weights), or
      None for all ones. A weight of 0 does not mask a -inf log-prob; use the id.
    implementation: as for ``log_marginal``; "reference" uses the one-hot reference.
    interpret: as for ``log_marginal``.
    block_rows: as for ``log_marginal``.

  Returns:
    f32[I] log-marginal per row.
  """
  chex.assert_rank(log_prior, 2)
  chex.assert_rank([token_logp, segment_ids], 1)
  num_rows, num_components = log_prior.shape
  implementation, interpret = _resolve(implementation, interpret)
  if implementation == "reference":
    return reference.segment_log_marginal_reference(
      log_prior, token_logp, segment_ids, token_weights
    )
  log_p = segment_log_likelihood(
    token_logp,
    segment_ids,
    token_weights,
    num_rows=num_rows,
    num_components=num_components,
  )
  return log_marginal(
    log_prior,
    log_p,
    implementation=implementation,
    interpret=interpret,
    block_rows=block_rows,
  )
