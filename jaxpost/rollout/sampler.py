"""Autoregressive generation with a KV cache: the sampler every RL and eval loop uses.

Read this file top to bottom; it is the whole story of how a completion is drawn.

1. Prompts of different lengths share one batch by *left* padding, so every row decodes
   in lockstep: after a prefill over the P prompt columns, decode step n writes cache
   slot P + n in all rows. Padding slots carry segment id 0 and are never attended to,
   and RoPE positions start at 0 at each row's first real token, so a row's result does
   not depend on how much padding it got.
2. The prefill and ``lax.while_loop``s of single-token decode steps are compiled as one
   program. Decoding runs in up to 4 phases of at least 32 steps, each loop over a cache
   just long enough for its steps and grown (padded with empty slots) between phases, so
   attention reads the slots filled so far rather than all P + N - 1 of the budget
   (``phases=`` on the jitted function overrides the count; 1 = one loop). Decoding
   exits early once every row has emitted a stop token.
3. Each step turns the f32 logits into a token: divide by the temperature, truncate
   (top-k, then top-p, then min-p), draw from what is left. Each row draws from its own
   key stream, ``fold_in(row_key, step)``, so a row's sample does not depend on which
   other rows share its batch, how the batch is sharded, or how long the loop runs.
   Stop ids are a traced argument (padded to a multiple of 4), the sampling settings
   static: changing the stop set does not recompile.
4. The log-prob *recorded* for a token is log_softmax(logits / temperature) without the
   truncation: that is what the trainer recomputes from a full forward pass (it never
   sees the filters), so at the sampling parameters the PPO ratio starts at exactly 1 up
   to float noise. The log-prob under the truncated distribution actually sampled from
   is recorded alongside, for importance corrections.
5. Stop *tokens* end a row on device. Stop *strings* are matched on the host after
   decoding (``apply_stop_strings``): a string is a property of text, reachable through
   many tokenizations and possibly straddling token boundaries, and detokenizing is a
   host (Python/Rust) operation that cannot run inside the compiled loop. The price is
   the few tokens decoded past a stop string before a stop token or the budget ends it.
6. ``generate_groups`` draws G samples for each of P prompts (B = P * G rows, row
   p * G + g); it prefills each prompt once and copies its cache to the G rows
   (``group_size``), so prompt work does not grow with G. ``rollout/batching.py`` lays
   prompts and completions out as the right-padded ``Batch`` the trainer scores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.models.decoder import Decoder, KVCache, init_cache, repeat_cache


@flax.struct.dataclass
class GenerateOutput:
  """Generated continuations.

  Attributes:
    tokens: i32[B, N] new tokens; ``pad_id`` after a row's stop token (which is kept).
    lengths: i32[B] number of generated tokens per row, stop token included.
    logp: f32[B, N] log-probability of each generated token under
      log_softmax(logits / temperature), no truncation (temperature 1 when greedy); the
      distribution the trainer scores. 0 after the row ended.
    filtered_logp: f32[B, N] log-probability under the truncated (top-k/top-p/min-p)
      distribution actually sampled from; equals ``logp`` when no filter is active, 0
      when greedy (a point mass). 0 after the row ended.
    stopped: bool[B] the row ended on a stop token (or, after ``apply_stop_strings``, a
      stop string); False = it ran out of ``max_new_tokens`` (truncated).
  """

  tokens: jax.Array
  lengths: jax.Array
  logp: jax.Array
  filtered_logp: jax.Array
  stopped: jax.Array


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


# ----------------------------------------------------------------------------------------
# One step: logits -> token.


def filter_logits(
  logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> jax.Array:
  """Truncates a next-token distribution: top-k, then top-p, then min-p.

  Each filter sees the distribution the previous one left (renormalised), so top-p
  measures mass within the top k. Removed entries become -inf. Ties with the last kept
  value are kept, so a filter may keep more tokens than asked; the argmax always
  survives, so greedy decoding is unaffected by any filter.

  - top-k keeps the k largest logits ("Hierarchical Neural Story Generation",
    arXiv:1805.04833); 0 = off.
  - top-p keeps the smallest prefix of tokens, by decreasing probability, whose mass
    reaches p ("The Curious Case of Neural Text Degeneration", arXiv:1904.09751); 1 = off.
  - min-p keeps tokens with p_i >= min_p * max_j p_j ("Turning Up the Heat: Min-p
    Sampling for Creative and Coherent LLM Outputs", arXiv:2407.01082); 0 = off.
    The ratio test is invariant to renormalisation, so it needs no softmax.

  Args:
    logits: f32[B, V] logits, already divided by the temperature.
    top_k: k, 0 = off.
    top_p: p in (0, 1], 1 = off.
    min_p: in [0, 1], 0 = off.

  Returns:
    f32[B, V] logits with the removed tokens at -inf.
  """
  chex.assert_rank(logits, 2)
  logits = logits.astype(jnp.float32)
  v = logits.shape[-1]
  if 0 < top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1] k-th largest
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending; -inf sorts last
    probs = jax.nn.softmax(ordered, axis=-1)
    # Keep token i while the mass strictly before it is < p: the token that crosses p
    # is kept, and the most likely token always (mass before it is 0 < p).
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  if min_p > 0.0:
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p).
    cutoff = jnp.max(logits, axis=-1, keepdims=True) + jnp.log(jnp.float32(min_p))
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def _row_keys(key: jax.Array, rows: int) -> jax.Array:
  """key[B] per-row keys from one key (row b gets fold_in(key, b)) or from B keys.

  Accepts typed keys (``jax.random.key``) and raw uint32 key data (``PRNGKey``).
  """
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.ndim == 0:
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(rows))
  chex.assert_shape(key, (rows,))
  return key


def sample_logits(
  logits: jax.Array,
  key: jax.Array,
  temperature: float,
  *,
  top_k: int = 0,
  top_p: float = 1.0,
  min_p: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws one token per row.

  Args:
    logits: f32[B, V] next-token logits (any float dtype; upcast to f32).
    key: one PRNG key (row b draws with fold_in(key, b)) or key[B], one per row. Unused
      when greedy.
    temperature: 0 = greedy argmax; > 0 = sample from the truncated
      softmax(logits / temperature).
    top_k: see ``filter_logits``; ignored when greedy.
    top_p: see ``filter_logits``; ignored when greedy.
    min_p: see ``filter_logits``; ignored when greedy.

  Returns:
    (tokens i32[B], logp f32[B], filtered_logp f32[B]): ``logp`` is the token's
    log-probability under log_softmax(logits / temperature) with no truncation
    (log_softmax(logits) when greedy), the distribution the trainer scores;
    ``filtered_logp`` is under the truncated distribution actually drawn from (0 when
    greedy: a point mass).
  """
  chex.assert_rank(logits, 2)
  logits = logits.astype(jnp.float32)
  if temperature == 0.0:
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    return tokens, picked, jnp.zeros_like(picked)
  # Divide (not multiply by 1 / T), in f32: the trainer must score log_softmax(logits / T)
  # the same way for the recorded logp to match it to float precision.
  scaled = logits / temperature
  filtered = filter_logits(scaled, top_k=top_k, top_p=top_p, min_p=min_p)
  tokens, filtered_lse = _inverse_cdf_sample(_row_keys(key, logits.shape[0]), filtered)
  picked = jnp.take_along_axis(scaled, tokens[:, None], axis=-1)[:, 0]
  if not (0 < top_k < logits.shape[-1] or top_p < 1.0 or min_p > 0.0):
    logp = picked - filtered_lse  # nothing truncated: one distribution
    return tokens, logp, logp
  logp = picked - jax.nn.logsumexp(scaled, axis=-1)
  return tokens, logp, picked - filtered_lse


_CDF_BLOCK = 128  # tokens per block of the two-level inverse CDF


def _inverse_cdf_sample(keys: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One draw per row from softmax(logits), by inverting the row's CDF at one uniform.

  ``jax.random.categorical`` adds Gumbel noise to all V logits, i.e. V random numbers per
  row per step, which was half of a CPU decode step; one uniform per row gives the same
  distribution. The CDF is inverted in two levels, so nothing scans the whole vocabulary
  sequentially: the uniform first picks a block of ``_CDF_BLOCK`` tokens by the blocks'
  masses, then a token inside that block (a prefix sum over [B, V] was the costliest op
  of the draw on CPU). Each row uses only its own key. Zero-probability (-inf) tokens are
  never drawn: the CDF is flat across them at both levels.

  Args:
    keys: key[B], one per row.
    logits: f32[B, V], -inf where a filter removed a token; at least one finite per row.

  Returns:
    (tokens i32[B], log_normaliser f32[B] = logsumexp(logits) per row, so the drawn
    token's log-probability is ``logits[token] - log_normaliser``).
  """
  b, v = logits.shape
  top = jnp.max(logits, axis=-1, keepdims=True)
  probs = jnp.exp(logits - top)  # unnormalised, in (0, 1]; 0 where removed
  blocks = -(-v // _CDF_BLOCK)
  probs = jnp.pad(probs, ((0, 0), (0, blocks * _CDF_BLOCK - v))).reshape(b, blocks, _CDF_BLOCK)
  mass = jnp.sum(probs, axis=-1)  # [B, blocks]
  total = jnp.sum(mass, axis=-1)  # [B]
  u = jax.vmap(jax.random.uniform)(keys) * total  # [B] in [0, total)
  block = _first_above(jnp.cumsum(mass, axis=-1), u)
  inside = jnp.take_along_axis(probs, block[:, None, None], axis=1)[:, 0]  # [B, _CDF_BLOCK]
  before = jnp.sum(jnp.where(jnp.arange(blocks) < block[:, None], mass, 0.0), axis=-1)
  # Rounding can make the residual slightly negative; at 0 leading zero-mass tokens are
  # still skipped (their CDF is 0 <= 0).
  offset = _first_above(jnp.cumsum(inside, axis=-1), jnp.maximum(u - before, 0.0))
  tokens = (block * _CDF_BLOCK + offset).astype(jnp.int32)
  return tokens, top[:, 0] + jnp.log(total)


def _first_above(cdf: jax.Array, u: jax.Array) -> jax.Array:
  """Per row, the first index i with cdf[i] > u; the last index with mass if none is.

  cdf: f32[B, M] non-decreasing, u: f32[B]. "None" only happens when rounding puts u at
  or past the row's total; the fallback is the last index where the CDF rises.
  """
  m = cdf.shape[-1]
  index = jnp.sum(cdf <= u[:, None], axis=-1)
  rises = jnp.diff(cdf, axis=-1, prepend=0.0) > 0
  last = m - 1 - jnp.argmax(rises[:, ::-1], axis=-1)
  return jnp.where(index >= m, last, index)


# ----------------------------------------------------------------------------------------
# The compiled loop: prefill, then one token per while_loop iteration.


# Decode phases per ``generate`` call at most, and the fewest steps in one: more phases
# trim more unread cache slots but compile one more loop each.
_MAX_PHASES = 4
_MIN_PHASE_STEPS = 32


def _phase_ends(n: int, phases: int = 0) -> list[int]:
  """Last step (exclusive) of each decode phase over steps [1, n); ``phases`` 0 = auto."""
  if phases <= 0:
    phases = max(1, min(_MAX_PHASES, n // _MIN_PHASE_STEPS))
  return sorted({-(-n * k // phases) for k in range(1, phases + 1)})


def _grow_cache(cache: KVCache, slots: int) -> KVCache:
  """The cache with empty slots appended, up to ``slots`` slots per row."""
  extra = slots - cache.max_len
  if extra <= 0:
    return cache
  k = tuple(jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra))) for x in cache.k)
  v = tuple(jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0))) for x in cache.v)
  return cache.replace(k=k, v=v, segment_ids=jnp.pad(cache.segment_ids, ((0, 0), (0, extra))))


@functools.partial(
  jax.jit,
  static_argnames=(
    "graphdef",
    "max_new_tokens",
    "pad_id",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "stop_bias",
    "bias_ids",
    "force_after",
    "force_ids",
    "group_size",
    "phases",
  ),
)
def _generate(
  graphdef: nnx.GraphDef,
  state: nnx.State,
  prompt_tokens: jax.Array,
  prompt_mask: jax.Array,
  key: jax.Array,
  stop_ids: jax.Array,
  *,
  max_new_tokens: int,
  pad_id: int,
  temperature: float,
  top_k: int,
  top_p: float,
  min_p: float,
  stop_bias: float = 0.0,
  bias_ids: tuple[int, ...] = (),
  force_after: int = 0,
  force_ids: tuple[int, ...] = (),
  group_size: int = 1,
  phases: int = 0,
) -> GenerateOutput:
  chex.assert_rank([prompt_tokens, prompt_mask], 2)
  model: Decoder = nnx.merge(graphdef, state)
  b, p = prompt_tokens.shape
  if group_size < 1 or b % group_size:
    raise ValueError(f"group_size {group_size} must be >= 1 and divide the {b} rows")
  n = max_new_tokens
  row_keys = _row_keys(key, b)  # [B]
  stops = stop_ids.astype(jnp.int32)  # [S]
  mask = prompt_mask.astype(jnp.int32)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  # Decode runs in phases, each a while_loop over a cache just long enough for its
  # steps (step s attends to slots [0, P + s)), grown between phases: attention reads
  # the filled slots, not the whole budget's. The last sampled token is never fed back,
  # so the final phase needs P + N - 1 slots.
  ends = _phase_ends(n, phases)
  # Rows of one group share their prompt: prefill its first row only, copy the cache.
  first = slice(None, None, group_size)
  cache = init_cache(model.config, b // group_size, p + ends[0] - 1)
  # Only the last prompt position's logits are needed: no LM head over the others.
  prefill = model.forward(
    prompt_tokens[first],
    positions=positions[first],
    segment_ids=mask[first],
    cache=cache,
    compute_logits=False,
  )

  forced = jnp.asarray(force_ids or (0,), jnp.int32)  # [F]

  def emit(carry, logits, step):
    """Samples token ``step`` for every row and records it for rows still running."""
    cache, tokens, logp, flogp, lengths, done, _, next_pos, matched = carry
    if bias_ids:
      logits = logits.astype(jnp.float32).at[:, jnp.asarray(bias_ids)].add(stop_bias)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
    token, token_logp, token_flogp = sample_logits(
      logits, step_keys, temperature, top_k=top_k, top_p=top_p, min_p=min_p
    )
    if force_ids:  # past the budget and the sequence not (fully) out yet: its next token
      n_forced = len(force_ids)
      force = (step >= force_after) & (matched < n_forced)
      token = jnp.where(force, forced[jnp.minimum(matched, n_forced - 1)], token)
      lp = jax.nn.log_softmax(logits.astype(jnp.float32) / (temperature or 1.0), axis=-1)
      token_logp = jnp.where(force, jnp.take_along_axis(lp, token[:, None], -1)[:, 0],
                             token_logp)  # fmt: skip
      token_flogp = jnp.where(force, 0.0, token_flogp)
      # Progress through the sequence (a mismatch restarts it; done once complete).
      hit = token == forced[jnp.minimum(matched, n_forced - 1)]
      restart = (token == forced[0]).astype(jnp.int32)
      matched = jnp.where(matched >= n_forced, matched, jnp.where(hit, matched + 1, restart))
    # Finished rows keep decoding in lockstep (their cache slots are harmless) but
    # record nothing: pad tokens and zero log-probs after the stop token.
    alive = ~done
    tokens = tokens.at[:, step].set(jnp.where(alive, token, pad_id))
    logp = logp.at[:, step].set(jnp.where(alive, token_logp, 0.0))
    flogp = flogp.at[:, step].set(jnp.where(alive, token_flogp, 0.0))
    lengths = lengths + alive.astype(jnp.int32)
    done = done | jnp.any(token[:, None] == stops[None, :], axis=-1)
    return cache, tokens, logp, flogp, lengths, done, token, next_pos, matched

  carry = (
    repeat_cache(prefill.cache, group_size),
    jnp.full((b, n), pad_id, jnp.int32),
    jnp.zeros((b, n), jnp.float32),
    jnp.zeros((b, n), jnp.float32),
    jnp.zeros((b,), jnp.int32),
    jnp.zeros((b,), bool),
    jnp.zeros((b,), jnp.int32),  # last sampled token
    positions[:, -1] + 1,  # RoPE position of the next token
    jnp.zeros((b,), jnp.int32),  # tokens of force_ids matched so far
  )
  first_logits = model.logits(prefill.final_hidden[:, -1])  # one row per group
  carry = emit(carry, jnp.repeat(first_logits, group_size, axis=0), 0)

  def body(loop):
    step, (cache, tokens, logp, flogp, lengths, done, last, next_pos, matched) = loop
    out = model.forward(
      last[:, None],
      positions=next_pos[:, None],
      segment_ids=jnp.ones((b, 1), jnp.int32),
      cache=cache,
    )
    carry = (out.cache, tokens, logp, flogp, lengths, done, last, next_pos + 1, matched)
    return step + 1, emit(carry, out.logits[:, 0], step)

  step = jnp.int32(1)
  for end in ends:
    carry = (_grow_cache(carry[0], p + end - 1), *carry[1:])

    def cond(loop, end=end):
      step, carry = loop
      return (step < end) & ~jnp.all(carry[5])

    step, carry = jax.lax.while_loop(cond, body, (step, carry))
  _, tokens, logp, flogp, lengths, done, _, _, _ = carry
  return GenerateOutput(
    tokens=tokens, lengths=lengths, logp=logp, filtered_logp=flogp, stopped=done
  )


def make_generate_fn(
  graphdef: nnx.GraphDef,
  *,
  max_new_tokens: int,
  eos_id: int,
  stop_ids: Sequence[int] = (),
  pad_id: int = 0,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  min_p: float = 0.0,
  stop_bias: float = 0.0,
  stop_bias_ids: Sequence[int] = (),
  force_after: int = 0,
  force_ids: Sequence[int] = (),
) -> Callable[..., GenerateOutput]:
  """Jitted ``(state, prompt_tokens, prompt_mask, key, *, group_size=1) -> GenerateOutput``.

  ``graphdef`` and ``state`` come from ``nnx.split(model)``. ``key`` is one PRNG key
  (row b uses fold_in(key, b)) or key[B], one stream per row. Compilations are cached
  per (graphdef, settings, shapes), so calling this repeatedly is cheap.

  ``group_size`` G > 1 promises that rows come in groups of G adjacent rows with the
  same prompt (tokens and mask), as ``generate_groups`` lays them out: the prefill then
  runs on one row per group and copies its cache, 1/G of the prompt work. Rows of a
  group that differ are not detected and would decode from the first row's prompt.
  ``phases=k`` (keyword, static) fixes the number of decode phases (module docstring,
  point 2); the default 0 picks it from N.

  Args:
    graphdef: the model's static graph.
    max_new_tokens: N, the decode budget per row.
    eos_id: stop token (a negative id never matches: no stop token).
    stop_ids: further stop tokens (e.g. a chat template's end-of-turn token).
    pad_id: filler after a row's stop token.
    temperature: 0 = greedy; > 0 = sampling.
    top_k: keep the k most likely tokens; 0 = off.
    top_p: nucleus mass in (0, 1]; 1 = off.
    min_p: keep tokens with p >= min_p * p_max, in [0, 1]; 0 = off.
    stop_bias: delta added to the logits of ``stop_bias_ids`` (default: the stop ids)
      at every step before sampling: TLDR's training-free temperature scaling of the
      end-of-thinking / EOS token (its exact form is not published; an additive
      logit shift multiplies the token's odds by e^delta and leaves the ratios among
      all other tokens unchanged); 0 = off. The recorded log-probs are under the
      shifted logits: an inference option, not for RL rollouts.
    stop_bias_ids: the tokens ``stop_bias`` raises ((): the stop ids).
    force_after: budget forcing (s1): a row that has generated this many tokens
      without emitting the sequence ``force_ids`` (e.g. the close-think tag's tokens)
      is made to emit it next, token by token, then decodes freely; 0 = off.
    force_ids: the forced sequence (required with ``force_after``).
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if not 0.0 <= min_p <= 1.0:
    raise ValueError(f"min_p must be in [0, 1], got {min_p}")
  # Stop ids are a traced argument, padded to a multiple of 4 by repeating one of them,
  # so every small stop set shares one compilation.
  if force_after < 0 or (force_after and not force_ids):
    raise ValueError(f"force_after={force_after} needs force_ids (the sequence to force)")
  stops = sorted({int(eos_id), *map(int, stop_ids)})
  biased = sorted({*map(int, stop_bias_ids)}) or [t for t in stops if t >= 0]
  stops += stops[:1] * (-len(stops) % 4)
  if temperature == 0:
    top_k, top_p, min_p = 0, 1.0, 0.0  # greedy ignores the filters: one compilation
  return functools.partial(
    _generate,
    graphdef,
    max_new_tokens=max_new_tokens,
    stop_ids=np.asarray(stops, np.int32),
    pad_id=pad_id,
    temperature=float(temperature),
    top_k=int(top_k),
    top_p=float(top_p),
    min_p=float(min_p),
    stop_bias=float(stop_bias),
    bias_ids=tuple(biased) if stop_bias else (),
    force_after=int(force_after),
    force_ids=tuple(int(t) for t in force_ids) if force_after else (),
  )


def generate(
  model: Decoder,
  prompt_tokens: jax.Array,
  prompt_mask: jax.Array,
  *,
  key: jax.Array | None = None,
  **settings,
) -> GenerateOutput:
  """Generates up to ``max_new_tokens`` per row, stopping early once all rows stopped.

  Args:
    model: the decoder (not modified).
    prompt_tokens: i32[B, P] left-padded prompts (see ``left_pad``); every row needs at
      least one real token.
    prompt_mask: {0,1}[B, P], 1 on real tokens.
    key: PRNG key for sampling, or key[B] (one per row); needed when temperature > 0.
    **settings: the keyword arguments of ``make_generate_fn`` (``max_new_tokens``,
      ``eos_id``, ``stop_ids``, ``pad_id``, ``temperature``, ``top_k``, ``top_p``,
      ``min_p``), same meaning and defaults.

  Returns:
    ``GenerateOutput`` with [B, N] tokens and log-probs and [B] lengths and stop flags.
  """
  if key is None:
    if settings.get("temperature", 0.0) > 0:
      raise ValueError("sampling with temperature > 0 needs a PRNG key")
    key = jax.random.key(0)
  graphdef, state = nnx.split(model)
  fn = make_generate_fn(graphdef, **settings)
  return fn(state, jnp.asarray(prompt_tokens, jnp.int32), jnp.asarray(prompt_mask, jnp.int32), key)


# ----------------------------------------------------------------------------------------
# G samples per prompt.


def group_keys(key: jax.Array, num_prompts: int, num_samples: int) -> jax.Array:
  """key[P * G]: row p * G + g gets fold_in(fold_in(key, p), g).

  Sample (p, g) depends only on (key, p, g), not on P or G, so adding prompts or
  samples leaves the existing draws unchanged.
  """
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  chex.assert_shape(key, ())
  per_prompt = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(num_prompts))
  per_sample = jax.vmap(jax.vmap(jax.random.fold_in, in_axes=(None, 0)), in_axes=(0, None))(
    per_prompt, jnp.arange(num_samples)
  )  # [P, G]
  return per_sample.reshape(num_prompts * num_samples)


def generate_groups(
  generate_fn: Callable[..., GenerateOutput],
  state: nnx.State,
  prompts: Sequence[Sequence[int]],
  num_samples: int,
  key: jax.Array,
  *,
  pad_id: int = 0,
  width: int | None = None,
) -> tuple[np.ndarray, np.ndarray, GenerateOutput]:
  """G samples for each of P prompts in one batch of B = P * G rows.

  Rows of one prompt are adjacent (row = p * G + g, so ``rows.reshape(P, G)`` groups
  them and the group id of row b is b // G), and each row has its own key stream
  (``group_keys``). Each prompt is prefilled once and its cache copied to its G rows.

  Args:
    generate_fn: from ``make_generate_fn`` (sampling settings are bound there).
    state: the model state.
    prompts: P token lists.
    num_samples: G.
    key: one PRNG key.
    pad_id: left-padding token.
    width: pad prompts to this many columns (>= the longest prompt), e.g. a fixed
      bucket so every call reuses one compilation; default the longest prompt.

  Returns:
    (prompt_tokens i32[B, P'], prompt_mask i32[B, P'], GenerateOutput with B rows), the
    left-padded prompts as fed to the sampler (what ``batching.rollout_batch`` takes).
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  repeated = [p for p in prompts for _ in range(num_samples)]
  tokens, mask = left_pad(repeated, pad_id)
  if width is not None:
    if width < tokens.shape[1]:
      raise ValueError(f"width {width} is shorter than the longest prompt {tokens.shape[1]}")
    extra = width - tokens.shape[1]
    tokens = np.pad(tokens, ((0, 0), (extra, 0)), constant_values=pad_id)
    mask = np.pad(mask, ((0, 0), (extra, 0)))
  keys = group_keys(key, len(prompts), num_samples)
  out = generate_fn(state, jnp.asarray(tokens), jnp.asarray(mask), keys, group_size=num_samples)
  return tokens, mask, out


# ----------------------------------------------------------------------------------------
# Stop strings, on the host after decoding (see the module docstring for why).


def find_stop_string(
  ids: Sequence[int], detokenize: Callable[[Sequence[int]], str], stop_strings: Sequence[str]
) -> int | None:
  """Number of tokens up to and including the one that completes the first stop string.

  "First" is the stop string completed by the fewest tokens, i.e. the one a streaming
  detokenizer would see first. Binary search over prefixes, so O(log n) decodes; it
  assumes that a stop string present in the text of ``ids[:n]`` is also present in the
  text of every longer prefix (true of ordinary detokenizers).

  Args:
    ids: generated token ids (the completion only).
    detokenize: ids -> text, e.g. ``tokenizer.decode``.
    stop_strings: non-empty strings.

  Returns:
    n such that ``ids[:n]`` is the completion cut after the stop string, or None if no
    stop string occurs.
  """
  if any(not s for s in stop_strings):
    raise ValueError("stop strings must be non-empty")
  ids = [int(i) for i in ids]

  def hit(n: int) -> bool:
    text = detokenize(ids[:n])
    return any(s in text for s in stop_strings)

  if not stop_strings or not hit(len(ids)):
    return None
  lo, hi = 1, len(ids)  # hit(hi) holds; find the smallest such n
  while lo < hi:
    mid = (lo + hi) // 2
    if hit(mid):
      hi = mid
    else:
      lo = mid + 1
  return lo


def apply_stop_strings(
  out: GenerateOutput,
  detokenize: Callable[[Sequence[int]], str],
  stop_strings: Sequence[str],
  *,
  pad_id: int = 0,
) -> GenerateOutput:
  """Cuts each row after its first stop string (host side, NumPy arrays out).

  Rows that already ended on a stop token are cut only if a stop string completes
  earlier. A cut row counts as ``stopped`` (not truncated); everything after the cut
  becomes ``pad_id`` with zero log-probs.

  Args:
    out: the sampler's output (device or host arrays).
    detokenize: ids -> text.
    stop_strings: non-empty strings.
    pad_id: filler after the cut.

  Returns:
    ``GenerateOutput`` of NumPy arrays.
  """
  tokens, lengths, logp, flogp, stopped = (
    np.array(x) for x in (out.tokens, out.lengths, out.logp, out.filtered_logp, out.stopped)
  )
  for row in range(tokens.shape[0]):
    cut = find_stop_string(tokens[row, : lengths[row]], detokenize, stop_strings)
    if cut is None:
      continue
    tokens[row, cut:] = pad_id
    logp[row, cut:] = 0.0
    flogp[row, cut:] = 0.0
    lengths[row] = cut
    stopped[row] = True
  return GenerateOutput(
    tokens=tokens, lengths=lengths, logp=logp, filtered_logp=flogp, stopped=stopped
  )
