"""F²C against its own parts and the untrained start (issue 19), 3 seeds.

Every cell fine-tunes the zoo's ``rl-start@SEED`` on mul2x2 as multiple choice between
worked solutions (configs/f2c.py:quickstart: the right solution and 3 with one step
slipped, 4 training formats x 4 choices, 100 steps, no labels) and evaluates 200 held-out
problems in the 4 training formats plus 2 held-out ones (paren, times_one) every 25 steps:
choice accuracy, agreement across formats, the formats' accuracy spread; at the end also
add3 (never trained) and greedy generation on both levels (does choosing better help, or
hurt, writing solutions?).

  start     the same run with a zero loss and no weight decay: the start, unchanged
  cce       consensus cross-entropy alone (self-training on the majority's answer)
  f2c       CCE + the flip term + JSD among teachers at the card's COPA values
  f2c_rte   the card's RTE values: cce 0.4, tau 1.4, w in [0.05, 0.35], T_w 2.2, beta 0.35
  f2c_slow  f2c at lr 3e-5 (the quickstart's 1e-4 / 3)

  python -m jaxpost.sweep --config=configs/sweeps/f2c.py --root=runs/sweeps/f2c
  python -m jaxpost.sweep.report runs/sweeps/f2c --out experiments/f2c
"""

from jaxpost.sweep import Sweep, cells

OFF = {"loss.f2c.cce_weight": 0.0, "loss.f2c.w_min": 0.0, "loss.f2c.w_max": 0.0}
CELLS = {
  "start": {**OFF, "loss.f2c.beta_jsd": 0.0, "optim.weight_decay": 0.0},
  "cce": {"loss.f2c.w_min": 0.0, "loss.f2c.w_max": 0.0, "loss.f2c.beta_jsd": 0.0},
  "f2c": {},
  "f2c_rte": {
    "loss.f2c.cce_weight": 0.4,
    "loss.f2c.tau": 1.4,
    "loss.f2c.w_min": 0.05,
    "loss.f2c.w_max": 0.35,
    "loss.f2c.w_temperature": 2.2,
    "loss.f2c.beta_jsd": 0.35,
  },
  "f2c_slow": {"optim.lr": 3e-5},
}
FIXED = {
  "train.init_from": "zoo:rl-start@{seed}",
  "train.log_every": 5,
  "train.progress": False,
  "eval.num_examples": 200,
}


def get_config(variant: str = "mul2x2") -> Sweep:
  if variant != "mul2x2":
    raise ValueError(f"unknown variant {variant!r}; expected mul2x2")
  return Sweep(
    base="configs/f2c.py:quickstart",
    cells=cells(*({"name": name, **o} for name, o in CELLS.items())),
    seeds=(0, 1, 2),
    fixed=FIXED,
    report={
      "metrics": [
        "eval/choice_accuracy/mul2x2",
        "eval/choice_agreement/mul2x2",
        "eval/choice_format_std/mul2x2",
        "eval/choice_accuracy/add3",
        "eval/accuracy/mul2x2",
        "eval/accuracy/add3",
        "eval/trace_errors/mul2x2",
      ],
      "baseline": "start",
      "curves": ["eval/choice_accuracy/mul2x2", "eval/choice_agreement/mul2x2"],
      "scale": 1.0,
    },
  )
