"""Multi-format multiple choice over the task levels (F²C's setting, ``data.source=choices``).

F²C (flip-flop consistency, arXiv 2510.14242) trains a model to give the same answer to
semantically equivalent prompts. Its data: each example asked in K prompt formats, each
with the same C answer choices, a choice scored by its mean-token log-likelihood. Here an
example is a task problem (`jaxpost.data.tasks`):

* formats (``FORMATS``) rewrite the prompt into an expression with the same value, using
  only characters the task tokenizer has seen: ``47*86`` -> ``(47*86)``, ``47*86=``,
  ``86*47``, ``0+47*86``, ``1*(47*86)``; every format is a valid Python expression (or
  one followed by ``=``) whose value is the answer (tested);
* choices are the answer and C - 1 distractors: the slips a model makes (a digit off by
  one, a dropped or doubled partial product, a carry lost: ``_distractors``), shuffled
  per problem with a seed;
* each choice is answered directly, with an empty think block (``<think></think>`` then
  the choice): only the answer tokens are scored, so every row of an example scores a
  choice the same way.

Layout (like ``data.source=pairs``): problem j fills source indices j*K*C .. (j+1)*K*C - 1,
format-major, so row ``k*C + c`` of a group is format k asking choice c. With one
example per row (``data.pack=False``) and micro-batches of whole groups, every group of
K*C consecutive batch rows is one problem. The gold choice's position is never in the
rows: F²C is unsupervised (the evaluator reads it from ``choice_set``).
"""

from __future__ import annotations

import ast
import dataclasses
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from jaxpost.data import tasks, template

# name -> prompt rewrite. "commuted" swaps the operands of a single + or *.
FORMATS: dict[str, Callable[[str], str]] = {}


def _format(name: str):
  def add(fn: Callable[[str], str]) -> Callable[[str], str]:
    FORMATS[name] = fn
    return fn

  return add


@_format("plain")
def _plain(prompt: str) -> str:
  return prompt


@_format("paren")
def _paren(prompt: str) -> str:
  return f"({prompt})"


@_format("equals")
def _equals(prompt: str) -> str:
  return f"{prompt}="


@_format("commuted")
def _commuted(prompt: str) -> str:
  node = ast.parse(prompt, mode="eval").body
  if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult)):
    raise ValueError(f"format 'commuted' needs one + or * at the top of {prompt!r}")
  if not all(isinstance(side, ast.Constant) for side in (node.left, node.right)):
    raise ValueError(f"format 'commuted' needs two numbers, not {prompt!r}")
  op = "+" if isinstance(node.op, ast.Add) else "*"
  return f"{node.right.value}{op}{node.left.value}"


@_format("plus_zero")
def _plus_zero(prompt: str) -> str:
  return f"0+{prompt}"


@_format("times_one")
def _times_one(prompt: str) -> str:
  return f"1*({prompt})"


def parse_formats(spec: str | Sequence[str]) -> tuple[str, ...]:
  """``"plain,paren"`` (or a sequence) -> checked format names, in order.

  Raises:
    ValueError: an unknown or repeated name, or fewer than 2 formats.
  """
  names = tuple(n.strip() for n in spec.split(",")) if isinstance(spec, str) else tuple(spec)
  unknown = [n for n in names if n not in FORMATS]
  if unknown:
    raise ValueError(f"unknown prompt format(s) {unknown}; expected any of {tuple(FORMATS)}")
  if len(set(names)) != len(names):
    raise ValueError(f"repeated prompt format in {names}")
  if len(names) < 2:
    raise ValueError(f"multi-format choices need at least 2 formats, got {names}")
  return names


def _distractors(answer: int, n: int, rng: np.random.Generator) -> list[int]:
  """``n`` distinct wrong, non-negative answers near ``answer``: a digit off by one, a
  carry lost or doubled (+-10^i), a digit pair swapped. Deterministic given ``rng``."""
  text = str(answer)
  candidates: list[int] = []
  for i in range(len(text)):
    place = 10 ** (len(text) - 1 - i)
    candidates += [answer + place, answer - place]
  for i in range(len(text) - 1):
    swapped = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    candidates.append(int(swapped))
  pool = sorted({c for c in candidates if c >= 0 and c != answer and len(str(c)) == len(text)})
  if len(pool) < n:  # a short answer: fall back to any nearby numbers
    pool += [answer + d for d in range(1, 10 * n) if answer + d not in pool][: n - len(pool)]
  picked = rng.choice(len(pool), size=n, replace=False)
  return [pool[i] for i in sorted(picked)]


@dataclasses.dataclass(frozen=True)
class ChoiceSet:
  """One problem asked in K formats with the same C choices.

  Attributes:
    problem: the task problem.
    prompts: [K] the formatted prompts.
    choices: [C] the answer texts (the gold one among them).
    gold: the index of the right choice.
  """

  problem: tasks.Problem
  prompts: tuple[str, ...]
  choices: tuple[str, ...]
  gold: int

  def rows(self) -> list[template.Example]:
    """K*C examples, format-major (row k*C + c: prompt k answered with choice c)."""
    return [
      template.Example(prompt=p, thinking="", answer=choice)
      for p in self.prompts
      for choice in self.choices
    ]


def choice_set(problem: tasks.Problem, formats: Sequence[str], count: int, seed: int) -> ChoiceSet:
  """``problem`` in ``formats`` with ``count`` choices (the answer and count - 1
  distractors), shuffled by a hash of (seed, prompt)."""
  if count < 2:
    raise ValueError(f"multiple choice needs at least 2 choices, got {count}")
  rng = np.random.default_rng([seed, zlib.crc32(problem.prompt.encode()), 0xF2C])
  answer = int(problem.answer)
  options = [answer, *_distractors(answer, count - 1, rng)]
  order = rng.permutation(count)
  return ChoiceSet(
    problem=problem,
    prompts=tuple(FORMATS[f](problem.prompt) for f in formats),
    choices=tuple(str(options[i]) for i in order),
    gold=int(np.argmax(order == 0)),
  )


def check_level(level: str, formats: Sequence[str]) -> None:
  """Raises ValueError when a format cannot rewrite the level's prompts (e.g. commuting
  an expression with several operations)."""
  problem = tasks.make_problem(level, "train", 0, 0)
  for f in formats:
    try:
      FORMATS[f](problem.prompt)
    except ValueError as e:
      raise ValueError(f"level {level!r}: {e}") from None


def choices_source(levels: dict[str, float], tok, seed: int, formats: Sequence[str], count: int):
  """index -> encoded row of the layout above (problems from the train split's mixture)."""
  from jaxpost.data.packing import PlacedSource

  for level in levels:
    check_level(level, formats)
  mix = tasks.mixture(levels, "train", seed)
  group = len(formats) * count

  def rows_of(index: int) -> tuple[int, int]:
    return divmod(index, group)

  def source(index: int):
    j, r = rows_of(index)
    example = choice_set(mix(j), formats, count, seed).rows()[r]
    enc = template.encode_example(tok, example)
    return enc.tokens, enc.roles

  def where(index: int) -> str:
    j, r = rows_of(index)
    k, c = divmod(r, count)
    return f"choice example {j} (level {mix.level_at(j)!r}), format {formats[k]!r}, choice {c}"

  return PlacedSource(source, where)
