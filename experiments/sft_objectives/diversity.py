"""Diversity of the finished SFT-objective runs: pass@k, distinct answers, token entropy.

CurioSFT claims to keep the entropy that cross-entropy collapses; CFT, One-Token Rollout
and DFT are credited with better pass@k / exploration. The sweeps report greedy
accuracy only, so this script reads every finished run of the given sweep roots again:

  * pass@k and the mean number of distinct answers among k samples at temperature 1
    (``eval.pass_k``) on held-out problems of the run's training level;
  * the mean next-token entropy of the model on the held-out gold traces (teacher
    forced, over the response tokens): how peaked the trained distribution is.

Per objective: mean and 95% t-interval over seeds, and the paired difference to the
root's ``ce`` cell. Writes ``diversity.json`` and ``diversity.md`` into --out.

  python experiments/sft_objectives/diversity.py runs/sweeps/sft_objectives/mul2x2 \\
    runs/sweeps/sft_objectives/mul3x2 --out experiments/sft_objectives
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np
from flax import nnx

from jaxpost import config_lib, scoring
from jaxpost.data import generated, packing, tasks, template
from jaxpost.eval import accuracy
from jaxpost.sweep import evaluate
from jaxpost.types import Batch


def heldout_entropy(model, tok, level: str, n: int, seed: int) -> float:
  """Mean next-token entropy over the response tokens of ``n`` held-out gold examples."""
  graphdef, state = nnx.split(model)
  scorer = scoring.make_scorer(graphdef)
  encoded = [template.encode_example(tok, p.example) for p in tasks.heldout_set(level, n, seed)]
  width = max(len(e.tokens) for e in encoded)
  tokens = np.zeros((n, width), np.int32)
  roles = np.zeros((n, width), np.int32)
  for i, e in enumerate(encoded):
    tokens[i, : len(e)], roles[i, : len(e)] = e.tokens, e.roles
  seg = (roles > 0).astype(np.int32)
  positions = np.broadcast_to(np.arange(width), (n, width))
  arrays = packing._to_batch_arrays(tokens, roles, seg, positions)
  batch = Batch(**{k: jax.numpy.asarray(v) for k, v in arrays.items()})
  stats_ = jax.jit(scorer.target_stats)(state, batch)
  mask = np.asarray(batch.loss_mask)
  return float(np.sum(np.asarray(stats_.entropy) * mask) / mask.sum())


def measure(run: str, k: int, n: int) -> dict[str, float]:
  model, tok, config = generated.load_run(run)
  level = config.eval.levels.split(",")[0]
  config_lib.set_field(config, "eval.pass_k", k)
  config_lib.set_field(config, "eval.num_examples", n)
  config_lib.set_field(config, "eval.batch_size", max(k, 8) * 8)
  graphdef, state = nnx.split(model)
  result = accuracy.Evaluator.from_config(graphdef, tok, config).evaluate_level(state, level)
  return {
    "level": level,
    "accuracy": result.accuracy,
    "pass_k": result.pass_k,
    "distinct": result.distinct,
    "entropy": heldout_entropy(model, tok, level, n, config.seed),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("roots", nargs="+", help="sweep roots")
  parser.add_argument("--out", required=True)
  parser.add_argument("--k", type=int, default=8)
  parser.add_argument("--n", type=int, default=100, help="held-out problems per run")
  args = parser.parse_args(argv)
  path = os.path.join(args.out, "diversity.json")
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous.get("k") == args.k and previous.get("n") == args.n:
      cache = previous["runs"]
  results = {
    os.path.basename(r.rstrip("/")): evaluate.collect(
      r, lambda workdir: measure(workdir, args.k, args.n), cache
    )
    for r in args.roots
  }
  os.makedirs(args.out, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"k": args.k, "n": args.n, "runs": cache, "groups": results}, f, indent=1)
  lines = [
    f"# Diversity of the fine-tuned models (k = {args.k} samples at T = 1, {args.n} held-out "
    "problems of the training level; entropy on the held-out gold traces)",
    "",
    "Mean [95% t-interval] over seeds; Δ paired by seed against the root's ce cell.",
    "",
  ]
  measures = [("pass_k", 100.0, 1), ("distinct", 1.0, 2), ("entropy", 1.0, 4)]
  for name, groups in results.items():
    lines += [f"## {name}", "", *evaluate.table(groups, measures, "ce"), ""]
  with open(os.path.join(args.out, "diversity.md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
