"""Decoder model, KV cache, named model sizes, Hugging Face import/export (``models.hf``)."""

from jaxpost.models.config import (
  NAMED_SIZES,
  ModelConfig,
  RopeScaling,
  named_config,
  param_count,
)
from jaxpost.models.decoder import (
  Decoder,
  KVCache,
  ModelOutput,
  attention,
  create_model,
  init_cache,
  keep_layers,
  make_attention_mask,
  parse_layers,
  repeat_cache,
  rope,
  rope_frequencies,
)

__all__ = [
  "NAMED_SIZES",
  "Decoder",
  "create_model",
  "KVCache",
  "ModelConfig",
  "RopeScaling",
  "rope_frequencies",
  "ModelOutput",
  "attention",
  "init_cache",
  "keep_layers",
  "make_attention_mask",
  "named_config",
  "param_count",
  "parse_layers",
  "repeat_cache",
  "rope",
]
