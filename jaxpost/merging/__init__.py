"""Weight-space merging of models that share an architecture (MoT, model soups; the
merging issue adds task arithmetic, TIES and DARE here)."""

from jaxpost.merging.average import MERGED_FILE, average, merge_runs

__all__ = ["MERGED_FILE", "average", "merge_runs"]
