"""TLDR at each length level, and training-free stopping control, after the rl_family sweep.

For every seed: the ``tldr`` runs (from rl-start, and from rl-start-tagged, which saw
the tags in SFT) and ``grpo_tagged`` evaluated with each level's tag in the prompt
(``eval.prompt_prefix``) and untagged, and the ``grpo`` run (same steps, no length reward)
under temperature-scaled stopping (``eval.stop_bias``: a logit shift of EOS and the
close-think tag) and s1 budget forcing (``eval.force_after``: the close-think tag
written once the budget is spent), at a few strengths. 200 held-out mul2x2 problems,
greedy; accuracy and mean generated tokens, mean and 95% t interval over the seeds.

  python experiments/rl_family/length_control.py runs/sweeps/rl_family experiments/rl_family
"""

import json
import os
import sys

import numpy as np

from jaxpost import config_lib
from jaxpost.eval.__main__ import evaluate_run
from jaxpost.sweep import stats

TINY_LEVELS = config_lib.load_config("configs/tldr.py:quickstart").reward.tldr.levels
SEEDS = (0, 1, 2)
LEVEL = "mul2x2"
BASE = {"eval.num_examples": 200, "eval.batch_size": 200, "eval.max_new_tokens": 64}
SETTINGS = [  # (row, run cell, options)
  *[(f"{cell}, tag {name} {tag.strip()}", cell, {"eval.prompt_prefix": tag})
    for cell in ("tldr", "tldr_tagged", "grpo_tagged") for name, tag, _ in TINY_LEVELS],
  ("tldr, no tag", "tldr", {}),
  ("tldr_tagged, no tag", "tldr_tagged", {}),
  ("grpo", "grpo", {}),
  *[(f"grpo + temperature scaling, bias {b:g}", "grpo", {"eval.stop_bias": b})
    for b in (1.0, 2.0, 4.0)],
  *[(f"grpo + budget forcing at {n} tokens", "grpo", {"eval.force_after": n})
    for n in (24, 32, 40)],
]  # fmt: skip


def main(root: str, out: str) -> None:
  rows = []
  for label, cell, options in SETTINGS:
    acc, tokens = [], []
    for seed in SEEDS:
      run = os.path.join(root, "runs", cell, f"seed{seed}")
      r = evaluate_run(run, [LEVEL], {**BASE, **options})[LEVEL]
      acc.append(100 * r["accuracy"])
      tokens.append(r["mean_tokens"])
    rows.append({"setting": label, "options": options, "accuracy": acc, "tokens": tokens})
    print(label, np.mean(acc), np.mean(tokens), flush=True)
  with open(os.path.join(out, "length_control.json"), "w") as f:
    json.dump(rows, f, indent=1)
  lines = [
    "| setting | accuracy %, mean [95% interval] | per seed | tokens, mean [95% interval] |",
    "|---|---|---|---|",
  ]
  for r in rows:
    (a_lo, a_hi), (t_lo, t_hi) = stats.t_interval(r["accuracy"]), stats.t_interval(r["tokens"])
    lines.append(
      f"| {r['setting']} | {np.mean(r['accuracy']):.1f} [{a_lo:.1f}, {a_hi:.1f}] | "
      f"{', '.join(f'{x:.1f}' for x in r['accuracy'])} | "
      f"{np.mean(r['tokens']):.1f} [{t_lo:.1f}, {t_hi:.1f}] |"
    )
  with open(os.path.join(out, "length_control.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main(*sys.argv[1:3])
