"""SimpleTIR's void-turn filter on multi-turn tool rollouts (configs/simpletir.py).

Every cell runs 40 RL steps of ``configs/simpletir.py:quickstart`` from the zoo's
``tir-start@SEED`` (one-call Python traces for 3x3 and 4x3-digit multiplication, SFT
stopped at step 100, about 40% held-out), 8 prompts x 8 trajectories of up to 3 model
turns and 96 tokens a step, evaluating 100 held-out problems per level with greedy tool
rollouts every 20 steps:

  no_filter        multi-turn GRPO, every trajectory in the loss (the baseline)
  filter           SimpleTIR: trajectories with a void turn carry no loss, stay in the
                   group baseline (the released code)
  filter_excluded  the same, and void trajectories left out of the group baseline

  python -m jaxpost.sweep --config=configs/sweeps/simpletir.py --root=runs/sweeps/simpletir
  python -m jaxpost.sweep.report runs/sweeps/simpletir --out experiments/rl_family/simpletir
"""

from jaxpost.sweep import Sweep, cells


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  return Sweep(
    base="configs/simpletir.py:quickstart",
    cells=cells(
      {"name": "no_filter", "rl.tool.mask_void": False},
      {"name": "filter"},
      {"name": "filter_excluded", "rl.tool.void_in_group": False},
    ),
    seeds=(0, 1, 2),
    fixed={
      "train.init_from": "zoo:tir-start@{seed}",
      "train.steps": 40,
      "train.max_minutes": 0.0,
      "train.log_every": 1,
      "train.progress": False,
      "rl.prompts_per_step": 8,
      "eval.every": 20,
    },
    report={
      "metrics": [
        "eval/accuracy",
        "eval/accuracy/mul4x3",
        "reward/exact_answer:last=10",
        "tool/void_frac:mean",
        "tool/calls_mean:mean",
        "tool/failed_call_frac:mean",
        "train/grad_norm:max",
        "train/grad_norm:mean",
      ],
      "baseline": "no_filter",
      "curves": ["eval/accuracy", "train/grad_norm", "tool/void_frac"],
      "scale": 1.0,
    },
  )
