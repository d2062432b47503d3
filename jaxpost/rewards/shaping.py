"""Shaping rewards: output format and length, added to an outcome reward with a weight."""

from __future__ import annotations

import math
import operator

from jaxpost import fields
from jaxpost.data.template import parse_response
from jaxpost.rewards.registry import Sample, register


def _check_think_format(*, ok: float = 1.0, bad: float = 0.0) -> None:
  if not (math.isfinite(ok) and math.isfinite(bad)):
    raise ValueError(f"think_format values must be finite, got {ok=} {bad=}")


@register(
  "think_format",
  check=_check_think_format,
  trusted=True,
  rules={"ok": fields.num(), "bad": fields.num()},
)
def think_format(sample: Sample, *, ok: float = 1.0, bad: float = 0.0) -> float:
  """Format reward: ``ok`` for ``<think>...</think>`` followed by a non-blank answer.

  The response must start with exactly one well-formed think block
  (``data/template.py:parse_response``, ``format_ok``) and have some non-whitespace
  text after it; the reasoning itself may be empty. The text alone is judged: a
  truncated completion with a well-formed prefix still counts.

  Args:
    sample: the completion.
    ok: value for a well-formed completion.
    bad: value otherwise.

  Returns:
    ``ok`` or ``bad``.
  """
  response = parse_response(sample.completion, finished=not sample.truncated)
  return float(ok if response.format_ok and response.answer.strip() else bad)


def _check_length(*, norm_tokens: int, free_tokens: int = 0) -> None:
  if operator.index(norm_tokens) <= 0:
    raise ValueError(f"length needs norm_tokens > 0, got {norm_tokens}")
  if operator.index(free_tokens) < 0:
    raise ValueError(f"length needs free_tokens >= 0, got {free_tokens}")


# Config value 0 of a length budget means the sampling cap (resolved by the RL recipe).
@register(
  "length",
  check=_check_length,
  trusted=True,
  rules={"norm_tokens": fields.integer(ge=0), "free_tokens": fields.integer(ge=0)},
)
def length(sample: Sample, *, norm_tokens: int, free_tokens: int = 0) -> float:
  """Linear length penalty: ``-max(n - free_tokens, 0) / norm_tokens``.

  With weight lambda next to an outcome reward this is the length-regularised reward
  of TLDR ("Making Small Language Models Efficient Reasoners: Intervention,
  Supervision, Reinforcement", arXiv 2505.07961), R = r_acc - lambda * P(L). The paper's
  P is not known (see methods/rl.md section 3); we choose P(L) linear in the tokens
  beyond a free budget, which is non-increasing in L and 0 when lambda = 0.

  Args:
    sample: the completion; ``n = sample.num_tokens``.
    norm_tokens: tokens that cost 1 (e.g. the generation cap, so the penalty is in
      [-1, 0] for completions within it).
    free_tokens: tokens that cost nothing.

  Returns:
    The penalty, <= 0.
  """
  return -max(sample.num_tokens - free_tokens, 0) / norm_tokens


def _check_overlong(*, max_len: int, cache_len: int, penalty_factor: float = 1.0) -> None:
  max_len, cache_len = operator.index(max_len), operator.index(cache_len)
  if not 0 <= cache_len <= max_len or max_len <= 0:
    raise ValueError(
      f"overlong needs 0 <= cache_len <= max_len, max_len > 0; got {max_len=}, {cache_len=}"
    )
  if not (math.isfinite(penalty_factor) and penalty_factor >= 0):
    raise ValueError(f"overlong needs a finite penalty_factor >= 0, got {penalty_factor}")


@register(
  "overlong",
  check=_check_overlong,
  trusted=True,
  rules={
    "max_len": fields.integer(ge=0),
    "cache_len": fields.integer(ge=0),
    "penalty_factor": fields.num(ge=0),
  },
)
def overlong(sample: Sample, *, max_len: int, cache_len: int, penalty_factor: float = 1.0) -> float:
  """DAPO's soft overlong punishment, in tokens.

  "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (arXiv
  2503.14476), with ``n = |y|`` the completion length::

      R_len = 0                                  if n <= max_len - cache_len
      R_len = ((max_len - cache_len) - n) / cache_len   if max_len - cache_len < n <= max_len
      R_len = -1                                 if n > max_len

  times ``penalty_factor`` (verl's ``overlong_buffer.penalty_factor``, 1.0 in DAPO).
  The penalty falls linearly from 0 to -1 across the last ``cache_len`` tokens before
  ``max_len``. ``cache_len = 0`` is a hard cut-off (-1 beyond ``max_len``).

  Which numbers DAPO used: its run generates at most 20480 tokens, of which 16384
  are the "expected" length and 4096 the punishment cache; verl's recipe implements
  that as ``max_response_length = 20480`` with ``overlong_buffer.len = 4096`` (the
  penalty starts at 16384 and reaches -1 at the cap). In this function's terms that
  is ``max_len = 20480, cache_len = 4096``: ``max_len`` is where the penalty reaches
  -1, normally the generation cap.

  Args:
    sample: the completion; ``n = sample.num_tokens`` (EOS included).
    max_len: L_max, the length at (and beyond) which the penalty is -1.
    cache_len: L_cache, the width of the soft-punishment interval.
    penalty_factor: scale of the penalty.

  Returns:
    The penalty, in [-penalty_factor, 0].
  """
  n, start = sample.num_tokens, max_len - cache_len
  if n <= start:
    r = 0.0
  elif n <= max_len:
    r = (start - n) / cache_len  # cache_len > 0 here: the interval is non-empty
  else:
    r = -1.0
  return penalty_factor * r
