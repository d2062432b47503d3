"""Decoder hyper-parameters and the named model sizes.

One ``ModelConfig`` describes every supported architecture (Llama, Qwen2, Qwen3): the
differences are switches (``qk_norm``, ``attn_bias``, ``tie_embeddings``) rather than
separate model classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a decoder-only transformer.

  Attributes:
    vocab_size: V, number of token ids.
    d_model: D, residual stream width.
    n_layers: L, number of transformer blocks.
    n_heads: H, query heads.
    n_kv_heads: K, key/value heads; H must be a multiple of K (grouped-query attention).
    head_dim: E, per-head width (need not equal D / H, e.g. Qwen3). Must be even (RoPE).
    mlp_dim: F, SwiGLU hidden width.
    rope_theta: RoPE base frequency.
    rope_scaling: reserved for the HF-import issue (e.g. Llama-3 frequency scaling);
      must be None for now.
    max_seq_len: longest sequence the model is meant to see (RoPE itself has no limit).
    norm_eps: RMSNorm epsilon.
    qk_norm: RMSNorm over E on each query and key head before RoPE (Qwen3).
    attn_bias: biases on the q/k/v projections (Qwen2).
    tie_embeddings: the lm head is the transposed input embedding.
    param_dtype: storage dtype of the parameters, 'float32' or 'bfloat16'.
    dtype: compute dtype of the forward pass, 'float32' or 'bfloat16'. Softmax, norms
      and logits are float32 regardless.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  rope_scaling: tuple | None = None
  max_seq_len: int = 2048
  norm_eps: float = 1e-6
  qk_norm: bool = False
  attn_bias: bool = False
  tie_embeddings: bool = False
  param_dtype: str = "float32"
  dtype: str = "float32"

  def __post_init__(self):
    for name in (
      "vocab_size",
      "d_model",
      "n_layers",
      "n_heads",
      "n_kv_heads",
      "head_dim",
      "mlp_dim",
      "max_seq_len",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
        f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
      )
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
    if not self.rope_theta > 0:
      raise ValueError(f"rope_theta must be positive, got {self.rope_theta!r}")
    if not self.norm_eps > 0:
      raise ValueError(f"norm_eps must be positive, got {self.norm_eps!r}")
    if self.rope_scaling is not None:
      raise ValueError("rope_scaling is reserved and not implemented yet; leave it None")
    for name in ("param_dtype", "dtype"):
      value = getattr(self, name)
      if value not in _DTYPES:
        raise ValueError(f"ModelConfig.{name} must be one of {sorted(_DTYPES)}, got {value!r}")

  @property
  def jnp_dtype(self) -> Any:
    """Compute dtype as a jnp dtype."""
    return _DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self) -> Any:
    """Parameter storage dtype as a jnp dtype."""
    return _DTYPES[self.param_dtype]


def param_count(config: ModelConfig) -> int:
  """Number of parameters of ``Decoder(config)``, computed from the shapes alone."""
  c = config
  q_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
  attn = c.d_model * (q_width + 2 * kv_width) + q_width * c.d_model
  if c.attn_bias:
    attn += q_width + 2 * kv_width
  if c.qk_norm:
    attn += 2 * c.head_dim
  mlp = 3 * c.d_model * c.mlp_dim
  block = attn + mlp + 2 * c.d_model
  head = 0 if c.tie_embeddings else c.d_model * c.vocab_size
  return c.vocab_size * c.d_model + c.n_layers * block + c.d_model + head


NAMED_SIZES: dict[str, ModelConfig] = {
  # CPU quickstart model; vocab_size is a placeholder replaced by the tokenizer's.
  "tiny": ModelConfig(
    vocab_size=64,
    d_model=128,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=32,
    mlp_dim=384,
    rope_theta=10000.0,
    max_seq_len=256,
  ),
  # Qwen2-architecture small model, 8,130,816 parameters.
  "w-tiny": ModelConfig(
    vocab_size=8192,
    d_model=256,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    head_dim=64,
    mlp_dim=1024,
    rope_theta=10000.0,
    max_seq_len=512,
    attn_bias=True,
  ),
  "qwen2.5-0.5b": ModelConfig(
    vocab_size=151936,
    d_model=896,
    n_layers=24,
    n_heads=14,
    n_kv_heads=2,
    head_dim=64,
    mlp_dim=4864,
    rope_theta=1_000_000.0,
    max_seq_len=32768,
    norm_eps=1e-6,
    attn_bias=True,
    tie_embeddings=True,
  ),
  "qwen3-0.6b": ModelConfig(
    vocab_size=151936,
    d_model=1024,
    n_layers=28,
    n_heads=16,
    n_kv_heads=8,
    head_dim=128,
    mlp_dim=3072,
    rope_theta=1_000_000.0,
    max_seq_len=40960,
    norm_eps=1e-6,
    qk_norm=True,
    tie_embeddings=True,
  ),
  # The published checkpoint uses llama3 RoPE frequency scaling; it goes into
  # rope_scaling once that is implemented.
  "llama3.2-1b": ModelConfig(
    vocab_size=128256,
    d_model=2048,
    n_layers=16,
    n_heads=32,
    n_kv_heads=8,
    head_dim=64,
    mlp_dim=8192,
    rope_theta=500_000.0,
    max_seq_len=131072,
    norm_eps=1e-5,
    tie_embeddings=True,
    param_dtype="bfloat16",
    dtype="bfloat16",
  ),
}


def named_config(name: str, **overrides: Any) -> ModelConfig:
  """Returns the named size with ``overrides`` applied (validated again).

  Raises:
    ValueError: unknown name or invalid override.
  """
  if name not in NAMED_SIZES:
    raise ValueError(f"unknown model size {name!r}; known sizes: {sorted(NAMED_SIZES)}")
  return dataclasses.replace(NAMED_SIZES[name], **overrides)
