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
* a choice is either answered directly (``response="answer"``: an empty think block,
  then the number; the loss and the evaluator score the answer tokens), or is a whole
  worked solution (``response="solution"``: the reference trace with one step slipped,
  the rest carried through to its wrong answer, ``slipped_solutions``; the whole
  response is scored). A model trained on traces cannot answer directly (the tiny ones
  score below chance), but it can tell a right solution from a slipped one.

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


RESPONSES = ("answer", "solution")


def slipped_solutions(problem: tasks.Problem) -> list[tuple[str, str]]:
  """Every worked solution of an add or mul problem with one step off by one unit of
  one digit (a partial product, or a column sum) and the steps after it carried through:
  [(thinking, answer)], wrong answers only, one per answer, in a fixed order."""
  family = tasks.LEVELS[problem.level].family
  out: dict[str, str] = {}
  if family == "mul":
    a, b = map(int, problem.prompt.split("*"))
    factors = [int(d) * 10**i for i, d in enumerate(reversed(str(b)))]
    partials = [a * f for f in factors]
    for i, p in enumerate(partials):
      for j in range(len(str(p))):
        for s in (1, -1):
          slipped = list(partials)
          slipped[i] = p + s * 10**j
          if slipped[i] < 0:
            continue
          steps = [f"{a}*{f}={q}" for f, q in zip(factors, slipped, strict=True)]
          if len(slipped) > 1:
            steps.append("+".join(map(str, slipped)) + f"={sum(slipped)}")
          out.setdefault(str(sum(slipped)), ",".join(steps))
  elif family == "add":
    a, b = problem.prompt.split("+")
    columns = list(zip(map(int, reversed(a)), map(int, reversed(b)), strict=True))
    for i in range(len(columns)):
      for s in (1, -1):
        steps, digits, carry = [], [], 0
        for k, (da, db) in enumerate(columns):
          total = da + db + carry + (s if k == i else 0)
          if not 0 <= total <= 19:
            break
          steps.append(f"{da}+{db}+{carry}={total:02d}")
          digits.append(str(total % 10))
          carry = total // 10
        else:
          answer = str(int(("1" if carry else "") + "".join(reversed(digits))))
          out.setdefault(answer, ",".join(steps))
  else:
    raise ValueError(f"solution choices need an add or mul level, not {problem.level!r}")
  out.pop(problem.answer, None)
  return [(thinking, answer) for answer, thinking in out.items()]


@dataclasses.dataclass(frozen=True)
class ChoiceSet:
  """One problem asked in K formats with the same C choices.

  Attributes:
    problem: the task problem.
    prompts: [K] the formatted prompts.
    choices: [C] the answer texts (the gold one among them).
    gold: the index of the right choice.
    thinking: [C] each choice's worked solution ("" for direct answers).
  """

  problem: tasks.Problem
  prompts: tuple[str, ...]
  choices: tuple[str, ...]
  gold: int
  thinking: tuple[str, ...]

  def rows(self) -> list[template.Example]:
    """K*C examples, format-major (row k*C + c: prompt k answered with choice c)."""
    return [
      template.Example(prompt=p, thinking=thinking, answer=choice)
      for p in self.prompts
      for thinking, choice in zip(self.thinking, self.choices, strict=True)
    ]


def choice_set(
  problem: tasks.Problem, formats: Sequence[str], count: int, seed: int, response: str = "answer"
) -> ChoiceSet:
  """``problem`` in ``formats`` with ``count`` choices (the answer and count - 1
  distractors: near numbers, or slipped solutions), shuffled by a hash of (seed, prompt)."""
  if count < 2:
    raise ValueError(f"multiple choice needs at least 2 choices, got {count}")
  if response not in RESPONSES:
    raise ValueError(f"response must be one of {RESPONSES}, got {response!r}")
  rng = np.random.default_rng([seed, zlib.crc32(problem.prompt.encode()), 0xF2C])
  if response == "solution":
    wrong = slipped_solutions(problem)
    if len(wrong) < count - 1:
      raise ValueError(f"{problem.prompt!r} has only {len(wrong)} slipped solutions")
    picked = sorted(rng.choice(len(wrong), size=count - 1, replace=False))
    options = [(problem.thinking, problem.answer), *(wrong[i] for i in picked)]
  else:
    options = [("", problem.answer)]
    options += [("", str(x)) for x in _distractors(int(problem.answer), count - 1, rng)]
  order = rng.permutation(count)
  return ChoiceSet(
    problem=problem,
    prompts=tuple(FORMATS[f](problem.prompt) for f in formats),
    choices=tuple(options[i][1] for i in order),
    gold=int(np.argmax(order == 0)),
    thinking=tuple(options[i][0] for i in order),
  )


def check_level(level: str, formats: Sequence[str], response: str = "answer") -> None:
  """Raises ValueError when a format cannot rewrite the level's prompts (e.g. commuting
  an expression with several operations) or the level has no slipped solutions."""
  problem = tasks.make_problem(level, "train", 0, 0)
  for f in formats:
    try:
      FORMATS[f](problem.prompt)
    except ValueError as e:
      raise ValueError(f"level {level!r}: {e}") from None
  if response == "solution":
    slipped_solutions(problem)


def choices_source(
  levels: dict[str, float],
  tok,
  seed: int,
  formats: Sequence[str],
  count: int,
  response: str = "answer",
):
  """index -> encoded row of the layout above (problems from the train split's mixture)."""
  from jaxpost.data.packing import PlacedSource

  for level in levels:
    check_level(level, formats, response)
  mix = tasks.mixture(levels, "train", seed)
  group = len(formats) * count

  def rows_of(index: int) -> tuple[int, int]:
    return divmod(index, group)

  def source(index: int):
    j, r = rows_of(index)
    example = choice_set(mix(j), formats, count, seed, response).rows()[r]
    enc = template.encode_example(tok, example)
    return enc.tokens, enc.roles

  def where(index: int) -> str:
    j, r = rows_of(index)
    k, c = divmod(r, count)
    return f"choice example {j} (level {mix.level_at(j)!r}), format {formats[k]!r}, choice {c}"

  return PlacedSource(source, where)
