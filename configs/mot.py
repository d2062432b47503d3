"""Merge-of-Thought distillation: rounds of per-teacher SFT branches, then an average.

``mot.branch_data`` holds one corpus per teacher (JSONL of ``prompt`` / ``response``,
e.g. from ``python -m jaxpost.data.generated``); each round trains one SFT branch per
corpus for ``mot.steps_per_round`` steps from the last merge and averages them
(``jaxpost/recipes/mot.py``). The final merge is evaluated like any SFT run.

Variants:
  ``tiny``  configs/quickstart.py's student (fresh) and evaluation, 2 teachers' corpora,
            3 rounds of 100 steps per branch (the corpora: the commands below).

  python -m jaxpost.data.generated --model=zoo:teacher-mul2x2@0 --levels=add3:0.2,mul2x2:1.0 \\
      --n=20000 --max_new_tokens=64 --batch_size=256 --out=runs/mot/teacher0.jsonl
  python -m jaxpost.data.generated --model=zoo:teacher-mul2x2@1 --levels=add3:0.2,mul2x2:1.0 \\
      --n=20000 --max_new_tokens=64 --batch_size=256 --out=runs/mot/teacher1.jsonl
  python -m jaxpost.main --config=configs/mot.py:tiny --workdir=runs/mot/student
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "base").get_config("mot")
  if variant != "tiny":
    raise ValueError(f"unknown variant {variant!r}; expected tiny")
  quickstart = load_sibling(__file__, "quickstart").get_config()
  for section in ("model", "tokenizer", "data", "optim", "eval"):
    for key, value in quickstart[section].items():
      c[section][key] = value
  c.tokenizer.path = "zoo:teacher-mul2x2"  # the teachers' token ids
  c.optim.warmup_steps = 10  # within each 100-step branch
  c.data.overlong = "reject"  # a teacher response longer than a row is dropped, counted
  c.eval.levels = "mul2x2"
  c.eval.final_levels = ""
  c.mot.branch_data = ("runs/mot/teacher0.jsonl", "runs/mot/teacher1.jsonl")
  c.mot.rounds = 3
  c.mot.steps_per_round = 100
  c.train.max_minutes = 0.0
  c.train.progress = False
  return c
