"""Choice accuracy per prompt format of the finished F²C runs: do held-out formats gain?

The sweep reports accuracy and agreement over all 6 evaluated formats together. This reads
every finished run of the sweep root again (its last checkpoint) and scores the same 200
held-out mul2x2 choice sets in each format separately (`jaxpost.eval.choices`). Per cell
and format it gives the mean over seeds and the difference to ``start`` paired by seed
(95% t-interval). Writes ``per_format.json`` and ``per_format.md`` into --out.

  python experiments/f2c/per_format.py runs/sweeps/f2c --out experiments/f2c
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from flax import nnx

from jaxpost import scoring
from jaxpost.data import generated
from jaxpost.eval import choices as eval_choices
from jaxpost.sweep import report, stats

FORMATS = ("plain", "equals", "commuted", "plus_zero", "paren", "times_one")
TRAINED = ("plain", "equals", "commuted", "plus_zero")


def per_format(run: str, level: str, n: int) -> dict[str, float]:
  """{format: choice accuracy} of ``run`` on ``n`` held-out choice sets of ``level``."""
  model, tok, config = generated.load_run(run)
  graphdef, state = nnx.split(model)
  evaluator = eval_choices.ChoiceEvaluator(
    scoring.make_scorer(graphdef),
    tok,
    formats=FORMATS,
    count=config.data.choices,
    response=config.data.choice_response,
    num_examples=n,
    batch_size=256,
    seq_len=config.data.seq_len,
  )
  scores, gold = evaluator.scores(state, level)
  right = np.argmax(scores, axis=-1) == gold[:, None]  # [N, K]
  return {f: float(right[:, k].mean()) for k, f in enumerate(FORMATS)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("root", help="the sweep root")
  parser.add_argument("--out", required=True)
  parser.add_argument("--level", default="mul2x2")
  parser.add_argument("--n", type=int, default=200)
  args = parser.parse_args(argv)
  manifest = report.load_manifest(args.root)
  values: dict[str, dict[str, dict[int, float]]] = {}  # cell -> format -> seed -> acc
  for cell in manifest["cells"]:
    if cell.get("status") != "done":
      continue
    name, seed = cell["group"], int(cell["seed"])
    result = per_format(os.path.join(args.root, cell["workdir"]), args.level, args.n)
    for f, acc in result.items():
      values.setdefault(name, {}).setdefault(f, {})[seed] = acc
    print(name, seed, {f: round(a, 3) for f, a in result.items()}, flush=True)
  lines = [
    f"# Choice accuracy per format ({args.level}, {args.n} held-out problems)",
    "",
    "Mean over seeds; below it the difference to `start` paired by seed [95% interval].",
    "Held-out formats (never trained): " + ", ".join(f for f in FORMATS if f not in TRAINED),
    "",
    "| cell | " + " | ".join(f + ("" if f in TRAINED else " (held out)") for f in FORMATS) + " |",
    "|---|" + "---|" * len(FORMATS),
  ]
  out = {}
  for name, by_format in values.items():
    row = []
    for f in FORMATS:
      mean = float(np.mean(list(by_format[f].values())))
      text = f"{100 * mean:.1f}%"
      entry = {"mean": mean, "per_seed": by_format[f]}
      if name != "start" and "start" in values:
        d = stats.paired_difference(by_format[f], values["start"][f])
        entry["vs_start"] = d
        text += f"<br>{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
      row.append(text)
      out.setdefault(name, {})[f] = entry
    lines.append(f"| {name} | " + " | ".join(row) + " |")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "per_format.json"), "w") as f:
    json.dump(out, f, indent=1, default=str)
  with open(os.path.join(args.out, "per_format.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
