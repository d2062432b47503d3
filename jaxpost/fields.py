"""Allowed values of config fields and hyperparameters, declared next to them.

A config section declares, right below its fields, what each one accepts::

    c.optim.lr = 3e-4  # peak learning rate
    c.optim.b1 = 0.9  # adam beta1
    fields.declare("optim", lr=fields.num(gt=0), b1=fields.num(ge=0, lt=1))

and a registered loss or reward declares its hyperparameters' rules with
``register(..., rules={...})``. ``config_lib.validate`` checks every leaf of a config
against its rule before any work starts, so a bad value is one line naming the field,
the value and what is allowed. Cross-field conditions (a batch that must split over
micro-batches) stay in the validators; a rule is about one value.

A rule is data (bounds, choices), so the property tests can draw values on both sides
of it (tests/test_fields.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any


class Rule:
  """What one field accepts. ``problem(value)`` is None when allowed, else why not."""

  def problem(self, value: Any) -> str | None:
    raise NotImplementedError

  def describe(self) -> str:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Num(Rule):
  """A finite number in a range; ``integer`` demands an int; ``special`` values are allowed
  outside the range (0 = off, -1 = fill the rest)."""

  ge: float | None = None
  gt: float | None = None
  le: float | None = None
  lt: float | None = None
  integer: bool = False
  special: tuple = ()

  def problem(self, value):
    if isinstance(value, bool) or not isinstance(value, int | float):
      return f"must be {self.describe()}"
    if self.integer and not isinstance(value, int):
      return f"must be {self.describe()}"
    if value in self.special:
      return None
    if not math.isfinite(value) or not self.in_range(value):
      return f"must be {self.describe()}"
    return None

  def in_range(self, x: float) -> bool:
    return (
      (self.ge is None or x >= self.ge)
      and (self.gt is None or x > self.gt)
      and (self.le is None or x <= self.le)
      and (self.lt is None or x < self.lt)
    )

  def describe(self) -> str:
    kind = "an int" if self.integer else "a finite number"
    bounds = [
      f"{op} {_fmt(v)}"
      for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
      if v is not None
    ]
    text = f"{kind} {' and '.join(bounds)}".rstrip()
    if self.special:
      text += f" (or {' or '.join(_fmt(s) for s in self.special)})"
    return text


@dataclasses.dataclass(frozen=True)
class OneOf(Rule):
  """One of a set of values; ``choices`` may be a zero-argument callable (a registry's
  names, read when checked, so late registrations count)."""

  choices: tuple | Callable[[], Iterable[Any]]

  def values(self) -> tuple:
    return tuple(self.choices() if callable(self.choices) else self.choices)

  def problem(self, value):
    choices = self.values()
    if value in choices and type(value) in {type(c) for c in choices}:
      return None
    hint = suggest(str(value), [str(c) for c in choices])
    return f"must be one of {choices}" + (f" (did you mean {hint!r}?)" if hint else "")

  def describe(self) -> str:
    return f"one of {self.values()}"


@dataclasses.dataclass(frozen=True)
class Flag(Rule):
  """True or False."""

  def problem(self, value):
    return None if isinstance(value, bool) else "must be True or False"

  def describe(self) -> str:
    return "True or False"


@dataclasses.dataclass(frozen=True)
class Text(Rule):
  """A string; ``check(value)`` (optional) raises ValueError with what is wrong, and
  ``nonempty`` rejects ""."""

  what: str = "a string"
  check: Callable[[str], None] | None = None
  nonempty: bool = False

  def problem(self, value):
    if not isinstance(value, str):
      return f"must be {self.what}"
    if self.nonempty and not value:
      return f"must be {self.what}, not empty"
    if self.check is not None and value:
      try:
        self.check(value)
      except ValueError as e:
        return f"must be {self.what}: {e}"
    return None

  def describe(self) -> str:
    return self.what


@dataclasses.dataclass(frozen=True)
class Custom(Rule):
  """Anything ``check(value)`` accepts (raises ValueError/TypeError otherwise), e.g. a
  tuple of reward terms."""

  what: str
  check: Callable[[Any], None]

  def problem(self, value):
    try:
      self.check(value)
    except (ValueError, TypeError, KeyError) as e:
      return f"must be {self.what}: {str(e).strip(chr(34) + chr(39))}"
    return None

  def describe(self) -> str:
    return self.what


def _fmt(x) -> str:
  return repr(x) if not isinstance(x, float) or x != int(x) else str(int(x)) + ".0"


# Builders, so declarations read as the condition.
def num(**bounds) -> Num:
  """A finite float within ``ge / gt / le / lt`` (``special``: values allowed besides)."""
  return Num(**bounds)


def integer(**bounds) -> Num:
  """An int within ``ge / gt / le / lt``."""
  return Num(integer=True, **bounds)


def one_of(choices) -> OneOf:
  return OneOf(choices if callable(choices) else tuple(choices))


FLAG = Flag()
TEXT = Text()


def regex(value: str) -> None:
  try:
    re.compile(value)
  except re.error as e:
    raise ValueError(str(e)) from None


PATTERN = Text("a regular expression", check=regex)


# dotted field -> rule, filled by the sections' ``declare`` calls.
FIELDS: dict[str, Rule] = {}


def declare(section: str, **rules: Rule) -> None:
  """Declares the rules of fields ``<section>.<name>`` (idempotent: sections are built
  on every ``get_config``)."""
  for name, rule in rules.items():
    if not isinstance(rule, Rule):
      raise TypeError(f"{section}.{name}: a rule must be a fields.Rule, got {rule!r}")
    FIELDS[f"{section}.{name}" if section else name] = rule


def suggest(word: str, candidates: Iterable[str]) -> str | None:
  """The closest candidate to a misspelt ``word``, if one is close."""
  hits = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
  return hits[0] if hits else None
