"""GRPO demo: what RL adds to an under-trained SFT model, against continued SFT.

Per seed, from the zoo's ``rl-start@SEED`` (the quickstart stopped at step 700 of its
3000-step schedule, about 50-56% held-out mul2x2):
  start     that model, evaluated (a fork that trains no step);
  rl        configs/grpo.py:quickstart for 300 RL steps (about 10 minutes on 2 cores);
  sft_more  the SFT run continued (a fork: same optimizer state, schedule and data
            stream) for 1900 more steps, about the same wall-clock as the RL cell.
Step budgets, not minutes, so a busy machine changes the time, not the result.

  python -m jaxpost.sweep --config=configs/sweeps/grpo_demo.py --report
  python -m jaxpost.sweep.report runs/sweeps/grpo_demo --out experiments/grpo_demo

Variant ``tiny``: the same three cells on the zoo's ``tiny-sft`` in seconds (tests).
"""

from jaxpost.sweep import Sweep, cells

LEVEL = {"eval.levels": "mul2x2", "eval.final_levels": ""}
# The zoo entry's own settings, so a fork continues its run (jaxpost.zoo, "rl-start").
SFT = {
  "train.steps": 3000,
  "train.max_minutes": 0.0,
  "train.checkpoint_every": 100_000,
  "eval.every": 0,
  **LEVEL,
}


def get_config(variant: str = "default") -> Sweep:
  if variant == "tiny":
    start, sft_config, sft, steps = "zoo:tiny-sft@{seed}", "configs/sft.py:tiny", {}, (30, 3, 40)
    rl = {"train.steps": 4, "eval.every": 2, "eval.num_examples": 8, "eval.batch_size": 8}
    rl_config = "configs/grpo.py:tiny"
    sft = {"train.steps": 40, "eval.every": 0, "eval.num_examples": 8, "eval.batch_size": 8}
  elif variant == "default":
    start, sft_config, sft, steps = (
      "zoo:rl-start@{seed}",
      "configs/quickstart.py",
      SFT,
      (700, 300, 2600),
    )
    rl = {"train.max_minutes": 0.0, **LEVEL}
    rl_config = "configs/grpo.py:quickstart"
  else:
    raise ValueError(f"unknown variant {variant!r}; expected default | tiny")
  fork = {"train.init_from": start, "train.init_mode": "fork", **sft}
  return Sweep(
    base=rl_config,
    cells=cells(
      {"name": "start", "config": sft_config, **fork, "train.stop_at": steps[0]},
      {"name": "rl", "train.init_from": start, "train.stop_at": steps[1], **rl},
      {"name": "sft_more", "config": sft_config, **fork, "train.stop_at": steps[2]},
    ),
    seeds=(0, 1, 2),
    fixed={"train.progress": False},
    report={
      "metrics": ["eval/accuracy"],
      "baseline": "sft_more",
      "curves": ["eval/accuracy"],
      "scale": 100.0,
      "unit": "%",
    },
  )
