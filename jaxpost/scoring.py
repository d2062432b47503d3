"""What a loss sees of a model: logits or a fused head, target log-probs, entropy, features.

Every model in a run is read through a ``Scorer``: the policy being trained (inside the
train step, under ``jax.grad``), the policy that sampled and the frozen reference (RL,
outside the step), a teacher (distillation) and a feature extractor (detection heads).
A scorer is the model's static graph plus *how* to read it:

  lm_head      "logits" materialises f32[B, T, V] logits; "fused" (and "fused_xla" /
               "fused_pallas") hands the loss a ``FusedHead`` (final hidden states +
               LM-head weight) so ``pallas_kernels.fused_linear_divergence`` never builds
               the [B*T, V] logits. Same values and gradients.
  temperature  logits / T, as the sampler records log_softmax(logits / T); a fused head
               folds it into the weight (hidden @ (W / T)).
  window       > 0: the LM head runs only on the ``window`` target columns from each
               row's first completion target on (``completion_columns``), not on the
               prompt (RL: the completions are what is scored).
  group_size   > 1 (with a window): rows are groups of G adjacent rows sharing one
               prompt, which runs once per group (``shared_prompt_hidden``), exact.

A model state is passed as one ``nnx.State`` or a tuple of them (e.g. ``(params,
rest)``), merged with the graph inside the traced function, so the same scorer reads the
trainable model and any frozen one of the same architecture; a teacher of another size
or architecture has its own graph and so its own scorer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpost.losses.head import LM_HEADS, FusedHead, LayerHeads, TargetStats, target_stats
from jaxpost.models import decoder
from jaxpost.types import ROLE_PROMPT, Batch


def fused_implementation(lm_head: str) -> str | None:
  """The fused op's path for ``lm_head`` (None = materialised logits); fails early if unknown."""
  if lm_head not in LM_HEADS:
    raise ValueError(f"unknown lm_head {lm_head!r}; expected one of {sorted(LM_HEADS)}")
  return LM_HEADS[lm_head]


def head_outputs(
  model, hidden: jax.Array, *, lm_head: str = "logits", chunk_size: int = 0, temperature=1.0
):
  """f32 logits / T [..., V] or a ``FusedHead`` from final hidden states [..., D]."""
  if fused_implementation(lm_head) is None:
    logits = model.logits(hidden)
    return logits if temperature == 1.0 else logits / temperature
  weight = model.lm_head_weight().astype(jnp.float32)
  if temperature != 1.0:
    weight = weight / temperature
  return FusedHead(hidden, weight.astype(hidden.dtype), fused_implementation(lm_head), chunk_size)


def model_outputs(
  model,
  batch: Batch,
  *,
  lm_head: str = "logits",
  chunk_size: int = 0,
  temperature: float = 1.0,
  columns: jax.Array | None = None,
):
  """What a token loss consumes: f32 logits / T ``[B, T, V]``, or a ``FusedHead`` over them.

  Args:
    model: the merged decoder.
    batch: uses tokens, positions, segment_ids.
    lm_head: a key of ``losses.head.LM_HEADS``.
    chunk_size: token rows per chunk of the fused op (0 = its default).
    temperature: divides the logits.
    columns: optional i32[B, W]: the LM head runs only at these positions of each row
      (the output is [B, W, V] or a head over [B, W] hidden states); the forward pass
      still covers all T tokens.
  """
  if fused_implementation(lm_head) is None and columns is None:
    logits = model(batch.tokens, positions=batch.positions, segment_ids=batch.segment_ids)
    logits = logits.astype(jnp.float32)
    return logits if temperature == 1.0 else logits / temperature  # divide, as sampled
  hidden = final_hidden(model, batch)
  if columns is not None:
    hidden = jnp.take_along_axis(hidden, columns[..., None], axis=1)  # [B, W, D]
  return head_outputs(
    model, hidden, lm_head=lm_head, chunk_size=chunk_size, temperature=temperature
  )


def final_hidden(model, batch: Batch) -> jax.Array:
  """[B, T, D] residual stream after the final norm (the LM head's input)."""
  out = model.forward(
    batch.tokens,
    positions=batch.positions,
    segment_ids=batch.segment_ids,
    compute_logits=False,
  )
  return out.final_hidden


def completion_columns(roles: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
  """The ``window`` target columns from each row's first completion target on.

  In a rollout batch (``rollout.batching``) row b's completion targets are the columns
  [L_p - 1, L_p - 1 + L_c), L_c <= max_new_tokens, after the L_p - 1 prompt targets
  (ROLE_PROMPT) at [0, L_p - 1); counting those finds the start even for a row whose
  completion is empty.

  Args:
    roles: i32[B, T] target roles.
    window: W, at least the longest completion (``rl.max_new_tokens``).

  Returns:
    (columns i32[B, W] clipped to [0, T), valid f32[B, W]: 0 on clipped repeats).
  """
  t = roles.shape[1]
  start = jnp.sum(roles == ROLE_PROMPT, axis=1)  # L_p - 1
  columns = start[:, None] + jnp.arange(window)[None, :]
  return jnp.minimum(columns, t - 1), (columns < t).astype(jnp.float32)


def shared_prompt_hidden(model, batch: Batch, window: int, group_size: int) -> jax.Array:
  """Final hidden states at the ``completion_columns`` of a batch of prompt groups.

  Rows come in groups of G = ``group_size`` adjacent rows with the same prompt (as the
  sampler's ``generate_groups`` and ``rollout.batching`` lay them out). Each group's
  prompt runs once, left-padded to P = T - ``window`` columns into a KV cache, exactly
  as the sampler prefilled it; the cache is copied to the G rows
  (``decoder.repeat_cache``) and the rows' first ``window - 1`` completion tokens run on
  top of it. Target column L_p - 1 + w is predicted from the prompt's last token (w = 0)
  or from completion token w - 1, so the result equals gathering ``final_hidden`` of a
  full forward pass at those columns, with 1/G of the prompt work in the forward and in
  the backward pass (the copies' gradients sum into the one prompt pass).

  Args:
    model: the merged decoder.
    batch: [B, T] rows in the ``rollout.batching`` layout, B divisible by G; every
      prompt must fit in T - ``window`` columns (``rollout.groups.check_prompt_groups``).
    window: W, the completion window (``rl.max_new_tokens``).
    group_size: G.

  Returns:
    [B, W, D] hidden states (rows whose window passes column T - 1 hold filler there).
  """
  b, t = batch.tokens.shape
  p = t - window
  if group_size < 1 or b % group_size or p < 1:
    raise ValueError(
      f"[{b}, {t}] rows do not fit groups of {group_size} rows and a {window}-token window"
    )

  def take(x, cols):
    return jnp.take_along_axis(x, cols, axis=1)

  # Each group's prompt, left-padded to P columns, read off its first row. Its first
  # completion target sits at column L_p - 1 (< T, so never clipped).
  columns, valid = completion_columns(batch.roles, window)
  first = slice(None, None, group_size)
  n_prompt = columns[first, 0] + 1  # L_p
  src = jnp.arange(p)[None, :] - (p - n_prompt)[:, None]  # [B / G, P]
  real = src >= 0
  src = jnp.maximum(src, 0)
  prompt = model.forward(
    jnp.where(real, take(batch.tokens[first], src), 0),
    positions=jnp.where(real, take(batch.positions[first], src), 0),
    segment_ids=jnp.where(real, take(batch.segment_ids[first], src), 0),
    cache=decoder.init_cache(model.config, b // group_size, t - 1),
    compute_logits=False,
  )
  # Completion tokens 0 .. W - 2 of every row, at slots P .. T - 2 of its group's cache.
  tokens_at = columns[:, 1:]  # target column c is predicted at token c
  completion = model.forward(
    take(batch.tokens, tokens_at),
    positions=take(batch.positions, tokens_at),
    segment_ids=take(batch.segment_ids, tokens_at) * valid[:, 1:].astype(jnp.int32),
    cache=decoder.repeat_cache(prompt.cache, group_size),
    compute_logits=False,
  )
  last_prompt = jnp.repeat(prompt.final_hidden[:, -1:], group_size, axis=0)
  return jnp.concatenate([last_prompt, completion.final_hidden], axis=1)


@dataclasses.dataclass(frozen=True)
class Scorer:
  """A model's static graph and how to read it (see the module docstring).

  Build one with ``make_scorer``, which checks the options. Every method takes the
  model state (one ``nnx.State`` or a tuple of them, merged with ``graphdef``) and a
  token ``Batch``, and is traceable: call it inside jit / grad.
  """

  graphdef: nnx.GraphDef
  lm_head: str = "logits"
  chunk_size: int = 0
  temperature: float = 1.0
  window: int = 0
  group_size: int = 1

  def model(self, state):
    states = state if isinstance(state, tuple | list) else (state,)
    return nnx.merge(self.graphdef, *states)

  @property
  def _head(self) -> dict:
    return dict(lm_head=self.lm_head, chunk_size=self.chunk_size, temperature=self.temperature)

  def outputs(self, state, batch: Batch):
    """f32 logits / T [B, T, V] or a ``FusedHead`` over all T positions (token losses)."""
    if self.window:
      raise ValueError("outputs() covers every position; this scorer has a completion window")
    return model_outputs(self.model(state), batch, **self._head)

  def outputs_at(self, state, batch: Batch, columns: jax.Array):
    """Like ``outputs``, at positions ``columns`` (i32[B, W]) of each row: [B, W, V] or
    a head over [B, W] hidden states (the forward still covers all T tokens)."""
    return model_outputs(self.model(state), batch, columns=columns, **self._head)

  def layer_heads(self, state, batch: Batch) -> LayerHeads:
    """Every layer's exit through the final norm and the shared head (``layers`` losses).

    One forward pass; under jit the heads of exits a loss does not read are never built.
    """
    if self.window or self.temperature != 1.0:
      raise ValueError("layer_heads covers every position at temperature 1")
    model = self.model(state)
    out = model.forward(
      batch.tokens,
      positions=batch.positions,
      segment_ids=batch.segment_ids,
      hidden_layers=tuple(range(model.config.n_layers)),
      compute_logits=False,
    )
    hidden = jnp.stack([model.final_norm(h) for h in out.hidden_states], axis=2)
    weight = model.lm_head_weight().astype(hidden.dtype)
    return LayerHeads(hidden, weight, fused_implementation(self.lm_head), self.chunk_size)

  def hidden(self, state, batch: Batch) -> jax.Array:
    """[B, T, D] final hidden states (features of a frozen model)."""
    return final_hidden(self.model(state), batch)

  def target_stats(self, state, batch: Batch) -> TargetStats:
    """Log-prob and entropy of ``batch.targets`` under log_softmax(f32 logits / T).

    The sampler records log_softmax(logits / T) of what it drew, so scoring the same
    way makes the PPO ratio start at 1 up to float noise.

    Returns:
      ``TargetStats`` of f32[B, T] arrays (zeros off the loss mask on the fused path,
      and outside the window).
    """
    model = self.model(state)
    if not self.window:
      return target_stats(model_outputs(model, batch, **self._head), batch.targets, batch.loss_mask)
    columns, valid = completion_columns(batch.roles, self.window)
    if self.group_size > 1:
      hidden = shared_prompt_hidden(model, batch, self.window, self.group_size)
      outputs = head_outputs(model, hidden, **self._head)
    else:
      outputs = model_outputs(model, batch, columns=columns, **self._head)

    def take(x):
      return jnp.take_along_axis(x, columns, axis=1)

    stats = target_stats(outputs, take(batch.targets), take(batch.loss_mask) * valid)
    rows = jnp.arange(columns.shape[0])[:, None]
    # Add (not set): clipped repeats of column T - 1 carry 0 and must not overwrite it.
    return jax.tree.map(
      lambda x: jnp.zeros(batch.targets.shape, x.dtype).at[rows, columns].add(x * valid), stats
    )

  def logp(self, state, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """``(logp, entropy)``, each f32[B, T]: ``target_stats`` reduced to what RL records."""
    stats = self.target_stats(state, batch)
    return stats.logp, stats.entropy


@dataclasses.dataclass(frozen=True)
class ModelView:
  """The trained model as a ``model``-family loss reads it: forward passes it may repeat
  with options (representation perturbations), inside the objective's trace.

  Attributes:
    scorer: how to read it (the head options).
    state: its ``(params, rest)``; gradients flow to ``params`` through every pass.
  """

  scorer: Scorer
  state: tuple

  @property
  def config(self):
    return self.scorer.model(self.state).config

  def forward(self, batch: Batch, *, steer: jax.Array | None = None):
    """``(outputs, hidden_states)``: what a token loss reads (logits or a ``FusedHead``)
    and every block's output stream [B, T, D], with ``steer`` ([B, L, D]) added to
    them (``decoder.Decoder.forward``)."""
    model = self.scorer.model(self.state)
    out = model.forward(
      batch.tokens,
      positions=batch.positions,
      segment_ids=batch.segment_ids,
      hidden_layers=tuple(range(model.config.n_layers)),
      compute_logits=False,
      steer=steer,
    )
    return head_outputs(model, out.final_hidden, **self.scorer._head), out.hidden_states


def make_scorer(
  graphdef,
  *,
  lm_head: str = "logits",
  chunk_size: int = 0,
  temperature: float = 1.0,
  window: int = 0,
  group_size: int = 1,
) -> Scorer:
  """A ``Scorer`` for ``graphdef``; bad options fail here, not inside jit.

  Args:
    graphdef: the model's static graph (``nnx.split``).
    lm_head: a key of ``losses.head.LM_HEADS``.
    chunk_size: token rows per chunk of the fused op (0 = its default).
    temperature: logits are divided by it (> 0).
    window: completion window W (0 = every position).
    group_size: rows per shared prompt (> 1 needs a window).
  """
  fused_implementation(lm_head)
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  if chunk_size < 0 or window < 0 or group_size < 1:
    raise ValueError(
      f"bad scorer options: chunk_size={chunk_size}, window={window}, group_size={group_size}"
    )
  if group_size > 1 and not window:
    raise ValueError("a shared-prompt forward (group_size > 1) needs the completion window")
  return Scorer(graphdef, lm_head, chunk_size, float(temperature), window, group_size)


def jit_logp(scorer: Scorer):
  """Jitted ``(state, batch) -> (logp f32[B, T], entropy f32[B, T])`` with no gradient."""
  return jax.jit(scorer.logp)
