"""Decoder hyper-parameters and the named model sizes.

One ``ModelConfig`` describes every supported architecture (Llama, Qwen2, Qwen3): the
differences are switches (``qk_norm``, ``attn_bias``, ``tie_embeddings``) rather than
separate model classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

ROPE_SCALING_TYPES = ("linear", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling for context extension (HF ``rope_scaling`` semantics).

  ``rope_type`` picks the rule (see ``jaxpost.models.decoder.rope_frequencies``):

  * ``linear``: every inverse frequency is divided by ``factor`` (position interpolation).
  * ``llama3``: frequencies whose wavelength exceeds
    ``original_max_position_embeddings / low_freq_factor`` are divided by ``factor``,
    those below ``original_max_position_embeddings / high_freq_factor`` are kept, and
    the band between is blended smoothly (Llama 3.1+).
  * ``yarn``: per-frequency blend of interpolation and extrapolation with a linear ramp
    between ``beta_fast`` and ``beta_slow`` rotations over the original context, and
    cos/sin multiplied by an attention factor (YaRN; Qwen2.5 long-context configs).

  Attributes:
    rope_type: one of ``ROPE_SCALING_TYPES``.
    factor: context extension factor (> 0; >= 1 for llama3 and yarn).
    original_max_position_embeddings: pre-extension context length (llama3, yarn).
    low_freq_factor: llama3 only; wavelengths above original / low_freq_factor scale.
    high_freq_factor: llama3 only; wavelengths below original / high_freq_factor stay.
    beta_fast: yarn ramp bound (rotations) where extrapolation ends.
    beta_slow: yarn ramp bound (rotations) where interpolation starts.
    attention_factor: yarn cos/sin multiplier; None derives it from ``factor`` (and
      ``mscale`` / ``mscale_all_dim`` when both are set).
    mscale: yarn attention-factor numerator scale.
    mscale_all_dim: yarn attention-factor denominator scale.
    truncate: yarn: round the ramp bounds outward to whole dimensions.
  """

  rope_type: str
  factor: float
  original_max_position_embeddings: int | None = None
  low_freq_factor: float | None = None
  high_freq_factor: float | None = None
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  attention_factor: float | None = None
  mscale: float | None = None
  mscale_all_dim: float | None = None
  truncate: bool = True

  def __post_init__(self):
    if self.rope_type not in ROPE_SCALING_TYPES:
      raise ValueError(
        f"rope_scaling type {self.rope_type!r} is not supported; supported: "
        f"{list(ROPE_SCALING_TYPES)}"
      )
    if not (isinstance(self.factor, int | float) and self.factor > 0):
      raise ValueError(f"rope_scaling factor must be a positive number, got {self.factor!r}")
    if self.rope_type in ("llama3", "yarn"):
      if self.factor < 1:
        raise ValueError(f"{self.rope_type} rope_scaling needs factor >= 1, got {self.factor}")
      orig = self.original_max_position_embeddings
      if not (isinstance(orig, int) and not isinstance(orig, bool) and orig > 0):
        raise ValueError(
          f"{self.rope_type} rope_scaling needs a positive int "
          f"original_max_position_embeddings, got {orig!r}"
        )
    if self.rope_type == "llama3":
      low, high = self.low_freq_factor, self.high_freq_factor
      if low is None or high is None or not 0 < low < high:
        raise ValueError(
          f"llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor, got {low!r}, {high!r}"
        )
    if self.rope_type == "yarn" and not self.beta_fast >= self.beta_slow > 0:
      raise ValueError(
        f"yarn rope_scaling needs beta_fast >= beta_slow > 0, got {self.beta_fast}, "
        f"{self.beta_slow}"
      )
    if self.attention_factor is not None and not self.attention_factor > 0:
      raise ValueError(f"attention_factor must be positive, got {self.attention_factor!r}")

  @classmethod
  def parse(cls, value: Any) -> RopeScaling:
    """A ``RopeScaling`` from itself, a mapping, or a tuple of (key, value) pairs.

    Raises:
      ValueError: any other value, an unknown field, or invalid settings.
    """
    if isinstance(value, RopeScaling):
      return value
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
      value = dict(value)
    if not isinstance(value, Mapping):
      raise ValueError(
        "rope_scaling must be None, a RopeScaling, a mapping or a tuple of (key, value) "
        f"pairs, got {value!r}"
      )
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - fields)
    if unknown:
      raise ValueError(f"unknown rope_scaling fields {unknown}; known: {sorted(fields)}")
    return cls(**value)

  def to_dict(self) -> dict[str, Any]:
    """The settings that apply to ``rope_type``, as an HF ``rope_scaling`` dict."""
    keys = {
      "linear": ("factor",),
      "llama3": (
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
      ),
      "yarn": (
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "attention_factor",
        "mscale",
        "mscale_all_dim",
      ),
    }[self.rope_type]
    out: dict[str, Any] = {"rope_type": self.rope_type}
    for key in keys:
      if getattr(self, key) is not None:
        out[key] = getattr(self, key)
    if self.rope_type == "yarn" and not self.truncate:  # newer key; omitted at its default
      out["truncate"] = False
    return out


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
    rope_scaling: RoPE frequency scaling (``RopeScaling``) or None for plain RoPE. A
      mapping or a tuple of (key, value) pairs with the same fields is converted.
    max_seq_len: longest sequence the model is meant to see (RoPE itself has no limit).
    norm_eps: RMSNorm epsilon.
    qk_norm: RMSNorm over E on each query and key head before RoPE (Qwen3).
    attn_bias: biases on the q/k/v projections (Qwen2).
    tie_embeddings: the lm head is the transposed input embedding.
    param_dtype: storage dtype of the parameters, 'float32' or 'bfloat16'.
    dtype: compute dtype of the forward pass, 'float32' or 'bfloat16'. Softmax, norms
      and logits are float32 regardless.
    remat: rematerialise each block in the backward pass (``jax.checkpoint`` per block):
      only the blocks' inputs are kept for the gradient, their insides are recomputed,
      at the cost of one more forward. Not an architecture property: checkpoints and
      exports are the same either way.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  max_seq_len: int = 2048
  norm_eps: float = 1e-6
  qk_norm: bool = False
  attn_bias: bool = False
  tie_embeddings: bool = False
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: bool = False

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
    if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
      # Frozen dataclass: normalise in place so the config stays hashable.
      object.__setattr__(self, "rope_scaling", RopeScaling.parse(self.rope_scaling))
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
  "llama3.2-1b": ModelConfig(
    vocab_size=128256,
    d_model=2048,
    n_layers=16,
    n_heads=32,
    n_kv_heads=8,
    head_dim=64,
    mlp_dim=8192,
    rope_theta=500_000.0,
    rope_scaling=RopeScaling(
      rope_type="llama3",
      factor=32.0,
      original_max_position_embeddings=8192,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
    ),
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
