"""Verifiable outcome rewards: does the completion's final answer match the reference?"""

from __future__ import annotations

import math

from jaxpost import fields
from jaxpost.data.tasks import Problem, check_answer
from jaxpost.rewards.registry import Sample, register


def _check_exact_answer(
  *, correct: float = 1.0, wrong: float = 0.0, truncated_is_wrong: bool = True
) -> None:
  if not (math.isfinite(correct) and math.isfinite(wrong)):
    raise ValueError(f"exact_answer values must be finite, got {correct=} {wrong=}")


@register(
  "exact_answer",
  check=_check_exact_answer,
  trusted=True,
  rules={"correct": fields.num(), "wrong": fields.num(), "truncated_is_wrong": fields.FLAG},
)
def exact_answer(
  sample: Sample, *, correct: float = 1.0, wrong: float = 0.0, truncated_is_wrong: bool = True
) -> float:
  """Outcome reward: ``correct`` if the parsed answer equals the reference, else ``wrong``.

  The answer is the text after the think block (``data/template.py:parse_response``),
  compared with the reference after stripping whitespace (``data/tasks.py:check_answer``);
  malformed think tags are never correct. GRPO uses 1/0; DAPO ("DAPO: An Open-Source
  LLM Reinforcement Learning System at Scale", arXiv 2503.14476) uses +1/-1.

  Args:
    sample: the completion and its reference answer.
    correct: value for a correct answer.
    wrong: value for a wrong, missing or malformed answer.
    truncated_is_wrong: score a completion that hit the token cap without EOS as wrong
      whatever its text: its answer may have been cut mid-way ("82" of "825...") so it
      is not the model's final answer. Neither DAPO nor GRPO says; this is the safe
      choice.

  Returns:
    ``correct`` or ``wrong``.

  Raises:
    ValueError: the sample has no reference answer (an empty reference would match
      an empty answer).
  """
  if not sample.answer.strip():
    raise ValueError("exact_answer needs a reference answer; the sample's is empty")
  if truncated_is_wrong and sample.truncated:
    return float(wrong)
  # check_answer only reads Problem.answer; the Problem carries the sample's fields.
  problem = Problem(level=sample.level, prompt=sample.prompt, thinking="", answer=sample.answer)
  return float(correct if check_answer(problem, sample.completion) else wrong)
