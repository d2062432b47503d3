"""Reinforce-Ada: GRPO's update on groups chosen by adaptive multi-round sampling.

Each step's P prompts are sampled in rounds of ``rl.ada.round_samples`` completions; a
prompt leaves once its draws meet the exit rule (``rl.ada.rule``: ``balanced``, G/2
positives and G/2 negatives, or ``positive``, one positive), at most
``rl.max_sample_rounds`` rounds; each keeps G rows (half positive, half negative where it
can) and its advantage baseline is the mean reward of all its draws
(``rl.ada.global_baseline``; no division by the std, as the released code runs it).
See jaxpost/rollout/adaptive.py and ``../shared/methods/rl.md`` section 6.

Variants:
  tiny        CPU seconds: configs/grpo.py:tiny with balanced adaptive sampling.
  quickstart  CPU minutes: configs/grpo.py:quickstart (start from --config.train.init_from=
              zoo:rl-start), 16 prompts x 8 kept rows, rounds of 8 draws, 4 rounds at most.

  python -m jaxpost.main --config=configs/reinforce_ada.py:tiny --workdir=runs/ada
  ... --config.rl.ada.rule=positive     # the positive-focused exit rule
"""

from jaxpost.config_lib import load_sibling

VARIANTS = ("tiny", "quickstart")


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected {' | '.join(VARIANTS)}")
  c = load_sibling(__file__, "grpo").get_config(variant)
  c.rl.ada.rule = "balanced"
  c.rl.ada.round_samples = c.rl.samples_per_prompt  # the code's round_repeat = 8 (quickstart)
  c.rl.max_sample_rounds = 4  # the code's max_rounds
  c.rl.ada.positive_threshold = 0.5  # exact_answer is 0 / 1 (the code: 0.7 on its scale)
  return c
