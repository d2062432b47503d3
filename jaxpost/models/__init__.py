"""Decoder model, KV cache and named model sizes."""

from jaxpost.models.config import NAMED_SIZES, ModelConfig, named_config, param_count
from jaxpost.models.decoder import (
  Decoder,
  KVCache,
  ModelOutput,
  attention,
  create_model,
  init_cache,
  make_attention_mask,
  rope,
)

__all__ = [
  "NAMED_SIZES",
  "Decoder",
  "create_model",
  "KVCache",
  "ModelConfig",
  "ModelOutput",
  "attention",
  "init_cache",
  "make_attention_mask",
  "named_config",
  "param_count",
  "rope",
]
