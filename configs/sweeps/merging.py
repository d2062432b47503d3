"""Merging two task experts by each method, against the experts and multi-task training
(issue 17).

Per seed s, from the zoo's ``student-mul2x2-40@s`` (the quickstart stopped at ~40%
held-out mul2x2, 0% add5) as the common base:
  add_expert   SFT on 5-digit addition only (a skill the base lacks), 200 steps
  mul_expert   SFT on 2x2 multiplication only (one it half has), 200 steps
  multitask    SFT on both, mixed 1:1, 400 steps (the experts' compute together)
  base         the base itself, evaluated (a one-model linear merge: itself)
  <method>     the two experts merged by jaxpost.merging (recipe=merge, nothing trained),
               task vectors against the base; each method at the card's defaults
               (TIES / DARE / breadcrumbs keep 20% of each task vector; task
               arithmetic's lambda = 1 adds both vectors whole; linear = their average =
               task arithmetic at lambda 1/2; SLERP halfway; BAI w = v = 1/2 with the
               add expert as "instruct" and the mul expert as "distill")
Variant ``lora`` (sweep ``merging_lora``): the experts and the multi-task model are
LoRA fine-tunes (r = 8 on every projection, lr 3e-3), so each task vector is the
product of an adapter's factors, small and low-rank (the merge folds each adapter into
its run's weights first).

Every cell is evaluated on 200 held-out add5 and mul2x2 problems (eval.levels; headline
eval/accuracy = their mean) and on add3 at the end (what the base knew: forgetting).

  python -m jaxpost.sweep --config=configs/sweeps/merging.py --workers=1 --report
  python -m jaxpost.sweep.report runs/sweeps/merging --out experiments/merging
  python -m jaxpost.sweep --config=configs/sweeps/merging.py:lora --name=merging_lora \\
      --workers=1 --report
  python -m jaxpost.sweep.report runs/sweeps/merging_lora --out experiments/merging/lora

Cells run in order with one worker: the merge cells read the experts through
``{root}``.
"""

from jaxpost.sweep import Sweep, cells

BASE = "zoo:student-mul2x2-40@{seed}"
EXPERTS = "{root}/runs/add_expert/seed{seed},{root}/runs/mul_expert/seed{seed}"
TRAIN = {
  "config": "configs/quickstart.py",
  "train.init_from": BASE,
  "data.seq_len": 80,  # add5 examples are ~70 tokens with the template
  "optim.lr": 1e-3,
  "optim.warmup_steps": 20,
  "train.max_minutes": 0.0,  # step budgets: a busy machine changes the time, not the result
  "train.checkpoint_every": 100_000,
  "eval.every": 0,
}
MERGE = {"config": "configs/merge.py:default", "merge.models": EXPERTS, "merge.base": BASE}
METHODS = {
  "linear": {"merge.method": "linear", "merge.base": ""},
  "task_arithmetic": {"merge.method": "task_arithmetic"},
  "ties": {"merge.method": "ties"},
  "dare_linear": {"merge.method": "dare"},
  "dare_ties": {"merge.method": "dare", "merge.dare_then": "ties"},
  "breadcrumbs": {"merge.method": "breadcrumbs"},
  "slerp": {"merge.method": "slerp", "merge.base": ""},
  "model_stock": {"merge.method": "model_stock"},
  "bai": {"merge.method": "bai"},
}


LORA = {
  "lora.rank": 8,
  "lora.targets": r"(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$",
  "optim.lr": 3e-3,
}


def get_config(variant: str = "default") -> Sweep:
  if variant not in ("default", "lora"):
    raise ValueError(f"unknown variant {variant!r}; expected default | lora")
  train = {**TRAIN, **(LORA if variant == "lora" else {})}
  return Sweep(
    base="configs/merge.py:default",
    cells=cells(
      {"name": "add_expert", **train, "data.levels": "add5:1.0", "train.steps": 200},
      {"name": "mul_expert", **train, "data.levels": "mul2x2:1.0", "train.steps": 200},
      {"name": "multitask", **train, "data.levels": "add5:1.0,mul2x2:1.0", "train.steps": 400},
      {"name": "base", "config": "configs/merge.py:default", "merge.models": BASE},
      *({"name": name, **MERGE, **extra} for name, extra in METHODS.items()),
    ),
    seeds=(0, 1, 2),
    fixed={
      "eval.levels": "add5,mul2x2",
      "eval.final_levels": "add3",
      "eval.num_examples": 200,
      "train.progress": False,
    },
    report={
      "metrics": [
        "eval/accuracy",
        "eval/accuracy/add5",
        "eval/accuracy/mul2x2",
        "eval/accuracy/add3",
      ],  # fmt: skip
      "baseline": "multitask",
      "scale": 100.0,
      "unit": "%",
    },
  )
