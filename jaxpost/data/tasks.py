"""Procedurally generated arithmetic tasks with step-by-step traces and exact checkers.

Three families, each with a difficulty knob:

* ``add``  n-digit + n-digit, traced digit by digit from the least significant digit
  as ``a+b+carry=ss`` (``ss`` two digits, so the carry is always the tens digit):
  ``357+468`` -> ``7+8+0=15,5+6+1=12,3+4+1=08`` -> ``825``.
* ``mul``  a-digit x b-digit, one partial product per digit of the second operand
  (shifted with zeros), then one line summing them: ``47*86`` ->
  ``47*6=282,47*80=3760,282+3760=4042`` -> ``4042``.
* ``expr`` expressions with k binary operations over small numbers, reduced one
  operation per step in evaluation order: ``(12+7)*3-5`` -> ``12+7=19,19*3=57,57-5=52``
  -> ``52``.

Every prompt is a valid Python arithmetic expression whose value is the answer.

Problems are pure functions of ``(level, split, seed, index)``. Whether a prompt is
held out is decided by a stable hash of the prompt text alone (1 in 16), and each split
only keeps its own prompts, so no held-out prompt can appear in training for any seed.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from jaxpost.data.template import Example, parse_response, render_example

DIFFICULTIES = ("easy", "medium", "hard")
SPLITS = ("train", "heldout")

# 1 prompt in _HELDOUT_MODULUS is held out.
_HELDOUT_MODULUS = 16
# Rejection sampling draws until the split (and expr's value limits) accept; with a
# 1/16 acceptance rate this bound is never reached in practice.
_MAX_DRAWS = 10_000

# expr: leaves are 1.._EXPR_MAX_LEAF, every intermediate value lies in
# [0, _EXPR_MAX_VALUE] and every product has a one-digit factor, so each step is a
# short line a small model can do in one go.
_EXPR_MAX_LEAF = 20
_EXPR_MAX_VALUE = 999
_EXPR_MAX_FACTOR = 9


@dataclasses.dataclass(frozen=True)
class Level:
  """A named task level.

  Attributes:
    family: "add", "mul" or "expr".
    knob: family parameters: (digits,) for add, (a_digits, b_digits) for mul,
      (n_operations,) for expr.
    difficulty: "easy", "medium" or "hard", for reporting.
  """

  family: str
  knob: tuple[int, ...]
  difficulty: str


# Ordered from easiest to hardest.
LEVELS: dict[str, Level] = {
  "add3": Level("add", (3,), "easy"),
  "expr2": Level("expr", (2,), "easy"),
  "add5": Level("add", (5,), "medium"),
  "mul2x2": Level("mul", (2, 2), "medium"),
  "expr3": Level("expr", (3,), "medium"),
  "mul3x2": Level("mul", (3, 2), "hard"),
  "expr4": Level("expr", (4,), "hard"),
  "mul3x3": Level("mul", (3, 3), "hard"),
  "mul4x3": Level("mul", (4, 3), "hard"),
}


@dataclasses.dataclass(frozen=True)
class Problem:
  """One task instance.

  Attributes:
    level: name in `LEVELS`.
    prompt: the question, e.g. "357+468".
    thinking: the reference step-by-step trace (comma-separated ``lhs=value`` steps).
    answer: the exact answer, e.g. "825".
  """

  level: str
  prompt: str
  thinking: str
  answer: str

  @property
  def example(self) -> Example:
    return Example(prompt=self.prompt, thinking=self.thinking, answer=self.answer)

  @property
  def difficulty(self) -> str:
    return LEVELS[self.level].difficulty


def levels_by_difficulty(difficulty: str) -> list[str]:
  """Level names of one difficulty, in `LEVELS` order."""
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"unknown difficulty {difficulty!r}; expected one of {DIFFICULTIES}")
  return [name for name, level in LEVELS.items() if level.difficulty == difficulty]


# ---------------------------------------------------------------------------- hashing


def _stable_int(*parts: object, nbytes: int = 16) -> int:
  """A process-independent hash of ``parts`` (Python's hash() is salted per run)."""
  text = "\x1f".join(str(p) for p in parts)
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=nbytes).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
  return np.random.default_rng(_stable_int("jaxpost.tasks", *parts))


def is_heldout(prompt: str) -> bool:
  """Whether a prompt belongs to the held-out split (a property of the text alone)."""
  return _stable_int("heldout", prompt, nbytes=8) % _HELDOUT_MODULUS == 0


# -------------------------------------------------------------------------- generators


def _n_digit(rng: np.random.Generator, digits: int) -> int:
  """Uniform integer with exactly ``digits`` digits."""
  return int(rng.integers(10 ** (digits - 1), 10**digits))


def _gen_add(rng: np.random.Generator, digits: int) -> tuple[str, str, str] | None:
  a, b = _n_digit(rng, digits), _n_digit(rng, digits)
  steps, carry = [], 0
  for da, db in zip(reversed(str(a)), reversed(str(b)), strict=True):
    total = int(da) + int(db) + carry
    steps.append(f"{da}+{db}+{carry}={total:02d}")
    carry = total // 10
  return f"{a}+{b}", ",".join(steps), str(a + b)


def _gen_mul(rng: np.random.Generator, a_digits: int, b_digits: int) -> tuple[str, str, str]:
  a, b = _n_digit(rng, a_digits), _n_digit(rng, b_digits)
  steps, partials = [], []
  for shift, digit in enumerate(reversed(str(b))):
    factor = int(digit) * 10**shift  # 0 for a zero digit: keeps one line per digit
    partials.append(a * factor)
    steps.append(f"{a}*{factor}={a * factor}")
  if len(partials) > 1:
    steps.append("+".join(map(str, partials)) + f"={a * b}")
  return f"{a}*{b}", ",".join(steps), str(a * b)


# An expression tree is an int leaf or (op, left, right).
_OPS: dict[str, Callable[[int, int], int]] = {
  "+": operator.add,
  "-": operator.sub,
  "*": operator.mul,
}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def _random_tree(rng: np.random.Generator, n_ops: int):
  if n_ops == 0:
    return int(rng.integers(1, _EXPR_MAX_LEAF + 1))
  n_left = int(rng.integers(0, n_ops))
  op = "+-*"[int(rng.integers(0, 3))]
  return (op, _random_tree(rng, n_left), _random_tree(rng, n_ops - 1 - n_left))


def _reduce(tree, steps: list[str]) -> int | None:
  """Evaluates ``tree`` post-order, appending one step per operation.

  Returns None when a step leaves the allowed range (the draw is then rejected).
  """
  if isinstance(tree, int):
    return tree
  op, left, right = tree
  lv = _reduce(left, steps)
  rv = _reduce(right, steps) if lv is not None else None
  if rv is None:
    return None
  if op == "*" and min(lv, rv) > _EXPR_MAX_FACTOR:
    return None
  value = _OPS[op](lv, rv)
  if not 0 <= value <= _EXPR_MAX_VALUE:
    return None
  steps.append(f"{lv}{op}{rv}={value}")
  return value


def _render_tree(tree, parent_prec: int = 0, is_right: bool = False) -> str:
  """Minimal parentheses, except that a right operand of equal precedence keeps its
  parentheses, so left-to-right evaluation of the text matches the trace's order."""
  if isinstance(tree, int):
    return str(tree)
  op, left, right = tree
  prec = _PRECEDENCE[op]
  text = f"{_render_tree(left, prec)}{op}{_render_tree(right, prec, True)}"
  if prec < parent_prec or (is_right and prec == parent_prec):
    text = f"({text})"
  return text


def _gen_expr(rng: np.random.Generator, n_ops: int) -> tuple[str, str, str] | None:
  tree = _random_tree(rng, n_ops)
  steps: list[str] = []
  value = _reduce(tree, steps)
  if value is None:
    return None
  return _render_tree(tree), ",".join(steps), str(value)


_GENERATORS = {"add": _gen_add, "mul": _gen_mul, "expr": _gen_expr}


# --------------------------------------------------------------------------------- API


def _check_level(level: str) -> Level:
  if level not in LEVELS:
    raise ValueError(f"unknown level {level!r}; expected one of {list(LEVELS)}")
  return LEVELS[level]


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _check_nonneg(name: str, value: int) -> int:
  value = operator.index(value)
  if value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}")
  return value


def make_problem(level: str, split: str, seed: int, index: int) -> Problem:
  """The ``index``-th problem of a level's split stream; a pure function of its args.

  Args:
    level: a name in `LEVELS`.
    split: "train" (an unbounded stream) or "heldout" (disjoint from every train
      stream, whatever the seeds).
    seed: stream seed.
    index: position in the stream.
  """
  spec = _check_level(level)
  _check_split(split)
  seed, index = _check_nonneg("seed", seed), _check_nonneg("index", index)
  rng = _rng(seed, level, split, index)
  want_heldout = split == "heldout"
  for _ in range(_MAX_DRAWS):
    drawn = _GENERATORS[spec.family](rng, *spec.knob)
    if drawn is not None and is_heldout(drawn[0]) == want_heldout:
      prompt, thinking, answer = drawn
      return Problem(level=level, prompt=prompt, thinking=thinking, answer=answer)
  raise RuntimeError(f"no {split} problem for {level} after {_MAX_DRAWS} draws")


def heldout_set(level: str, n: int, seed: int = 0) -> list[Problem]:
  """``n`` distinct held-out problems (the first ``n`` distinct prompts of the stream)."""
  _check_level(level)
  n = _check_nonneg("n", n)
  problems: dict[str, Problem] = {}
  for index in range(50 * n + 1000):
    if len(problems) == n:
      break
    problem = make_problem(level, "heldout", seed, index)
    problems.setdefault(problem.prompt, problem)
  if len(problems) < n:
    raise ValueError(f"level {level} has fewer than {n} distinct held-out prompts")
  return list(problems.values())


def check_answer(problem: Problem, answer_text: str) -> bool:
  """Exact match of the answer, ignoring surrounding whitespace.

  ``answer_text`` may be a bare answer or a full response with a think block; a
  response with malformed think tags is never correct.
  """
  if not isinstance(answer_text, str):
    raise TypeError(f"answer_text must be str, got {type(answer_text).__name__}")
  return parse_response(answer_text).answer.strip() == problem.answer


_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?!\d)|-?\d+")  # 1,213 is one number; 3,5 two


def last_number(text: str) -> str | None:
  """The last integer written in ``text`` (thousands commas dropped), or None."""
  numbers = _NUMBER.findall(text)
  return numbers[-1].replace(",", "") if numbers else None


def check_last_number(problem: Problem, response_text: str) -> bool:
  """Lenient match: the response's last integer is the answer, whatever the format
  ("663 + 550 = 1,213." is right). For models that do not write the task's format
  (an instruct model zero-shot, or trained on its own phrasing)."""
  return last_number(response_text) == problem.answer


def score_response(problem: Problem, response_text: str) -> dict[str, bool]:
  """``{"correct": ..., "format_ok": ...}``; format_ok needs one leading think block."""
  return {
    "correct": check_answer(problem, response_text),
    "format_ok": parse_response(response_text).format_ok,
  }


def evaluate(expression: str) -> int:
  """The value of an integer expression of +, - and * (a prompt, a step's left side);
  ValueError for anything else (no names, calls or division: safe on generated text)."""
  try:
    return _eval_arith(ast.parse(expression.strip(), mode="eval"))
  except SyntaxError as e:
    raise ValueError(f"cannot parse {expression!r}") from e


def _eval_arith(node: ast.AST) -> int:
  if isinstance(node, ast.Expression):
    return _eval_arith(node.body)
  if isinstance(node, ast.Constant) and type(node.value) is int:
    return node.value
  if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult):
    fn = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}[type(node.op)]
    return fn(_eval_arith(node.left), _eval_arith(node.right))
  raise ValueError("only integers, +, - and * are allowed")


def trace_errors(thinking: str) -> list[str]:
  """Checks every ``lhs=value`` step of a trace; returns one message per wrong step.

  Works for all families (and for generated traces), e.g. as a process reward.
  An empty trace has no steps and so no errors.
  """
  errors = []
  for i, step in enumerate(s for s in thinking.split(",") if thinking):
    lhs, eq, rhs = step.partition("=")
    if not eq or not rhs.strip().isdigit():
      errors.append(f"step {i} {step!r}: not of the form lhs=value")
      continue
    try:
      value = evaluate(lhs)
    except ValueError as e:
      errors.append(f"step {i} {step!r}: cannot evaluate {lhs!r} ({e})")
      continue
    if value != int(rhs):
      errors.append(f"step {i} {step!r}: {lhs.strip()} is {value}")
  return errors


@dataclasses.dataclass(frozen=True)
class Mixture:
  """A stateless weighted mixture of levels: ``problem_at(i)`` is a pure function.

  The level of index ``i`` is a weighted choice by a stable hash of ``(seed, i)``;
  the problem is then ``make_problem(level, split, seed, i)``.
  """

  levels: tuple[str, ...]
  cumulative: tuple[float, ...]
  split: str
  seed: int

  def level_at(self, index: int) -> str:
    index = _check_nonneg("index", index)
    u = _stable_int("mixture", self.seed, index, nbytes=8) / 2.0**64
    for level, edge in zip(self.levels, self.cumulative, strict=True):
      if u < edge:
        return level
    return self.levels[-1]  # u within rounding of 1.0

  def problem_at(self, index: int) -> Problem:
    return make_problem(self.level_at(index), self.split, self.seed, index)

  __call__ = problem_at  # a Mixture is itself an ``index -> Problem`` source


def mixture(levels: Mapping[str, float], split: str, seed: int) -> Mixture:
  """Builds a `Mixture` from ``{level: weight}`` (weights >= 0, normalised here)."""
  if not levels:
    raise ValueError("mixture needs at least one level")
  for name, weight in levels.items():
    _check_level(name)
    if not (math.isfinite(weight) and weight >= 0):
      raise ValueError(f"weight of {name} must be finite and >= 0, got {weight}")
  _check_split(split)
  total = float(sum(levels.values()))
  if total <= 0:
    raise ValueError(f"mixture weights must not all be zero: {dict(levels)}")
  cumulative = np.cumsum([w / total for w in levels.values()]).tolist()
  return Mixture(tuple(levels), tuple(cumulative), split, _check_nonneg("seed", seed))


def training_corpus(
  levels: Sequence[str] | Mapping[str, float], n: int, seed: int
) -> Iterator[str]:
  """``n`` rendered training texts (prompt + response), e.g. for tokenizer training.

  Args:
    levels: level names (taken in turn) or ``{level: weight}`` (a `mixture`).
    n: number of texts.
    seed: stream seed.
  """
  n = _check_nonneg("n", n)
  if isinstance(levels, Mapping):
    mix = mixture(levels, "train", seed)
    pick = mix.problem_at
  else:
    names = [levels] if isinstance(levels, str) else list(levels)
    if not names:
      raise ValueError("training_corpus needs at least one level")
    for name in names:
      _check_level(name)
    pick = lambda i: make_problem(names[i % len(names)], "train", seed, i)
  # Validation above runs at call time; only the generation is lazy.
  return (render_example(pick(i).example) for i in range(n))
