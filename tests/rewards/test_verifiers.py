import pytest

from jaxpost.data.tasks import LEVELS, make_problem
from jaxpost.data.template import render_response
from jaxpost.rewards import registry, verifiers
from jaxpost.rewards.registry import Sample


def _sample(completion: str, answer: str = "825", **kw) -> Sample:
  return Sample(prompt="357+468", completion=completion, answer=answer, num_tokens=9, **kw)


@pytest.mark.parametrize(
  "completion, correct",
  [
    ("<think>7+8+0=15,5+6+1=12,3+4+1=08</think>825", True),
    ("<think></think>825", True),
    ("<think>x</think> 825\n", True),  # surrounding whitespace is ignored
    ("825", True),  # a bare answer (no tags at all) is parsed as the answer
    ("<think>x</think>826", False),
    ("<think>x</think>8250", False),
    ("<think>x</think>", False),
    ("<think>825", False),  # unclosed: the answer is not trusted
    ("<think>a</think>825<think>b</think>", False),  # malformed: never correct
    ("x<think>a</think>825", False),
  ],
)
def test_exact_answer_golden(completion, correct):
  assert verifiers.exact_answer(_sample(completion)) == (1.0 if correct else 0.0)
  # DAPO's values.
  assert verifiers.exact_answer(_sample(completion), correct=1.0, wrong=-1.0) == (
    1.0 if correct else -1.0
  )


def test_exact_answer_truncated():
  cut = _sample("<think>x</think>825", truncated=True)
  assert verifiers.exact_answer(cut) == 0.0
  assert verifiers.exact_answer(cut, wrong=-1.0) == -1.0
  assert verifiers.exact_answer(cut, truncated_is_wrong=False) == 1.0


def test_exact_answer_needs_a_reference():
  with pytest.raises(ValueError, match="reference"):
    verifiers.exact_answer(_sample("<think></think>", answer=""))
  with pytest.raises(ValueError, match="reference"):
    verifiers.exact_answer(_sample("<think></think> ", answer=" "))


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_exact_answer_on_every_task_level(level):
  problem = make_problem(level, "train", seed=3, index=1)
  response = render_response(problem.example)
  right = Sample.from_problem(problem, response, num_tokens=10)
  assert (right.level, right.prompt, right.answer) == (level, problem.prompt, problem.answer)
  assert verifiers.exact_answer(right) == 1.0
  wrong_text = response[: -len(problem.answer)] + str(int(problem.answer) + 1)
  wrong = Sample.from_problem(problem, wrong_text, num_tokens=10)
  assert verifiers.exact_answer(wrong, correct=2.0, wrong=-3.0) == -3.0


def test_exact_answer_check():
  check = registry.get_check("exact_answer")
  check(correct=1.0, wrong=-1.0)
  with pytest.raises(ValueError):
    check(correct=float("nan"))
