"""Tests for jaxpost.data.tasks."""

import collections
import re

import pytest

from jaxpost.data import tasks
from jaxpost.data.template import Example, render_prompt, render_response

N_PER_LEVEL = 300


def _problems(level, split="train", seed=0, n=N_PER_LEVEL):
  return [tasks.make_problem(level, split, seed, i) for i in range(n)]


def _levels(family):
  return [name for name, spec in tasks.LEVELS.items() if spec.family == family]


def _safe_eval(expr):
  assert re.fullmatch(r"[0-9+\-*()]+", expr), expr
  return eval(expr)  # digits and + - * ( ) only


@pytest.mark.parametrize("level", list(tasks.LEVELS))
def test_answer_equals_eval_and_trace_checks(level):
  for p in _problems(level):
    assert p.answer == str(_safe_eval(p.prompt))
    assert tasks.trace_errors(p.thinking) == []
    assert p.example == Example(p.prompt, p.thinking, p.answer)
    assert p.difficulty == tasks.LEVELS[level].difficulty


@pytest.mark.parametrize("level", _levels("add"))
def test_add_trace_is_digit_by_digit(level):
  (digits,) = tasks.LEVELS[level].knob
  for p in _problems(level):
    a, b = p.prompt.split("+")
    assert len(a) == len(b) == digits
    steps = p.thinking.split(",")
    assert len(steps) == digits
    carry, ones = 0, []
    for step, da, db in zip(steps, reversed(a), reversed(b), strict=True):
      m = re.fullmatch(r"(\d)\+(\d)\+([01])=(\d\d)", step)
      assert m, step
      assert (m[1], m[2], int(m[3])) == (da, db, carry)
      total = int(da) + int(db) + carry
      assert int(m[4]) == total
      carry, ones = total // 10, [str(total % 10), *ones]
    assert p.answer == (str(carry) if carry else "") + "".join(ones)


@pytest.mark.parametrize("level", _levels("mul"))
def test_mul_trace_has_shifted_partial_products(level):
  a_digits, b_digits = tasks.LEVELS[level].knob
  for p in _problems(level):
    a, b = p.prompt.split("*")
    assert (len(a), len(b)) == (a_digits, b_digits)
    steps = p.thinking.split(",")
    assert len(steps) == b_digits + (b_digits > 1)
    partials = []
    for shift, (step, digit) in enumerate(zip(steps, reversed(b), strict=False)):
      lhs, value = step.split("=")
      assert lhs == f"{a}*{int(digit) * 10**shift}"
      assert int(value) == int(a) * int(digit) * 10**shift
      partials.append(value)
    if b_digits > 1:
      assert steps[-1] == "+".join(partials) + "=" + p.answer
    assert int(p.answer) == int(a) * int(b)


@pytest.mark.parametrize("level", _levels("expr"))
def test_expr_trace_reduces_one_operation_per_step(level):
  (n_ops,) = tasks.LEVELS[level].knob
  for p in _problems(level):
    assert sum(p.prompt.count(op) for op in "+-*") == n_ops
    assert all(1 <= int(x) <= 20 for x in re.findall(r"\d+", p.prompt))
    steps = p.thinking.split(",")
    assert len(steps) == n_ops
    for step in steps:
      m = re.fullmatch(r"(\d+)([+\-*])(\d+)=(\d+)", step)
      assert m, step
      assert _safe_eval(f"{m[1]}{m[2]}{m[3]}") == int(m[4])
      assert 0 <= int(m[4]) <= 999
      if m[2] == "*":
        assert min(int(m[1]), int(m[3])) <= 9
    assert steps[-1].split("=")[1] == p.answer
    # Each step's operands are leaves or earlier results: the trace really derives the
    # answer from the prompt.
    available = collections.Counter(re.findall(r"\d+", p.prompt))
    for step in steps:
      m = re.fullmatch(r"(\d+)[+\-*](\d+)=(\d+)", step)
      for operand in (m[1], m[2]):
        assert available[operand] > 0, (p, step)
        available[operand] -= 1
      available[m[3]] += 1


def test_trace_errors_flags_wrong_steps():
  assert tasks.trace_errors("") == []
  assert tasks.trace_errors("7+8+0=15,5+6+1=12") == []
  errors = tasks.trace_errors("7+8+0=15,5+6+1=13,1+1,2**8=256,x=1,(1+2)*3=9")
  assert len(errors) == 4
  assert "5+6+1 is 12" in errors[0]
  assert "not of the form" in errors[1]
  assert "cannot evaluate" in errors[2] and "cannot evaluate" in errors[3]


def test_evaluate_is_integer_arithmetic_only():
  assert tasks.evaluate(" (12+7)*3-5 ") == 52
  for text in ("2**8", "7/2", "x+1", "__import__('os')", "1+", "1.5*2"):
    with pytest.raises(ValueError):
      tasks.evaluate(text)


@pytest.mark.parametrize("level", list(tasks.LEVELS))
def test_deterministic(level):
  assert tasks.make_problem(level, "train", 3, 17) == tasks.make_problem(level, "train", 3, 17)
  assert tasks.heldout_set(level, 20, seed=2) == tasks.heldout_set(level, 20, seed=2)
  prompts = {p.prompt for p in _problems(level, n=50)}
  assert len(prompts) >= 45  # distinct indices give (mostly) distinct problems
  other_seed = {p.prompt for p in _problems(level, seed=1, n=50)}
  assert len(prompts & other_seed) <= 5


@pytest.mark.parametrize("level", ["add3", "mul2x2", "expr2"])
def test_train_heldout_disjoint(level):
  train = {p.prompt for seed in (0, 1, 2) for p in _problems(level, seed=seed, n=1200)}
  heldout = {p.prompt for seed in (0, 1) for p in tasks.heldout_set(level, 300, seed=seed)}
  assert not train & heldout
  assert all(tasks.is_heldout(p) for p in heldout)
  assert not any(tasks.is_heldout(p) for p in train)


def test_heldout_set_is_distinct():
  problems = tasks.heldout_set("expr2", 200)
  assert len(problems) == 200 == len({p.prompt for p in problems})
  assert all(p.level == "expr2" for p in problems)
  assert tasks.heldout_set("add3", 0) == []


def test_check_answer():
  p = tasks.make_problem("mul2x2", "heldout", 0, 0)
  assert tasks.check_answer(p, p.answer)
  assert tasks.check_answer(p, f"  {p.answer}\n")
  assert tasks.check_answer(p, render_response(p.example))
  assert tasks.check_answer(p, f"<think>no idea</think> {p.answer} ")
  wrong = str(int(p.answer) + 1)
  assert not tasks.check_answer(p, wrong)
  assert not tasks.check_answer(p, "0" + p.answer)
  assert not tasks.check_answer(p, f"<think>x</think>{wrong}")
  assert not tasks.check_answer(p, f"<think>x{p.answer}")  # unclosed think block
  assert not tasks.check_answer(p, f"{p.answer}</think>{p.answer}")
  assert not tasks.check_answer(p, "")
  with pytest.raises(TypeError):
    tasks.check_answer(p, int(p.answer))


def test_score_response():
  p = tasks.make_problem("add3", "train", 0, 5)
  assert tasks.score_response(p, render_response(p.example)) == {
    "correct": True,
    "format_ok": True,
  }
  assert tasks.score_response(p, p.answer) == {"correct": True, "format_ok": False}
  assert tasks.score_response(p, "<think></think>1") == {"correct": False, "format_ok": True}
  assert tasks.score_response(p, "<think>") == {"correct": False, "format_ok": False}


def test_levels_and_difficulty_order():
  for name in ("add3", "mul2x2", "mul3x2", "mul3x3", "expr2", "expr3"):
    assert name in tasks.LEVELS
  assert tasks.LEVELS["add3"].difficulty == "easy"
  assert tasks.LEVELS["mul2x2"].difficulty == "medium"
  assert tasks.LEVELS["mul3x3"].difficulty == "hard"
  ranks = [tasks.DIFFICULTIES.index(spec.difficulty) for spec in tasks.LEVELS.values()]
  assert ranks == sorted(ranks)
  for difficulty in tasks.DIFFICULTIES:
    assert tasks.levels_by_difficulty(difficulty)
  with pytest.raises(ValueError, match="unknown difficulty"):
    tasks.levels_by_difficulty("trivial")


def test_mixture():
  mix = tasks.mixture({"add3": 3.0, "mul2x2": 1.0, "expr2": 0.0}, "train", seed=0)
  counts = collections.Counter(mix.level_at(i) for i in range(4000))
  assert counts["expr2"] == 0
  assert 0.7 < counts["add3"] / 4000 < 0.8
  p = mix.problem_at(11)
  assert p == mix.problem_at(11) == mix(11)
  assert p == tasks.make_problem(p.level, "train", 0, 11)
  heldout = tasks.mixture({"add3": 1.0}, "heldout", seed=0)
  assert all(tasks.is_heldout(heldout.problem_at(i).prompt) for i in range(50))


@pytest.mark.parametrize(
  "levels, message",
  [
    ({}, "at least one level"),
    ({"add3": -1.0}, "finite and >= 0"),
    ({"add3": float("nan")}, "finite and >= 0"),
    ({"add3": 0.0}, "not all be zero"),
    ({"add99": 1.0}, "unknown level"),
  ],
)
def test_mixture_rejects_bad_weights(levels, message):
  with pytest.raises(ValueError, match=message):
    tasks.mixture(levels, "train", 0)


def test_training_corpus():
  texts = list(tasks.training_corpus(["add3", "expr2"], 10, seed=0))
  assert len(texts) == 10
  p0 = tasks.make_problem("add3", "train", 0, 0)
  assert texts[0] == render_prompt(p0.prompt) + render_response(p0.example)
  weighted = list(tasks.training_corpus({"mul2x2": 1.0}, 5, seed=0))
  assert all("*" in t for t in weighted)
  with pytest.raises(ValueError, match="unknown level"):
    tasks.training_corpus(["nope"], 3, 0)  # raised eagerly, not on first next()
  with pytest.raises(ValueError, match="at least one level"):
    tasks.training_corpus([], 3, 0)


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown level 'add4'"):
    tasks.make_problem("add4", "train", 0, 0)
  with pytest.raises(ValueError, match="unknown split 'test'"):
    tasks.make_problem("add3", "test", 0, 0)
  with pytest.raises(ValueError, match="index must be >= 0"):
    tasks.make_problem("add3", "train", 0, -1)
  with pytest.raises(TypeError):
    tasks.make_problem("add3", "train", 0, 1.5)


@pytest.mark.parametrize(
  "text, number",
  [
    ("663 + 550 = 1,213.", "1213"),
    ("<think>3+0=3,5+5=10</think>1213", "1213"),  # a trace's commas separate steps
    ("x = -7.", "-7"),
    ("1, 2, 3", "3"),
    ("no digits", None),
  ],
)
def test_last_number(text, number):
  assert tasks.last_number(text) == number


def test_check_last_number_is_lenient_about_format_only():
  p = tasks.make_problem("add3", "train", 0, 0)
  assert tasks.check_last_number(p, f"The sum is {p.answer}.")
  assert not tasks.check_answer(p, f"The sum is {p.answer}.")
  assert not tasks.check_last_number(p, f"{p.answer}, or maybe {int(p.answer) + 1}")
