"""SFT learning rate: configs/sft.py:tiny at three peak learning rates x 3 seeds.

The smallest real sweep: each run trains the tiny decoder on mul2x2 for 100 steps with
held-out evaluations every 50, about a minute on 2 cores.

  python -m jaxpost.sweep --config=configs/sweeps/sft_lr.py --report

Variant ``tiny``: two learning rates, 6 steps of small batches (seconds a run; the
notebooks and tests use it).
"""

from jaxpost.sweep import Sweep, grid


def get_config(variant: str = "default") -> Sweep:
  if variant == "default":
    lrs, fixed = (1e-3, 2e-3, 4e-3), {}
  elif variant == "tiny":
    lrs = (1e-3, 4e-3)
    fixed = {
      "train.steps": 6,
      "train.log_every": 1,
      "train.checkpoint_every": 6,
      "tokenizer.train_examples": 2000,
      "data.batch_size": 8,
      "data.seq_len": 64,
      "eval.every": 3,
      "eval.num_examples": 8,
      "eval.batch_size": 8,
      "eval.max_new_tokens": 4,
    }
  else:
    raise ValueError(f"unknown variant {variant!r}; expected default | tiny")
  return Sweep(
    base="configs/sft.py:tiny",
    cells=grid({"optim.lr": list(lrs)}),
    seeds=(0, 1, 2),
    fixed={"train.progress": False, **fixed},
    report={
      "metrics": ["eval/accuracy", "train/loss:last=1"],
      "baseline": f"lr={lrs[0]!r}",
      "curves": ["eval/accuracy", "train/loss"],
      "scale": 1.0,
    },
  )
