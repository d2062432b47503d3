"""Rollouts: autoregressive generation with a KV cache."""

from jaxpost.rollout.sampler import (
  GenerateOutput,
  generate,
  left_pad,
  make_generate_fn,
  sample_logits,
)

__all__ = ["GenerateOutput", "generate", "left_pad", "make_generate_fn", "sample_logits"]
