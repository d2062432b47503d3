"""Sampled completions -> the right-padded next-token ``Batch`` the trainer scores.

The sampler works on left-padded prompts (so rows decode in lockstep); the trainer wants
each row as prompt + completion starting at column 0, right-padded, with targets shifted
by one. This is the host-side step between them. The result fills ``Rollout.batch`` and
``Rollout.sampler_logp`` (``jaxpost/types.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import numpy as np

from jaxpost.rollout.sampler import GenerateOutput
from jaxpost.types import ROLE_ANSWER, ROLE_PAD, ROLE_PROMPT, ROLE_THINK, Batch


@flax.struct.dataclass
class RolloutBatch:
  """Prompt + completion rows laid out for the policy update (host NumPy arrays).

  Attributes:
    batch: tokens/targets/loss_mask/segment_ids/positions/roles, right-padded [B, T].
      ``loss_mask`` is 1 exactly on targets that are completion tokens (stop token
      included); roles are ROLE_PROMPT on prompt targets, ROLE_THINK on completion
      targets inside a leading think block (with ``think_tags``), ROLE_ANSWER on the
      other completion targets, ROLE_PAD elsewhere.
    sampler_logp: f32[B, T] the sampler's log_softmax(logits / temperature) of each
      completion target, aligned with ``batch.targets``; 0 where ``loss_mask`` is 0.
    filtered_logp: f32[B, T] the same under the truncated (top-k/top-p/min-p)
      distribution actually sampled from; 0 where ``loss_mask`` is 0.
    truncated: bool[B] the row ran out of ``max_new_tokens`` without a stop token or
      stop string.
    prompt_lengths: i32[B] real prompt tokens per row.
    completion_lengths: i32[B] generated tokens per row (stop token included).
  """

  batch: Batch
  sampler_logp: np.ndarray
  filtered_logp: np.ndarray
  truncated: np.ndarray
  prompt_lengths: np.ndarray
  completion_lengths: np.ndarray


def rollout_batch(
  prompt_tokens: np.ndarray | jax.Array,
  prompt_mask: np.ndarray | jax.Array,
  out: GenerateOutput,
  *,
  pad_id: int = 0,
  width: int | None = None,
  think_tags: tuple[Sequence[int], Sequence[int]] | None = None,
) -> RolloutBatch:
  """Lays out left-padded prompts and their completions as a right-padded ``Batch``.

  Row b holds its L_p prompt tokens then its L_c completion tokens at columns
  [0, L_p + L_c). Target t is token t + 1, so the completion targets are columns
  [L_p - 1, L_p + L_c - 1): the first is predicted from the last prompt token, the last
  is the final generated token (the stop token, if any). The last real token has no
  target and counts nowhere.

  Args:
    prompt_tokens: i32[B, P] left-padded prompts, as fed to the sampler.
    prompt_mask: {0,1}[B, P] 1 on real prompt tokens (a contiguous right-aligned block).
    out: the sampler's output for these rows (N = ``out.tokens.shape[1]``), possibly
      after ``sampler.apply_stop_strings``.
    pad_id: token and target id of padding slots.
    width: T, columns of the result; default P + N, fixed for a given sampler setup
      so the train step compiles once. Must fit the longest row.
    think_tags: (open ids, close ids), the token ids of the template's ``<think>`` and
      ``</think>`` (``think_block``); completion tokens in a leading think block get
      ROLE_THINK, as the SFT template tags them. None: every completion token is
      ROLE_ANSWER.

  Returns:
    ``RolloutBatch`` of NumPy arrays.
  """
  prompt_tokens = np.asarray(prompt_tokens, np.int32)
  prompt_mask = np.asarray(prompt_mask).astype(bool)
  gen = np.asarray(out.tokens, np.int32)
  lc = np.asarray(out.lengths, np.int32)
  if prompt_tokens.ndim != 2 or prompt_mask.shape != prompt_tokens.shape:
    raise ValueError(f"prompts must be [B, P] with a matching mask, got {prompt_tokens.shape}")
  if gen.ndim != 2 or gen.shape[0] != prompt_tokens.shape[0]:
    raise ValueError(f"completions {gen.shape} do not match prompts {prompt_tokens.shape}")
  b, p = prompt_tokens.shape
  n = gen.shape[1]
  lp = prompt_mask.sum(axis=1).astype(np.int32)
  if np.any(prompt_mask != (np.arange(p)[None] >= (p - lp)[:, None])):
    raise ValueError("prompt_mask must be left padding: zeros then ones in every row")
  total = lp + lc
  t = p + n if width is None else width
  if total.max() > t:
    raise ValueError(f"width {t} is shorter than the longest row ({total.max()} tokens)")

  # In [prompt columns | generated columns] row b's sequence is the contiguous run of
  # columns [P - L_p, P + L_c); output column j reads source column j + P - L_p.
  source = np.concatenate([prompt_tokens, gen], axis=1)  # [B, P + N]
  col = np.arange(t, dtype=np.int32)[None, :]  # [1, T]
  real = col < total[:, None]  # [B, T]
  src = np.clip(col + (p - lp)[:, None], 0, p + n - 1)
  tokens = np.where(real, np.take_along_axis(source, src, axis=1), pad_id).astype(np.int32)
  # Target j = token j + 1; the last real token's target (and padding's) is pad_id.
  has_target = col < (total - 1)[:, None]
  targets = np.concatenate([tokens[:, 1:], np.full((b, 1), pad_id, np.int32)], axis=1)
  targets = np.where(has_target, targets, pad_id).astype(np.int32)
  completion = has_target & (col >= (lp - 1)[:, None])
  prompt = has_target & ~completion
  # Completion target j is generated token j - (L_p - 1).
  gen_index = np.clip(col - (lp - 1)[:, None], 0, n - 1)
  answer = np.full((b, n), ROLE_ANSWER, np.int32)
  if think_tags is not None:
    answer[think_block(gen, lc, *think_tags)] = ROLE_THINK
  completion_roles = np.take_along_axis(answer, gen_index, axis=1)
  roles = np.where(completion, completion_roles, np.where(prompt, ROLE_PROMPT, ROLE_PAD))

  def align(x):
    x = np.asarray(x, np.float32)
    return np.where(completion, np.take_along_axis(x, gen_index, axis=1), 0.0).astype(np.float32)

  batch = Batch(
    tokens=tokens,
    targets=targets,
    loss_mask=completion.astype(np.float32),
    segment_ids=real.astype(np.int32),
    positions=np.where(real, col, 0).astype(np.int32),
    roles=roles.astype(np.int32),
  )
  return RolloutBatch(
    batch=batch,
    sampler_logp=align(out.logp),
    filtered_logp=align(out.filtered_logp),
    truncated=~np.asarray(out.stopped, bool),
    prompt_lengths=lp,
    completion_lengths=lc,
  )


def think_block(
  tokens: np.ndarray, lengths: np.ndarray, open_ids: Sequence[int], close_ids: Sequence[int]
) -> np.ndarray:
  """bool[B, N]: the generated tokens of a leading ``<think> ... </think>`` block.

  A row whose first tokens are ``open_ids`` is in the block from there through the first
  ``close_ids`` after them (tags included, as the SFT template tags its think spans), or
  to its end if the block never closes; other rows have no think block. The tags are
  matched as token ids, the ones the template encodes them to and a model trained on
  it emits; a tag spelled with other tokens is not recognised.

  Args:
    tokens: i32[B, N] generated tokens.
    lengths: i32[B] generated tokens per row.
    open_ids, close_ids: the tags' token ids (non-empty).
  """
  if not len(open_ids) or not len(close_ids):
    raise ValueError("think tags must be non-empty token id lists")
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  o, c = np.asarray(open_ids), np.asarray(close_ids)
  n = tokens.shape[1]
  # -1 (never a token id) past the end, so every start j in [0, N) has a full window.
  padded = np.pad(tokens, ((0, 0), (0, len(o) + len(c))), constant_values=-1)
  opened = (lengths >= len(o)) & np.all(padded[:, : len(o)] == o, axis=1)
  # The first close tag after the open tag that ends within the row; else the row's end.
  windows = np.lib.stride_tricks.sliding_window_view(padded, len(c), axis=1)[:, :n]
  j = np.arange(n)
  hit = np.all(windows == c, axis=2) & (j >= len(o)) & (j + len(c) <= lengths[:, None])
  end = np.where(hit.any(axis=1), np.argmax(hit, axis=1) + len(c), lengths)
  return opened[:, None] & (np.arange(n) < end[:, None])
