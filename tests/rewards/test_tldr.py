"""TLDR's multi-level length reward (jaxpost/rewards/tldr.py): the card's properties."""

import numpy as np
import pytest

from jaxpost import rewards
from jaxpost.data import tasks
from jaxpost.rewards import registry, tldr

LEVELS = (("short", "(1) ", 0.6), ("medium", "(2) ", 0.3), ("long", "(3) ", 0.0))
RIGHT, WRONG = "<think>1+1=2</think>2", "<think>1+1=3</think>3"


def _sample(prompt, completion=RIGHT, n=10, truncated=False):
  return rewards.Sample(prompt, completion, "2", n, truncated, "add1")


def _penalty(prompt, n, **kw):
  return tldr.tldr(_sample(prompt, n=n), levels=LEVELS, norm_tokens=40, **kw)


def test_lambda_zero_is_plain_grpo_and_untagged_prompts_pay_nothing():
  for n in (0, 7, 40, 80):
    assert _penalty("(3) 1+1", n) == 0.0  # the long level's lambda is 0
    assert _penalty("1+1", n) == 0.0  # no tag
  zero = tuple((name, tag, 0.0) for name, tag, _ in LEVELS)
  spec = rewards.make_spec((("exact_answer", 1.0), ("tldr", 1.0)), {"tldr": {"levels": zero,
                           "norm_tokens": 40}})  # fmt: skip
  base = rewards.make_spec((("exact_answer", 1.0),))
  samples = [
    _sample(f"({k}) 1+1", c, n) for k in (1, 2, 3) for c in (RIGHT, WRONG) for n in (5, 30)
  ]
  np.testing.assert_array_equal(rewards.score(samples, spec)[0], rewards.score(samples, base)[0])


def test_reward_is_non_increasing_in_length_and_levels_are_ordered():
  lengths = np.arange(0, 60)
  by_level = {}
  for k in (1, 2, 3):
    r = np.asarray([_penalty(f"({k}) 1+1", int(n)) for n in lengths])
    assert (np.diff(r) <= 0).all()
    by_level[k] = r
  # P_short >= P_medium >= P_long at equal L: rewards in the opposite order.
  assert (by_level[1] <= by_level[2]).all() and (by_level[2] <= by_level[3]).all()
  assert _penalty("(1) 1+1", 20) == pytest.approx(-0.6 * 20 / 40)
  assert _penalty("(1) 1+1", 20, free_tokens=10) == pytest.approx(-0.6 * 10 / 40)


def test_only_right_answers_pay_unless_penalize_wrong():
  wrong = _sample("(1) 1+1", WRONG, n=20)
  assert tldr.tldr(wrong, levels=LEVELS, norm_tokens=40) == 0.0
  assert tldr.tldr(wrong, levels=LEVELS, norm_tokens=40, penalize_wrong=True) == -0.3


def test_tags_cycle_over_the_prompt_stream():
  mixture = tasks.mixture({"add3": 1.0}, "train", 0)
  spec = rewards.make_spec((("exact_answer", 1.0), ("tldr", 1.0, {"levels": LEVELS,
                           "norm_tokens": 40})))  # fmt: skip
  at = registry.conditioned(mixture, spec)
  for i in range(6):
    p = at(i)
    assert p.prompt == LEVELS[i % 3][1] + mixture(i).prompt and p.answer == mixture(i).answer
    assert tldr.level_of(p.prompt, LEVELS)[0] == LEVELS[i % 3][0]
  plain = rewards.make_spec((("exact_answer", 1.0),))
  assert registry.conditioned(mixture, plain) is mixture


@pytest.mark.parametrize(
  "levels, match",
  [
    ((), "non-empty"),
    ((("short", "(1) ", 0.1), ("long", "(3) ", 0.5)), "must not increase"),
    ((("a", "(1)", 0.5), ("b", "(1) ", 0.1)), "prefix"),
    ((("a", "", 0.5),), "non-empty tag"),
    ((("a", "x", -1.0),), "lambda >= 0"),
  ],
)
def test_bad_levels_fail_when_the_spec_is_built(levels, match):
  with pytest.raises(ValueError, match=match):
    rewards.make_spec((("tldr", 1.0, {"levels": levels, "norm_tokens": 40}),))
