"""Reward registry: config name -> host-side reward function.

Contract for every registered reward::

    reward(sample: Sample, **hparams) -> float

* Called on the host, in plain Python, once per completion, outside ``jit``.
* ``sample`` is a `Sample`; hyperparameters are keyword-only and bound with
  ``functools.partial`` outside (see `combine.make_spec`), so every call of one term
  in a run sees the same hyperparameters.
* The result is one finite real number. A reward that raises, returns something that
  is not a finite number or runs past its time limit is scored 0 for that term and
  counted in the metrics by `combine.score`; it never stops the run.
* A reward may register a ``check`` function, called with the hyperparameters when a
  spec is built, so a bad value fails loudly at start-up instead of as one error per
  sample.
* A *batched* reward (``register(..., batched=True)``, trusted only) is called once per
  batch instead, ``reward(samples: list[Sample], **hparams) -> sequence of B floats``:
  for rewards that run a model over the whole batch (the rubric's model grader). An
  exception scores the whole batch 0; a non-finite value scores its sample 0.
* By default a reward is untrusted: it runs in a worker process that is killed at the
  time limit, so it must be a module-level function of an importable module (it is
  pickled by reference). ``trusted=True`` marks a pure, fast function that runs in the
  calling process without a time limit (see `combine`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

from jaxpost.registry import Registry

if TYPE_CHECKING:  # a reward worker unpickles `Sample`s: importing this must not pull in JAX
  from jaxpost.data.tasks import Problem

RewardFn = Callable[..., float]
CheckFn = Callable[..., None]

# Built-ins: every module of jaxpost/rewards (a new file registers by existing).
REWARDS = Registry("reward", builtins=("jaxpost.rewards.*",))

# Metric names `combine.score` writes next to ``reward/<name>``; a reward may not take one.
RESERVED_NAMES = frozenset({"mean", "errors", "timeouts", "skipped", "restarted_workers"})


@dataclasses.dataclass(frozen=True)
class Sample:
  """One completion to score, with everything a reward may look at.

  Attributes:
    prompt: the task text, without template decoration (``Problem.prompt``).
    completion: the decoded response, everything the model generated before EOS
      (EOS itself excluded), e.g. ``"<think>7+8+0=15,...</think>825"``.
    answer: the reference answer ("" when the data has none).
    num_tokens: number of generated completion tokens, counting the EOS token when
      one was emitted (the lengths DAPO's overlong punishment is measured in).
    truncated: True when generation hit the token cap without emitting EOS.
    level: the task level (a name in ``jaxpost.data.tasks.LEVELS``), "" if unknown.
  """

  prompt: str
  completion: str
  answer: str
  num_tokens: int
  truncated: bool = False
  level: str = ""

  def __post_init__(self):
    for name in ("prompt", "completion", "answer", "level"):
      if not isinstance(getattr(self, name), str):
        raise TypeError(f"Sample.{name} must be str, got {type(getattr(self, name)).__name__}")
    if operator.index(self.num_tokens) < 0:
      raise ValueError(f"Sample.num_tokens must be >= 0, got {self.num_tokens}")

  @classmethod
  def from_problem(
    cls, problem: Problem, completion: str, *, num_tokens: int, truncated: bool = False
  ) -> Sample:
    """A sample for a completion of one of the embedded tasks (``data/tasks.py``)."""
    return cls(
      prompt=problem.prompt,
      completion=completion,
      answer=problem.answer,
      num_tokens=num_tokens,
      truncated=truncated,
      level=problem.level,
    )


def register(
  name: str,
  *,
  check: CheckFn | None = None,
  trusted: bool = False,
  batched: bool = False,
  rules=None,
  prompts=None,
) -> Callable[[RewardFn], RewardFn]:
  """Decorator adding a reward under ``name`` (the name used in the config's spec).

  Args:
    name: registry key; equals the function's name.
    check: optional ``check(**hparams) -> None`` that raises ValueError on bad
      hyperparameter values; run once when a spec is built.
    rules: ``{hparam: jaxpost.fields.Rule}``, what each hyperparameter accepts as a
      config value (checked with the config, before any work).
    trusted: the reward is pure and fast (string parsing, arithmetic), so it runs inline
      in the calling process, without a time limit and without a worker process;
      exceptions still score 0. Leave False for anything that may hang or crash.
    batched: called once per batch with the list of samples (module doc); needs
      ``trusted``.
    prompts: optional ``prompts(problem, index, **hparams) -> Problem``: the reward
      reads something it asks to be put on the prompts (TLDR's length-level tags); a
      recipe applies it to prompt ``index`` of its stream (`conditioned`).
  """
  if name in RESERVED_NAMES or "/" in name or not name:
    raise ValueError(f"reward name {name!r} is reserved or invalid")
  if batched and not trusted:
    raise ValueError(f"reward {name!r}: a batched reward runs in-process, so trusted=True")
  return REWARDS.register(
    name, check=check, rules=rules, trusted=bool(trusted), batched=bool(batched), prompts=prompts
  )


def get(name: str) -> RewardFn:
  """Looks up a reward by name, with the list of known names in the error."""
  return REWARDS.get(name)


def get_check(name: str) -> CheckFn | None:
  """The hyperparameter check registered with ``name``, if any."""
  return REWARDS.entry(name).check


def is_trusted(name: str) -> bool:
  """Whether the reward registered as ``name`` runs in-process (``register(trusted=True)``)."""
  return bool(REWARDS.entry(name).meta.get("trusted", False))


def is_batched(name: str) -> bool:
  """Whether the reward registered as ``name`` scores a whole batch per call."""
  return bool(REWARDS.entry(name).meta.get("batched", False))


def names() -> list[str]:
  return REWARDS.names()


def conditioned(problem_at: Callable[[int], Problem], spec) -> Callable[[int], Problem]:
  """``problem_at`` (index -> Problem) with the prompt changes of the spec's rewards
  (their ``register(prompts=...)``), each with the term's hyperparameters, in spec order."""
  changes = [
    functools.partial(REWARDS.entry(t.name).meta["prompts"], **t.hparams)
    for t in spec
    if REWARDS.entry(t.name).meta.get("prompts") is not None
  ]
  if not changes:
    return problem_at

  def at(index: int) -> Problem:
    problem = problem_at(index)
    for change in changes:
      problem = change(problem, index)
    return problem

  return at
