"""Skill-SD against GRPO from the same start per seed (configs/skill_sd.py).

Every cell runs 80 RL steps of ``configs/grpo.py:quickstart`` from the zoo's
``rl-start@SEED`` (as configs/sweeps/rl_algorithms.py does, whose ``grpo`` cell is the
baseline here), evaluating 200 held-out mul2x2 problems every 20 steps:
  grpo          GRPO alone (lambda = 0 is exactly this, tested);
  sd_1e-3       + lambda 0.001 x the sampled-token reverse KL to the policy's copy,
                synced every 10 RL steps, that reads a worked demonstration of another
                problem of the level in its prompt (teacher.privileged=skill): the paper's
                best lambda;
  sd_1e-1       lambda 0.1, to see the term's direction at this scale.

  python -m jaxpost.sweep --config=configs/sweeps/skill_sd.py --report
  python -m jaxpost.sweep.report runs/sweeps/skill_sd --out experiments/skill_sd
"""

from jaxpost.config_lib import load_sibling
from jaxpost.sweep import Sweep, cells


def _sd(name: str, lmbda: float) -> dict:
  return {
    "name": name,
    "config": "configs/skill_sd.py:quickstart",
    "reward.token_terms": (("teacher_log_ratio", lmbda),),
  }


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  return Sweep(
    base="configs/grpo.py:quickstart",
    cells=cells(
      {"name": "grpo"},
      _sd("sd_1e-3", 0.001),
      _sd("sd_1e-1", 0.1),
    ),
    seeds=(0, 1, 2),
    fixed=load_sibling(__file__, "rl_algorithms").FIXED,  # the same runs as its grpo cell
    report={
      "metrics": [
        "eval/accuracy",
        "eval/accuracy:max",
        "reward/exact_answer:last=10",
        "reward/teacher_log_ratio:mean",
      ],
      "baseline": "grpo",
      "curves": ["eval/accuracy", "reward/exact_answer"],
      "scale": 1.0,
    },
  )
