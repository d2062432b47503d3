"""P2D: 10% heads x 10% data against full fine-tuning, LoRA, random data and random heads
(issue 17).

Per seed s, configs/p2d.py: from the zoo's ``student-mul2x2-40@s``, a pool of 2000
examples of five levels (add3, add5, mul2x2, mul3x2, expr2), the target task mul2x2
(held-out accuracy on 200 problems); 3 epochs over the kept data at batch 16:
  full          every parameter on the whole pool (375 steps): AER's reference (1)
  lora          LoRA r = 8 on every projection, lr 3e-3, on the whole pool
  p2d           ALPS heads (10%: 1 of 8) x ICL-scored data (10%: 200 examples, 38 steps)
  p2d_gradient  the gradient head score instead of ALPS
  random_data   ALPS heads x a random 10% of the pool
  random_heads  random 10% of the heads, and the ICL data they score
  heads_only    ALPS heads on the whole pool (what the head sparsity alone does)
AER = (selection + adaptation seconds) / full's end-to-end seconds, same seed, same
machine (jaxpost/recipes/p2d.py).

  python -m jaxpost.sweep --config=configs/sweeps/p2d.py --workers=1 --report
  python -m jaxpost.sweep.report runs/sweeps/p2d --out experiments/p2d

One worker: the cells read full's times through ``{root}``, and wall time is the metric.
"""

from jaxpost.sweep import Sweep, cells

REF = {"p2d.reference": "{root}/runs/full/seed{seed}"}


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  return Sweep(
    base="configs/p2d.py",
    cells=cells(
      {"name": "full", "p2d.heads": "all", "p2d.data": "all"},
      {
        "name": "lora",
        "p2d.heads": "all",
        "p2d.data": "all",
        "lora.rank": 8,
        "lora.targets": r"(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$",
        "optim.lr": 3e-3,
        **REF,
      },  # fmt: skip
      {"name": "p2d", **REF},
      {"name": "p2d_gradient", "p2d.heads": "gradient", **REF},
      {"name": "random_data", "p2d.data": "random", **REF},
      {"name": "random_heads", "p2d.heads": "random", **REF},
      {"name": "heads_only", "p2d.data": "all", **REF},
    ),
    seeds=(0, 1, 2),
    fixed={"train.progress": False},
    report={
      "metrics": [
        "eval/accuracy",
        "p2d/aer",
        "p2d/kept_target_fraction",
        "p2d/end_to_end_s",
      ],  # fmt: skip
      "baseline": "full",
    },
  )
