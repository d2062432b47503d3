"""Rubric rewards: the card's aggregation properties and the programmatic graders."""

import itertools

import numpy as np
import pytest

from jaxpost import config_lib
from jaxpost.rewards import Sample, make_spec, rubric
from jaxpost.rewards.rubric import Criterion, aggregate

CRIT = (Criterion("format", 1.0, veto=True), Criterion("steps", 2.0, tiers=rubric.QUARTERS),
        Criterion("answer", 3.0))  # fmt: skip


def _sample(completion, answer="952", tokens=20, prompt="17*56", truncated=False):
  return Sample(prompt, completion, answer, tokens, truncated=truncated, level="mul2x2")


@pytest.mark.parametrize("saturation, shaping", [(0.0, 1.0), (3.0, 1.0), (0.0, 2.0), (5.0, 3.0)])
def test_a_failed_veto_nullifies_whatever_else_scores(saturation, shaping):
  for steps, answer in itertools.product(rubric.QUARTERS, (0.0, 1.0)):
    assert aggregate([0.0, steps, answer], CRIT, saturation=saturation, shaping=shaping,
                     veto_value=-0.5) == -0.5  # fmt: skip
  assert aggregate([1.0, 0.0, 0.0], CRIT) == pytest.approx(1 / 6)  # other zeros: just zeros


@pytest.mark.parametrize("saturation, shaping", [(0.0, 1.0), (3.0, 1.0), (0.0, 2.0), (5.0, 3.0)])
def test_raising_one_score_never_lowers_the_total_and_weights_scale_freely(saturation, shaping):
  rng = np.random.default_rng(0)
  for _ in range(200):
    w = rng.uniform(0.1, 5.0, 4)
    crit = [Criterion(g, float(x)) for g, x in zip(("format", "steps", "answer", "plan"), w,
                                                    strict=True)]  # fmt: skip
    s = rng.uniform(0.01, 1.0, 4)
    base = aggregate(s, crit, saturation=saturation, shaping=shaping)
    k = rng.integers(4)
    up = s.copy()
    up[k] = min(1.0, up[k] + rng.uniform(0, 0.5))
    assert aggregate(up, crit, saturation=saturation, shaping=shaping) >= base - 1e-12
    c = float(rng.uniform(0.01, 100))
    scaled = [Criterion(x.grader, x.weight * c) for x in crit]
    assert aggregate(s, scaled, saturation=saturation, shaping=shaping) == pytest.approx(base)


def test_saturation_gives_diminishing_returns_and_shaping_widens_the_top():
  crit = (Criterion("steps"),)
  grid = np.linspace(0, 1, 21)
  for k in (0.5, 2.0, 8.0):
    values = np.asarray([aggregate([s], crit, saturation=k) for s in grid])
    gains = np.diff(values)
    assert np.all(gains > 0) and np.all(np.diff(gains) <= 1e-12)  # concave, increasing
    assert values[0] == 0.0 and values[-1] == pytest.approx(1.0)
  flat = np.diff([aggregate([s], crit) for s in grid])
  np.testing.assert_allclose(flat, 0.05)  # k = 0: linear
  shaped = np.diff([aggregate([s], crit, shaping=3.0) for s in grid])
  assert np.all(np.diff(shaped) > 0)  # the gap between neighbours grows toward the top


def test_graders_by_hand():
  right = _sample("<think>17*6=102,17*50=850,102+850=952</think>952")
  one_wrong = _sample("<think>17*6=102,17*50=860,102+860=962</think>962")
  broken = _sample("17*6=102 so 952")
  planned = _sample("<think>plan:two partial products then add,17*6=102,17*50=850,"
                    "102+850=952</think>952")  # fmt: skip
  crit = rubric.parse_criteria((("format", 1), ("steps", 1, False, rubric.QUARTERS),
                                ("answer", 1), ("plan", 1)))  # fmt: skip
  assert rubric.grade(right, crit) == [1.0, 1.0, 1.0, 0.0]
  assert rubric.grade(one_wrong, crit) == [1.0, 0.5, 0.0, 0.0]  # 2 of 3 steps: down to 0.5
  assert rubric.grade(broken, crit) == [0.0, 0.0, 0.0, 0.0]
  assert rubric.grade(planned, crit) == [1.0, 1.0, 1.0, 1.0]  # the plan is not a step
  assert rubric.grade(_sample(right.completion, truncated=True), crit)[2] == 0.0
  length = rubric.parse_criteria((("length", 1, False, (0.0, 0.5, 1.0)),))
  assert [rubric.grade(_sample("x", tokens=n), length, length_budget=10)[0]
          for n in (10, 14, 15, 19, 20, 40)] == [1.0, 0.5, 0.5, 0.0, 0.0, 0.0]  # fmt: skip
  # The registered reward, default rubric: format veto, steps in quarters, answer x2.
  got = rubric.rubric([right, one_wrong, broken])  # batched: one call per batch
  assert got == pytest.approx([1.0, (1 + 0.5 + 0) / 4, 0.0])


def test_bad_rubrics_fail_at_spec_time_and_the_rl_config_carries_the_block():
  for bad in [(), (("nope", 1.0),), (("steps", -1.0),), (("steps", 1.0), ("steps", 2.0)),
              (("steps", 1.0, False, (0.5, 0.2)),)]:  # fmt: skip
    with pytest.raises(ValueError):
      make_spec((("rubric", 1.0),), {"rubric": {"criteria": bad}})
  with pytest.raises(ValueError, match="shaping"):
    make_spec((("rubric", 1.0),), {"rubric": {"shaping": 0.5}})
  from jaxpost.recipes import rl

  c = config_lib.load_config(f"{config_lib.CONFIGS_DIR}/grpo.py:tiny")
  config_lib.set_field(c, "reward.terms", (("rubric", 1.0),))
  config_lib.set_field(c, "reward.rubric.saturation", 2.0)
  config_lib.validate(c)
  (term,) = rl.reward_spec(c)
  assert term.name == "rubric" and term.hparams["saturation"] == 2.0


def test_plan_then_act_card_properties():
  # methods card more_cards.md 10b: tags enforced (malformed: format 0, and no plan
  # credit); the plan reward is bounded in [0, 1] and does not depend on the order of
  # the steps that follow the plan.
  crit = rubric.parse_criteria((("format", 1.0), ("plan", 1.0)))
  steps = ["17*6=102", "17*50=850", "102+850=952"]
  scores = set()
  for order in (steps, steps[::-1], [steps[1], steps[0], steps[2]]):
    s = _sample("<think>plan:partial products then add," + ",".join(order) + "</think>952")
    scores.add(tuple(rubric.grade(s, crit)))
  assert scores == {(1.0, 1.0)}
  bad_ones = (
    "<think>plan:add,17*6=102 952",
    "plan:add,17*6=102</think>952",
    "<think>plan:</think>9",
  )
  for bad in bad_ones:
    got = rubric.grade(_sample(bad), crit)
    assert got[1] == 0.0 and all(0.0 <= x <= 1.0 for x in got)
  assert rubric.grade(_sample("<think>plan:add,17*6=102 952"), crit)[0] == 0.0


def test_partial_products_and_the_final_sum_graded_apart():
  thirds = (0.0, 1 / 3, 2 / 3, 1.0)
  crit = rubric.parse_criteria(
    (("partials", 1.0, False, (0.0, 0.5, 1.0)), ("final_step", 1.0), ("steps", 1.0, False, thirds))
  )
  right = _sample("<think>17*6=102,17*50=850,102+850=952</think>952")
  bad_partial = _sample("<think>17*6=102,17*50=860,102+860=962</think>962")
  bad_sum = _sample("<think>17*6=102,17*50=850,102+850=962</think>962")
  one_step = _sample("<think>17*56=952</think>952")
  assert rubric.grade(right, crit) == [1.0, 1.0, 1.0]
  assert rubric.grade(bad_partial, crit) == [0.5, 1.0, pytest.approx(2 / 3)]
  assert rubric.grade(bad_sum, crit) == [1.0, 0.0, pytest.approx(2 / 3)]
  assert rubric.grade(one_step, crit) == [0.0, 1.0, 1.0]  # no partial products
  assert rubric.grade(_sample("952"), crit) == [0.0, 0.0, 0.0]  # no think block
