"""Scores a batch of completions with a weighted sum of registered rewards.

``rewards[b] = sum_k weight_k * reward_k(samples[b], **hparams_k)``

A reward is arbitrary host-side Python (a verifier, a parser, perhaps a tool call),
so one bad term must not cost a training run: a call that raises, returns something
that is not a finite number, runs past ``timeout_s`` or crashes its process scores 0
for that term and is counted in the metrics.

Where a call runs. A *trusted* reward (``register(..., trusted=True)``: the built-ins,
pure string and arithmetic functions) runs inline in the caller, without a time limit;
an exception still scores 0. Every other reward runs in a `RewardPool` of worker
processes with a hard time limit per call: at the limit the caller kills that worker
(SIGTERM to its process group, SIGKILL after a grace second) and starts a fresh one
for the remaining calls. So whatever the reward does, holding the GIL in C code (a
pathological regex, ``10 ** 10 ** 8``), busy-looping or sleeping, it stops at the limit
and leaves nothing running that slows the caller; a worker that dies (a segfault,
``os._exit``) is replaced and its call counted as an error. The pool starts only when
a spec has an untrusted term, so a spec of built-ins never starts a process.

Workers are fresh interpreters (``jaxpost/rewards/worker.py``), never forks: the
parent has initialised JAX, whose threads and device state a fork would copy in an
undefined state. They are started like multiprocessing's spawn start method, but by
path with ``python -P`` rather than through ``multiprocessing``, which would import
the parent's ``__main__`` (a training script: JAX) in every worker. A worker imports
only the modules of the rewards it runs: reward functions are pickled by reference
(module and qualified name), so an untrusted reward must be a module-level function
of an importable module; `RewardPool.check` fails at start-up otherwise. Calls go to a
worker in chunks (one message each way per chunk and one short message per result);
each result carries the time the next call starts, so each call keeps its own
deadline. With ``workers`` > 1, chunks score in parallel; the output never depends
on which worker scored what.

What bounds the damage:

* after ``max_timeouts`` overruns of one term in a batch, that term is skipped for the
  rest of the batch (scored 0, counted in ``reward/skipped``). With one worker that
  bounds the extra wall time to about ``n_terms * max_timeouts * timeout_s`` per
  batch; calls of the term already sent to other workers still run, so with ``N``
  workers a term may time out up to ``max_timeouts + N - 1`` times.
* a pool has a budget for its whole life (a run): ``budget_s`` seconds lost to
  timed-out calls (``timeout_s`` each). Past it, `RewardBudgetError` stops the run
  rather than letting it train on zeros; 0 means no budget.

Limits: a chunk's clock starts once its worker has loaded the rewards (module imports
are not charged to the first call; loading has its own ``start_timeout_s``); a call
that starts processes in a session of their own escapes the kill; workers need POSIX
(``pass_fds``, process groups). ``timeout_s=None`` runs every reward inline without a
limit (debugging, trusted code).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import connection
from typing import Any

import numpy as np

from jaxpost.rewards import registry
from jaxpost.rewards import worker as worker_lib
from jaxpost.rewards.registry import Sample

_WORKER_FILE = os.path.abspath(worker_lib.__file__)
_CHUNK = 16  # most calls per message to a worker (fewer when that leaves a worker idle)
_GRACE_S = 1.0  # between SIGTERM and SIGKILL of a worker


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
    for key, value in kwargs.items():  # each value against its declared rule
      rule = registry.REWARDS.entry(entry.name).rules.get(key)
      problem = rule.problem(value) if rule is not None else None
      if problem:
        raise ValueError(f"reward {entry.name!r}: {key}={value!r}: {problem}")
    check = registry.get_check(entry.name)
    if check is not None:
      check(**kwargs)
    out.append(Term(entry.name, weight, kwargs))
  for name in hparams:  # blocks of unused rewards are fine (a base config may hold all)
    registry.get(name)  # but a misspelt name fails
  return tuple(out)


class RewardBudgetError(RuntimeError):
  """Timed-out reward calls have cost a pool (a run) its whole ``budget_s``."""


def _call_inline(fn: Callable[[Sample], Any], sample: Sample) -> tuple[float, str | None]:
  """A trusted call in the caller: failures score 0, but Ctrl-C still stops the run."""
  try:
    return worker_lib.as_reward(fn(sample)), None
  except (Exception, SystemExit) as e:
    return 0.0, f"error {e!r}"


def _call_batched(fn, samples: list[Sample]) -> list[tuple[float, str | None]]:
  """A batched (trusted) call: one exception scores every sample 0."""
  try:
    values = list(fn(samples))
    if len(values) != len(samples):
      raise ValueError(f"returned {len(values)} values for {len(samples)} samples")
  except (Exception, SystemExit) as e:
    return [(0.0, f"error {e!r}")] * len(samples)
  out = []
  for v in values:
    try:
      out.append((worker_lib.as_reward(v), None))
    except (Exception, SystemExit) as e:
      out.append((0.0, f"error {e!r}"))
  return out


def _cannot_send(fn: Callable) -> str | None:
  """Why ``fn`` cannot reach a worker process (which unpickles it by reference), or None."""
  base = fn
  while isinstance(base, functools.partial):
    base = base.func
  if getattr(base, "__module__", None) == "__main__":
    return "it is defined in __main__ (a script or notebook cell), which a worker cannot import"
  try:
    pickle.dumps(fn)
  except Exception as e:  # a lambda, a local function, a closure over a lock, ...
    return f"it does not pickle ({type(e).__name__}: {e})"
  return None


class _Process:
  """One worker process: ``python -P worker.py``, with a command and a result pipe."""

  def __init__(self, start_timeout_s: float):
    cmd_r, cmd_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
      self.popen = subprocess.Popen(
        [sys.executable, "-P", _WORKER_FILE, str(cmd_r), str(out_w)],
        pass_fds=(cmd_r, out_w),
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: a kill reaches its children
      )
    except BaseException:
      os.close(cmd_w)
      os.close(out_r)
      raise
    finally:
      os.close(cmd_r)
      os.close(out_w)
    self.pid = self.popen.pid
    self.commands = connection.Connection(cmd_w, readable=False)
    self.results = connection.Connection(out_r, writable=False)
    self.loaded: set[int] = set()  # fn ids this worker has unpickled
    if not self.results.poll(start_timeout_s):
      self.kill()
      raise RuntimeError(f"a reward worker did not start within {start_timeout_s} s")
    try:
      self.results.recv()  # ("ready", pid)
    except EOFError:
      code = self.kill()
      raise RuntimeError(f"a reward worker exited at start-up (exit code {code})") from None

  def kill(self) -> int:
    """Terminates the worker and its process group (then kills it); returns the exit code."""
    for conn in (self.commands, self.results):
      conn.close()
    for sig in (signal.SIGTERM, signal.SIGKILL):
      try:
        os.killpg(self.pid, sig)
      except (ProcessLookupError, PermissionError):
        pass  # already gone
      try:
        return self.popen.wait(_GRACE_S)
      except subprocess.TimeoutExpired:
        continue
    return self.popen.wait()


def _kill_all(procs: list[_Process | None]) -> None:
  for i, proc in enumerate(procs):
    if proc is not None:
      proc.kill()
      procs[i] = None


@dataclasses.dataclass
class _Job:
  """The chunk a worker is running: ``calls`` (k, b) still due, the first one running."""

  calls: list[tuple[int, int]]
  deadline: float  # of loading, then of the running call (time.monotonic)
  loading: bool = True


class RewardPool:
  """Scores batches with reward specs; untrusted rewards run in killable worker processes.

  One pool lives for a run (its budget spans every batch); workers start on the first
  batch with an untrusted term and are reused. Not thread-safe. Use as a context
  manager, or call `close` (a finaliser also kills the workers at exit).

  Args:
    workers: worker processes that may score in parallel (started as needed).
    timeout_s: hard time limit of one untrusted reward call, in seconds; None runs
      every reward inline in the caller without a limit (no process is started).
    max_timeouts: overruns of one term after which it is skipped for the rest of the
      batch.
    budget_s: seconds that timed-out calls may cost over the pool's life (each costs
      ``timeout_s``); once reached, `score` raises `RewardBudgetError`. 0: no budget.
    start_timeout_s: time limit of a worker's start-up and of loading its rewards.
  """

  def __init__(
    self,
    *,
    workers: int = 2,
    timeout_s: float | None = 1.0,
    max_timeouts: int = 4,
    budget_s: float = 600.0,
    start_timeout_s: float = 60.0,
  ):
    if workers < 1:
      raise ValueError(f"workers must be >= 1, got {workers}")
    if timeout_s is not None and not timeout_s > 0:
      raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    if max_timeouts < 1:
      raise ValueError(f"max_timeouts must be >= 1, got {max_timeouts}")
    if not budget_s >= 0:
      raise ValueError(f"budget_s must be >= 0 (0 = no budget), got {budget_s}")
    self.workers, self.timeout_s, self.max_timeouts = workers, timeout_s, max_timeouts
    self.budget_s, self.start_timeout_s = float(budget_s), start_timeout_s
    self.lost_s = 0.0  # seconds lost to timed-out calls so far
    self.restarts = 0  # workers replaced so far (killed at a time limit or died)
    self.started = 0  # worker processes started so far
    self._procs: list[_Process | None] = [None] * workers
    self._fn_ids: dict[bytes, int] = {}
    self._closed = False
    self._finalizer = weakref.finalize(self, _kill_all, self._procs)

  def __enter__(self) -> RewardPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Kills the workers; the pool cannot score afterwards."""
    self._closed = True
    self._finalizer()

  @property
  def pids(self) -> list[int]:
    """Process ids of the running workers."""
    return [p.pid for p in self._procs if p is not None]

  def _remote(self, name: str) -> bool:
    return self.timeout_s is not None and not registry.is_trusted(name)

  def check(self, spec: Sequence[Term | Sequence[Any]]) -> tuple[Term, ...]:
    """Validates ``spec`` (`make_spec`) and that its untrusted rewards can reach a worker.

    Starts no process. Raises ValueError naming a reward that cannot be pickled by
    reference (a lambda, a local function, one defined in __main__).
    """
    terms = make_spec(spec)
    for t in terms:
      if self._remote(t.name):
        self._fn_id(t)
    return terms

  def _fn_id(self, term: Term) -> int:
    fn = functools.partial(registry.get(term.name), **term.hparams)
    problem = _cannot_send(fn)
    if problem is not None:
      raise ValueError(
        f"reward {term.name!r} cannot be sent to a reward worker process: {problem}. "
        "Define it at module level in an importable module, or, if it is pure and fast, "
        "register it with trusted=True to run it in-process (without a time limit)."
      )
    return self._fn_ids.setdefault(pickle.dumps(fn), len(self._fn_ids))

  def score(
    self, samples: Sequence[Sample], spec: Sequence[Term | Sequence[Any]]
  ) -> tuple[np.ndarray, dict[str, float]]:
    """Scores every sample with every term of ``spec`` and sums with the weights.

    Returns:
      ``(rewards, metrics)``: rewards f32[B], the weighted sum; metrics with
      ``reward/mean`` (of the sum), ``reward/<name>`` (mean of the term, unweighted,
      failures counted as 0), ``reward/errors``, ``reward/timeouts``, ``reward/skipped``
      (failed or skipped calls over all terms) and ``reward/restarted_workers``
      (workers replaced in this batch).

    Raises:
      RewardBudgetError: timed-out calls have used up ``budget_s``.
      RuntimeError: a worker could not start or load a reward.
    """
    if self._closed:
      raise RuntimeError("this RewardPool is closed")
    terms = self.check(spec)
    batch = _Batch(self, terms, list(samples))
    try:
      batch.fill()  # workers start on their chunks while the trusted terms run here
      for k, term in enumerate(terms):
        if not self._remote(term.name):
          fn = functools.partial(registry.get(term.name), **term.hparams)
          if registry.is_batched(term.name):
            for b, result in enumerate(_call_batched(fn, batch.samples)):
              batch.record(k, b, *result)
            continue
          for b, sample in enumerate(batch.samples):
            batch.record(k, b, *_call_inline(fn, sample))
      while batch.jobs:
        batch.pump()
    except BaseException:  # stale chunks must not answer the next batch
      for w in list(batch.jobs):
        self._replace(w)
      raise
    weights = np.asarray([t.weight for t in terms], np.float64)
    values = batch.values
    rewards = (weights @ values).astype(np.float32) if terms else np.zeros(len(samples), np.float32)
    metrics = {
      "reward/mean": float(rewards.mean()) if len(samples) else 0.0,
      **{f"reward/{kind}": float(n) for kind, n in batch.counts.items()},
    }
    for k, term in enumerate(terms):
      metrics[f"reward/{term.name}"] = float(values[k].mean()) if len(samples) else 0.0
    return rewards, metrics

  def _worker(self, w: int) -> _Process:
    if self._procs[w] is None:
      self._procs[w] = _Process(self.start_timeout_s)
      self.started += 1
    return self._procs[w]

  def _replace(self, w: int) -> int:
    """Kills worker ``w`` (a fresh one starts when next needed); returns its exit code."""
    proc, self._procs[w] = self._procs[w], None
    return proc.kill() if proc is not None else 0


class _Batch:
  """The state of one `RewardPool.score` call: results, counts and the chunks in flight."""

  def __init__(self, pool: RewardPool, terms: tuple[Term, ...], samples: list[Sample]):
    self.pool, self.terms, self.samples = pool, terms, samples
    self.values = np.zeros((len(terms), len(samples)), np.float64)  # [n_terms, B]
    self.counts = {"errors": 0, "timeouts": 0, "skipped": 0, "restarted_workers": 0}
    remote = [k for k, t in enumerate(terms) if pool._remote(t.name)]
    self.fn_ids = {k: pool._fn_id(terms[k]) for k in remote}
    self.queue = collections.deque((k, b) for k in remote for b in range(len(samples)))
    self.chunk = max(1, min(_CHUNK, -(-len(self.queue) // pool.workers)))  # all get work
    self.jobs: dict[int, _Job] = {}  # worker index -> its chunk
    self.term_timeouts = collections.Counter()
    self.logged: set[tuple[int, str]] = set()

  def record(self, k: int, b: int, value: float, failure: str | None) -> None:
    if failure is None:
      self.values[k, b] = value
      return
    kind = failure.split(" ", 1)[0]  # "timeout" or "error"
    self.counts[f"{kind}s"] += 1
    if (k, kind) not in self.logged:  # once per kind of failure, term and batch
      self.logged.add((k, kind))
      logging.warning("reward %r on sample %d scored 0: %s", self.terms[k].name, b, failure)

  def fill(self) -> None:
    """Sends a chunk to every idle worker while calls are due."""
    for w in range(self.pool.workers):
      if not self.queue:
        return
      if w not in self.jobs:
        self._dispatch(w)

  def _dispatch(self, w: int) -> None:
    calls = []
    while self.queue and len(calls) < self.chunk:
      k, b = self.queue.popleft()
      if self.term_timeouts[k] >= self.pool.max_timeouts:
        self.counts["skipped"] += 1
      else:
        calls.append((k, b))
    if not calls:
      return
    ids = {self.fn_ids[k] for k, _ in calls}
    payload = pickle.dumps(
      [(k * len(self.samples) + b, self.fn_ids[k], self.samples[b]) for k, b in calls]
    )
    for attempt in (0, 1):  # an idle worker may have died since the last batch
      proc = self.pool._worker(w)
      blobs = {i: blob for blob, i in self.pool._fn_ids.items() if i in ids - proc.loaded}
      try:
        proc.commands.send(("calls", list(sys.path), blobs, payload))
        break
      except OSError:
        self.pool._replace(w)
        if attempt:
          raise
    proc.loaded |= ids
    deadline = time.monotonic() + self.pool.start_timeout_s
    self.jobs[w] = _Job(calls, deadline)

  def pump(self) -> None:
    """Handles what the busy workers sent, then kills those past their deadline."""
    procs = {self.pool._procs[w].results: w for w in self.jobs}
    wait_s = min(job.deadline for job in self.jobs.values()) - time.monotonic()
    for conn in connection.wait(list(procs), max(wait_s, 0.0)):
      w = procs[conn]
      while w in self.jobs and self.pool._procs[w].results is conn and conn.poll(0):
        try:
          message = conn.recv()
        except (EOFError, OSError):
          self._died(w)
          break
        self._handle(w, message)
    now = time.monotonic()
    for w, job in list(self.jobs.items()):
      if job.deadline <= now:
        self._expired(w, job)

  def _names(self, job: _Job) -> list[str]:
    return sorted({self.terms[k].name for k, _ in job.calls})

  def _handle(self, w: int, message: tuple) -> None:
    job = self.jobs[w]
    if message[0] == "loaded":
      _, t, error = message
      if error is not None:
        raise RuntimeError(
          f"a reward worker could not load rewards {self._names(job)}: {error}. An untrusted "
          "reward must be importable by module and name in a fresh interpreter (same "
          "sys.path); or register it with trusted=True to run it in-process."
        )
      job.loading, job.deadline = False, t + self.pool.timeout_s
      return
    _, call_id, value, failure, t = message
    k, b = job.calls.pop(0)
    assert call_id == k * len(self.samples) + b, (call_id, k, b)
    self.record(k, b, value, failure)
    job.deadline = t + self.pool.timeout_s
    if not job.calls:
      del self.jobs[w]
      self._dispatch(w)

  def _lost(self, w: int, job: _Job, failure: str) -> None:
    """The running call of ``job`` scores 0; its worker is replaced, the rest requeued."""
    k, b = job.calls.pop(0)
    del self.jobs[w]
    self.counts["restarted_workers"] += 1
    self.pool.restarts += 1
    self.queue.extendleft(reversed(job.calls))
    self.record(k, b, 0.0, failure)

  def _died(self, w: int) -> None:
    job = self.jobs[w]
    code = self.pool._replace(w)
    if job.loading:
      raise RuntimeError(f"a reward worker died (exit code {code}) loading {self._names(job)}")
    self._lost(w, job, f"error (the worker process died, exit code {code})")
    self._dispatch(w)

  def _expired(self, w: int, job: _Job) -> None:
    pool = self.pool
    pool._replace(w)
    if job.loading:
      raise RuntimeError(
        f"a reward worker did not load {self._names(job)} within {pool.start_timeout_s} s"
      )
    k = job.calls[0][0]
    self._lost(w, job, f"timeout after {pool.timeout_s} s (worker killed)")
    self.term_timeouts[k] += 1
    pool.lost_s += pool.timeout_s
    if pool.budget_s and pool.lost_s >= pool.budget_s:
      raise RewardBudgetError(
        f"reward {self.terms[k].name!r} timed out again: timed-out reward calls have now cost "
        f"{pool.lost_s:.1f} s, the budget of this run (reward.budget_s={pool.budget_s:g}). "
        "Fix or drop the reward, raise reward.timeout_s if its calls are just slow, or raise "
        "reward.budget_s (0 = no budget)."
      )
    self._dispatch(w)


def score(
  samples: Sequence[Sample],
  spec: Sequence[Term | Sequence[Any]],
  *,
  timeout_s: float | None = 1.0,
  max_timeouts: int = 4,
  workers: int = 1,
) -> tuple[np.ndarray, dict[str, float]]:
  """`RewardPool.score` with a pool for this one batch (no budget); see `RewardPool`.

  A run should keep one `RewardPool` instead: its workers start once and its budget
  spans the run. A spec of trusted rewards (the built-ins) starts no process.
  """
  with RewardPool(
    workers=workers, timeout_s=timeout_s, max_timeouts=max_timeouts, budget_s=0.0
  ) as pool:
    return pool.score(samples, spec)
