"""The SFT-objective family (issue 19) against cross-entropy, on two levels.

Every cell fine-tunes the zoo's ``rl-start@SEED`` (configs/quickstart.py stopped at step
700: ~55% held-out mul2x2, ~100% add3, 0% mul3x2) for 300 steps with one objective, the
same data, batches and schedule (configs/sft_objectives.py:quickstart), and evaluates 200
held-out problems of the trained level every 100 steps and of add3, mul2x2 and mul3x2 at
the end (add3 is never trained here: forgetting). Two levels, because Beyond-LL predicts
that the winner flips with the model's mean gold-token probability:

  mul2x2   the start's own level: most gold tokens already likely (prior-leaning wins?)
  mul3x2   a level it never saw: the 3-digit operand makes many tokens unlikely

One sweep per level (the variant); cells: ce (the baseline), dft, beyond_p (alpha 1, the paper's
"-p"), beyond_toplogp (-log p on tokens with p >= 0.2, mean over kept: its thresholded
row), beyond_a10 (alpha 10, strongly prior-leaning), asft (lambda 0.05), sft_kl (ASFT's
anchor on plain CE), minor_sft (beta 0.1), curio (self-teacher synced every 5 steps),
otr (K 8, +1 / -0.1), mft (Masked Thought, p 0.4).

  python -m jaxpost.sweep --config=configs/sweeps/sft_objectives.py:mul2x2 \\
    --root=runs/sweeps/sft_objectives/mul2x2
  python -m jaxpost.sweep.report runs/sweeps/sft_objectives/mul2x2 \\
    --out experiments/sft_objectives/mul2x2                       # and the same for mul3x2
"""

from jaxpost.sweep import Sweep, cells

START = "zoo:rl-start@{seed}"
LEVELS = {
  "mul2x2": {"data.levels": "mul2x2:1.0", "eval.levels": "mul2x2"},
  "mul3x2": {"data.levels": "mul3x2:1.0", "eval.levels": "mul3x2", "data.seq_len": 64},
}
REFERENCE = {"teacher.init_from": START}
OBJECTIVES = {
  "ce": {},
  "dft": {"loss.name": "dft"},
  "beyond_p": {"loss.name": "beyond_ll"},
  "beyond_toplogp": {
    "loss.name": "beyond_ll",
    "loss.beyond_ll.alpha": 0.0,
    "loss.beyond_ll.keep": "top",
    "loss.beyond_ll.q": 0.2,
    "loss.beyond_ll.normalize": "kept",
  },
  "beyond_a10": {"loss.name": "beyond_ll", "loss.beyond_ll.alpha": 10.0},
  "asft": {"loss.name": "asft", **REFERENCE},
  "sft_kl": {"loss.name": "asft", "loss.asft.weighting": "sft", **REFERENCE},
  "minor_sft": {"loss.name": "minor_sft", **REFERENCE},
  "curio": {"loss.name": "curio_sft", "teacher.follow": "lagged", "teacher.sync_every": 5},
  "otr": {"loss.name": "one_token_rollout"},
  "mft": {"data.mask_thought": 0.4},
}
FIXED = {
  "train.init_from": START,
  "train.log_every": 10,
  "train.progress": False,
  "eval.final_levels": "add3,mul2x2,mul3x2",
}


# Objectives added after the first sweep ran, in their own roots with their own ce cell
# (the same runs as the first sweep's ce: every cell is deterministic in its seed):
#   python -m jaxpost.sweep --config=configs/sweeps/sft_objectives.py:more-mul2x2 \
#     --root=runs/sweeps/sft_objectives/more-mul2x2
MORE = {
  "ce": {},
  "sorted": {"loss.name": "sorted_ft"},
  "lfu": {"loss.name": "lfu"},
  "masked_sft": {"data.masked_copy": 0.5},
}


# CFT trains on a fixed set of the start's own correct solutions with their critical
# tokens (written per seed beforehand, see experiments/sft_objectives/README.md), so its
# baseline is cross-entropy on the same solutions, not on the endless task stream.
CFT_DATA = "{root}/data/seed{seed}.jsonl"
CFT = {
  "ce_self": {"data.source": "jsonl", "data.path": CFT_DATA},
  "cft": {"config": "configs/cft.py:quickstart", "data.path": CFT_DATA},
}


def get_config(variant: str = "mul2x2") -> Sweep:
  if variant == "cft-mul2x2":
    return Sweep(
      base="configs/sft_objectives.py:quickstart",
      cells=cells(*({"name": name, **o} for name, o in CFT.items())),
      seeds=(0, 1, 2),
      fixed=FIXED,
      report={
        "metrics": ["eval/accuracy", "eval/accuracy/add3", "train/nll:last=5"],
        "baseline": "ce_self",
        "curves": ["eval/accuracy"],
        "scale": 1.0,
      },
    )
  level = variant.removeprefix("more-")
  if level not in LEVELS:
    known = sorted(LEVELS) + [f"more-{v}" for v in sorted(LEVELS)]
    raise ValueError(f"unknown variant {variant!r}; expected one of {known}")
  objectives = dict(MORE if variant.startswith("more-") else OBJECTIVES)
  if "masked_sft" in objectives:
    # The copy doubles an example: twice the row, one example a row (as the other cells'
    # rows, which one example of these levels fills), so every cell sees the same batches.
    seq_len = LEVELS[level].get("data.seq_len", 52)
    objectives["masked_sft"] = {
      **objectives["masked_sft"],
      "data.seq_len": 2 * seq_len,
      "data.pack": False,
    }
  return Sweep(
    base="configs/sft_objectives.py:quickstart",
    cells=cells(*({"name": name, **LEVELS[level], **o} for name, o in objectives.items())),
    seeds=(0, 1, 2),
    fixed=FIXED,
    report={
      "metrics": [
        "eval/accuracy",
        "eval/accuracy/add3",
        "eval/accuracy/mul2x2",
        "eval/accuracy/mul3x2",
        "train/nll:last=5",
        "train/gold_prob:step=10",
      ],
      "baseline": "ce",
      "curves": ["eval/accuracy", "train/nll"],
      "scale": 1.0,
    },
  )
