import time

import numpy as np
import pool_rewards  # tests/rewards: module-level rewards a worker process can import
import pytest

from jaxpost import rewards
from jaxpost.rewards import registry
from jaxpost.rewards.registry import Sample

# Three completions of 357+468 = 825: right and short, wrong and in the punishment
# interval, right but too long.
_SAMPLES = [
  Sample("357+468", "<think>7+8+0=15</think>825", "825", 10),
  Sample("357+468", "<think>7+8+0=15</think>826", "825", 14),
  Sample("357+468", "<think>7+8+0=15</think>825", "825", 17),
]
_OVERLONG = {"max_len": 16, "cache_len": 4}


@pytest.fixture
def scratch_registry(monkeypatch):
  """Registers test rewards in a copy of the registry, restored after the test."""
  registry.names()  # the built-ins are registered before the copy
  monkeypatch.setattr(registry.REWARDS, "_entries", dict(registry.REWARDS._entries))
  registry.names()  # built-ins are in the copy
  return registry.register


def test_golden_dapo_spec():
  spec = (
    ("exact_answer", 1.0, {"correct": 1.0, "wrong": -1.0}),
    ("overlong", 0.5, _OVERLONG),
  )
  r, m = rewards.score(_SAMPLES, spec, timeout_s=5.0)
  # exact: +1, -1, +1; overlong (start 12): 0, (12-14)/4 = -0.5, -1.
  np.testing.assert_array_equal(r, np.float32([1.0, -1.0 - 0.25, 1.0 - 0.5]))
  assert r.dtype == np.float32 and r.shape == (3,)
  assert m["reward/exact_answer"] == pytest.approx(1 / 3)
  assert m["reward/overlong"] == pytest.approx(-0.5)
  assert m["reward/mean"] == pytest.approx((1.0 - 1.25 + 0.5) / 3)
  assert (m["reward/errors"], m["reward/timeouts"], m["reward/skipped"]) == (0.0, 0.0, 0.0)


def test_weights_scale_their_term_only():
  base = (("exact_answer", 1.0), ("overlong", 1.0, _OVERLONG))
  r1, _ = rewards.score(_SAMPLES, base, timeout_s=5.0)
  r2, m2 = rewards.score(_SAMPLES, (("exact_answer", 3.0), ("overlong", 0.0, _OVERLONG)))
  exact = np.float32([1.0, 0.0, 1.0])
  overlong = np.float32([0.0, -0.5, -1.0])
  np.testing.assert_allclose(r1, exact + overlong, rtol=0, atol=1e-7)
  np.testing.assert_allclose(r2, 3.0 * exact, rtol=0, atol=1e-7)
  # A zero-weight term is still reported, unweighted.
  assert m2["reward/overlong"] == pytest.approx(-0.5)


def test_config_tuple_with_hparams_mapping_equals_terms():
  from_config = rewards.make_spec(
    (("exact_answer", 1.0), ("overlong", 1.0)), hparams={"overlong": _OVERLONG}
  )
  direct = (rewards.Term("exact_answer", 1.0), rewards.Term("overlong", 1.0, _OVERLONG))
  assert from_config == direct
  # A term's own hyperparameters win over the mapping's.
  (term,) = rewards.make_spec(
    [("overlong", 1.0, {"cache_len": 2})], hparams={"overlong": _OVERLONG}
  )
  assert term.hparams == {"max_len": 16, "cache_len": 2}
  # Hyperparameters of a registered reward that is not in the spec are ignored.
  assert rewards.make_spec((("exact_answer", 1.0),), hparams={"overlong": _OVERLONG}) == (
    rewards.Term("exact_answer", 1.0),
  )


def test_unknown_name_fails_before_scoring_and_lists_known_names():
  with pytest.raises(KeyError, match="exact_answer") as e:
    rewards.score(_SAMPLES, (("exact_answer", 1.0), ("overlength", 1.0)))
  assert "overlength" in str(e.value) and "overlong" in str(e.value)


@pytest.mark.parametrize(
  "spec, hparams, error, match",
  [
    ((("exact_answer", 1.0), ("exact_answer", 2.0)), None, ValueError, "twice"),
    ((("overlong", 1.0),), None, TypeError, "max_len"),  # missing required
    ((("exact_answer", 1.0, {"corect": 1.0}),), None, TypeError, "corect"),
    ((("overlong", 1.0, {"max_len": 4, "cache_len": 8}),), None, ValueError, "cache_len"),
    ((("exact_answer", float("nan")),), None, ValueError, "non-finite"),
    ((("exact_answer",),), None, ValueError, "name, weight"),
    (("exact_answer",), None, ValueError, "name, weight"),
    ((("exact_answer", 1.0),), {"overlongg": _OVERLONG}, KeyError, "overlong"),
  ],
)
def test_make_spec_fails_loudly(spec, hparams, error, match):
  with pytest.raises(error, match=match):
    rewards.make_spec(spec, hparams)


@pytest.mark.parametrize("timeout_s", [5.0, None])  # in a worker process, inline
def test_raising_reward_scores_zero_and_is_counted(scratch_registry, timeout_s):
  scratch_registry("_boom")(pool_rewards.boom)
  r, m = rewards.score(_SAMPLES, (("_boom", 1.0), ("exact_answer", 1.0)), timeout_s=timeout_s)
  np.testing.assert_array_equal(r, np.float32([3.0, 0.0, 3.0]))
  assert m["reward/errors"] == 1.0 and m["reward/timeouts"] == 0.0
  assert m["reward/_boom"] == pytest.approx(4 / 3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1.0", None, True, 10**400])
def test_bad_return_values_are_errors(scratch_registry, bad):
  scratch_registry("_bad")(pool_rewards.constant)
  for timeout_s in (5.0, None):
    r, m = rewards.score(_SAMPLES[:2], (("_bad", 1.0, {"value": bad}),), timeout_s=timeout_s)
    np.testing.assert_array_equal(r, np.zeros(2, np.float32))
    assert m["reward/errors"] == 2.0


@pytest.mark.parametrize("timeout_s", [5.0, None])
def test_system_exit_in_a_reward_does_not_end_scoring(scratch_registry, timeout_s):
  scratch_registry("_exit")(pool_rewards.exits)
  r, m = rewards.score(_SAMPLES, (("_exit", 1.0), ("exact_answer", 1.0)), timeout_s=timeout_s)
  np.testing.assert_array_equal(r, np.float32([1.0, 0.0, 1.0]))
  assert m["reward/errors"] == 3.0


def test_sleeping_reward_times_out_and_the_batch_goes_on(scratch_registry):
  scratch_registry("_sleepy")(pool_rewards.sleepy)  # 60 s on the 14-token sample
  spec = (("_sleepy", 1.0, {"on_tokens": 14}), ("exact_answer", 1.0))
  start = time.monotonic()
  r, m = rewards.score(_SAMPLES, spec, timeout_s=0.3)
  elapsed = time.monotonic() - start
  np.testing.assert_array_equal(r, np.float32([2.0, 0.0, 2.0]))
  assert (m["reward/timeouts"], m["reward/errors"], m["reward/skipped"]) == (1.0, 0.0, 0.0)
  assert m["reward/restarted_workers"] == 1.0  # killed at the limit, replaced for sample 2
  assert elapsed < 5.0  # did not wait for the 60 s call (about 0.3 s + 2 worker starts)


def test_a_term_that_keeps_timing_out_is_skipped(scratch_registry):
  scratch_registry("_stuck")(pool_rewards.sleepy)
  samples = _SAMPLES * 2  # B = 6
  r, m = rewards.score(
    samples, (("_stuck", 1.0), ("exact_answer", 1.0)), timeout_s=0.2, max_timeouts=2
  )
  np.testing.assert_array_equal(r, np.float32([1.0, 0.0, 1.0] * 2))
  assert (m["reward/timeouts"], m["reward/skipped"]) == (2.0, 4.0)
  assert m["reward/restarted_workers"] == 2.0


def test_inline_scoring_equals_limited():
  spec = (
    ("exact_answer", 1.0, {"wrong": -1.0}),
    ("think_format", 0.1),
    ("length", -0.01, {"norm_tokens": 1}),
  )
  r_limited, m_limited = rewards.score(_SAMPLES, spec, timeout_s=5.0)
  r_inline, m_inline = rewards.score(_SAMPLES, spec, timeout_s=None)
  np.testing.assert_array_equal(r_limited, r_inline)
  assert m_limited == m_inline


def test_empty_spec_and_empty_batch():
  r, m = rewards.score(_SAMPLES, ())
  np.testing.assert_array_equal(r, np.zeros(3, np.float32))
  assert m["reward/mean"] == 0.0
  r, m = rewards.score([], (("exact_answer", 1.0),))
  assert r.shape == (0,) and r.dtype == np.float32 and m["reward/exact_answer"] == 0.0


@pytest.mark.parametrize(
  "kwargs", [{"timeout_s": 0.0}, {"timeout_s": -1.0}, {"max_timeouts": 0}, {"workers": 0}]
)
def test_bad_limits(kwargs):
  with pytest.raises(ValueError):
    rewards.score(_SAMPLES, (("exact_answer", 1.0),), **kwargs)
