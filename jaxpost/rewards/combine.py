"""Scores a batch of completions with a weighted sum of registered rewards.

``rewards[b] = sum_k weight_k * reward_k(samples[b], **hparams_k)``

A reward is arbitrary host-side Python (a verifier, a parser, perhaps a tool call),
so one bad term must not cost a training run: a call that raises, returns something
that is not a finite number, or runs past ``timeout_s`` scores 0 for that term and is
counted in the metrics.

How the time limit is enforced, and its limits. Calls run one at a time on a daemon
worker thread while the caller waits on each with a deadline. When a call overruns,
the caller stops waiting, scores it 0, marks that worker abandoned and starts a
fresh one for the remaining calls. Python cannot kill a thread, so:

* an abandoned call keeps running in the background until it returns on its own
  (its result is discarded); the number still alive is reported as
  ``reward/stuck_workers``. Daemon threads never block interpreter exit.
* a call stuck inside C code that holds the GIL (a pathological regex, a huge
  integer power) also stalls the caller; only a process boundary can bound that.
  Rewards that run untrusted code (sandboxed tools) should use their own
  subprocess with its own timeout.
* after ``max_timeouts`` overruns of one term in a batch, that term is skipped for the
  rest of the batch (scored 0, counted in ``reward/skipped``), which bounds both the
  extra wall time (about ``n_terms * max_timeouts * timeout_s``) and the number of
  abandoned threads per batch.

Threads rather than a process pool: reward functions and samples need not pickle
(``functools.partial`` of a local function, a closure over a tokenizer), there is no
fork of a process that has initialised JAX, and no per-call IPC. Running calls one
after another costs nothing, since pure-Python rewards would serialise on the GIL
anyway, and it keeps each call's time limit its own.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

import numpy as np

from jaxpost.rewards import registry
from jaxpost.rewards.registry import Sample

_WORKER_NAME = "jaxpost-reward-worker"
_STUCK_NAME = "jaxpost-reward-stuck"


@dataclasses.dataclass(frozen=True)
class Term:
  """One weighted reward of a spec.

  Attributes:
    name: registry key.
    weight: multiplies the reward in the sum.
    hparams: keyword arguments bound to the reward.
  """

  name: str
  weight: float = 1.0
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _BoundTerm:
  name: str
  weight: float
  fn: Callable[[Sample], Any]


def make_spec(
  terms: Sequence[Term | Sequence[Any]],
  hparams: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Term, ...]:
  """Validates a reward spec, e.g. from a config, and returns it as `Term`s.

  Every problem fails here, loudly, before any sample is scored: unknown names,
  repeated names, non-finite weights, hyperparameters the reward does not take or
  lacks, and values its registered check rejects.

  Args:
    terms: each a `Term`, ``(name, weight)`` or ``(name, weight, hparams)``, e.g. the
      config tuple ``(("exact_answer", 1.0), ("overlong", 1.0))``.
    hparams: optional ``{name: {hparam: value}}``, merged under a term's own (so a
      config can keep one ConfigDict per reward). Entries of registered rewards that
      are not in the spec are ignored; unknown names fail.

  Returns:
    The validated terms, in order.
  """
  hparams = dict(hparams or {})
  out: list[Term] = []
  for entry in terms:
    if not isinstance(entry, Term):
      if isinstance(entry, str) or not 2 <= len(entry) <= 3:
        raise ValueError(
          f"a reward term is (name, weight) or (name, weight, hparams), got {entry!r}"
        )
      entry = Term(entry[0], entry[1], dict(entry[2]) if len(entry) == 3 else {})
    fn = registry.get(entry.name)  # KeyError listing the known names
    weight = float(entry.weight)
    if not math.isfinite(weight):
      raise ValueError(f"reward {entry.name!r} has a non-finite weight {entry.weight!r}")
    if any(t.name == entry.name for t in out):
      raise ValueError(f"reward {entry.name!r} appears twice in the spec")
    kwargs = {**dict(hparams.pop(entry.name, {})), **dict(entry.hparams)}
    try:
      inspect.signature(fn).bind(None, **kwargs)
    except TypeError as e:
      raise TypeError(f"bad hyperparameters {kwargs} for reward {entry.name!r}: {e}") from None
    check = registry.get_check(entry.name)
    if check is not None:
      check(**kwargs)
    out.append(Term(entry.name, weight, kwargs))
  for name in hparams:  # blocks of unused rewards are fine (a base config may hold all)
    registry.get(name)  # but a misspelt name fails
  return tuple(out)


class _Worker:
  """A daemon thread running submitted calls one after another."""

  def __init__(self):
    self._jobs: queue.SimpleQueue = queue.SimpleQueue()
    self.thread = threading.Thread(target=self._loop, name=_WORKER_NAME, daemon=True)
    self.thread.start()

  def _loop(self) -> None:
    while True:
      job = self._jobs.get()
      if job is None:
        return
      fn, arg, future = job
      try:
        future.set_result(fn(arg))
      except BaseException as e:  # even SystemExit: a reward must not end scoring
        future.set_exception(e)

  def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future:
    future: Future = Future()
    future.set_running_or_notify_cancel()
    self._jobs.put((fn, arg, future))
    return future

  def stop(self) -> None:
    """Lets the thread exit once its current call (if any) returns."""
    self._jobs.put(None)

  def abandon(self) -> None:
    self.thread.name = _STUCK_NAME
    self.stop()


def _as_reward(value: Any) -> float:
  """The value as a finite float; raises for anything else (bool and str included)."""
  if isinstance(value, bool | str | bytes) or value is None:
    raise TypeError(f"a reward must return a real number, got {type(value).__name__}")
  x = float(value)
  if not math.isfinite(x):
    raise ValueError(f"a reward must be finite, got {x}")
  return x


def _call(
  worker: _Worker | None, fn: Callable[[Sample], Any], sample: Sample, timeout_s: float | None
) -> tuple[float, str | None]:
  """``(value, None)`` on success, ``(0.0, why)`` on failure; never raises for the reward."""
  if worker is None:
    try:
      return _as_reward(fn(sample)), None
    except Exception as e:  # any failure of a reward scores 0
      return 0.0, f"error {e!r}"
  future = worker.submit(fn, sample)
  try:
    # exception() rather than result(): whatever the reward raised, even a
    # BaseException such as SystemExit, comes back as a value; only a
    # KeyboardInterrupt of the caller itself propagates.
    exc = future.exception(timeout=timeout_s)
  except FutureTimeoutError:
    return 0.0, f"timeout after {timeout_s} s"
  if exc is not None:
    return 0.0, f"error {exc!r}"
  try:
    return _as_reward(future.result()), None
  except Exception as e:  # not a finite real number
    return 0.0, f"error {e!r}"


def stuck_workers() -> int:
  """Abandoned reward calls of this process that are still running."""
  return sum(t.name == _STUCK_NAME and t.is_alive() for t in threading.enumerate())


def score(
  samples: Sequence[Sample],
  spec: Sequence[Term | Sequence[Any]],
  *,
  timeout_s: float | None = 1.0,
  max_timeouts: int = 4,
) -> tuple[np.ndarray, dict[str, float]]:
  """Scores every sample with every term of ``spec`` and sums with the weights.

  Args:
    samples: the B completions.
    spec: reward terms (see `make_spec`; validated again here).
    timeout_s: time limit of one reward call, in seconds; None runs the calls inline
      in the calling thread without a limit (exceptions are still caught).
    max_timeouts: overruns of one term after which it is skipped for the rest of the
      batch.

  Returns:
    ``(rewards, metrics)``: rewards f32[B], the weighted sum; metrics with
    ``reward/mean`` (of the sum), ``reward/<name>`` (mean of the term, unweighted,
    failures counted as 0), ``reward/errors``, ``reward/timeouts``, ``reward/skipped``
    (failed or skipped calls over all terms) and ``reward/stuck_workers``.
  """
  terms = make_spec(spec)
  if timeout_s is not None and not timeout_s > 0:
    raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
  if max_timeouts < 1:
    raise ValueError(f"max_timeouts must be >= 1, got {max_timeouts}")
  bound = [
    _BoundTerm(t.name, t.weight, functools.partial(registry.get(t.name), **t.hparams))
    for t in terms
  ]
  values = np.zeros((len(bound), len(samples)), np.float64)  # [n_terms, B]
  counts = {"error": 0, "timeout": 0, "skipped": 0}
  worker = _Worker() if timeout_s is not None else None
  try:
    for k, term in enumerate(bound):
      term_timeouts, logged = 0, set()
      for b, sample in enumerate(samples):
        if term_timeouts >= max_timeouts:
          counts["skipped"] += 1
          continue
        value, failure = _call(worker, term.fn, sample, timeout_s)
        if failure is None:
          values[k, b] = value
          continue
        kind = failure.split(" ", 1)[0]  # "timeout" or "error"
        counts[kind] += 1
        if kind == "timeout":
          term_timeouts += 1
          worker.abandon()  # stuck in the call: let it finish alone, score on a fresh one
          worker = _Worker()
        if kind not in logged:  # once per kind of failure, term and batch
          logged.add(kind)
          logging.warning("reward %r on sample %d scored 0: %s", term.name, b, failure)
  finally:
    if worker is not None:
      worker.stop()
  weights = np.asarray([t.weight for t in bound], np.float64)
  rewards = (weights @ values).astype(np.float32) if bound else np.zeros(len(samples), np.float32)
  metrics = {
    "reward/mean": float(rewards.mean()) if len(samples) else 0.0,
    "reward/errors": float(counts["error"]),
    "reward/timeouts": float(counts["timeout"]),
    "reward/skipped": float(counts["skipped"]),
    "reward/stuck_workers": float(stuck_workers()),
  }
  for k, term in enumerate(bound):
    metrics[f"reward/{term.name}"] = float(values[k].mean()) if len(samples) else 0.0
  return rewards, metrics
