"""Writes the quickstart's result table and plot into this folder from a finished workdir.

  python -m jaxpost.main --config=configs/quickstart.py --workdir=runs/quickstart
  python experiments/quickstart/report.py runs/quickstart --wall_seconds 208

The table comes from ``<workdir>/metrics.jsonl`` (the final evaluation line), so the
numbers in the repo are exactly what the run logged.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil

from jaxpost.data import tasks
from jaxpost.metrics import read_jsonl_metrics

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("workdir")
  p.add_argument("--wall_seconds", type=float, required=True, help="`time` of the whole command")
  p.add_argument("--out", default=os.path.join(HERE, "results.md"))
  args = p.parse_args()
  records = read_jsonl_metrics(os.path.join(args.workdir, "metrics.jsonl"))
  final = max(
    (r for r in records if any(k.startswith("eval/accuracy/") for k in r)),
    key=lambda r: (r["step"], len(r)),
  )
  params = next(r["model/params"] for r in records if "model/params" in r)
  lines = [
    f"Quickstart (`configs/quickstart.py`): {int(params):,}-parameter model, "
    f"{final['step']} steps, "
    f"{args.wall_seconds / 60:.1f} minutes wall-clock for the whole command (tokenizer "
    f"training, compilation and evaluation included) on {os.cpu_count()} CPU cores "
    f"({platform.machine()}).",
    "",
    f"Headline: **{100 * final['eval/accuracy']:.1f}%** held-out exact match, mean over the "
    "trained levels.",
    "",
    "| level | difficulty | trained on | held-out exact match | well-formed `<think>` |",
    "|---|---|---|---|---|",
  ]
  trained = {
    k.split("/")[-1]
    for r in records
    if r["step"] < final["step"]
    for k in r
    if k.startswith("eval/accuracy/")
  }
  for level, spec in tasks.LEVELS.items():
    key = f"eval/accuracy/{level}"
    if key in final:
      lines.append(
        f"| {level} | {spec.difficulty} | {'yes' if level in trained else 'no'} | "
        f"{100 * final[key]:.1f}% | {100 * final[f'eval/format/{level}']:.1f}% |"
      )
  with open(args.out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  shutil.copy(os.path.join(args.workdir, "metrics.png"), os.path.join(HERE, "quickstart.png"))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
