"""How hard is each shipped level for the quickstart model, given the quickstart's budget?

Trains the quickstart configuration (same model, optimiser, batch rows and step count)
on one level at a time, one example per row, and writes held-out exact-match accuracy
to ``experiments/quickstart/levels.md``.

  python experiments/quickstart/levels.py --levels add3,mul2x2,mul3x3 [--workdir runs/levels]
"""

from __future__ import annotations

import argparse
import os

from jaxpost.config_lib import load_config
from jaxpost.data import tasks
from jaxpost.recipes import sft

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def level_config(level: str, seq_len: int):
  c = load_config(os.path.join(ROOT, "configs", "quickstart.py"))
  c.data.levels = f"{level}:1.0"
  c.data.seq_len = seq_len  # overlong examples fail loudly (data.overlong='error')
  c.data.pack = False  # one example per row: every level sees the same number of examples
  c.eval.every = 0
  c.eval.final_levels = ""
  c.eval.num_examples = 200
  c.eval.batch_size = 200
  c.eval.max_new_tokens = 100
  c.train.max_minutes = 0.0
  c.train.progress = False
  return c


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--levels", default="add3,mul2x2,mul3x3")
  p.add_argument("--seq_len", type=int, default=88, help="mul3x3 needs 86, mul4x3 98")
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "levels"))
  p.add_argument("--out", default=os.path.join(HERE, "levels.md"))
  args = p.parse_args()
  rows = []
  for level in args.levels.split(","):
    c = level_config(level, args.seq_len)
    result = sft.run(c, os.path.join(args.workdir, level))
    acc = result[f"eval/accuracy/{level}"]
    rows.append((level, tasks.LEVELS[level].difficulty, acc, c.train.steps, c.data.batch_size))
    print(f"{level}: {100 * acc:.1f}%", flush=True)
  lines = [
    "Each level trained alone with the quickstart's model, optimiser and budget (steps x",
    "rows per step, one example per row); held-out exact match on 200 problems. A finished",
    "workdir is reused (re-running only re-evaluates its final checkpoint).",
    "",
    "| level | difficulty | held-out exact match | steps | rows per step |",
    "|---|---|---|---|---|",
  ]
  for level, diff, acc, steps, rows_per_step in rows:
    lines.append(f"| {level} | {diff} | {100 * acc:.1f}% | {steps} | {rows_per_step} |")
  with open(args.out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
