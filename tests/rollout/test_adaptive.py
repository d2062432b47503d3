"""Reinforce-Ada's adaptive sampling (jaxpost/rollout/adaptive.py): the card's four cases,
the round loop, and the global baseline in the advantages."""

import jax
import numpy as np
import pytest

from jaxpost.data import tasks
from jaxpost.losses import advantages
from jaxpost.rollout import adaptive
from jaxpost.rollout import groups as groups_lib
from jaxpost.types import Batch


def _rng():
  return np.random.default_rng(0)


def test_card_1_balanced_exits_in_round_one_with_two_and_two():
  r = np.array([1, 1, 0, 0, 0, 0, 0, 0])
  assert adaptive.exited(2, 6, 4, "balanced")
  kept = adaptive.downsample(r > 0.7, 4, "balanced", done=True, rng=_rng())
  assert len(kept) == 4 and (r[kept] == 1).sum() == 2 and (r[kept] == 0).sum() == 2


def test_card_2_all_negative_falls_back_to_negatives_with_zero_advantage():
  r = np.zeros(32)  # 4 rounds of 8, never a positive
  assert not adaptive.exited(0, 32, 4, "balanced") and not adaptive.exited(0, 32, 4, "positive")
  for rule in adaptive.RULES:
    kept = adaptive.downsample(r > 0.7, 4, rule, done=False, rng=_rng())
    assert len(kept) == 4 and (r[kept] == 0).all()
  mean, scale = adaptive.global_baseline(r)
  assert mean == 0.0 and scale == 1.0  # P = 0: every kept advantage is 0 - 0


def test_card_3_global_mean_of_one_positive_in_32():
  r = np.zeros(32)
  r[5] = 1.0
  mean, scale = adaptive.global_baseline(r)
  assert mean == pytest.approx(1 / 32) and scale == 1.0
  kept = adaptive.downsample(r > 0.7, 4, "balanced", done=False, rng=_rng())
  adv = r[kept] - mean
  np.testing.assert_allclose(sorted(adv), [-1 / 32] * 3 + [31 / 32])
  # With std normalisation: the unbiased std of [1] + [0] * 31.
  _, scale = adaptive.global_baseline(r, normalize_std=True)
  assert scale == pytest.approx(np.std(r, ddof=1))
  assert adaptive.global_baseline(np.ones(1)) == (0.0, 1.0)  # one draw: (0, 1)


@pytest.mark.parametrize("rule", adaptive.RULES)
@pytest.mark.parametrize("done", [True, False])
def test_card_4_downsampling_never_returns_more_than_n(rule, done):
  rng = np.random.default_rng(1)
  for _ in range(200):
    k, n = int(rng.integers(0, 20)), int(rng.integers(1, 9))
    positive = rng.random(k) < rng.random()
    kept = adaptive.downsample(positive, n, rule, done=done, rng=rng)
    assert len(kept) == min(n, k) and len(set(kept.tolist())) == len(kept)
    n_pos, n_neg = positive.sum(), k - positive.sum()
    if done or rule == "balanced":  # half and half, the short side filled from the other
      assert positive[kept].sum() == min(n_pos, max(min(n, k) // 2, min(n, k) - n_neg))
    elif n_pos and n_neg and min(n, k) >= 2:  # positive fallback: at least one of each
      assert 1 <= positive[kept].sum() <= min(n, k) - 1


def test_positive_rule_exits_on_the_first_positive():
  assert adaptive.exited(1, 0, 4, "positive") and not adaptive.exited(0, 7, 4, "positive")
  assert not adaptive.exited(1, 7, 4, "balanced") and adaptive.exited(2, 2, 4, "balanced")


def _round_groups(problems, k, rewards):
  """``k`` rows per problem whose token 0 records (problem id, draw) and rewards given."""
  rows = len(problems) * k
  tokens = np.zeros((rows, 4), np.int32)
  tokens[:, 0] = np.repeat([int(q.prompt) for q in problems], k)
  tokens[:, 1] = rewards * 100 + np.arange(rows)  # unique per row
  batch = jax.tree.map(np.asarray, Batch.from_tokens(tokens))
  z = np.zeros((rows, 4), np.float32)
  return groups_lib.Groups(
    batch=batch,
    sampler_logp=z,
    raw_logp=z,
    rewards=np.asarray(rewards, np.float32),
    correct=np.asarray(rewards) > 0,
    truncated=np.zeros(rows, bool),
    lengths=np.full(rows, 3, np.int32),
    completions=[""] * rows,
    problems=list(problems),
  )


def test_collect_samples_active_prompts_until_they_exit():
  # Prompt 0 succeeds half the time, prompt 1 never, prompt 2 on its 10th draw onwards.
  chance = {0: lambda d: d % 2, 1: lambda d: 0, 2: lambda d: int(d >= 9)}
  draws = {0: 0, 1: 0, 2: 0}
  calls = []

  def sample_round(r, problems):
    calls.append([int(q.prompt) for q in problems])
    rewards, seen = [], set()
    for q in problems:
      i = int(q.prompt)
      for _ in range(4):
        if i in seen:  # a repeat filling the batch: its samples (all 1) must go unused
          rewards.append(1)
        else:
          rewards.append(chance[i](draws[i]))
          draws[i] += 1
      seen.add(i)
    return _round_groups(problems, 4, np.asarray(rewards)), {"reward/mean": 0.0}

  problems = [tasks.Problem("add3", str(i), "", "0") for i in range(3)]
  out = adaptive.collect(
    sample_round,
    problems,
    group_size=4,
    round_samples=4,
    max_rounds=4,
    rule="balanced",
    positive_threshold=0.5,
    normalize_std=False,
    rng=_rng(),
  )
  assert calls[0] == [0, 1, 2] and calls[1] == [1, 2, 1]  # prompt 0 exited; fill by repeat
  assert out.rounds == 4 and out.exited.tolist() == [True, False, True]
  assert out.drawn.tolist() == [4, 16, 12]
  g = out.groups
  assert len(g.completions) == 12 and [q.prompt for q in g.problems] == ["0", "1", "2"]
  np.testing.assert_array_equal(g.batch.tokens[:, 0], np.repeat([0, 1, 2], 4))
  np.testing.assert_array_equal(g.rewards, [0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1])
  np.testing.assert_allclose(out.baseline, [0.5, 0.0, 3 / 12])
  with pytest.raises(ValueError, match="fewer than the group size"):
    adaptive.collect(
      sample_round,
      problems,
      group_size=8,
      round_samples=2,
      max_rounds=1,
      rule="positive",
      positive_threshold=0.5,
      normalize_std=False,
      rng=_rng(),
    )


def test_combine_with_a_global_baseline():
  rewards = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0], np.float32)
  mask = np.ones((6, 3), np.float32)
  mean, scale = np.array([1 / 32, 0.5], np.float32), np.array([1.0, 2.0], np.float32)
  token, seq, _ = advantages.combine(
    rewards, {}, mask, estimator="grpo", group_size=3, baseline=(mean, scale)
  )
  np.testing.assert_allclose(seq, [31 / 32, -1 / 32, -1 / 32, -0.25, 0.25, 0.25], rtol=1e-6)
  np.testing.assert_allclose(token, np.repeat(np.asarray(seq)[:, None], 3, axis=1))


def test_the_recipe_rejects_ada_with_dynamic_sampling_or_too_few_draws():
  import os

  from jaxpost import config_lib

  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  c = config_lib.load_config(os.path.join(root, "configs", "grpo.py:tiny"))
  c.rl.ada.rule = "balanced"
  config_lib.validate(c)
  c.rl.dynamic_sampling = True
  with pytest.raises(config_lib.ConfigError, match="both choose"):
    config_lib.validate(c)
  c.rl.dynamic_sampling = False
  c.rl.ada.round_samples, c.rl.max_sample_rounds = 1, 2
  with pytest.raises(config_lib.ConfigError, match="cannot fill"):
    config_lib.validate(c)
  c.rl.ada.rule = "balance"
  with pytest.raises(config_lib.ConfigError, match="rl.ada.rule"):
    config_lib.validate(c)
