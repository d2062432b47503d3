"""Rollouts: autoregressive generation with a KV cache, and the layout the trainer scores."""

from jaxpost.rollout.batching import RolloutBatch, rollout_batch, think_block
from jaxpost.rollout.sampler import (
  GenerateOutput,
  apply_stop_strings,
  generate,
  generate_groups,
  group_keys,
  left_pad,
  make_generate_fn,
  sample_logits,
)

__all__ = [
  "GenerateOutput",
  "RolloutBatch",
  "apply_stop_strings",
  "generate",
  "generate_groups",
  "group_keys",
  "left_pad",
  "make_generate_fn",
  "rollout_batch",
  "sample_logits",
  "think_block",
]
