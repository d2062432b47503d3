"""Host-side rewards, looked up by name (see ``registry``), and their weighted sum.

``score(samples, spec, timeout_s=...)`` turns B completions into f32[B] rewards; a
spec is a config tuple such as ``(("exact_answer", 1.0), ("overlong", 1.0))``.
"""

from jaxpost.rewards.combine import Term, make_spec, score
from jaxpost.rewards.registry import Sample, get, names, register

__all__ = ["Sample", "Term", "get", "make_spec", "names", "register", "score"]
