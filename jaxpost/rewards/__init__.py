"""Host-side rewards, looked up by name (see ``registry``), and their weighted sum.

``RewardPool(...).score(samples, spec)`` turns B completions into f32[B] rewards (one
pool per run; ``score(samples, spec, timeout_s=...)`` for one batch); a spec is a config
tuple such as ``(("exact_answer", 1.0), ("overlong", 1.0))``.
"""

from jaxpost.rewards.combine import RewardBudgetError, RewardPool, Term, make_spec, score
from jaxpost.rewards.registry import Sample, get, names, register

__all__ = [
  "RewardBudgetError",
  "RewardPool",
  "Sample",
  "Term",
  "get",
  "make_spec",
  "names",
  "register",
  "score",
]
