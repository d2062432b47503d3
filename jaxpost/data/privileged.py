"""Privileged context: the same examples as a teacher sees them, with extra text.

Self-distillation with privileged information (Skill-SD, on-policy self-distillation,
more_cards §9) trains a student on its inputs against a teacher that also sees text the
student never does (a worked solution, the answer, a hint). Both read the *same
response tokens*; the teacher's prompt is longer. Here both views are packed one example
per row (``data.pack=False``) from one index stream, so row b of either batch is the
same example, and ``align`` maps each student position to the teacher column holding
the same response token (checked token by token).

Privileged text for the embedded tasks (``teacher.privileged``), written in the template's
own format so that the tasks' small tokenizers spell it (English words would be unknown
pieces to a 64-piece arithmetic tokenizer, and a prompt of unknown pieces is noise):
  answer  the prompt gains "\\nA: {answer}" (this problem's answer);
  trace   the prompt gains "\\nA: <think>{thinking}</think>{answer}" (its worked solution);
  skill   the prompt gains a worked example of *another* problem of the same level, in
          the response format ("\\n12*34: <think>12*4=48,...</think>408"): the level's
          workflow without this problem's answer. Our stand-in for Skill-SD's retrieved
          skill (its "golden workflow", written by an auxiliary LLM from past
          trajectories), spelled in characters the tasks' own small tokenizers have.
"""

from __future__ import annotations

import numpy as np

from jaxpost.data import tasks, template
from jaxpost.data.packing import PlacedSource
from jaxpost.types import ROLE_PAD, ROLE_PROMPT, Batch, PrivilegedBatch

PRIVILEGED = ("", "answer", "trace", "skill")
SKILL_SEED = 0x5C111  # the demonstrations' problems: a seed no run's mixture is asked for


def skill_demo(level: str, prompt: str) -> tasks.Problem:
  """The level's worked demonstration for ``prompt``: a fixed problem, never ``prompt``."""
  for index in range(2):
    demo = tasks.make_problem(level, "train", SKILL_SEED, index)
    if demo.prompt != prompt:
      return demo
  raise AssertionError("two fixed problems of one level cannot both equal one prompt")


def privileged_example(ex: template.Example, kind: str, level: str = "") -> template.Example:
  """``ex`` (a problem of task ``level``) with the privileged text of ``kind`` appended to
  its prompt."""
  if kind == "answer":
    extra = f"\nA: {ex.answer}"
  elif kind == "trace":
    extra = "\nA: " + template.render_response(ex)
  elif kind == "skill":
    if level not in tasks.LEVELS:
      raise ValueError(f"a skill demonstration needs the problem's task level, got {level!r}")
    demo = skill_demo(level, ex.prompt)
    extra = f"\n{demo.prompt}: {template.render_response(demo.example)}"
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
    problem = mix(index)
    enc = template.encode_example(tok, privileged_example(problem.example, kind, problem.level))
    return enc.tokens, enc.roles

  return PlacedSource(
    encoded, lambda index: f"privileged task example {index} (level {mix.level_at(index)!r})"
  )


def align(student: dict | Batch, teacher: dict | Batch) -> np.ndarray:
  """i32[B, T] teacher column of each student position (one example per row); each view
  is a ``Batch`` or a packer's dict of its arrays.

  A row's response targets start after its L_p - 1 prompt targets; the teacher's
  prompt is longer by d_b tokens, so student column t maps to t + d_b (clipped into
  the teacher's row). Raises unless every counted student target equals the teacher's
  target at its column: the two views hold the same response.
  """
  student, teacher = _arrays(student), _arrays(teacher)
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


def _arrays(view: dict | Batch) -> dict:
  if isinstance(view, dict):
    return view
  return {k: np.asarray(getattr(view, k)) for k in ("roles", "tokens", "targets", "loss_mask")}


def problem_prompt(problem: tasks.Problem, kind: str) -> str:
  """A task problem's prompt as the teacher sees it (``kind`` of ``PRIVILEGED``)."""
  return privileged_example(problem.example, kind, problem.level).prompt


def rollout_view(
  batch: Batch, prompts: list[list[int]], *, window: int, pad_id: int = 0, bucket: int = 16
):
  """The teacher's rows of a rollout: each row's privileged prompt + the same completion.

  On-policy self-distillation with privileged context (Skill-SD) has the student sample
  from its plain prompt; the teacher scores those same completion tokens after a prompt
  that holds the privileged text. Row b of ``batch`` (``rollout.batching`` layout: the
  sequence from column 0, its completion targets from column L_p - 1) becomes the row
  ``prompts[b] + completion_b`` laid out the same way, so a completion-window scorer
  (``window``) reads it like the student's rows; shared prompts stay shared when the
  rows of a group get the same privileged prompt.

  Args:
    batch: the student's rollout rows (NumPy arrays).
    prompts: per row, the teacher's prompt token ids.
    window: the scorer's completion window (``rl.max_new_tokens``): the teacher's width
      is the longest prompt rounded up to ``bucket`` columns plus the window, so every
      prompt fits before it.
    pad_id: token and target id of padding slots.
    bucket: prompt columns are a multiple of this (one compiled shape per bucket).

  Returns:
    (teacher ``Batch``, i32[B, T] the teacher column of each student column), checked
    token by token (``align``).
  """
  tokens, roles = np.asarray(batch.tokens), np.asarray(batch.roles)
  b, t = tokens.shape
  if len(prompts) != b:
    raise ValueError(f"{len(prompts)} teacher prompts for {b} rows")
  lp = (roles == ROLE_PROMPT).sum(axis=1) + 1  # student prompt tokens
  tlp = np.asarray([len(p) for p in prompts])
  width = -(-int(tlp.max()) // bucket) * bucket + window
  shift = tlp - lp
  col = np.arange(width)[None, :]
  src = col - shift[:, None]  # student column of each teacher column
  inside = (src >= 0) & (src < t)
  srcc = np.clip(src, 0, t - 1)

  def gather(x, fill):
    return np.where(inside, np.take_along_axis(np.asarray(x), srcc, axis=1), fill)

  real = np.asarray(batch.segment_ids) > 0
  total = real.sum(axis=1) + shift  # teacher tokens per row
  prompt_tok = np.zeros((b, width), np.int32)
  for row, p in enumerate(prompts):
    prompt_tok[row, : len(p)] = p
  is_prompt = col < tlp[:, None]
  t_tokens = np.where(is_prompt, prompt_tok, gather(tokens, 0))
  in_completion = col >= (tlp - 1)[:, None]  # targets from the last prompt token on
  next_prompt = np.concatenate([prompt_tok[:, 1:], np.zeros((b, 1), np.int32)], axis=1)
  t_targets = np.where(in_completion, gather(batch.targets, 0), next_prompt)
  t_roles = np.where(in_completion, gather(roles, ROLE_PAD), ROLE_PROMPT)
  t_real = col < total[:, None]
  t_roles = np.where(t_real, t_roles, ROLE_PAD)
  view = Batch(
    tokens=np.where(t_real, t_tokens, pad_id).astype(np.int32),
    targets=np.where(t_real & (t_roles != ROLE_PAD), t_targets, pad_id).astype(np.int32),
    loss_mask=np.where(t_real & in_completion, gather(batch.loss_mask, 0.0), 0.0).astype(
      np.float32
    ),
    segment_ids=t_real.astype(np.int32),
    positions=np.where(t_real, col, 0).astype(np.int32),
    roles=t_roles.astype(np.int32),
  )
  return view, align(batch, view)


class TeacherView:
  """A batch view (``view(step, batch)``): the same examples as the privileged teacher
  reads them, packed by ``packer`` in step with the student's packer (one example per
  row: the rows match), aligned into a ``PrivilegedBatch``."""

  def __init__(self, packer):
    self.packer = packer

  def __call__(self, step: int, batch: Batch) -> PrivilegedBatch:
    t_arrays, _ = self.packer.next_batch()
    return PrivilegedBatch(batch, Batch(**t_arrays), align(batch, t_arrays))


def source(config, tok):
  """The teacher's example source for ``config`` (tasks only, for now)."""
  from jaxpost.config_lib import parse_levels

  if config.data.source != "tasks":
    raise ValueError("teacher.privileged builds its text from the tasks: data.source=tasks")
  return teacher_task_source(
    parse_levels(config.data.levels), tok, config.seed, config.teacher.privileged
  )
