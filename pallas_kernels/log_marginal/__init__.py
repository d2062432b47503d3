"""log_marginal: logsumexp over mixture components with a posterior gradient.

See ``ops.py`` for shapes, conventions and which path (XLA, Pallas, reference) runs.
"""

from pallas_kernels.log_marginal.ops import (
  component_segment_ids,
  default_implementation,
  log_marginal,
  segment_log_likelihood,
  segment_log_marginal,
)

__all__ = [
  "component_segment_ids",
  "default_implementation",
  "log_marginal",
  "segment_log_likelihood",
  "segment_log_marginal",
]
