"""The policy losses of the RL recipe, side by side, from one under-trained SFT checkpoint.

Every variant starts from the same SFT run (seed 0, stopped after 700 of a 3000-step
schedule, 56.5% held-out mul2x2 accuracy: the GRPO demo's seed-0 start, reused from
``--sft_dir`` when it exists, else trained there with ``experiments/grpo_demo/run.py``'s
own config) and runs ``configs/grpo.py:quickstart`` for a fixed number of RL steps with
the variant's overrides (``VARIANTS``), evaluating 200 held-out problems every 20 steps.
A step budget rather than a wall-clock one: the machine is shared, so its speed drifts.

Each variant writes ``<root>/<variant>/result.json``; variants finished by earlier
invocations stay in the table, so they can be run a few at a time. Then writes
results.md, results.json (every variant's numbers and curves) and accuracy_curves.png.

  python experiments/rl_algorithms/run.py                      # every variant, 80 steps
  python experiments/rl_algorithms/run.py --variants=grpo,dapo --steps=80
  python experiments/rl_algorithms/run.py --variants=     # redraw from the JSONs only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil

import numpy as np

from jaxpost import metrics
from jaxpost.recipes import rl, sft

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SEED = 0
SFT_STEPS = 700
EVAL_EVERY = 20
# Rewards and lengths are averaged over this many final RL steps: one step's batch is
# 16 prompts x 8 samples, too few for a stable number on its own.
TAIL = 10

# name -> (what it changes, config overrides on top of configs/grpo.py:quickstart). The
# quickstart sets rl.kl_coef=0, which every variant keeps (so GRPO's preset KL of 0.04 is
# off), and samples at temperature 1 with recomputed pi_old, so with one update per
# batch the ratio is exactly 1 and no clip range engages: only grpo_2x2 reuses a batch.
VARIANTS: dict[str, tuple[str, dict]] = {
  "grpo": (
    "the quickstart as is: z-score group advantage, token ratio, clip 0.2, seq_mean_token_mean",
    {},
  ),
  "dr_grpo": (
    "mean-only advantage (no std division), token sums over a constant (rows x 56)",
    {"loss.name": "dr_grpo", "rl.advantage": "dr_grpo"},
  ),
  "dapo": (
    "token_mean, clip-higher 0.28, dynamic sampling (up to 4 rounds), overlong penalty "
    "ramping from 0 at 48 tokens to -1 at the 56-token cap",
    {
      "loss.name": "dapo",
      "rl.dynamic_sampling": True,
      "reward.terms": (("exact_answer", 1.0), ("overlong", 1.0)),
      # max_len 0 means the sampling cap (56); the soft window is its last 8 tokens.
      "reward.overlong.cache_len": 8,
    },
  ),
  "gspo": (
    "sequence-level ratio (geometric mean of token ratios), clip 3e-4 / 4e-4",
    {"loss.name": "gspo"},
  ),
  "gspo_token": (
    "GSPO's sequence ratio value with per-token gradients",
    {"loss.name": "gspo_token"},
  ),
  "ppo": (
    "PPO clip with token_mean; no critic in this recipe, so the advantage is GRPO's group z-score",
    {"loss.name": "ppo"},
  ),
  "grpo+tis": (
    "token-level truncated importance sampling pi_old / mu (cap 2)",
    {"rl.is_level": "token"},
  ),
  "grpo+minpro": (
    "MinPRO prefix factor (min over earlier tokens' ratios, exclusive)",
    {"rl.prefix": "min_exclusive"},
  ),
  "grpo_2x2": (
    "2 epochs x 2 minibatches per batch: 4 optimiser updates per RL step, so the ratio "
    "leaves 1 and the clip can fire",
    {"rl.epochs": 2, "rl.minibatches": 2},
  ),
}


def grpo_demo():
  """experiments/grpo_demo/run.py as a module (the SFT start and the RL base config)."""
  path = os.path.join(REPO, "experiments", "grpo_demo", "run.py")
  spec = importlib.util.spec_from_file_location("grpo_demo_run", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def set_field(c, path: str, value) -> None:
  """Sets a dotted config field such as ``reward.overlong.cache_len``."""
  *sections, key = path.split(".")
  for s in sections:
    c = c[s]
  c[key] = value


def variant_config(demo, sft_dir: str, overrides: dict, steps: int):
  """configs/grpo.py:quickstart from ``sft_dir`` for ``steps`` RL steps, plus ``overrides``."""
  c = demo.rl_config(SEED, sft_dir, 0.0, {})  # 0 minutes: no wall-clock limit
  c.train.steps = steps  # the schedule is constant after warmup, so this only sets the end
  c.eval.every = EVAL_EVERY
  c.train.log_every = 1  # every step's reward for the curves (logging does not train)
  for path, value in overrides.items():
    set_field(c, path, value)
  return c


def tail_mean(records: list[dict], key: str, n: int = TAIL) -> float:
  values = [r[key] for r in records if key in r][-n:]
  return float(np.mean(values)) if values else float("nan")


def run_variant(name: str, demo, sft_dir: str, args) -> dict:
  note, overrides = VARIANTS[name]
  workdir = os.path.join(args.root, name)
  shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resume of an old one
  result = rl.run(variant_config(demo, sft_dir, overrides, args.steps), workdir)
  recs = metrics.read_jsonl_metrics(result["metrics_path"])
  train = [r for r in recs if "rl/reward_mean" in r]
  evals = [(r["step"], r["eval/accuracy"]) for r in recs if "eval/accuracy" in r]
  during = [e for e in evals if e[0] > 0]
  best_step, best = max(during, key=lambda e: e[1])
  out = {
    "variant": name,
    "note": note,
    "overrides": {k: repr(v) for k, v in overrides.items()},
    "seed": SEED,
    "sft_dir": sft_dir,
    "steps": result["step"],
    "start_accuracy": result["start/accuracy"],
    "final_accuracy": result["eval/accuracy"],
    "best_accuracy": best,
    "best_step": best_step,
    "minutes": result["wall_minutes"],
    "steps_per_min": result["step"] / result["wall_minutes"],
    "median_step_s": float(np.median([r["perf/step_s"] for r in train])),
    # reward/exact_answer is over every sample drawn (all dynamic-sampling rounds), so
    # unlike rl/reward_mean (the kept groups only) it compares across variants.
    "train_accuracy": tail_mean(train, "reward/exact_answer"),
    "reward_mean": tail_mean(train, "rl/reward_mean"),
    "len_mean": tail_mean(train, "rl/len_mean"),
    "truncated_frac": tail_mean(train, "rl/truncated_frac"),
    # Clip fractions over the whole run (they are per-update means of tokens).
    "clip_frac_low": float(np.mean([r["train/clip_frac_low"] for r in train])),
    "clip_frac_high": float(np.mean([r["train/clip_frac_high"] for r in train])),
    "ratio_mean": float(np.mean([r["train/ratio_mean"] for r in train])),
    "sample_rounds": float(np.mean([r["rl/sample_rounds"] for r in train])),
    "filled_groups": float(np.mean([r["rl/filled_groups"] for r in train])),
    "zero_adv_group_frac": float(np.mean([r["rl/zero_adv_group_frac"] for r in train])),
    "eval_curve": evals,
    "reward_curve": [(r["step"], r["reward/exact_answer"]) for r in train],
  }
  with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


def identical_runs(results: list[dict]) -> list[list[dict]]:
  """Variants grouped by identical curves (same sampled reward at every step, same evals).

  With one update per batch several losses give the same gradient up to float noise,
  and the noise is too small to change a single sample: their runs coincide.
  """
  groups: dict[str, list[dict]] = {}
  for r in results:
    key = json.dumps([r["eval_curve"], r["reward_curve"]])
    groups.setdefault(key, []).append(r)
  return list(groups.values())


def write_table(results: list[dict], path: str) -> None:
  steps = sorted({r["steps"] for r in results})
  n = "/".join(map(str, steps))
  lines = [
    "# Policy losses of the RL recipe from one under-trained SFT checkpoint",
    "",
    f"Held-out exact-match accuracy on mul2x2 (200 problems, greedy) after {n} RL steps of "
    "`configs/grpo.py:quickstart` with each variant's overrides, from the same SFT "
    f"checkpoint (seed {SEED}, step {SFT_STEPS}). This is ONE seed and {n} steps per "
    "variant: differences of a few points are within seed noise (the GRPO demo's spread "
    "over three seeds was ±4 points after 10 minutes).",
    "",
    "| variant | start % | acc after N steps % | best % (step) | minutes | steps/min | "
    "train reward | clip frac low / high | length |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    lines.append(
      f"| {r['variant']} | {100 * r['start_accuracy']:.1f} | "
      f"{100 * r['final_accuracy']:.1f} | {100 * r['best_accuracy']:.1f} ({r['best_step']}) | "
      f"{r['minutes']:.1f} | {r['steps_per_min']:.1f} | {r['train_accuracy']:.3f} | "
      f"{r['clip_frac_low']:.4f} / {r['clip_frac_high']:.4f} | {r['len_mean']:.1f} |"
    )
  lines += [
    "",
    "Columns: *acc after N steps* is the final evaluation (step N); *best* the highest of "
    f"the evaluations every {EVAL_EVERY} steps. *minutes* is wall-clock on a shared "
    f"2-core CPU, compilation and {1 + max(steps) // EVAL_EVERY} held-out evaluations "
    "included, so steps/min drifts "
    "with the machine's load. *train reward* is the exact-answer reward (1 right, 0 "
    "wrong) of every sample drawn at temperature 1, averaged over the last "
    f"{TAIL} steps (for dapo over all its dynamic-sampling rounds, not only the kept "
    "groups, and without the overlong penalty). *clip frac* is the fraction of "
    "completion tokens whose ratio is clipped below / above, averaged over the run. "
    f"*length* is the mean completion length in tokens over the last {TAIL} steps.",
  ]
  for group in identical_runs(results):
    if len(group) > 1:
      names = ", ".join(r["variant"] for r in group)
      lines += [
        "",
        f"Identical runs: {names} sampled the same rewards at every one of their steps and "
        "scored the same held-out accuracy at every evaluation.",
      ]
  lines += [
    "",
    "Variants (overrides on top of `configs/grpo.py:quickstart`):",
    "",
  ]
  for r in results:
    over = ", ".join(f"`{k}={v}`" for k, v in r["overrides"].items()) or "none"
    lines.append(f"- **{r['variant']}**: {r['note']}. Overrides: {over}.")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def plot(results: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
  colors = plt.get_cmap("tab10")
  for i, group in enumerate(identical_runs(results)):
    label, r, color = " = ".join(x["variant"] for x in group), group[0], colors(i % 10)
    steps, acc = zip(*r["eval_curve"], strict=True)
    axes[0].plot(steps, 100 * np.asarray(acc), marker="o", color=color, label=label)
    steps, reward = map(np.asarray, zip(*r["reward_curve"], strict=True))
    # One step's reward is a mean of 128 samples; a running mean shows the trend.
    k = min(TAIL, len(reward))
    smooth = np.convolve(reward, np.ones(k) / k, mode="valid")
    axes[1].plot(steps[k - 1 :], smooth, color=color, label=label)
  axes[0].set(xlabel="RL step", ylabel="held-out mul2x2 accuracy (%)", title="held-out accuracy")
  axes[1].set(
    xlabel="RL step",
    ylabel=f"exact-answer reward, T=1 (running mean of {TAIL} steps)",
    title="train reward",
  )
  for ax in axes:
    ax.grid(alpha=0.3)
  # Below the panels: the curves fill them.
  fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  fig.savefig(path, dpi=120)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
  p.add_argument("--steps", type=int, default=80, help="RL steps per variant")
  p.add_argument("--root", default="/tmp/rl_algorithms")
  p.add_argument("--sft_dir", default="/tmp/grpo_demo/seed0/sft")
  p.add_argument("--out", default=HERE)
  args = p.parse_args()
  names = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
  logging.basicConfig(level=logging.WARNING)

  demo = grpo_demo()
  if not os.path.isdir(os.path.join(args.sft_dir, "checkpoints")):
    sft.run(demo.sft_config(SEED, SFT_STEPS), args.sft_dir)

  done = {}
  for name in VARIANTS:
    path = os.path.join(args.root, name, "result.json")
    if os.path.exists(path):
      with open(path) as f:
        done[name] = json.load(f)
  for name in names:
    done[name] = run_variant(name, demo, args.sft_dir, args)
    summary = {k: v for k, v in done[name].items() if not k.endswith("_curve")}
    print(json.dumps(summary), flush=True)
    report([done[k] for k in VARIANTS if k in done], args.out)  # after each, in table order
  if not names and done:  # --variants= : redraw the table and plot from the JSONs
    report([done[k] for k in VARIANTS if k in done], args.out)


def report(results: list[dict], out: str) -> None:
  """results.md, results.json and accuracy_curves.png in ``out``."""
  write_table(results, os.path.join(out, "results.md"))
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  plot(results, os.path.join(out, "accuracy_curves.png"))


if __name__ == "__main__":
  main()
