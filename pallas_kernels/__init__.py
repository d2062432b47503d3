"""Pallas kernels (with XLA paths) for jaxpost: fused LM-head divergences, log-marginals.

Each op lives in ``pallas_kernels/<op>/`` as ``kernel.py`` (Pallas), ``ops.py`` (the
public op: ``jax.custom_vjp`` and dispatch between the XLA and Pallas paths) and
``reference.py`` (plain JAX, for tests and benchmarks).
"""

from pallas_kernels.fused_linear_divergence import (
  TokenStats,
  TopK,
  fused_linear_divergence,
  fused_linear_divergence_sum,
)
from pallas_kernels.log_marginal import (
  component_segment_ids,
  log_marginal,
  segment_log_marginal,
)

__all__ = [
  "TokenStats",
  "TopK",
  "component_segment_ids",
  "fused_linear_divergence",
  "fused_linear_divergence_sum",
  "log_marginal",
  "segment_log_marginal",
]
