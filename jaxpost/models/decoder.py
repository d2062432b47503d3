"""Decoder-only transformer (Llama / Qwen2 / Qwen3 family) in Flax NNX, with a KV cache.

Parameter layout follows the HF module names so checkpoint import is a rename plus
reshape: ``embed``, ``layers[i].attn.{q,k,v,o}_proj``, ``layers[i].mlp.{gate,up,down}_proj``,
``layers[i].{input_norm,post_attn_norm}``, ``final_norm``, ``lm_head``. Projections keep
the head axes unflattened (e.g. q kernel is [D, H, E]) so each axis can carry its own
logical sharding name.

Logical axis names: 'vocab', 'embed' (D), 'q_heads' (H), 'kv_heads' (K), 'head_dim' (E),
'mlp' (F), 'norm' (norm weights).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.models.config import ModelConfig, RopeScaling

# Finite, so a query row that sees no key (padding) gives a uniform softmax, not NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
# Query rows per block of causal self-attention (see ``attention``).
_CAUSAL_BLOCK = 64
_INIT_STD = 0.02


@flax.struct.dataclass
class KVCache:
  """Keys and values of the tokens seen so far, for incremental decoding.

  All rows write in lockstep: slot ``j`` holds the j-th token fed to the model in every
  row; rows with fewer real tokens mark the rest with segment id 0 (never attended to).

  Attributes:
    k: one [B, K, E, S] array of keys per layer, RoPE already applied, slots last.
    v: one [B, K, S, E] array of values per layer.
    segment_ids: i32[B, S] segment id of each slot; 0 = empty or padding.
    length: i32[] number of slots written so far.

  The layouts are what a decode step's two attention matmuls consume as plain
  (row-major x row-major) products per (row, kv head): q [G, E] @ k [E, S] and
  probs [G, S] @ v [S, E]; with keys stored [S, E] XLA:CPU ran the score product
  about 2.5x slower. One array per layer rather than one stacked [L, ...] array, so
  each is updated in place and read without slicing.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  segment_ids: jax.Array
  length: jax.Array

  @property
  def max_len(self) -> int:
    return self.k[0].shape[3]


@flax.struct.dataclass
class ModelOutput:
  """Result of ``Decoder.forward``.

  Attributes:
    logits: f32[B, T, V], or None when ``compute_logits=False``.
    final_hidden: [B, T, D] residual stream after the final norm, i.e. the lm head input
      (``logits == final_hidden @ lm_head_weight()``), in the compute dtype.
    hidden_states: one [B, T, D] residual stream per requested ``hidden_layers`` index,
      in request order; index i is the stream after block i (before the final norm).
    cache: the updated cache if one was passed, else None.
  """

  logits: jax.Array | None
  final_hidden: jax.Array
  hidden_states: tuple[jax.Array, ...]
  cache: KVCache | None


def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype=None) -> KVCache:
  """Empty cache with ``max_len`` slots per row; ``dtype`` defaults to the compute dtype."""
  dtype = config.jnp_dtype if dtype is None else dtype
  b, k, e = batch_size, config.n_kv_heads, config.head_dim
  return KVCache(
    k=tuple(jnp.zeros((b, k, e, max_len), dtype) for _ in range(config.n_layers)),
    v=tuple(jnp.zeros((b, k, max_len, e), dtype) for _ in range(config.n_layers)),
    segment_ids=jnp.zeros((batch_size, max_len), jnp.int32),
    length=jnp.zeros((), jnp.int32),
  )


def repeat_cache(cache: KVCache, repeats: int) -> KVCache:
  """Each row's cache ``repeats`` times in adjacent rows: [B, ...] -> [B * repeats, ...].

  Prompts shared by a group of samples are run once and their keys and values copied
  to every sample; under ``jax.grad`` the copies' gradients sum back into the one
  prompt pass, which is what makes a shared-prompt forward exact.
  """
  if repeats == 1:
    return cache
  rows = lambda x: jnp.repeat(x, repeats, axis=0)  # noqa: E731
  return cache.replace(
    k=tuple(map(rows, cache.k)), v=tuple(map(rows, cache.v)), segment_ids=rows(cache.segment_ids)
  )


def _replace(items: tuple, index: int, item) -> tuple:
  return items[:index] + (item,) + items[index + 1 :]


def make_attention_mask(
  q_segment_ids: jax.Array,
  kv_segment_ids: jax.Array,
  q_offset: jax.Array | int = 0,
) -> jax.Array:
  """Causal, segment-aware attention mask.

  Query t sits at slot ``q_offset + t``; it may see slot j iff j <= q_offset + t and both
  carry the same nonzero segment id.

  Args:
    q_segment_ids: i32[B, T] segment ids of the queries (0 = padding).
    kv_segment_ids: i32[B, S] segment ids of the key slots (0 = padding / empty).
    q_offset: slot index of the first query (the cache length before this call).

  Returns:
    bool[B, T, S], True where attention is allowed.
  """
  t = q_segment_ids.shape[1]
  s = kv_segment_ids.shape[1]
  q_index = q_offset + jnp.arange(t, dtype=jnp.int32)
  causal = jnp.arange(s, dtype=jnp.int32)[None, :] <= q_index[:, None]  # [T, S]
  same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  real = (q_segment_ids != 0)[:, :, None]
  return causal[None] & same & real


def rope_frequencies(
  head_dim: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[np.ndarray, float]:
  """RoPE inverse frequencies and cos/sin multiplier, with optional context scaling.

  Computed in float64 on the host (the config is static), then rounded to float32.

  Args:
    head_dim: E (even).
    theta: base frequency; unscaled inv_freq[i] = theta^(-2i/E).
    scaling: optional ``RopeScaling`` (linear, llama3 or yarn; see its docstring).

  Returns:
    (f32[E/2] inverse frequencies, attention factor multiplying cos and sin).
  """
  e = head_dim
  inv_freq = 1.0 / theta ** (np.arange(0, e, 2, dtype=np.float64) / e)  # [E/2]
  attention_factor = 1.0
  if scaling is None:
    pass
  elif scaling.rope_type == "linear":
    inv_freq = inv_freq / scaling.factor
  elif scaling.rope_type == "llama3":
    original = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = inv_freq / scaling.factor
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    # Weight of the unscaled frequency: 0 at wavelen = original / low, 1 at original / high.
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled + smooth * inv_freq
    inv_freq = np.where(
      wavelen > original / low, scaled, np.where(wavelen < original / high, inv_freq, blended)
    )
  elif scaling.rope_type == "yarn":
    factor, original = scaling.factor, scaling.original_max_position_embeddings

    def dim_of(rotations: float) -> float:
      # Dimension index whose frequency turns ``rotations`` times over the original context.
      return e * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = dim_of(scaling.beta_fast), dim_of(scaling.beta_slow)
    if scaling.truncate:
      lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, e - 1)
    if lo == hi:
      hi += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(e // 2, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    # ramp 0 (fast-turning dims) keeps the original frequency, ramp 1 interpolates.
    inv_freq = inv_freq * (1 - ramp) + inv_freq / factor * ramp

    def mscale(scale: float, m: float = 1.0) -> float:
      return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if scaling.attention_factor is not None:
      attention_factor = scaling.attention_factor
    elif scaling.mscale and scaling.mscale_all_dim:
      attention_factor = mscale(factor, scaling.mscale) / mscale(factor, scaling.mscale_all_dim)
    else:
      attention_factor = mscale(factor)
  else:
    raise ValueError(f"unsupported rope scaling type {scaling.rope_type!r}")
  return inv_freq.astype(np.float32), float(attention_factor)


def rope(
  x: jax.Array, positions: jax.Array, theta: float, scaling: RopeScaling | None = None
) -> jax.Array:
  """Rotary position embedding, HF "rotate_half" convention (halves, not pairs).

  Args:
    x: [B, T, N, E] queries or keys (N heads).
    positions: i32[B, T] position of each token.
    theta: base frequency; inv_freq[i] = theta^(-2i/E) before scaling.
    scaling: optional context-extension scaling of the frequencies (and, for yarn, of
      cos/sin); see ``rope_frequencies``.

  Returns:
    [B, T, N, E] rotated, in x's dtype (the rotation itself is computed in float32).
  """
  inv_freq, attention_factor = rope_frequencies(x.shape[-1], theta, scaling)
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, E/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, E]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if attention_factor != 1.0:
    cos, sin = cos * attention_factor, sin * attention_factor
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


def attention(
  q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, causal_block: int = 0
) -> jax.Array:
  """Grouped-query scaled dot-product attention; logits and softmax in float32.

  Args:
    q: [B, T, H, E] queries.
    k: [B, K, E, S] keys, slots last (the cache layout), H a multiple of K (query
      head h uses kv head h // (H / K)).
    v: [B, K, S, E] values.
    mask: bool[B, T, S], True where attention is allowed.
    causal_block: if > 0 and the keys are the queries' own tokens (S == T, no cache),
      queries are processed in blocks of this many rows and block i reads only keys
      [0, (i + 1) * causal_block): the causal mask hides the rest, so the result is the
      same for every query that sees at least one key, and about half the score and
      value FLOPs are skipped. Ignored when T is not a multiple of it.

  Returns:
    [B, T, H, E] in q's dtype.
  """
  b, t, h, e = q.shape
  s = k.shape[3]
  if causal_block and s == t and t > causal_block and t % causal_block == 0:
    blocks = []
    for start in range(0, t, causal_block):
      end = start + causal_block
      blocks.append(
        attention(q[:, start:end], k[..., :end], v[:, :, :end], mask[:, start:end, :end])
      )
    return jnp.concatenate(blocks, axis=1)
  kh = k.shape[1]
  # Scale q ([B, T, H, E]) rather than the scores ([B, H, T, S]): same math, fewer flops.
  g = h // kh
  # Queries as [B, K, G * T, E], so both products are plain batched matmuls per (row, kv
  # head): [G T, E] @ [E, S] and [G T, S] @ [S, E].
  qg = (q * jnp.asarray(e**-0.5, q.dtype)).reshape(b, t, kh, g, e)
  qg = qg.transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, e)
  scores = jnp.matmul(qg, k, preferred_element_type=jnp.float32).reshape(b, kh, g, t, s)
  scores = jnp.where(mask[:, None, None], scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kh, g * t, s)
  out = _matmul(probs, v).reshape(b, kh, g, t, e).transpose(0, 3, 1, 2, 4)
  return out.reshape(b, t, h, e).astype(q.dtype)


def _param(init, key, shape, dtype, names: tuple[str, ...]) -> nnx.Param:
  # Eager sharding is off so models build without a mesh; the names are applied by
  # whoever shards the state (nnx.get_partition_spec + logical axis rules).
  return nnx.Param(init(key, shape, dtype), out_sharding=names, eager_sharding=False)


class Linear(nnx.Module):
  """Affine map contracting the trailing ``len(in_shape)`` axes of the input, plus the
  low-rank updates of its ``lora`` adapters (``add_lora``; none by default).

  Attributes:
    kernel: [*in_shape, *out_shape].
    bias: [*out_shape] when ``use_bias``.
    lora: None, or {adapter name: ``LoRA``}; every enabled adapter adds its update.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    in_names: Sequence[str],
    out_names: Sequence[str],
    *,
    use_bias: bool,
    param_dtype,
    dtype,
    rngs: nnx.Rngs,
  ):
    self.n_in = len(in_shape)
    self.dtype = dtype
    self.names = (tuple(in_names), tuple(out_names))
    init = jax.nn.initializers.normal(_INIT_STD)
    self.kernel = _param(
      init,
      rngs.params(),
      (*in_shape, *out_shape),
      param_dtype,
      (*in_names, *out_names),
    )
    if use_bias:
      self.bias = _param(
        jax.nn.initializers.zeros, rngs.params(), tuple(out_shape), param_dtype, tuple(out_names)
      )
    else:
      self.bias = None
    self.lora = nnx.data(None)  # data, not static: adapters may be added later

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(self.dtype)
    lead, k_in = x.shape[: x.ndim - self.n_in], kernel.shape[: self.n_in]
    out_shape = kernel.shape[self.n_in :]
    # One plain 2-D matmul: XLA:CPU runs the backward of a multi-axis tensordot
    # (contracting over [B, T] for the kernel gradient) several times slower.
    x2 = x.astype(self.dtype).reshape(-1, math.prod(k_in))
    y = _matmul(x2, kernel.reshape(math.prod(k_in), -1))
    if self.adapters():
      y = y + self.lora_update(x2)
    y = y.reshape(*lead, *out_shape)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y

  def adapters(self) -> list[LoRA]:
    """The enabled adapters, in name order."""
    return [a for _, a in sorted((self.lora or {}).items()) if a.enabled]

  def lora_update(self, x2: jax.Array) -> jax.Array:
    """sum_adapters scale (x A) B for flattened inputs x2 [N, prod(in_shape)] (zeros
    without adapters): computed from the input, so no kernel-sized update is formed."""
    out = math.prod(self.kernel.shape[self.n_in :])
    return sum((a.update(x2) for a in self.adapters()), jnp.zeros((x2.shape[0], out), x2.dtype))

  def effective_kernel(self) -> jax.Array:
    """kernel + sum_adapters scale A B, in the parameter dtype: what merging writes."""
    kernel = self.kernel[...]
    for a in self.adapters():
      kernel = kernel + a.kernel_delta().astype(kernel.dtype)
    return kernel


class DropoutKey(nnx.Variable):
  """Raw PRNG key data (u32[2]) of a LoRA's dropout; all zeros = dropout off. Lives in
  the model's frozen rest: the train step writes a fresh key for each step
  (``train.with_dropout_keys``); evaluation and sampling see the stored zeros."""


class LoRA(nnx.Module):
  """A low-rank update scale * A B of a ``Linear``'s kernel (LoRA, Hu et al. 2021).

  A: [*in_shape, r] and B: [r, *out_shape] carry the kernel's logical axis names plus
  "lora_rank" (replicated), so adapters shard with the mesh rules like their kernel.
  B starts at zero: a new adapter leaves the model's function unchanged.
  scale = alpha / r, or alpha / sqrt(r) with ``rslora`` (rank-stabilised LoRA).

  Args:
    init: A's initialisation: "kaiming" (uniform with bound 1 / sqrt(fan_in), what
      PEFT's default gives) or "gaussian" (normal with std 1 / r, PEFT's "gaussian").
    dropout: inverted dropout on the adapter's input (PEFT's ``lora_dropout``): in
      train steps only (``DropoutKey``); the base path never drops.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    names: tuple[tuple[str, ...], tuple[str, ...]],
    *,
    rank: int,
    alpha: float,
    rslora: bool = False,
    init: str = "kaiming",
    dropout: float = 0.0,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if init not in LORA_INITS:
      raise ValueError(f"LoRA init {init!r}; expected one of {LORA_INITS}")
    self.rank = rank
    if not 0 <= dropout < 1:
      raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    self.scale = float(alpha) / (math.sqrt(rank) if rslora else rank)
    self.dropout = float(dropout)
    if dropout:
      self.dropout_key = DropoutKey(jnp.zeros((2,), jnp.uint32))
    self.enabled = True
    fan_in = math.prod(in_shape)
    if init == "kaiming":
      bound = 1.0 / math.sqrt(fan_in)
      a_init = jax.nn.initializers.uniform(2 * bound)  # U[0, 2b) shifted below
      a = a_init(rngs.params(), (*in_shape, rank), param_dtype) - bound
    else:
      a = jax.random.normal(rngs.params(), (*in_shape, rank), param_dtype) / rank
    in_names, out_names = names
    self.a = nnx.Param(a, out_sharding=(*in_names, "lora_rank"), eager_sharding=False)
    self.b = _param(
      jax.nn.initializers.zeros, rngs.params(), (rank, *out_shape), param_dtype,
      ("lora_rank", *out_names),
    )  # fmt: skip

  def update(self, x2: jax.Array) -> jax.Array:
    """scale (x A) B: [N, prod(in_shape)] -> [N, prod(out_shape)] in x's dtype."""
    a = self.a[...].astype(x2.dtype).reshape(-1, self.rank)
    b = self.b[...].astype(x2.dtype).reshape(self.rank, -1)
    if self.dropout:
      x2 = self._dropped(x2)
    return _matmul(_matmul(x2, a), b * self.scale)

  def _dropped(self, x: jax.Array) -> jax.Array:
    raw = self.dropout_key[...]
    keep = 1.0 - self.dropout

    def drop(x):
      mask = jax.random.bernoulli(jax.random.wrap_key_data(raw), keep, x.shape)
      return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))

    return jax.lax.cond(jnp.any(raw != 0), drop, lambda x: x, x)

  def kernel_delta(self) -> jax.Array:
    """scale A B: [*in_shape, *out_shape] in f32."""
    a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
    in_shape, out_shape = a.shape[:-1], b.shape[1:]
    delta = a.reshape(-1, self.rank) @ b.reshape(self.rank, -1) * self.scale
    return delta.reshape(*in_shape, *out_shape)


LORA_INITS = ("kaiming", "gaussian")


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w accumulated in f32, returned in x's dtype.

  For bf16 operands, asking for an f32 result is what XLA:CPU runs as a native bf16
  matmul; a bf16 result made it convert every weight to f32 and multiply in f32, twice
  the bytes per decode step (measured: bf16 sampling was slower than f32).
  """
  return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def fused_linear(x: jax.Array, projections: Sequence[Linear]) -> list[jax.Array]:
  """Applies several ``Linear``s that share an input as one matmul.

  Parameters stay separate (HF layout, per-projection sharding names); only the compute
  is fused: the kernels are concatenated along their flattened output axis, so XLA:CPU
  runs one wide matmul (and one wide backward) instead of several narrow ones.

  Args:
    x: [..., D] shared input; every projection contracts the last axis only.
    projections: Linears with ``n_in == 1`` and the same compute dtype.

  Returns:
    One output per projection, each [..., *out_shape].
  """
  dtype = projections[0].dtype
  kernels, biases, shapes = [], [], []
  for p in projections:
    kernel = p.kernel[...].astype(dtype)
    shapes.append(kernel.shape[1:])
    kernels.append(kernel.reshape(kernel.shape[0], -1))
    bias = p.bias[...].astype(dtype).reshape(-1) if p.bias is not None else None
    biases.append(bias)
  lead = x.shape[:-1]
  x2 = x.astype(dtype).reshape(-1, x.shape[-1])
  y = _matmul(x2, jnp.concatenate(kernels, axis=1))
  if any(p.adapters() for p in projections):  # each projection's own low-rank update
    y = y + jnp.concatenate([p.lora_update(x2) for p in projections], axis=1)
  if any(b is not None for b in biases):
    y = y + jnp.concatenate(
      [
        b if b is not None else jnp.zeros(k.shape[1], dtype)
        for b, k in zip(biases, kernels, strict=True)
      ]
    )
  splits = list(itertools.accumulate(k.shape[1] for k in kernels))[:-1]
  return [
    part.reshape(*lead, *shape)
    for part, shape in zip(jnp.split(y, splits, axis=-1), shapes, strict=True)
  ]


class RMSNorm(nnx.Module):
  """RMS normalization over the last axis, computed in float32.

  Attributes:
    weight: [N] scale, initialised to ones.
  """

  def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.weight = _param(jax.nn.initializers.ones, rngs.params(), (dim,), param_dtype, ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    var = jnp.mean(xf * xf, axis=-1, keepdims=True)
    y = xf * jax.lax.rsqrt(var + self.eps) * self.weight[...].astype(jnp.float32)
    return y.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE and optional q/k norm and q/k/v bias."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    kw = dict(param_dtype=c.jnp_param_dtype, dtype=c.jnp_dtype, rngs=rngs)
    d, h, k, e = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
    self.q_proj = Linear(
      (d,), (h, e), ("embed",), ("q_heads", "head_dim"), use_bias=c.attn_bias, **kw
    )
    self.k_proj = Linear(
      (d,), (k, e), ("embed",), ("kv_heads", "head_dim"), use_bias=c.attn_bias, **kw
    )
    self.v_proj = Linear(
      (d,), (k, e), ("embed",), ("kv_heads", "head_dim"), use_bias=c.attn_bias, **kw
    )
    self.o_proj = Linear((h, e), (d,), ("q_heads", "head_dim"), ("embed",), use_bias=False, **kw)
    if c.qk_norm:
      self.q_norm = RMSNorm(e, c.norm_eps, param_dtype=c.jnp_param_dtype, rngs=rngs)
      self.k_norm = RMSNorm(e, c.norm_eps, param_dtype=c.jnp_param_dtype, rngs=rngs)
    else:
      self.q_norm = self.k_norm = None

  def __call__(
    self,
    x: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    *,
    cache: KVCache | None = None,
    layer: int = 0,
  ) -> tuple[jax.Array, KVCache | None]:
    """Attends the T new tokens to themselves, or to the cache including them.

    Args:
      x: [B, T, D] normalized residual stream.
      positions: i32[B, T] RoPE positions.
      mask: bool[B, T, S] from ``make_attention_mask``; S = T without a cache, else the
        number of cache slots.
      cache: if given, this layer's keys/values are written at slots
        [cache.length, cache.length + T) of layer ``layer`` and attention reads the cache.
      layer: index of this block in the cache.

    Returns:
      ([B, T, D] output, cache with this layer's k/v written or None).
    """
    q, k, v = fused_linear(
      x, (self.q_proj, self.k_proj, self.v_proj)
    )  # [B, T, H, E], [B, T, K, E], [B, T, K, E]
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    theta, scaling = self.config.rope_theta, self.config.rope_scaling
    q, k = rope(q, positions, theta, scaling), rope(k, positions, theta, scaling)
    k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)  # [B, K, E, T], [B, K, T, E]
    if cache is not None:
      at = cache.length
      k = jax.lax.dynamic_update_slice(
        cache.k[layer], k.astype(cache.k[layer].dtype), (0, 0, 0, at)
      )
      v = jax.lax.dynamic_update_slice(
        cache.v[layer], v.astype(cache.v[layer].dtype), (0, 0, at, 0)
      )
      cache = cache.replace(k=_replace(cache.k, layer, k), v=_replace(cache.v, layer, v))
      k, v = k.astype(q.dtype), v.astype(q.dtype)
    # Without a cache the keys are these tokens: skip the blocks the causal mask hides.
    block = _CAUSAL_BLOCK if cache is None else 0
    return self.o_proj(attention(q, k, v, mask, causal_block=block)), cache

  def probabilities(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    """f32[B, H, T, T]: every query head's attention distribution over the T tokens
    (no cache), the softmax ``__call__`` takes; for analysis (attention maps)."""
    q, k = fused_linear(x, (self.q_proj, self.k_proj))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    theta, scaling = self.config.rope_theta, self.config.rope_scaling
    q, k = rope(q, positions, theta, scaling), rope(k, positions, theta, scaling)
    g = q.shape[2] // k.shape[2]
    k = jnp.repeat(k, g, axis=2)  # query head h reads kv head h // g
    e = q.shape[-1]
    scores = jnp.einsum("bthe,bshe->bhts", q.astype(jnp.float32), k.astype(jnp.float32)) * e**-0.5
    scores = jnp.where(mask[:, None], scores, _MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1)


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    kw = dict(use_bias=False, param_dtype=c.jnp_param_dtype, dtype=c.jnp_dtype, rngs=rngs)
    self.gate_proj = Linear((c.d_model,), (c.mlp_dim,), ("embed",), ("mlp",), **kw)
    self.up_proj = Linear((c.d_model,), (c.mlp_dim,), ("embed",), ("mlp",), **kw)
    self.down_proj = Linear((c.mlp_dim,), (c.d_model,), ("mlp",), ("embed",), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate, up = fused_linear(x, (self.gate_proj, self.up_proj))
    return self.down_proj(jax.nn.silu(gate) * up)


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    pd = config.jnp_param_dtype
    self.input_norm = RMSNorm(config.d_model, config.norm_eps, param_dtype=pd, rngs=rngs)
    self.attn = Attention(config, rngs=rngs)
    self.post_attn_norm = RMSNorm(config.d_model, config.norm_eps, param_dtype=pd, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(
    self,
    x: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    *,
    cache: KVCache | None = None,
    layer: int = 0,
  ) -> tuple[jax.Array, KVCache | None]:
    h, cache = self.attn(self.input_norm(x), positions, mask, cache=cache, layer=layer)
    x = x + h
    x = x + self.mlp(self.post_attn_norm(x))
    return x, cache


class Decoder(nnx.Module):
  """Decoder-only language model.

  Attributes:
    embed: [V, D] token embedding ('vocab', 'embed').
    layers: L ``Block``s.
    final_norm: RMSNorm before the lm head.
    lm_head: ``Linear`` with kernel [D, V], or None when embeddings are tied.
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    pd = c.jnp_param_dtype
    init = jax.nn.initializers.normal(_INIT_STD)
    self.embed = _param(init, rngs.params(), (c.vocab_size, c.d_model), pd, ("vocab", "embed"))
    self.layers = nnx.List([Block(c, rngs=rngs) for _ in range(c.n_layers)])
    self.final_norm = RMSNorm(c.d_model, c.norm_eps, param_dtype=pd, rngs=rngs)
    if c.tie_embeddings:
      self.lm_head = None
    else:
      self.lm_head = Linear(
        (c.d_model,),
        (c.vocab_size,),
        ("embed",),
        ("vocab",),
        use_bias=False,
        param_dtype=pd,
        dtype=c.jnp_dtype,
        rngs=rngs,
      )

  def lm_head_weight(self) -> jax.Array:
    """[D, V] lm head matrix in the parameter dtype (``embed.T`` when tied), with the
    head's LoRA updates added: every head path (materialised logits and the fused
    kernels) reads this one matrix, and [D, V] is small beside [tokens, V] logits."""
    if self.lm_head is None:
      return self.embed[...].T
    return self.lm_head.effective_kernel()

  def logits(self, final_hidden: jax.Array) -> jax.Array:
    """f32[..., V] logits of [..., D] final hidden states (``ModelOutput.final_hidden``)."""
    w = self.lm_head_weight().astype(self.config.jnp_dtype)
    return jnp.einsum("...d,dv->...v", final_hidden, w, preferred_element_type=jnp.float32)

  def __call__(
    self,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
  ) -> jax.Array:
    """f32[B, T, V] logits of i32[B, T] tokens; see ``forward`` for the arguments."""
    return self.forward(tokens, positions=positions, segment_ids=segment_ids).logits

  def attention_maps(
    self, tokens: jax.Array, layers: Sequence[int], *, segment_ids: jax.Array | None = None
  ) -> dict[int, jax.Array]:
    """{layer: f32[B, H, T, T]} attention probabilities of blocks ``layers`` on i32[B, T]
    tokens (positions restart per segment, as in packed training rows)."""
    b, t = tokens.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    positions = _segment_positions(segment_ids)
    mask = make_attention_mask(segment_ids, segment_ids)
    inputs = [i - 1 for i in layers if i > 0]  # block i reads block i - 1's output stream
    streams = dict(zip(inputs, self.forward(tokens, positions=positions, segment_ids=segment_ids,
                                            hidden_layers=tuple(inputs), compute_logits=False
                                            ).hidden_states, strict=True))  # fmt: skip
    embedded = jnp.take(self.embed[...], tokens, axis=0).astype(self.config.jnp_dtype)
    out = {}
    for i in layers:
      block = self.layers[i]
      x = streams[i - 1] if i > 0 else embedded
      out[i] = block.attn.probabilities(block.input_norm(x), positions, mask)
    return out

  def forward(
    self,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    cache: KVCache | None = None,
    hidden_layers: tuple[int, ...] = (),
    compute_logits: bool = True,
    steer: jax.Array | None = None,
  ) -> ModelOutput:
    """Runs the model on T new tokens per row.

    Args:
      tokens: i32[B, T].
      positions: i32[B, T] RoPE positions; default 0..T-1 (offset by ``cache.length``
        when a cache is given). Packed rows restart at 0 per segment; left-padded rows
        start at 0 at the first real token.
      segment_ids: i32[B, T], 0 = padding; default all ones. A token attends to earlier
        (or same) slots of the same nonzero segment, so packed sequences never mix.
      cache: optional ``KVCache``; the tokens are written at slots
        [length, length + T) and may attend to every earlier slot of their segment.
        The caller must keep length + T <= cache.max_len (not checked under jit).
      hidden_layers: block indices whose output residual streams to return; negative
        indices count from the end (-1 = last block).
      compute_logits: if False, skip the lm head (``logits`` is None), e.g. for fused
        loss kernels that consume ``final_hidden`` and ``lm_head_weight()``.
      steer: optional [B, L, D] steering vectors: row b's vector for block i is added to
        block i's output stream at every position (representation perturbations, e.g.
        LfU's; the returned ``hidden_states`` include it).

    Returns:
      ``ModelOutput``.
    """
    c = self.config
    b, t = tokens.shape
    offset = 0 if cache is None else cache.length
    if positions is None:
      positions = jnp.broadcast_to(offset + jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    segment_ids = segment_ids.astype(jnp.int32)
    wanted = [i % c.n_layers if -c.n_layers <= i < c.n_layers else None for i in hidden_layers]
    if None in wanted:
      raise ValueError(f"hidden_layers {hidden_layers} out of range for {c.n_layers} layers")

    if cache is None:
      mask = make_attention_mask(segment_ids, segment_ids)
    else:
      if not isinstance(cache.length, jax.core.Tracer) and int(cache.length) + t > cache.max_len:
        raise ValueError(f"cache overflow: {int(cache.length)} + {t} > {cache.max_len} slots")
      kv_segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, cache.length))
      cache = cache.replace(segment_ids=kv_segments)
      mask = make_attention_mask(segment_ids, kv_segments, q_offset=cache.length)

    x = jnp.take(self.embed[...], tokens, axis=0).astype(c.jnp_dtype)  # [B, T, D]
    streams = {}
    for i, block in enumerate(self.layers):
      if c.remat and cache is None:  # keep the block's input only; recompute the rest
        # A pure function of the block's state, not nnx.remat: that writes the state back
        # into the block, which fails for a model merged outside the trace that calls it
        # (a teacher read inside the student's loss).
        graph, state = nnx.split(block)

        def run(state, x, positions, mask, graph=graph):
          return nnx.merge(graph, state)(x, positions, mask)[0]

        x = jax.checkpoint(run)(state, x, positions, mask)
      else:
        x, cache = block(x, positions, mask, cache=cache, layer=i)
      if steer is not None:
        x = x + steer[:, i, None, :].astype(x.dtype)
      streams[i] = x
    h = self.final_norm(x)
    logits = None
    if compute_logits:
      logits = self.logits(h)
    if cache is not None:
      cache = cache.replace(length=cache.length + t)
    return ModelOutput(
      logits=logits,
      final_hidden=h,
      hidden_states=tuple(streams[i] for i in wanted),
      cache=cache,
    )


def _segment_positions(segment_ids: jax.Array) -> jax.Array:
  """i32[B, T] positions counting from 0 at each segment's first token."""
  t = segment_ids.shape[1]
  index = jnp.arange(t, dtype=jnp.int32)[None]
  starts = jnp.concatenate(
    [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
  )
  first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  return index - first


@functools.cache
def _jitted_constructor(config: ModelConfig):
  return nnx.jit(lambda key: Decoder(config, rngs=nnx.Rngs(params=key)))


def parse_layers(spec: str, n_layers: int) -> list[int]:
  """Block indices of a layer selection: "" = all, "0,5,10" or a slice "start:stop:step".

  Indices are in [0, n_layers), strictly increasing (the blocks keep their order), and
  at least one.
  """
  spec = spec.strip()
  if not spec:
    return list(range(n_layers))
  try:
    if ":" in spec:
      parts = [int(p) if p.strip() else None for p in spec.split(":")]
      if len(parts) > 3:
        raise ValueError
      indices = list(range(n_layers))[slice(*parts)]
    else:
      indices = [int(p) for p in spec.split(",")]
  except ValueError:
    raise ValueError(
      f"layer selection {spec!r}: expected indices '0,5,10' or a slice 'start:stop:step'"
    ) from None
  if not indices:
    raise ValueError(f"layer selection {spec!r} keeps no layer of {n_layers}")
  bad = [i for i in indices if not 0 <= i < n_layers]
  if bad:
    raise ValueError(f"layer selection {spec!r}: {bad} out of range for {n_layers} layers")
  if any(b <= a for a, b in zip(indices, indices[1:], strict=False)):
    raise ValueError(f"layer selection {spec!r}: indices must increase")
  return indices


def keep_layers(model: Decoder, indices: Sequence[int]) -> Decoder:
  """``model`` with only the blocks at ``indices``, in order (depth pruning).

  A shallower model that starts from a deeper one's weights: its embeddings, final norm
  and LM head are the same arrays, and block k is the deeper model's block
  ``indices[k]``. The student of layer-dropping distillation (DistilBERT's every
  other layer; Minitron's and Sheared-LLaMA's depth pruning before distillation).
  """
  n = model.config.n_layers
  if sorted(set(indices)) != list(indices) or not indices or not 0 <= indices[-1] < n:
    raise ValueError(f"keep_layers: {indices} is not an increasing selection of {n} layers")
  model.layers = nnx.List([model.layers[i] for i in indices])
  model.config = dataclasses.replace(model.config, n_layers=len(indices))
  return model


def create_model(config: ModelConfig, seed: int = 0) -> Decoder:
  """Builds a ``Decoder`` with its initialisers compiled as one program.

  Eager construction dispatches (and on CPU compiles) every parameter initialiser
  separately, which costs seconds even for tiny models; one jitted constructor, cached
  per config, does not.
  """
  return _jitted_constructor(config)(jax.random.key(seed))
