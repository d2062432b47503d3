"""Weight-space merging of models that share an architecture: averaging (MoT, model
soups) and the task-vector methods (``jaxpost.merging.methods``)."""

from jaxpost.merging.average import MERGED_FILE, average, merge_runs
from jaxpost.merging.methods import (
  METHODS,
  bai,
  breadcrumbs,
  dare,
  model_stock,
  slerp,
  task_arithmetic,
  ties,
)

__all__ = [
  "MERGED_FILE",
  "METHODS",
  "average",
  "bai",
  "breadcrumbs",
  "dare",
  "merge_runs",
  "model_stock",
  "slerp",
  "task_arithmetic",
  "ties",
]
