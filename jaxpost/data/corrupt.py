"""Known corruptions of the embedded tasks' traces, marked token by token (``data.corrupt``).

The Token Priority experiments need training data whose bad tokens are known: noise to
filter (positive priority) and an undesirable mode to unlearn (signed priority). Both
act on the traces of the tasks source, whose reasoning is comma-separated ``lhs=rhs``
steps (``47*6=282,47*80=3760,282+3760=4042``); the changed characters become
``Example.marks``, so their tokens carry ``ROLE_MARKED`` and token_priority's
``marked_weight`` can drop (0) or push down (< 0) exactly them.

  noise    the first step's result has its last digit off by one (``47*6=283``): a
           systematic annotator error in an intermediate (a consistent error, so that
           greedy decoding learns it once it is the majority), every later step and the
           answer left correct
  repeat   the first step is written twice (``47*6=282,47*6=282,...``): a looping mode
           (``eval/repeats/<level>`` counts it in the model's own traces)

Spec: ``kind:fraction[,kind:fraction]`` (e.g. ``"noise:0.3"``); each example is
corrupted by at most one kind, drawn from ``(seed, index)``, so a resumed run sees the
same data. The held-out problems are never corrupted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxpost.data.template import Example

KINDS = ("noise", "repeat")


def parse(spec: str) -> dict[str, float]:
  """``"noise:0.3,repeat:0.1"`` -> {kind: fraction}; fractions sum to at most 1."""
  out = {}
  for item in (x.strip() for x in spec.split(",") if x.strip()):
    kind, sep, frac = item.partition(":")
    if kind not in KINDS or not sep:
      raise ValueError(f"{item!r}: expected KIND:FRACTION with KIND one of {KINDS}")
    value = float(frac)
    if not 0 <= value <= 1 or kind in out:
      raise ValueError(f"{item!r}: a fraction in [0, 1], each kind once")
    out[kind] = value
  if sum(out.values()) > 1:
    raise ValueError(f"{spec!r}: the fractions sum to more than 1")
  return out


def check(spec) -> None:
  """The config rule: a valid spec or ""."""
  if not isinstance(spec, str):
    raise TypeError(f"got {spec!r}")
  parse(spec)


def _steps(thinking: str) -> list[tuple[int, int]]:
  """(start, end) of each comma-separated step."""
  out, at = [], 0
  for part in thinking.split(","):
    out.append((at, at + len(part)))
    at += len(part) + 1
  return out


def noise(ex: Example, rng: np.random.Generator | None = None) -> Example:
  """The first step's last result digit d written as (d + 1) mod 10, marked."""
  del rng
  (start, end), *_ = _steps(ex.thinking)
  step = ex.thinking[start:end]
  if "=" not in step or not step[-1].isdigit():
    return ex
  at = end - 1
  new = str((int(ex.thinking[at]) + 1) % 10)
  thinking = ex.thinking[:at] + new + ex.thinking[at + 1 :]
  return dataclasses.replace(ex, thinking=thinking, marks=((at, at + 1),))


def repeat(ex: Example, rng: np.random.Generator | None = None) -> Example:
  """The first step written twice; the second copy (and its comma) marked."""
  del rng
  (start, end), *_ = _steps(ex.thinking)
  if end <= start:
    return ex
  first = ex.thinking[start:end]
  thinking = first + "," + ex.thinking
  return dataclasses.replace(ex, thinking=thinking, marks=((end, end + len(first) + 1),))


CORRUPTIONS = {"noise": noise, "repeat": repeat}


def corrupt(ex: Example, index: int, fractions: dict[str, float], seed: int) -> Example:
  """``ex`` corrupted by the kind drawn for ``(seed, index)`` (or left clean)."""
  if not fractions:
    return ex
  rng = np.random.default_rng([seed, index, 0xC0DE])
  u, acc = rng.random(), 0.0
  for kind, frac in fractions.items():
    acc += frac
    if u < acc:
      return CORRUPTIONS[kind](ex, rng)
  return ex


def repeated_step(thinking: str) -> bool:
  """Whether a reasoning trace writes some step twice (the ``repeat`` mode, or looping)."""
  steps = [s for s in thinking.split(",") if s]
  return len(set(steps)) < len(steps)
