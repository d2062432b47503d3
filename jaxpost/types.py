"""Pytrees shared across jaxpost, and the axis-letter glossary.

Axis letters used in every shape comment and docstring:
  B  sequences in a batch (B = P * G for rollouts)
  P  prompts            G  samples per prompt
  T  tokens (time)      S  KV-cache slots
  V  vocabulary         D  model width
  H  attention heads    K  key/value heads (GQA groups)
  E  head dimension     F  MLP hidden width
  L  layers

Every batch container (``Batch``, ``Rollout``, and those of distillation and feature
extraction) exposes its token ``Batch`` as ``.token_batch``, so the train step and the
normalisers never need to know which container they hold.

Token roles (``Batch.roles``) let methods address the spans of the chat template
separately: the prompt, the reasoning inside ``<think>...</think>`` and the answer.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

# Role of a token in a templated example. PAD marks packing/padding slots.
ROLE_PAD = 0
ROLE_PROMPT = 1
ROLE_THINK = 2
ROLE_ANSWER = 3
# A reasoning token the data marks (``template.Example.marks``: injected noise or an
# undesirable span); it counts in the loss like any response token, and token-weighting
# losses can weight it on its own (token_priority's ``marked_weight``).
ROLE_MARKED = 4
# A response token the model read but did not write (``template.Example.observed``: a
# tool's output inside a tool-use trace): context, never a loss target.
ROLE_OBSERVED = 5
RESPONSE_ROLES = (ROLE_THINK, ROLE_ANSWER, ROLE_MARKED)


@flax.struct.dataclass
class Batch:
  """A packed, next-token-prediction batch.

  Several examples may share a row (packing); ``segment_ids`` keeps them apart in
  attention and ``positions`` restarts at 0 for each example.

  Attributes:
    tokens: i32[B, T] input tokens.
    targets: i32[B, T] the token to predict at each position (the next token of the
      same example; arbitrary where ``loss_mask`` is 0).
    loss_mask: f32[B, T] 1 where the target counts in the loss.
    segment_ids: i32[B, T] example index within the row, starting at 1; 0 = padding.
    positions: i32[B, T] position of each token within its own example.
    roles: i32[B, T] role (ROLE_*) of the *target* token, so a loss can weight the
      reasoning and answer spans differently.
    weights: optional f32[B, T] per-token weight of the loss (token selection and
      token-weighting objectives; may be negative for signed priority). None means the
      loss mask. Normalisers are always counted on ``loss_mask``, so a weight changes
      how much a token counts, never how many tokens there are.
    example_ids: optional i32[B] which dataset example each row is (its first segment;
      -1 for an empty row), for losses that keep state per example (DiscFT). Only
      sources that can say it give it (``packing.PlacedSource.example_id``).
  """

  tokens: jax.Array
  targets: jax.Array
  loss_mask: jax.Array
  segment_ids: jax.Array
  positions: jax.Array
  roles: jax.Array
  weights: jax.Array | None = None
  example_ids: jax.Array | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return self.tokens.shape

  @property
  def token_batch(self) -> Batch:
    """The token ``Batch`` of any batch container (here: itself)."""
    return self

  @property
  def token_weights(self) -> jax.Array:
    """f32[B, T] ``weights`` where given, else the loss mask; 0 wherever the mask is 0."""
    mask = self.loss_mask.astype(jnp.float32)
    if self.weights is None:
      return mask
    return jnp.where(mask > 0, self.weights.astype(jnp.float32), 0.0)

  @classmethod
  def from_tokens(cls, tokens: jax.Array, mask: jax.Array | None = None) -> Batch:
    """Causal-LM batch from unpacked rows: predict tokens[t+1] from tokens[:t+1].

    Args:
      tokens: i32[B, T] token ids.
      mask: optional {0,1}[B, T], 1 for real tokens (right padding).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if mask is None:
      mask = jnp.ones_like(tokens)
    mask = jnp.asarray(mask, jnp.int32)
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    target_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1) * mask
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return cls(
      tokens=tokens,
      targets=targets,
      loss_mask=target_mask.astype(jnp.float32),
      segment_ids=mask,
      positions=positions,
      roles=jnp.where(target_mask > 0, ROLE_ANSWER, ROLE_PAD).astype(jnp.int32),
    )


@flax.struct.dataclass
class DistillBatch:
  """A token ``Batch`` with an offline teacher's top-k log-probs at every position.

  Attributes:
    batch: the token batch.
    teacher_ids: i32[B, T, k] the teacher's k most likely next tokens at each position.
    teacher_logp: f32[B, T, k] their log-probabilities (the rest of the mass is the
      tail bucket of ``pallas_kernels.fused_linear_divergence``).
  """

  batch: Batch
  teacher_ids: jax.Array
  teacher_logp: jax.Array

  @property
  def token_batch(self) -> Batch:
    return self.batch


@flax.struct.dataclass
class PrivilegedBatch:
  """A student ``Batch`` and the same examples as a teacher with privileged context sees
  them (extra text in the prompt: a worked solution, a hint), aligned token by token.

  Attributes:
    batch: the student's rows (no privileged text).
    teacher_batch: the teacher's rows, one example per row like the student's.
    teacher_columns: i32[B, T] the teacher column of each student position: the same
      response token, shifted by the longer teacher prompt.
  """

  batch: Batch
  teacher_batch: Batch
  teacher_columns: jax.Array

  @property
  def token_batch(self) -> Batch:
    return self.batch


@flax.struct.dataclass
class Rollout:
  """Sampled completions laid out for the policy update (B = P * G rows).

  Row b holds prompt + completion, right-padded; ``batch.loss_mask`` is 1 exactly on
  completion targets, so prompt and padding never count. All per-token arrays are
  aligned with ``batch.targets``: entry [b, t] describes target token t + 1.

  Attributes:
    batch: tokens/targets/loss_mask/segment_ids/positions/roles of prompt + completion.
    advantages: f32[B, T] per-token advantage (outcome methods broadcast one value).
    old_logp: f32[B, T] log-prob of each target under the policy that sampled it, as
      the trainer computes it (pi_old of the PPO ratio).
    sampler_logp: f32[B, T] log-prob recorded by the sampler (mu); differs from
      ``old_logp`` only by sampler/trainer numerics or an off-policy engine.
    ref_logp: f32[B, T] log-prob under the frozen reference policy (zeros if unused).
    group_ids: i32[B] prompt index of each row (rows of one prompt share it).
    turn_ids: i32[B, T] turn index of each target in multi-turn rollouts, starting at
      1; 0 on prompt and padding. Single-turn rollouts use 1 on every completion token.
  """

  batch: Batch
  advantages: jax.Array
  old_logp: jax.Array
  sampler_logp: jax.Array
  ref_logp: jax.Array
  group_ids: jax.Array
  turn_ids: jax.Array

  @property
  def token_batch(self) -> Batch:
    """The token ``Batch`` (normalisers are counted on its loss mask)."""
    return self.batch
