"""Distilling step-by-step (arXiv 2305.02301): a teacher's rationales as a second task.

Each teacher response (``data.source=rationales``: JSONL from ``jaxpost.data.generated``)
becomes two rows: the label task (the plain prompt -> the teacher's answer, empty think
block) and the rationale task ("explain: " + the prompt -> the teacher's rationale). The
``step_by_step`` loss mixes their mean token cross-entropies, alpha (0.5) on the label
task. Evaluation asks the plain prompt: the student answers without a rationale.

Variants:
  tiny        CPU seconds: configs/sft.py:tiny's model on the shipped 512 responses of the
              zoo's teacher-mul2x2 (configs/data/teacher_quickstart_512.jsonl).
  quickstart  the quickstart-size student from scratch on a teacher file (data.path):
              the command in experiments/distillation/README.md.

  python -m jaxpost.main --config=configs/step_by_step.py:tiny --workdir=runs/sbs
"""

import os

from jaxpost.config_lib import load_sibling

SHIPPED = os.path.join(os.path.dirname(__file__), "data", "teacher_quickstart_512.jsonl")


def get_config(variant: str = "tiny"):
  if variant == "tiny":
    c = load_sibling(__file__, "sft").get_config("tiny")
  elif variant == "quickstart":
    c = load_sibling(__file__, "quickstart").get_config()
    c.data.seq_len = 64  # one task copy per row: the longest rationale copy and its prompt
    c.eval.levels = "mul2x2"
    c.eval.final_levels = ""
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart")
  c.data.source = "rationales"
  c.data.path = SHIPPED
  c.data.pack = False  # rows 2i / 2i + 1: one record's label and rationale tasks
  c.data.streams = 1
  c.loss.name = "step_by_step"
  return c
