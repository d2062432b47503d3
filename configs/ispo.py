"""ISPO: GRPO plus the policy's own intrinsic signals (jaxpost/rewards/ispo.py).

Two token rewards on top of the outcome reward: ``ispo_signal`` (how much the thinking
raises the answer's log-probability over an empty think block, +/- by outcome, added to
the sequence reward before the group baseline, so a group of one outcome still has an
advantage) and ``ispo_certainty`` (at the answer tokens: the hallucinated-certainty
hinge on wrong rollouts, a confidence bonus on correct ones, added to the token
advantages). The paper's forms and weights are not published (``../shared/methods/
rl.md`` section 2): every one is a field of ``reward.ispo_signal`` /
``reward.ispo_certainty``; the weights here are ours.

Variants:
  tiny        CPU seconds: configs/grpo.py:tiny plus both signals (smoke test).
  quickstart  CPU minutes: configs/grpo.py:quickstart (start from --config.train.init_from=
              zoo:rl-start).
  smollm2     configs/grpo.py:smollm2 (SmolLM2-135M-Instruct on 3-digit addition).

  python -m jaxpost.main --config=configs/ispo.py:tiny --workdir=runs/ispo
"""

from jaxpost.config_lib import load_sibling

VARIANTS = ("tiny", "quickstart", "smollm2")


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected {' | '.join(VARIANTS)}")
  c = load_sibling(__file__, "grpo").get_config(variant)
  c.reward.token_terms = (("ispo_signal", 0.1), ("ispo_certainty", 0.1))
  c.reward.ispo_signal.keep_thinking = 0.0  # counterfactual: the empty think block
  c.reward.ispo_certainty.critical = "answer"  # the answer's tokens are the decisions
  c.reward.ispo_certainty.threshold = 0.5  # tau: confidence above it on a wrong answer costs
  return c
