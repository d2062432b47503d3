"""Diffusion-inspired masked fine-tuning (sft_distill_detect.md, 14b).

arXiv 2510.09885 recasts SFT as demasking: the prompt holds a masked version of the
passage (each token masked with probability r, r ~ U(0.05, 0.95) per example) and the
target is the original, trained with the ordinary autoregressive loss; on math it is
"masked SFT", with the solution as the passage. Not found: the prompt template, the mask
token, whether every example is reformatted. Ours, configurable: a fraction
``data.masked_copy`` of the examples becomes

  prompt tokens + masked copy of the response tokens (role prompt: no loss) + response

with the tokenizer's pad id as the mask token (``masked_thought.mask_token``) and the
rest left as they are, so plain prompts stay in distribution for evaluation (held-out
prompts have no copy). r is drawn from ``data.masked_copy_ratio`` = (low, high); at
r = 0 the task is copying the prompt's copy. Deterministic in ``(seed, index)``.
"""

from __future__ import annotations

import numpy as np

from jaxpost.data.packing import ExampleSource, PlacedSource
from jaxpost.types import RESPONSE_ROLES, ROLE_PROMPT


def check_ratio(value) -> None:
  """The config rule of ``data.masked_copy_ratio``: (low, high), 0 <= low <= high <= 1."""
  if not (isinstance(value, tuple | list) and len(value) == 2):
    raise TypeError(f"got {value!r}")
  low, high = (float(v) for v in value)
  if not 0 <= low <= high <= 1:
    raise ValueError(f"got {value!r}")


def masked_example(
  tokens: np.ndarray, roles: np.ndarray, ratio: float, mask_id: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, roles) with a copy of the response, each token masked with prob ``ratio``,
  inserted as prompt right before the response."""
  response = np.isin(roles, RESPONSE_ROLES)
  start = int(np.argmax(response)) if response.any() else len(tokens)
  copy = tokens[start:].copy()
  copy[rng.random(len(copy)) < ratio] = mask_id
  out_tokens = np.concatenate([tokens[:start], copy, tokens[start:]]).astype(tokens.dtype)
  out_roles = np.concatenate(
    [roles[:start], np.full(len(copy), ROLE_PROMPT, roles.dtype), roles[start:]]
  )
  return out_tokens, out_roles


def wrap(
  source: ExampleSource,
  fraction: float,
  ratio_range: tuple[float, float],
  mask_id: int,
  seed: int,
) -> ExampleSource:
  """``source`` with a ``fraction`` of its examples turned into demasking examples."""
  low, high = ratio_range

  def masked(index: int):
    tokens, roles = source(index)
    rng = np.random.default_rng([seed, index, 0x4D43])
    if rng.random() >= fraction:
      return tokens, roles
    return masked_example(tokens, roles, rng.uniform(low, high), mask_id, rng)

  if isinstance(source, PlacedSource):
    return PlacedSource(masked, source.where)
  return masked
