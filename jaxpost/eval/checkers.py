"""Answer checkers for generation-based evaluation of user data (``eval.checker``).

A checker is ``fn(response: str, example: Example) -> bool``: is the model's decoded
response (text up to EOS, think block included) a correct answer to ``example``, whose
``answer`` is the reference? Register one with ``@register("name")`` in code that runs
before the recipe, or name any importable function as ``"package.module:function"``
(the CLI path: nothing to register).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from jaxpost.data.template import Example, parse_response

Checker = Callable[[str, Example], bool]
CHECKERS: dict[str, Checker] = {}


def register(name: str) -> Callable[[Checker], Checker]:
  """Decorator: ``eval.checker=name`` uses the function."""

  def wrap(fn: Checker) -> Checker:
    if name in CHECKERS:
      raise ValueError(f"checker {name!r} is registered twice")
    CHECKERS[name] = fn
    return fn

  return wrap


def _answer(response: str) -> str:
  """The text after the think block (empty when the tags are malformed)."""
  return parse_response(response).answer.strip()


@register("exact_match")
def exact_match(response: str, example: Example) -> bool:
  """The answer after the think block equals the reference, ignoring surrounding space."""
  return _answer(response) == example.answer.strip()


@register("normalized_match")
def normalized_match(response: str, example: Example) -> bool:
  """Exact match after case folding, collapsing runs of whitespace and dropping a final
  period (short free-text answers: "Paris." == "paris")."""

  def norm(text: str) -> str:
    return " ".join(text.casefold().split()).removesuffix(".")

  return norm(_answer(response)) == norm(example.answer)


def get(spec: str) -> Checker:
  """The checker ``spec`` names: a registered name or ``"module:function"``.

  Raises:
    ValueError: unknown name, unimportable module or missing / non-callable attribute.
  """
  if spec in CHECKERS:
    return CHECKERS[spec]
  module, sep, attr = spec.partition(":")
  if not sep or not module or not attr:
    raise ValueError(
      f"unknown checker {spec!r}: registered ones are {', '.join(sorted(CHECKERS))}, "
      "or name a function as 'package.module:function'"
    )
  try:
    fn = getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"checker {spec!r}: {e}") from None
  if not callable(fn):
    raise ValueError(f"checker {spec!r} is not callable")
  return fn
