"""TLDR's multi-level length control (arXiv 2505.07961; methods card rl.md section 3).

One policy, several thinking budgets: each training prompt carries a length-level tag
(``[short] 47*86`` ...), and the reward penalises length with that level's strength,

    R = r_acc - lambda_level * P(L),   P(L) = max(L - free_tokens, 0) / norm_tokens

(with ``exact_answer`` as r_acc; this term is the penalty). The paper's P and lambdas
are not published; P here is the linear penalty of the ``length`` reward, and by
default only a correct completion pays it (``penalize_wrong=False``), so a short wrong
answer never outscores a long right one while lambda_level <= 1. Levels are
``(name, tag, lambda)`` from shortest to longest, lambda non-increasing; a prompt
without a tag pays nothing.

Tags are put on the prompts by this reward's registration (``prompts=tag_prompt``):
the RL recipe tags the prompt stream of every reward that declares one, prompt i getting
level i mod K. Evaluate one level with ``eval.prompt_prefix=<its tag>``. The tiny
models' tokenizers cannot spell words, so their configs use tags such as ``(1) ``.
"""

from __future__ import annotations

import dataclasses
import math

from jaxpost import fields
from jaxpost.data.tasks import Problem
from jaxpost.rewards.registry import Sample, register
from jaxpost.rewards.verifiers import exact_answer

DEFAULT_LEVELS = (
  ("short", "[short] ", 0.5),
  ("medium", "[medium] ", 0.2),
  ("long", "[long] ", 0.0),
)


def parse_levels(levels) -> tuple[tuple[str, str, float], ...]:
  """Checks ``((name, tag, lambda), ...)``: shortest first, distinct non-empty tags (none
  a prefix of another), lambdas finite, >= 0 and non-increasing."""
  if not isinstance(levels, tuple | list) or not levels:
    raise ValueError(f"tldr levels: a non-empty tuple of (name, tag, lambda), got {levels!r}")
  out = []
  for item in levels:
    if not isinstance(item, tuple | list) or len(item) != 3:
      raise ValueError(f"a tldr level is (name, tag, lambda), got {item!r}")
    name, tag, lam = str(item[0]), item[1], float(item[2])
    if not isinstance(tag, str) or not tag or not math.isfinite(lam) or lam < 0:
      raise ValueError(f"tldr level {name!r}: a non-empty tag and a lambda >= 0, got {item!r}")
    out.append((name, tag, lam))
  tags = [t for _, t, _ in out]
  if any(a != b and b.startswith(a) for a in tags for b in tags) or len(set(tags)) < len(tags):
    raise ValueError(f"tldr tags must be distinct and none a prefix of another: {tags}")
  lams = [lam for _, _, lam in out]
  if any(a < b for a, b in zip(lams, lams[1:], strict=False)):
    raise ValueError(f"tldr lambdas must not increase from short to long: {lams}")
  return tuple(out)


def level_of(prompt: str, levels) -> tuple[str, str, float] | None:
  """The level whose tag starts ``prompt``, or None."""
  return next((lv for lv in parse_levels(levels) if prompt.startswith(lv[1])), None)


def tag_prompt(problem: Problem, index: int, *, levels=DEFAULT_LEVELS, **_) -> Problem:
  """Prompt ``index`` of the stream, tagged with level ``index mod K``."""
  levels = parse_levels(levels)
  _, tag, _ = levels[index % len(levels)]
  return dataclasses.replace(problem, prompt=tag + problem.prompt)


def _check(*, levels=DEFAULT_LEVELS, norm_tokens=1, free_tokens=0, penalize_wrong=False) -> None:
  parse_levels(levels)
  if norm_tokens < 1:
    raise ValueError(f"tldr: norm_tokens must be >= 1 (0 in a config = the cap), got {norm_tokens}")


@register(
  "tldr",
  check=_check,
  trusted=True,
  prompts=tag_prompt,
  rules={
    "levels": fields.Custom("(name, tag, lambda) tuples, shortest first", parse_levels),
    "norm_tokens": fields.integer(ge=0),
    "free_tokens": fields.integer(ge=0),
    "penalize_wrong": fields.FLAG,
  },
)
def tldr(
  sample: Sample,
  *,
  levels=DEFAULT_LEVELS,
  norm_tokens: int = 0,
  free_tokens: int = 0,
  penalize_wrong: bool = False,
) -> float:
  """-lambda_level * P(L) for the level tagged on the sample's prompt (module doc).

  Args:
    sample: the completion; its prompt carries the tag, ``num_tokens`` is L.
    levels: ``(name, tag, lambda)`` from shortest to longest.
    norm_tokens: tokens that cost 1 (0 in a config: the sampling cap).
    free_tokens: tokens that cost nothing.
    penalize_wrong: wrong completions pay the penalty too (else only correct ones).
  """
  level = level_of(sample.prompt, levels)
  if level is None or (not penalize_wrong and not exact_answer(sample)):
    return 0.0
  return -level[2] * max(sample.num_tokens - free_tokens, 0) / norm_tokens
