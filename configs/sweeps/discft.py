"""Discriminative fine-tuning against SFT on the same gold data (issue 19), 3 seeds.

Every cell fine-tunes the zoo's ``rl-start@SEED`` on mul2x2 for 300 steps at lr 5e-4
(configs/discft.py:quickstart) with 16 gold examples per step, and evaluates 200
held-out problems every 100 steps (mul2x2) and at the end (add3, mul2x2, mul3x2). The
negatives are the start's own samples at T 0.7, six per prompt for 1600 prompts (three
epochs of two fresh negatives each), made first into the sweep's root:

  for s in 0 1 2; do python -m jaxpost.data.negatives --model=zoo:rl-start@$s \\
    --levels=mul2x2:1.0 --n=1600 --pool=6 --temperature=0.7 --seed=$s \\
    --out=runs/sweeps/discft/negatives/rl-start@$s.jsonl; done
  python -m jaxpost.sweep --config=configs/sweeps/discft.py --root=runs/sweeps/discft
  python -m jaxpost.sweep.report runs/sweeps/discft --out experiments/sft_objectives/discft-mul2x2
  python experiments/sft_objectives/discft.py   # each cell against its own baseline

The ``mul3x2`` variant is the same on the level the start never learned (negatives made
with --levels=mul3x2:1.0 into runs/sweeps/discft-mul3x2/negatives, root
runs/sweeps/discft-mul3x2, report to experiments/sft_objectives/discft-mul3x2).

  ce      SFT (token-mean cross-entropy) on the gold responses of the same file
          (data.source=jsonl: the negatives are not read), 16 per step
  dft     DiscFT's "DFT": tau 1, gamma_min 0.85, the frozen start as pi_ref
  dft2    DiscFT's "DFT2": mean log-probs, no reference, tau 0.3, gamma_min 0.9

Half of those negatives are the gold response itself (the start is right ~55% of the
time, and a trace has one right form), which the paper's long answers never are. The
``_differ`` cells use negatives that differ from the gold (6 of 16 samples per prompt;
only the prompts with 6 such samples: about half, the ones the start finds harder), made
like the others with ``--per_prompt=16 --require=differ`` into
``negatives/differ-rl-start@$s.jsonl``; their baseline is ``ce_differ``, SFT on that file.
``dft2_slow`` is DFT2 at lr 1e-4 (the others: 5e-4, the rate tuned for CE).
"""

from jaxpost.sweep import Sweep, cells

NEGATIVES = "{root}/negatives/rl-start@{seed}.jsonl"
CELLS = {
  "ce": {
    "data.source": "jsonl",
    "data.pack": True,
    "data.batch_size": 16,
    "loss.name": "cross_entropy",
    "teacher.init_from": "",
  },
  "dft": {"teacher.init_from": "zoo:rl-start@{seed}"},
  "dft2": {
    "loss.discft.form": "dft2",
    "loss.discft.tau": 0.3,
    "loss.discft.gamma_min": 0.9,
    "teacher.init_from": "",
  },
}
DIFFER = {"data.path": "{root}/negatives/differ-rl-start@{seed}.jsonl"}
CELLS.update({f"{name}_differ": {**CELLS[name], **DIFFER} for name in ("ce", "dft", "dft2")})
CELLS["dft2_slow"] = {**CELLS["dft2"], "optim.lr": 1e-4}  # is DFT2's fall the step size?
FIXED = {
  "train.init_from": "zoo:rl-start@{seed}",
  "data.path": NEGATIVES,
  "train.log_every": 10,
  "train.progress": False,
  "eval.num_examples": 200,
}


# mul3x2: a level the start never learned (0% held out): every sample is wrong, so no
# negative is the gold; the start's samples there ramble more (some cut at 64 tokens).
MUL3X2 = {"eval.levels": "mul3x2", "data.levels": "mul3x2:1.0"}


def get_config(variant: str = "mul2x2") -> Sweep:
  if variant == "mul2x2":
    chosen, fixed = CELLS, FIXED
  elif variant == "mul3x2":
    chosen = {k: v for k, v in CELLS.items() if k in ("ce", "dft", "dft2")}
    fixed = {**FIXED, **MUL3X2}
  else:
    raise ValueError(f"unknown variant {variant!r}; expected mul2x2 | mul3x2")
  return Sweep(
    base="configs/discft.py:quickstart",
    cells=cells(*({"name": name, **o} for name, o in chosen.items())),
    seeds=(0, 1, 2),
    fixed=fixed,
    report={
      "metrics": [
        "eval/accuracy",
        "eval/accuracy/mul2x2",
        "eval/accuracy/add3",
        "eval/accuracy/mul3x2",
        "train/gold_score:last=5",
        "train/negative_score:last=5",
      ],
      "baseline": "ce",
      "curves": ["eval/accuracy"],
      "scale": 1.0,
    },
  )
