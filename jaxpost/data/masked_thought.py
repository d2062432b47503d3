"""Masked Thought: input-side masking of the response (sft_distill_detect.md, 14a).

"Masked Thought" (arXiv 2403.02178, MFT): while fine-tuning, each response token in
the model's *input* is replaced by a mask token with probability p; the labels stay the
original tokens and prompt tokens are never touched, so the loss is plain cross-entropy
on a corrupted context, a regulariser against over-reliance on the exact preceding
reasoning. The rate warms up linearly (the authors' code):

  p(step) = min(p_max, p_max * step / (warmup * max_steps + 1)),   warmup = 0.66

Defaults of the paper: p_max 0.4 on GSM8K, 0.2 on MATH. The mask token is the
tokenizer's pad id (the code adds a new token or uses pad), else its unk id.

An input position t holds a response token when the target of position t - 1 is
counted (``loss_mask[t - 1] > 0``, the same example): in a packed row the input at t is
the target at t - 1. The draws come from ``(seed, step, process)``, so a resumed run
masks the same tokens. Set by ``data.mask_thought`` (p_max; 0 = off) and
``data.mask_thought_warmup``; any recipe that reads SFT batches applies it as a view.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxpost.types import Batch


def rate(step: int, p_max: float, warmup: float, max_steps: int) -> float:
  """p(step) = min(p_max, p_max * step / (warmup * max_steps + 1))."""
  return min(p_max, p_max * step / (warmup * max_steps + 1))


def response_inputs(batch: Batch) -> np.ndarray:
  """bool[B, T]: input positions that hold a (counted) response token."""
  mask = np.asarray(batch.loss_mask) > 0
  seg = np.asarray(batch.segment_ids)
  out = np.zeros(mask.shape, bool)
  out[:, 1:] = mask[:, :-1] & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
  return out


@dataclasses.dataclass
class MaskedThought:
  """The batch view ``view(step, batch) -> batch`` with response inputs masked.

  Attributes:
    p_max: the final masking rate.
    warmup: fraction of ``max_steps`` over which the rate rises linearly.
    max_steps: the run's ``train.steps``.
    mask_id: the token that replaces masked inputs.
    seed: the run's seed.
    process: this host's index (hosts pack different rows).
  """

  p_max: float
  warmup: float
  max_steps: int
  mask_id: int
  seed: int = 0
  process: int = 0

  def __call__(self, step: int, batch: Batch) -> Batch:
    p = rate(step, self.p_max, self.warmup, self.max_steps)
    if p <= 0:
      return batch
    rng = np.random.default_rng([self.seed, step, self.process, 0x4D46])
    tokens = np.asarray(batch.tokens)
    hit = response_inputs(batch) & (rng.random(tokens.shape) < p)
    return batch.replace(tokens=np.where(hit, self.mask_id, tokens).astype(tokens.dtype))


def mask_token(tok) -> int:
  """The tokenizer's pad id, else its unk id."""
  for name in ("pad_id", "unk_id"):
    i = getattr(tok, name, -1)
    if i is not None and i >= 0:
      return int(i)
  raise ValueError("Masked Thought needs a pad or unk token in the tokenizer to mask with")
