"""Autoregressive generation with a KV cache: greedy or temperature sampling.

Prompts are left-padded so every row decodes in lockstep: after the prefill, step n
writes cache slot P + n in all rows. Padding slots carry segment id 0 and are never
attended to; RoPE positions start at 0 at each row's first real token, so a row's
result does not depend on how much padding it got.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.models.decoder import Decoder, init_cache


@flax.struct.dataclass
class GenerateOutput:
  """Generated continuations.

  Attributes:
    tokens: i32[B, N] new tokens; ``pad_id`` after a row's EOS (the EOS itself is kept).
    lengths: i32[B] number of generated tokens per row, EOS included.
    logp: f32[B, N] log-probability of each generated token under the sampling
      distribution (softmax(logits / temperature); temperature 1 for greedy); 0 after EOS.
  """

  tokens: jax.Array
  lengths: jax.Array
  logp: jax.Array


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists into a batch.

  Args:
    sequences: B token lists (each non-empty).
    pad_id: filler token.

  Returns:
    (tokens i32[B, P], mask i32[B, P]) with P the longest length; mask 1 on real tokens.
  """
  if not sequences or any(len(s) == 0 for s in sequences):
    raise ValueError("left_pad needs at least one sequence and no empty sequences")
  width = max(len(s) for s in sequences)
  tokens = np.full((len(sequences), width), pad_id, np.int32)
  mask = np.zeros((len(sequences), width), np.int32)
  for row, seq in enumerate(sequences):
    tokens[row, width - len(seq) :] = seq
    mask[row, width - len(seq) :] = 1
  return tokens, mask


def sample_logits(
  logits: jax.Array, key: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row.

  Args:
    logits: f32[B, V] next-token logits.
    key: PRNG key (unused when greedy).
    temperature: 0 = greedy argmax; > 0 = sample from softmax(logits / temperature).

  Returns:
    (tokens i32[B], logp f32[B]) with logp the token's log-probability under the
    sampling distribution (plain log_softmax(logits) when greedy).
  """
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    tokens = jnp.argmax(logits, axis=-1)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
  else:
    logprobs = jax.nn.log_softmax(logits / temperature, axis=-1)
    tokens = jax.random.categorical(key, logprobs, axis=-1)
  tokens = tokens.astype(jnp.int32)
  return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]


@functools.partial(
  jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos_id", "pad_id", "temperature")
)
def _generate(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  prompt_tokens: jax.Array,
  prompt_mask: jax.Array,
  key: jax.Array,
  *,
  max_new_tokens: int,
  eos_id: int,
  pad_id: int,
  temperature: float,
) -> GenerateOutput:
  model: Decoder = nnx.merge(graphdef, state)
  b, p = prompt_tokens.shape
  n = max_new_tokens
  mask = prompt_mask.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  # The last sampled token is never fed back, so P + N - 1 slots suffice.
  cache = init_cache(model.config, b, p + n - 1)
  prefill = model.forward(prompt_tokens, positions=positions, segment_ids=mask, cache=cache)

  def emit(carry, logits, step):
    """Samples token ``step`` for every row and records it for rows still running."""
    cache, tokens, logp, lengths, done, _, next_pos = carry
    token, token_logp = sample_logits(logits, jax.random.fold_in(key, step), temperature)
    alive = ~done
    tokens = tokens.at[:, step].set(jnp.where(alive, token, pad_id))
    logp = logp.at[:, step].set(jnp.where(alive, token_logp, 0.0))
    lengths = lengths + alive.astype(jnp.int32)
    done = done | (token == eos_id)
    return cache, tokens, logp, lengths, done, token, next_pos

  carry = (
    prefill.cache,
    jnp.full((b, n), pad_id, jnp.int32),
    jnp.zeros((b, n), jnp.float32),
    jnp.zeros((b,), jnp.int32),
    jnp.zeros((b,), bool),
    jnp.zeros((b,), jnp.int32),  # last sampled token
    positions[:, -1] + 1,  # RoPE position of the next token
  )
  carry = emit(carry, prefill.logits[:, -1], 0)

  def cond(loop):
    step, carry = loop
    return (step < n) & ~jnp.all(carry[4])

  def body(loop):
    step, (cache, tokens, logp, lengths, done, last, next_pos) = loop
    out = model.forward(
      last[:, None],
      positions=next_pos[:, None],
      segment_ids=jnp.ones((b, 1), jnp.int32),
      cache=cache,
    )
    carry = (out.cache, tokens, logp, lengths, done, last, next_pos + 1)
    return step + 1, emit(carry, out.logits[:, 0], step)

  _, carry = jax.lax.while_loop(cond, body, (jnp.int32(1), carry))
  _, tokens, logp, lengths, _, _, _ = carry
  return GenerateOutput(tokens=tokens, lengths=lengths, logp=logp)


def make_generate_fn(
  graphdef: nnx.GraphDef,
  *,
  max_new_tokens: int,
  eos_id: int,
  pad_id: int = 0,
  temperature: float = 0.0,
) -> Callable[[nnx.State, jax.Array, jax.Array, jax.Array], GenerateOutput]:
  """Jitted ``(state, prompt_tokens, prompt_mask, key) -> GenerateOutput``.

  ``graphdef`` and ``state`` come from ``nnx.split(model)``. Compilations are cached per
  (graphdef, settings, shapes), so calling this repeatedly is cheap.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  return functools.partial(
    _generate,
    graphdef,
    max_new_tokens=max_new_tokens,
    eos_id=eos_id,
    pad_id=pad_id,
    temperature=float(temperature),
  )


def generate(
  model: Decoder,
  prompt_tokens: jax.Array,
  prompt_mask: jax.Array,
  *,
  max_new_tokens: int,
  eos_id: int,
  pad_id: int = 0,
  temperature: float = 0.0,
  key: jax.Array | None = None,
) -> GenerateOutput:
  """Generates up to ``max_new_tokens`` per row, stopping early once all rows hit EOS.

  Args:
    model: the decoder (not modified).
    prompt_tokens: i32[B, P] left-padded prompts (see ``left_pad``); every row needs at
      least one real token.
    prompt_mask: {0,1}[B, P], 1 on real tokens.
    max_new_tokens: N.
    eos_id: token that ends a row.
    pad_id: filler after EOS.
    temperature: 0 = greedy; > 0 = sampling (needs ``key``).
    key: PRNG key for sampling.

  Returns:
    ``GenerateOutput`` with [B, N] tokens and logp and [B] lengths.
  """
  if key is None:
    if temperature > 0:
      raise ValueError("sampling with temperature > 0 needs a PRNG key")
    key = jax.random.key(0)
  graphdef, state = nnx.split(model)
  fn = make_generate_fn(
    graphdef,
    max_new_tokens=max_new_tokens,
    eos_id=eos_id,
    pad_id=pad_id,
    temperature=temperature,
  )
  return fn(state, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_mask, jnp.int32), key)
