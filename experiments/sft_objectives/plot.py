"""One picture of the SFT-objective comparison: each objective's held-out accuracy minus
cross-entropy's (paired by seed, 95% interval) on the trained level and on add3 (never
trained here: forgetting), for every level's sweep report.

  python experiments/sft_objectives/plot.py experiments/sft_objectives/mul2x2 \\
      experiments/sft_objectives/mul3x2 experiments/sft_objectives/more-mul2x2 \\
      experiments/sft_objectives/more-mul3x2 experiments/sft_objectives/discft-mul2x2 \\
      experiments/sft_objectives/discft-mul3x2 experiments/sft_objectives/smollm2 \\
      --out experiments/sft_objectives/comparison.png

Each argument is a ``python -m jaxpost.sweep.report --out`` directory; reports of one
level (its name after an optional ``more-`` or ``discft-``) share a panel; ``smollm2``
is the pretrained model's panel (trained on add3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def diffs(report: dict, metric: str) -> dict[str, tuple[float, float, float]]:
  """{group: (mean, low, high)} of the paired difference to the baseline, in points."""
  out = {}
  for row in report["results"].get(metric, []):
    d = row.get("diff")
    if d and d["n"] >= 2:
      out[row["group"]] = (100 * d["mean"], 100 * d["low"], 100 * d["high"])
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("reports", nargs="+")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  levels: dict[str, dict] = {}
  for path in args.reports:
    with open(os.path.join(path, "results.json")) as f:
      report = json.load(f)
    name = os.path.basename(path.rstrip("/"))
    # DiscFT's reports join their level's panel as "discft <cell>", against their own
    # SFT baseline; the _differ cells are paired with another baseline (discft.md).
    prefix = "discft " if name.startswith("discft-") else ""
    level = name.removeprefix("discft-").removeprefix("more-")
    panel = levels.setdefault(level, {"trained": {}, "add3": {}})
    for what, metric in (("trained", "eval/accuracy"), ("add3", "eval/accuracy/add3")):
      if what == "add3" and level == "smollm2":
        continue  # SmolLM2 trains add3 itself: no untrained level to forget
      rows = diffs(report, metric)
      panel[what].update({prefix + g: v for g, v in rows.items() if not g.endswith("_differ")})
  fig, axes = plt.subplots(1, len(levels), figsize=(6 * len(levels), 5), squeeze=False)
  for ax, (level, panel) in zip(axes[0], levels.items(), strict=True):
    groups = list(dict.fromkeys([*panel["trained"], *panel["add3"]]))  # the reports' order
    series = (("trained", "tab:blue", -0.18), ("add3", "tab:orange", 0.18))
    for what, color, shift in series:
      trained = "add3" if level == "smollm2" else level
      name = f"{trained} (trained)" if what == "trained" else "add3 (forgetting)"
      for i, g in enumerate(groups):
        if g not in panel[what]:
          continue
        mean, low, high = panel[what][g]
        label = name if i == 0 else None
        ax.errorbar(
          mean,
          i + shift,
          xerr=[[mean - low], [high - mean]],
          fmt="o",
          color=color,
          capsize=3,
          label=label,
        )
    ax.axvline(0, color="gray", lw=1)
    ax.set_yticks(range(len(groups)), groups)
    ax.invert_yaxis()
    ax.set_xlabel("held-out accuracy − cross-entropy's (points, paired 95% interval)")
    ax.set_title("SmolLM2-135M-Instruct on add3" if level == "smollm2" else f"trained on {level}")
    ax.legend(loc="lower left", fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
