"""Rubric rewards: GRPO on a rubric's aggregated score instead of the exact answer alone
(jaxpost/rewards/rubric.py; methods card rl.md section 11).

A rubric is K criteria, each (grader, weight, veto, tiers); graders are programmatic
(``format``, ``steps``, ``answer``, ``length``, ``plan``: plan-then-act as a criterion) or
a frozen model asked a question (``judge:<question>``, SmolLM2-135M-Instruct by default,
scored by its probabilities of the tier labels). Aggregation: veto, saturation, weighted
mean, high-score shaping, each a field of ``reward.rubric``. ``rl.prompt_filter`` screens
the prompts by the rubric before training and keeps the band [low, high].

Variants:
  tiny              CPU seconds: configs/grpo.py:tiny, the programmatic rubric, prompts
                    screened by it (smoke test).
  quickstart        CPU minutes: configs/grpo.py:quickstart (start from
                    --config.train.init_from=zoo:rl-start), the programmatic rubric.
  quickstart_judge  the same with a model-graded criterion: SmolLM2-135M-Instruct asked
                    whether the final answer is correct (3 tiers) next to format and steps.
  smollm2           configs/grpo.py:smollm2 with the model-graded rubric.

  python -m jaxpost.main --config=configs/rubric.py:tiny --workdir=runs/rubric
"""

from jaxpost.config_lib import load_sibling

VARIANTS = ("tiny", "quickstart", "quickstart_judge", "smollm2")
HALVES = (0.0, 0.5, 1.0)
QUARTERS = (0.0, 0.25, 0.5, 0.75, 1.0)
JUDGED = (
  ("format", 1.0, True),  # a veto: no well-formed think block, no reward
  ("steps", 1.0, False, QUARTERS),
  ("judge:Is the final answer correct?", 2.0, False, HALVES),
)


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected {' | '.join(VARIANTS)}")
  base = "quickstart" if variant == "quickstart_judge" else variant
  c = load_sibling(__file__, "grpo").get_config(base)
  c.reward.terms = (("rubric", 1.0),)
  c.reward.rubric.saturation = 0.0  # linear per criterion (k > 0: diminishing returns)
  c.reward.rubric.shaping = 1.0  # no high-score shaping (g > 1 widens the top)
  if variant in ("quickstart_judge", "smollm2"):
    c.reward.rubric.criteria = JUDGED
    c.reward.rubric.judge = "smollm2"
  if variant == "tiny":
    c.rl.prompt_filter.reward = "rubric"
    c.rl.prompt_filter.candidates = 4
    c.rl.prompt_filter.samples = 2
  return c
