"""Privileged context: the same examples as a teacher sees them, with extra text.

Self-distillation with privileged information (Skill-SD, on-policy self-distillation,
more_cards §9) trains a student on its inputs against a teacher that also sees text the
student never does (a worked solution, the answer, a hint). Both read the *same
response tokens*; the teacher's prompt is longer. Here both views are packed one example
per row (``data.pack=False``) from one index stream, so row b of either batch is the
same example, and ``align`` maps each student position to the teacher column holding
the same response token (checked token by token).

Privileged text for the embedded tasks (``teacher.privileged``):
  answer  the prompt gains "\\nThe answer is {answer}."
  trace   the prompt gains "\\nWorked solution: {thinking} so the answer is {answer}."
"""

from __future__ import annotations

import numpy as np

from jaxpost.data import tasks, template
from jaxpost.data.packing import PlacedSource
from jaxpost.types import ROLE_PROMPT

PRIVILEGED = ("", "answer", "trace")


def privileged_example(ex: template.Example, kind: str) -> template.Example:
  """``ex`` with the privileged text of ``kind`` appended to its prompt."""
  if kind == "answer":
    extra = f"\nThe answer is {ex.answer}."
  elif kind == "trace":
    extra = f"\nWorked solution: {ex.thinking} so the answer is {ex.answer}."
  elif kind == "":
    extra = ""
  else:
    raise ValueError(f"unknown privileged context {kind!r}; expected one of {PRIVILEGED}")
  return template.Example(
    prompt=ex.prompt + extra, thinking=ex.thinking, answer=ex.answer, context=ex.context
  )


def teacher_task_source(levels: dict[str, float], tok, seed: int, kind: str):
  """The task source of ``pipeline.task_source`` with each prompt made privileged."""
  mix = tasks.mixture(levels, "train", seed)

  def encoded(index: int):
    enc = template.encode_example(tok, privileged_example(mix(index).example, kind))
    return enc.tokens, enc.roles

  return PlacedSource(
    encoded, lambda index: f"privileged task example {index} (level {mix.level_at(index)!r})"
  )


def align(student: dict, teacher: dict) -> np.ndarray:
  """i32[B, T] teacher column of each student position (one example per row).

  A row's response targets start after its L_p - 1 prompt targets; the teacher's
  prompt is longer by d_b tokens, so student column t maps to t + d_b (clipped into
  the teacher's row). Raises unless every counted student target equals the teacher's
  target at its column: the two views hold the same response.
  """
  shift = np.sum(teacher["roles"] == ROLE_PROMPT, axis=1) - np.sum(
    student["roles"] == ROLE_PROMPT, axis=1
  )
  t_width = teacher["tokens"].shape[1]
  cols = np.arange(student["tokens"].shape[1])[None, :] + shift[:, None]
  cols = np.clip(cols, 0, t_width - 1).astype(np.int32)
  on = student["loss_mask"] > 0
  theirs = np.take_along_axis(teacher["targets"], cols, axis=1)
  if not np.array_equal(theirs[on], student["targets"][on]):
    bad = int(np.argmax(np.any(on & (theirs != student["targets"]), axis=1)))
    raise ValueError(
      f"privileged context: row {bad}'s response differs between the student's and the "
      "teacher's view (both must be packed one example per row from one index stream)"
    )
  return cols


def source(config, tok):
  """The teacher's example source for ``config`` (tasks only, for now)."""
  from jaxpost.config_lib import parse_levels

  if config.data.source != "tasks":
    raise ValueError("teacher.privileged builds its text from the tasks: data.source=tasks")
  return teacher_task_source(
    parse_levels(config.data.levels), tok, config.seed, config.teacher.privileged
  )
