"""RewardPool: untrusted rewards in killable worker processes, trusted ones inline."""

import os
import sys
import threading
import time
import types

import numpy as np
import pool_rewards  # tests/rewards: module-level rewards a worker process can import
import pytest

from jaxpost import rewards
from jaxpost.rewards import combine, registry
from jaxpost.rewards.registry import Sample

_SAMPLES = [
  Sample("357+468", "<think>7+8+0=15</think>825", "825", 10),
  Sample("357+468", "<think>7+8+0=15</think>826", "825", 14),
  Sample("357+468", "<think>7+8+0=15</think>825", "825", 17),
]
_LIMIT_S = 0.4
_HELPERS = (
  "sleepy",
  "gil_power",
  "gil_regex",
  "busy",
  "crash",
  "pid",
  "jax_imported",
  "num_tokens",
  "nap",
)


@pytest.fixture(scope="module", autouse=True)
def helpers():
  """Registers the pool_rewards helpers (untrusted) in a copy of the registry."""
  registry.names()  # the built-ins are registered before the copy
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(registry.REWARDS, "_entries", dict(registry.REWARDS._entries))
    for name in _HELPERS:
      registry.register(name)(getattr(pool_rewards, name))
    yield


@pytest.fixture(scope="module")
def pool():
  """One pool for the module: its two workers start once (later ones after each kill)."""
  with rewards.RewardPool(workers=2, timeout_s=_LIMIT_S, budget_s=0) as p:
    yield p


def _live_children() -> set[int]:
  """Pids of this process's children that are running (not zombies), read from /proc."""
  found = set()
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        stat = f.read()
    except OSError:  # exited while we looked
      continue
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]  # the name may hold spaces
    if int(ppid) == os.getpid() and state != "Z":
      found.add(int(entry))
  return found


def _dead(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


@pytest.mark.parametrize("name", ["sleepy", "gil_power", "gil_regex", "busy"])
def test_a_stuck_call_is_killed_at_the_limit_and_leaves_nothing_running(pool, name):
  pool.score(_SAMPLES[:2], (("pid", 1.0),))  # both workers up, 1 call each
  workers = set(pool.pids)
  assert len(workers) == 2
  threads = threading.active_count()
  others = _live_children() - workers  # children of earlier tests in this process, if any
  start = time.monotonic()
  r, m = pool.score(_SAMPLES[:1], ((name, 1.0), ("exact_answer", 1.0)))
  elapsed = time.monotonic() - start
  np.testing.assert_array_equal(r, np.float32([1.0]))  # the stuck term scores 0
  assert (m["reward/timeouts"], m["reward/errors"], m["reward/restarted_workers"]) == (1, 0, 1)
  assert m[f"reward/{name}"] == 0.0
  assert _LIMIT_S <= elapsed < _LIMIT_S + 1.0
  killed = workers - set(pool.pids)
  assert len(killed) == 1 and all(_dead(pid) for pid in killed)
  # Nothing left competing: no extra thread here, no process beyond the live workers.
  # (Counted, not timed: a timing ratio flakes when the other test worker is busy.)
  assert threading.active_count() <= threads
  if sys.platform == "linux":
    assert _live_children() - others == set(pool.pids)


def test_each_call_has_its_own_deadline():
  # 4 calls of 0.15 s in one worker's chunk: 0.6 s in all, each within 0.4 s.
  spec = (("nap", 1.0, {"seconds": 0.15}),)
  with rewards.RewardPool(workers=1, timeout_s=_LIMIT_S) as one:
    r, m = one.score(_SAMPLES + _SAMPLES[:1], spec)
  np.testing.assert_array_equal(r, np.ones(4, np.float32))
  assert m["reward/timeouts"] == 0.0


def test_workers_score_in_parallel_and_in_order(pool):
  samples = [Sample("1+1", "2", "2", n) for n in range(1, 7)]
  r, _ = pool.score(samples, (("pid", 1.0),))
  pids = r.astype(np.int64).tolist()
  assert pids[:3] == [pids[0]] * 3 and pids[3:] == [pids[3]] * 3  # chunks of 3
  assert pids[0] != pids[3] and set(pids) == set(pool.pids)
  r, _ = pool.score(samples, (("num_tokens", 1.0),))
  np.testing.assert_array_equal(r, np.float32([1, 2, 3, 4, 5, 6]))


def test_mixed_spec_equals_inline_and_golden(pool):
  spec = (
    ("exact_answer", 1.0, {"correct": 1.0, "wrong": -1.0}),  # trusted: inline
    ("num_tokens", 0.1),  # untrusted: in the workers
    ("overlong", 0.5, {"max_len": 16, "cache_len": 4}),
  )
  samples = _SAMPLES * 3  # 9 rows: chunks on both workers
  r, m = pool.score(samples, spec)
  r_inline, m_inline = rewards.score(samples, spec, timeout_s=None)
  # exact +1, -1, +1; num_tokens 1.0, 1.4, 1.7; overlong (start 12) 0, -0.25, -0.5.
  np.testing.assert_allclose(r, np.float32([2.0, 0.15, 2.2] * 3), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(r, r_inline)
  assert m == m_inline
  assert m["reward/num_tokens"] == pytest.approx(41 / 3)


def test_the_worker_does_not_import_jax(pool):
  assert "jax" in sys.modules  # the caller has (tests/conftest.py)
  r, _ = pool.score(_SAMPLES[:1], (("jax_imported", 1.0),))
  assert r.tolist() == [0.0]


def test_a_crashing_worker_is_replaced_and_its_call_is_an_error():
  with rewards.RewardPool(workers=1, timeout_s=5.0) as pool:
    r, m = pool.score(_SAMPLES, (("crash", 1.0, {"on_tokens": 14}),))
    np.testing.assert_array_equal(r, np.float32([2.0, 0.0, 2.0]))  # samples 0 and 2 scored
    assert (m["reward/errors"], m["reward/timeouts"], m["reward/restarted_workers"]) == (1, 0, 1)
    r, m = pool.score(_SAMPLES, (("num_tokens", 1.0),))  # and later calls work
    np.testing.assert_array_equal(r, np.float32([10, 14, 17]))
    assert pool.started == 2 and pool.restarts == 1


def test_the_budget_stops_the_run_with_a_clear_error():
  with rewards.RewardPool(workers=1, timeout_s=0.2, budget_s=0.5) as pool:
    _, m = pool.score(_SAMPLES[:2], (("sleepy", 1.0, {"on_tokens": 10}),))
    assert m["reward/timeouts"] == 1.0 and pool.lost_s == pytest.approx(0.2)
    with pytest.raises(rewards.RewardBudgetError, match=r"'sleepy'.*budget_s=0\.5.*raise"):
      pool.score(_SAMPLES[:2], (("sleepy", 1.0),))  # 0.4 s lost, then 0.6 s: stop
    assert pool.lost_s == pytest.approx(0.6) and pool.pids == []  # nothing left running
  assert isinstance(rewards.RewardBudgetError("x"), RuntimeError)


def test_no_budget_never_stops():
  with rewards.RewardPool(workers=1, timeout_s=0.2, budget_s=0) as pool:
    for _ in range(3):
      _, m = pool.score(_SAMPLES[:1], (("sleepy", 1.0),))
      assert m["reward/timeouts"] == 1.0
    assert pool.lost_s == pytest.approx(0.6)


def test_trusted_rewards_never_start_a_process(monkeypatch):
  assert all(registry.is_trusted(n) for n in ("exact_answer", "think_format", "length", "overlong"))
  assert not registry.is_trusted("num_tokens")  # registered without trusted=True

  def no_process(*args, **kwargs):
    raise AssertionError("a worker process was started")

  monkeypatch.setattr(combine, "_Process", no_process)
  spec = (
    ("exact_answer", 1.0),
    ("think_format", 0.1),
    ("length", -0.01, {"norm_tokens": 16}),
    ("overlong", 1.0, {"max_len": 16, "cache_len": 4}),
  )
  with rewards.RewardPool() as pool:
    pool.score(_SAMPLES, spec)
    assert pool.started == 0 and pool.pids == []
  rewards.score(_SAMPLES, spec)
  # Without a time limit nothing starts a process, untrusted rewards included.
  r, _ = rewards.score(_SAMPLES, (("num_tokens", 1.0),), timeout_s=None)
  np.testing.assert_array_equal(r, np.float32([10, 14, 17]))


def test_a_trusted_reward_may_be_a_lambda(monkeypatch):
  monkeypatch.setattr(registry.REWARDS, "_entries", dict(registry.REWARDS._entries))
  registry.register("_inline", trusted=True)(lambda sample: 3.0)
  r, _ = rewards.score(_SAMPLES, (("_inline", 1.0),))
  np.testing.assert_array_equal(r, np.full(3, 3.0, np.float32))


def _local():
  def reward(sample):
    return 1.0

  return reward


def _in_main(sample):
  return 1.0


_in_main.__module__ = "__main__"


@pytest.mark.parametrize(
  "fn, why",
  [(lambda sample: 1.0, "does not pickle"), (_local(), "does not pickle"), (_in_main, "__main__")],
)
def test_an_unpicklable_untrusted_reward_fails_when_the_spec_is_checked(monkeypatch, fn, why):
  monkeypatch.setattr(registry.REWARDS, "_entries", dict(registry.REWARDS._entries))
  registry.register("_local")(fn)
  spec = (("exact_answer", 1.0), ("_local", 1.0))
  pool = rewards.RewardPool()
  for attempt in (lambda: pool.check(spec), lambda: rewards.score(_SAMPLES, spec)):
    with pytest.raises(ValueError, match=rf"'_local'.*{why}.*module level.*trusted=True"):
      attempt()
  assert pool.started == 0
  pool.check(spec[:1])  # fine without it
  rewards.RewardPool(timeout_s=None).check(spec)  # and inline, where nothing is sent


def test_a_reward_the_worker_cannot_import_fails_clearly(monkeypatch):
  module = types.ModuleType("_not_on_disk")  # pickles by reference, imports only here
  exec("def reward(sample):\n  return 1.0\n", module.__dict__)
  monkeypatch.setitem(sys.modules, "_not_on_disk", module)
  monkeypatch.setattr(registry.REWARDS, "_entries", dict(registry.REWARDS._entries))
  registry.register("_nowhere")(module.reward)
  with rewards.RewardPool(workers=1, timeout_s=1.0) as pool:
    with pytest.raises(RuntimeError, match=r"could not load rewards \['_nowhere'\].*_not_on_disk"):
      pool.score(_SAMPLES, (("_nowhere", 1.0),))
    r, _ = pool.score(_SAMPLES, (("num_tokens", 1.0),))  # the pool still works
    np.testing.assert_array_equal(r, np.float32([10, 14, 17]))


def test_close_kills_the_workers():
  pool = rewards.RewardPool(workers=2, timeout_s=1.0)
  pool.score(_SAMPLES, (("pid", 1.0),))
  pids = pool.pids
  assert len(pids) == 2
  with pool:
    pass  # __exit__ closes
  assert pool.pids == [] and all(_dead(p) for p in pids)
  with pytest.raises(RuntimeError, match="closed"):
    pool.score(_SAMPLES, (("pid", 1.0),))


@pytest.mark.parametrize(
  "kwargs", [{"workers": 0}, {"timeout_s": 0.0}, {"max_timeouts": 0}, {"budget_s": -1.0}]
)
def test_bad_pool_settings(kwargs):
  with pytest.raises(ValueError):
    rewards.RewardPool(**kwargs)
