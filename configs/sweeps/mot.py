"""Merge-of-Thought vs single- and multi-teacher distillation on the quickstart task.

Two teachers that differ only by their training seed (the zoo's ``teacher-mul2x2@0`` and
``@1``, ~96% held-out mul2x2 each); each wrote greedy responses to 20000 training prompts
(commands below). Students: the quickstart's 0.4M-parameter model from scratch, 600 SFT
steps in every cell, all on teacher 0's tokenizer. Per seed:
  mot    configs/mot.py:tiny: 3 rounds x (100 steps on each teacher's corpus, then a
         uniform average of the two branches);
  std0   600 steps on teacher 0's corpus (single-teacher distillation, STD);
  std1   600 steps on teacher 1's corpus;
  mtd    600 steps on the union of both corpora (multi-teacher distillation, MTD);
  gold   600 steps on the tasks' reference traces (no teacher).
The report's baseline is ``std0``.

Variant ``warm``: every cell starts from the zoo's ``student-mul2x2-40@SEED`` (the
quickstart stopped at its first evaluation with >= 40% held-out mul2x2) at lr 5e-4 and on
that start's tokenizer: fine-tuning a partly trained student, as the paper does, instead
of training from scratch.
  python -m jaxpost.sweep --config=configs/sweeps/mot.py:warm --name=mot_warm --report

  python -m jaxpost.zoo build teacher-mul2x2@1
  for t in 0 1; do python -m jaxpost.data.generated --model=zoo:teacher-mul2x2@$t \\
      --levels=add3:0.2,mul2x2:1.0 --n=20000 --max_new_tokens=64 --batch_size=256 \\
      --out=runs/mot/teacher$t.jsonl; done
  cat runs/mot/teacher0.jsonl runs/mot/teacher1.jsonl > runs/mot/union.jsonl
  python -m jaxpost.sweep --config=configs/sweeps/mot.py --report
  python -m jaxpost.sweep.report runs/sweeps/mot --out experiments/distillation/mot
"""

from jaxpost.sweep import Sweep, cells

QUICKSTART = "configs/quickstart.py"


def _sft(name: str, **overrides) -> dict:
  return {"name": name, "config": QUICKSTART, "train.steps": 600, **overrides}


def get_config(variant: str = "default") -> Sweep:
  if variant not in ("default", "warm"):
    raise ValueError(f"unknown variant {variant!r}; expected default | warm")
  jsonl = {"data.source": "jsonl", "data.overlong": "reject"}
  fixed = {
    "train.progress": False,
    "train.max_minutes": 0.0,
    "tokenizer.path": "zoo:teacher-mul2x2",
    "eval.levels": "mul2x2",
    "eval.final_levels": "",
  }
  if variant == "warm":  # fine-tuning a partly trained student, closer to the paper's setting
    fixed.update(
      {
        "train.init_from": "zoo:student-mul2x2-40@{seed}",
        "tokenizer.path": "",  # the start's own tokenizer
        "optim.lr": 5e-4,
      }
    )
  return Sweep(
    base="configs/mot.py:tiny",
    cells=cells(
      {"name": "mot"},
      _sft("std0", **jsonl, **{"data.path": "runs/mot/teacher0.jsonl"}),
      _sft("std1", **jsonl, **{"data.path": "runs/mot/teacher1.jsonl"}),
      _sft("mtd", **jsonl, **{"data.path": "runs/mot/union.jsonl"}),
      _sft("gold"),
    ),
    seeds=(0, 1, 2),
    fixed=fixed,
    report={
      "metrics": ["eval/accuracy"],
      "baseline": "std0",
      "scale": 100.0,
      "unit": "%",
    },
  )
