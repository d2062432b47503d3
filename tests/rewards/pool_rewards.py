"""Rewards for the worker-process tests, at module level so a worker imports them by name.

Only the standard library is imported here: a worker that runs them must not import
JAX (tests/rewards/test_reward_pool.py checks). Registered by the tests themselves.
"""

import os
import re
import sys
import time


def sleepy(sample, *, on_tokens: int = -1):
  """Sleeps far past any limit on samples of ``on_tokens`` tokens (-1: all), else 1."""
  if on_tokens in (-1, sample.num_tokens):
    time.sleep(60.0)
  return 1.0


def gil_power(sample):
  """A huge integer power: minutes inside one C call that never releases the GIL."""
  return float(10 ** (10**8) > 0)


def gil_regex(sample):
  """Catastrophic backtracking: one C call (holding the GIL) of about 2 ** 40 steps."""
  return float(re.match(r"(a+)+$", "a" * 40 + "b") is None)


def busy(sample):
  """A pure-Python busy loop."""
  while True:
    pass


def crash(sample, *, on_tokens: int = -1):
  """Ends its process at once (as a segfault would) on samples of ``on_tokens`` tokens."""
  if on_tokens in (-1, sample.num_tokens):
    os._exit(1)
  return 2.0


def constant(sample, *, value=1.0):
  """Returns ``value`` as is (good or bad)."""
  return value


def boom(sample):
  """Raises on the 14-token sample, else 2."""
  if sample.num_tokens == 14:
    raise RuntimeError("verifier crashed")
  return 2.0


def exits(sample):
  """Raises SystemExit, which must not end the worker."""
  raise SystemExit(3)


def pid(sample):
  """The worker's process id (as a float: a reward is a number)."""
  return float(os.getpid())


def jax_imported(sample):
  """1.0 if this process has imported JAX."""
  return float("jax" in sys.modules)


def num_tokens(sample):
  """The sample's token count (a deterministic untrusted reward)."""
  return float(sample.num_tokens)


def nap(sample, *, seconds: float = 0.1):
  """Sleeps ``seconds``, then returns 1."""
  time.sleep(seconds)
  return 1.0
