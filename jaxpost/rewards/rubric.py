"""Rubric rewards (RL with Rubric Anchors, arXiv 2508.12790; methods card rl.md section
11): K graded criteria, each with ordered score tiers, a weight and a veto flag,
aggregated into one scalar reward.

A criterion's grader returns a raw score in [0, 1]; it is snapped down to the highest
of the criterion's tiers at or below it (``tiers=(0, 1)``: pass / fail; ``(0, 0.5, 1)``:
three levels). Aggregation, in this order (the paper names these parts; their forms and
constants are not published, so each form here is our choice, exposed as a
hyperparameter):

  veto        a veto criterion at its lowest tier makes the reward ``veto_value``,
              whatever the others score
  saturation  each score through f(s) = (1 - exp(-k s)) / (1 - exp(-k)), k =
              ``saturation`` (0: f(s) = s): concave, f(0) = 0, f(1) = 1, so a
              dimension's marginal gain shrinks as it fills (diminishing returns)
  weighting   the weighted mean sum_k w_k f(s_k) / sum_k w_k: scaling every weight by c > 0
              changes nothing
  shaping     R^g, g = ``shaping`` >= 1 (1: none): the slope g R^(g-1) grows with R, which
              widens differences among high-scoring responses

A criterion's grader is programmatic, for the embedded tasks (``GRADERS``), or a model:
``judge:<question>`` asks a frozen model (``judge``: SmolLM2-135M-Instruct by default;
``rewards/judge.py``) the question about the problem and the completion, and the score is
the expected tier under its next-token probabilities of the labels "0", "1", ... (one
per tier, batched over the whole batch: the reward is registered ``batched``). A veto
fires when a criterion's score is nearest its lowest tier.

The programmatic graders: ``format``
(one well-formed think block and a non-blank answer), ``steps`` (the fraction of
``lhs=value`` steps of the trace that are right: every digit sum of an addition, every
partial product and the final sum of a multiplication), ``partials`` (the same over
every step but the last: a multiplication's partial products), ``final_step`` (the last
step is right: a multiplication's final sum), ``answer`` (the final answer is
right), ``length`` (1 within ``length_budget`` completion tokens, falling linearly to 0
at twice the budget), ``plan`` (the trace opens with an explicit plan step, ``plan:...``,
before its first computed step: plan-then-act as a criterion).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from jaxpost import fields
from jaxpost.data.tasks import trace_errors
from jaxpost.data.template import parse_response
from jaxpost.rewards.registry import Sample, register

PLAN_PREFIX = "plan:"
JUDGE_PREFIX = "judge:"


@dataclasses.dataclass(frozen=True)
class Criterion:
  """One rubric dimension: a grader in ``GRADERS``, its weight, its veto flag, its tiers."""

  grader: str
  weight: float = 1.0
  veto: bool = False
  tiers: tuple[float, ...] = (0.0, 1.0)

  def __post_init__(self):
    if self.judged:
      if not self.question.strip():
        raise ValueError(f"rubric grader {self.grader!r}: a judge needs a question")
      if len(self.tiers) > 10:
        raise ValueError(f"rubric grader {self.grader!r}: a judge reads at most 10 tiers")
    elif self.grader not in GRADERS:
      raise ValueError(
        f"rubric grader {self.grader!r}; expected one of {sorted(GRADERS)} or "
        f"'{JUDGE_PREFIX}<question>'"
      )
    if not (math.isfinite(self.weight) and self.weight >= 0):
      raise ValueError(f"rubric weight of {self.grader!r} must be >= 0, got {self.weight}")
    t = tuple(float(x) for x in self.tiers)
    if len(t) < 2 or list(t) != sorted(set(t)) or t[0] < 0 or t[-1] > 1:
      raise ValueError(f"rubric tiers of {self.grader!r}: increasing, in [0, 1], got {t}")

  @property
  def judged(self) -> bool:
    """Graded by the model judge (``judge:<question>``)."""
    return self.grader.startswith(JUDGE_PREFIX)

  @property
  def question(self) -> str:
    return self.grader[len(JUDGE_PREFIX) :]

  def vetoes(self, score: float) -> bool:
    """A veto criterion whose score is nearest its lowest tier."""
    return self.veto and min(self.tiers, key=lambda t: abs(t - score)) == self.tiers[0]

  def tier(self, raw: float) -> float:
    """The highest tier at or below ``raw`` (clipped to [0, 1])."""
    raw = min(max(float(raw), 0.0), 1.0)
    return max((t for t in self.tiers if t <= raw + 1e-12), default=self.tiers[0])


def aggregate(
  scores: Sequence[float],
  criteria: Sequence[Criterion],
  *,
  saturation: float = 0.0,
  shaping: float = 1.0,
  veto_value: float = 0.0,
) -> float:
  """The rubric reward of tiered ``scores`` (one per criterion; module doc)."""
  if len(scores) != len(criteria) or not criteria:
    raise ValueError(f"{len(scores)} scores for {len(criteria)} criteria")
  if any(c.vetoes(s) for s, c in zip(scores, criteria, strict=True)):
    return float(veto_value)
  total = sum(c.weight for c in criteria)
  if total <= 0:
    raise ValueError("rubric weights must not all be 0")
  mean = sum(c.weight * _saturate(s, saturation) for s, c in zip(scores, criteria, strict=True))
  return float((mean / total) ** shaping)


def _saturate(s: float, k: float) -> float:
  return s if k == 0 else (1.0 - math.exp(-k * s)) / (1.0 - math.exp(-k))


# --- programmatic graders ----------------------------------------------------------


def _format(sample: Sample, **_) -> float:
  r = parse_response(sample.completion, finished=not sample.truncated)
  return float(r.format_ok and bool(r.answer.strip()))


def _computed_steps(thinking: str) -> list[str]:
  steps = [s for s in thinking.split(",") if s]
  return steps[1:] if steps and steps[0].startswith(PLAN_PREFIX) else steps


def _steps(sample: Sample, **_) -> float:
  r = parse_response(sample.completion, finished=not sample.truncated)
  steps = _computed_steps(r.thinking)
  if not r.format_ok or not steps:
    return 0.0
  return 1.0 - len(trace_errors(",".join(steps))) / len(steps)


def _partials(sample: Sample, **_) -> float:
  r = parse_response(sample.completion, finished=not sample.truncated)
  inner = _computed_steps(r.thinking)[:-1]
  if not r.format_ok or not inner:
    return 0.0
  return 1.0 - len(trace_errors(",".join(inner))) / len(inner)


def _final_step(sample: Sample, **_) -> float:
  r = parse_response(sample.completion, finished=not sample.truncated)
  steps = _computed_steps(r.thinking)
  return float(r.format_ok and bool(steps) and not trace_errors(steps[-1]))


def _answer(sample: Sample, **_) -> float:
  r = parse_response(sample.completion, finished=not sample.truncated)
  right = r.answer.strip() == sample.answer.strip() and bool(sample.answer.strip())
  return float(r.format_ok and not sample.truncated and right)


def _length(sample: Sample, *, length_budget: int, **_) -> float:
  over = max(sample.num_tokens - length_budget, 0)
  return max(0.0, 1.0 - over / max(length_budget, 1))


def _plan(sample: Sample, **_) -> float:
  r = parse_response(sample.completion, finished=not sample.truncated)
  first = r.thinking.split(",", 1)[0] if r.format_ok else ""
  return float(first.startswith(PLAN_PREFIX) and len(first) > len(PLAN_PREFIX))


GRADERS: dict[str, Callable[..., float]] = {
  "format": _format,
  "steps": _steps,
  "partials": _partials,
  "final_step": _final_step,
  "answer": _answer,
  "length": _length,
  "plan": _plan,
}


def grade(sample: Sample, criteria: Sequence[Criterion], *, length_budget: int = 64) -> list[float]:
  """Every programmatic criterion's tiered score of ``sample``."""
  return [c.tier(GRADERS[c.grader](sample, length_budget=length_budget)) for c in criteria]


def grade_batch(
  samples: Sequence[Sample],
  criteria: Sequence[Criterion],
  *,
  length_budget: int = 64,
  judge: str = "smollm2",
) -> np.ndarray:
  """f32[N, K]: every criterion's score of every sample (judge criteria batched)."""
  out = np.zeros((len(samples), len(criteria)), np.float32)
  for k, c in enumerate(criteria):
    if c.judged:
      from jaxpost.rewards import judge as judge_lib  # a model: loaded only when asked

      out[:, k] = judge_lib.grade(
        judge_lib.get(judge),
        c.question,
        [s.prompt for s in samples],
        [s.completion for s in samples],
        c.tiers,
      )
    else:
      out[:, k] = [grade(s, [c], length_budget=length_budget)[0] for s in samples]
  return out


def parse_criteria(spec) -> tuple[Criterion, ...]:
  """``((grader, weight[, veto[, tiers]]), ...)`` (a config tuple) -> criteria."""
  if not isinstance(spec, tuple | list) or not spec:
    raise ValueError(f"rubric criteria: a non-empty tuple of (grader, weight), got {spec!r}")
  out = []
  for item in spec:
    if not isinstance(item, tuple | list) or not 2 <= len(item) <= 4:
      raise ValueError(f"a rubric criterion is (grader, weight[, veto[, tiers]]), got {item!r}")
    veto = bool(item[2]) if len(item) > 2 else False
    tiers = tuple(item[3]) if len(item) > 3 else (0.0, 1.0)
    out.append(Criterion(item[0], float(item[1]), veto, tiers))
  if len({c.grader for c in out}) != len(out):
    raise ValueError("a rubric grader appears twice")
  return tuple(out)


QUARTERS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_CRITERIA = (("format", 1.0, True), ("steps", 1.0, False, QUARTERS), ("answer", 2.0))


def _check_rubric(*, criteria=DEFAULT_CRITERIA, saturation=0.0, shaping=1.0, veto_value=0.0,
                  length_budget=64, judge="smollm2") -> None:  # fmt: skip
  parse_criteria(criteria)
  if not (saturation >= 0 and shaping >= 1 and math.isfinite(veto_value) and length_budget >= 1):
    raise ValueError(
      f"rubric: saturation >= 0, shaping >= 1, length_budget >= 1, got {saturation}, "
      f"{shaping}, {length_budget}"
    )
  if not judge:
    raise ValueError("rubric: judge names the grading model ('smollm2', a .gguf, a run)")


@register(
  "rubric",
  check=_check_rubric,
  trusted=True,
  batched=True,
  rules={
    "criteria": fields.Custom("(grader, weight[, veto[, tiers]]) tuples", parse_criteria),
    "judge": fields.TEXT,
    "saturation": fields.num(ge=0),
    "shaping": fields.num(ge=1),
    "veto_value": fields.num(),
    "length_budget": fields.integer(ge=1),
  },
)
def rubric(
  samples: Sequence[Sample],
  *,
  criteria=DEFAULT_CRITERIA,
  saturation: float = 0.0,
  shaping: float = 1.0,
  veto_value: float = 0.0,
  length_budget: int = 64,
  judge: str = "smollm2",
) -> list[float]:
  """The rubric reward of each sample: its criteria graded (programmatically or by the
  model judge, batched), then aggregated (module doc).

  Args:
    samples: the batch's completions.
    criteria: ``(grader, weight[, veto[, tiers]])`` tuples; default: format (a veto),
      the trace's steps (in quarters), and the answer at twice their weight.
    saturation: k of the per-dimension diminishing-returns map (0 = linear).
    shaping: g of the high-score shaping R^g (1 = none).
    veto_value: the reward when a veto criterion is at its lowest tier.
    length_budget: completion tokens the ``length`` grader allows in full.
    judge: the model of ``judge:`` criteria: "smollm2", a .gguf file, a run or zoo:NAME.
  """
  crit = parse_criteria(criteria)
  scores = grade_batch(samples, crit, length_budget=length_budget, judge=judge)
  return [
    aggregate(row, crit, saturation=saturation, shaping=shaping, veto_value=veto_value)
    for row in scores.tolist()
  ]
