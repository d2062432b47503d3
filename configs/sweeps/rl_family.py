"""The RL-family methods of issue 18 against GRPO, from the same start per seed.

Every cell runs 80 RL steps from the zoo's ``rl-start@SEED`` (the runs of
configs/sweeps/rl_algorithms.py, whose ``grpo`` cell is the baseline here: 16 prompts x
8 samples of mul2x2, about a third of the groups with one outcome), evaluating 200
held-out mul2x2 problems every 20 steps:

  grpo              the baseline
  ispo              + ISPO's sequence signal (weight 0.1) and certainty reward (0.1)
  ispo_signal       + the sequence signal alone
  ispo_certainty    + the certainty reward alone (critical tokens: the answer)
  ispo_entropy      + the certainty reward at high-entropy tokens (>= 0.5 nats) and the answer
  ispo_clip20, ispo_signal_clip20
                    ispo and ispo_signal with the signal clipped at 20 nats, not 5: at 5 the
                    tiny models' signal saturates (an empty think block makes their answer
                    ~10 nats a token less likely), so groups of one outcome stay uniform
  ada_balanced      Reinforce-Ada, balanced exit, rounds of 8, 4 rounds, global baseline
  ada_positive      Reinforce-Ada, positive-focused exit
  rubric            the programmatic rubric (format veto, steps in quarters, answer x2)
                    instead of the exact-answer reward
  tldr              exact answer + TLDR's level-tagged length penalty (lambdas 0.6 / 0.3 / 0)
  tldr_tags_only    the same tags with every lambda 0: what the tags alone do
  grpo_tagged, tldr_tagged
                    grpo and tldr from ``rl-start-tagged@SEED`` (the same SFT with the tags
                    before its prompts in turn, meaningless there): a start that has seen them

  python -m jaxpost.sweep --config=configs/sweeps/rl_family.py --root=runs/sweeps/rl_family
  python -m jaxpost.sweep.report runs/sweeps/rl_family --out experiments/rl_family
"""

from jaxpost.config_lib import load_sibling
from jaxpost.sweep import Sweep, cells

ISPO = "configs/ispo.py:quickstart"
TAGGED = "zoo:rl-start-tagged@{seed}"


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  return Sweep(
    base="configs/grpo.py:quickstart",
    cells=cells(
      {"name": "grpo"},
      {"name": "ispo", "config": ISPO},
      {"name": "ispo_signal", "config": ISPO, "reward.token_terms": (("ispo_signal", 0.1),)},
      {
        "name": "ispo_certainty",
        "config": ISPO,
        "reward.token_terms": (("ispo_certainty", 0.1),),
      },
      {
        "name": "ispo_entropy",
        "config": ISPO,
        "reward.token_terms": (("ispo_certainty", 0.1),),
        "reward.ispo_certainty.critical": "both",
        "reward.ispo_certainty.entropy_threshold": 0.5,
      },
      {"name": "ispo_clip20", "config": ISPO, "reward.ispo_signal.clip": 20.0},
      {
        "name": "ispo_signal_clip20",
        "config": ISPO,
        "reward.token_terms": (("ispo_signal", 0.1),),
        "reward.ispo_signal.clip": 20.0,
      },
      {"name": "ada_balanced", "config": "configs/reinforce_ada.py:quickstart"},
      {
        "name": "ada_positive",
        "config": "configs/reinforce_ada.py:quickstart",
        "rl.ada.rule": "positive",
      },
      {"name": "rubric", "reward.terms": (("rubric", 1.0),)},
      {"name": "tldr", "config": "configs/tldr.py:quickstart"},
      {
        "name": "tldr_tags_only",
        "config": "configs/tldr.py:quickstart",
        "reward.tldr.levels": (
          ("short", "(1) ", 0.0),
          ("medium", "(2) ", 0.0),
          ("long", "(3) ", 0.0),
        ),
      },
      {"name": "grpo_tagged", "train.init_from": TAGGED},
      {"name": "tldr_tagged", "config": "configs/tldr.py:quickstart", "train.init_from": TAGGED},
    ),
    seeds=(0, 1, 2),
    fixed=load_sibling(__file__, "rl_algorithms").FIXED,  # the same runs as its grpo cell
    report={
      "metrics": [
        "eval/accuracy",
        "eval/accuracy:max",
        "eval/tokens/mul2x2",
        "reward/exact_answer:last=10",
        "rl/zero_adv_group_frac:mean",
        "rl/zero_outcome_group_frac:mean",
        "rl/identical_group_frac:mean",
        "rl/answer_conf_wrong:last=10",
        "rl/ada_drawn_mean:mean",
        "train/grad_norm:max",
      ],
      "baseline": "grpo",
      "curves": ["eval/accuracy", "rl/zero_adv_group_frac"],
      "scale": 1.0,
    },
  )
