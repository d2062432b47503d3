"""Fused LM head + token-wise divergence (ce, fkl, rkl, jsd, weighted rkl); see ``ops``."""

from pallas_kernels.fused_linear_divergence.ops import (
  IMPLEMENTATIONS,
  default_chunk_size,
  fused_linear_divergence,
  fused_linear_divergence_sum,
)
from pallas_kernels.fused_linear_divergence.reference import KINDS, TokenStats, TopK

__all__ = [
  "IMPLEMENTATIONS",
  "KINDS",
  "TokenStats",
  "TopK",
  "default_chunk_size",
  "fused_linear_divergence",
  "fused_linear_divergence_sum",
]
