"""The policy losses of the RL recipe, side by side, from one under-trained SFT checkpoint.

Every variant starts from the same SFT run (seed 0, stopped after 700 of a 3000-step
schedule, 56.5% held-out mul2x2 accuracy: the GRPO demo's seed-0 start, reused from
``--sft_dir`` when it exists, else trained there with ``experiments/grpo_demo/run.py``'s
own config) and runs ``configs/grpo.py:quickstart`` for a fixed number of RL steps with
the variant's overrides (``VARIANTS``), evaluating 200 held-out problems every 20 steps.
A step budget rather than a wall-clock one: the machine is shared, so its speed drifts.

Each variant writes ``<root>/<variant>/result.json`` ("/" in a name becomes "_div");
variants finished by earlier invocations stay in the table, so they can be run a few at
a time. Then writes results.md, results.json (every variant's numbers and curves) and
accuracy_curves.png (single-update rows on top, off-policy rows below).

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

from jaxpost import config_lib, metrics
from jaxpost.recipes import rl, sft

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SEED = 0
SFT_STEPS = 700
EVAL_EVERY = 20
# Rewards and lengths are averaged over this many final RL steps: one step's batch is
# 16 prompts x 8 samples, too few for a stable number on its own.
TAIL = 10

# Overrides shared by a single-update row and its off-policy twin.
DAPO = {
  "loss.name": "dapo",
  "rl.dynamic_sampling": True,
  "reward.terms": (("exact_answer", 1.0), ("overlong", 1.0)),
  # max_len 0 means the sampling cap (56); the soft window is its last 8 tokens.
  "reward.overlong.cache_len": 8,
}
# 2 epochs x 2 minibatches: 4 optimiser updates per batch, so from the second update on
# the ratio leaves 1 and the clip ranges, GSPO's sequence ratio and MinPRO's prefix factor
# engage. Adam's step is about lr whatever the gradient's scale, so 4 updates at lr / 4
# move the policy about as far per batch as one update at 2e-4 does; warmup counts
# optimiser updates, so x4 keeps it at the same 10 RL steps. grpo_2x2 (same lr, warmup
# 10 updates) showed what happens without the scaling.
MULTI_UPDATE = {
  "rl.epochs": 2,
  "rl.minibatches": 2,
  "optim.lr": 5e-5,
  "optim.warmup_steps": 40,
}
# Nucleus sampling at 0.9: the sampler draws from the truncated, renormalised mu while the
# trainer scores the untruncated pi_old, so the token TIS weight pi_old / mu is the
# nucleus mass kept at that position (in [0.9, 1]) instead of exactly 1.
TOP_P = {"rl.top_p": 0.9}
MULTI = "; 2 epochs x 2 minibatches (4 updates per batch) at lr 5e-5, warmup 40 updates"

# name -> (what it changes, config overrides on top of configs/grpo.py:quickstart). The
# quickstart sets loss.grpo.kl_coef=0, which every variant keeps (so GRPO's preset KL of 0.04 is
# off), and samples at temperature 1 with recomputed pi_old, so with one update per
# batch and no sampling filter the ratio is exactly 1 and no clip range engages. The rows
# from grpo_2x2 on are off-policy: several updates per batch, or a top-p sampler.
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
    DAPO,
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
    {"loss.grpo.is_level": "token"},
  ),
  "grpo+minpro": (
    "MinPRO prefix factor (min over earlier tokens' ratios, exclusive)",
    {"loss.grpo.prefix": "min_exclusive"},
  ),
  "grpo_2x2": (
    "2 epochs x 2 minibatches per batch: 4 optimiser updates per RL step, so the ratio "
    "leaves 1 and the clip can fire",
    {"rl.epochs": 2, "rl.minibatches": 2},
  ),
  "grpo_2x2_lr/4": (
    "grpo" + MULTI + " (the lr and warmup that grpo_2x2 lacked)",
    MULTI_UPDATE,
  ),
  "gspo_2x2": ("gspo" + MULTI, {"loss.name": "gspo", **MULTI_UPDATE}),
  "gspo_token_2x2": ("gspo_token" + MULTI, {"loss.name": "gspo_token", **MULTI_UPDATE}),
  "dapo_2x2": ("dapo (dynamic sampling, overlong penalty)" + MULTI, {**DAPO, **MULTI_UPDATE}),
  "ppo_2x2": ("ppo" + MULTI, {"loss.name": "ppo", **MULTI_UPDATE}),
  "grpo+minpro_2x2": ("grpo+minpro" + MULTI, {"loss.grpo.prefix": "min_exclusive", **MULTI_UPDATE}),
  "grpo_top_p0.9": (
    "one update per batch, sampling with top-p 0.9 (the control of grpo+tis_top_p0.9)",
    TOP_P,
  ),
  "grpo+tis_top_p0.9": (
    "one update per batch, top-p 0.9 sampling, token TIS pi_old / mu (cap 2): the weight "
    "is the nucleus mass kept at each token",
    {**TOP_P, "loss.grpo.is_level": "token"},
  ),
}


def off_policy(name: str) -> bool:
  """Whether pi_theta / pi_old or pi_old / mu can leave 1 in a variant's updates."""
  overrides = VARIANTS[name][1]
  updates = overrides.get("rl.epochs", 1) * overrides.get("rl.minibatches", 1)
  return updates > 1 or overrides.get("rl.top_p", 1.0) < 1.0


def workdir_of(root: str, name: str) -> str:
  # "grpo_2x2_lr/4" would otherwise be a nested directory.
  return os.path.join(root, name.replace("/", "_div"))


def grpo_demo():
  """experiments/grpo_demo/run.py as a module (the SFT start and the RL base config)."""
  path = os.path.join(REPO, "experiments", "grpo_demo", "run.py")
  spec = importlib.util.spec_from_file_location("grpo_demo_run", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def variant_config(demo, sft_dir: str, overrides: dict, steps: int):
  """configs/grpo.py:quickstart from ``sft_dir`` for ``steps`` RL steps, plus ``overrides``."""
  c = demo.rl_config(SEED, sft_dir, 0.0, {})  # 0 minutes: no wall-clock limit
  c.train.steps = steps  # the schedule is constant after warmup, so this only sets the end
  c.eval.every = EVAL_EVERY
  c.train.log_every = 1  # every step's reward for the curves (logging does not train)
  for path, value in overrides.items():
    config_lib.set_field(c, path, value)
  return c


def tail_mean(records: list[dict], key: str, n: int = TAIL) -> float:
  values = [r[key] for r in records if key in r][-n:]
  return float(np.mean(values)) if values else float("nan")


# Metrics the loss logs only when its correction is on, plus the gradient norm.
CORRECTION_METRICS = ("is_weight_mean", "is_clipped_frac", "prefix_weight_mean", "grad_norm")


def correction_stats(train: list[dict]) -> dict:
  """Run means of the logged ``CORRECTION_METRICS`` (per-update means, like the clip fractions)."""
  out = {}
  for key in CORRECTION_METRICS:
    values = [r[f"train/{key}"] for r in train if f"train/{key}" in r]
    if values:
      out[key] = float(np.mean(values))
  return out


def load_result(root: str, name: str) -> dict | None:
  """A finished variant's result.json, with correction stats added from its metrics.

  Rows run before ``correction_stats`` existed lack them; their metrics.jsonl has them.
  """
  workdir = workdir_of(root, name)
  path = os.path.join(workdir, "result.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    out = json.load(f)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if "grad_norm" not in out and os.path.exists(metrics_path):
    recs = metrics.read_jsonl_metrics(metrics_path)
    out.update(correction_stats([r for r in recs if "rl/reward_mean" in r]))
  return out


def run_variant(name: str, demo, sft_dir: str, args) -> dict:
  note, overrides = VARIANTS[name]
  workdir = workdir_of(args.root, name)
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
    **correction_stats(train),
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


def table_rows(results: list[dict]) -> list[str]:
  lines = [
    "| variant | start % | acc after N steps % | best % (step) | minutes | steps/min | "
    "train reward | clip frac low / high | ratio mean | IS weight / prefix factor | length |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results:
    weights = " / ".join(
      f"{r[k]:.4f}" if k in r else "-" for k in ("is_weight_mean", "prefix_weight_mean")
    )
    lines.append(
      f"| {r['variant']} | {100 * r['start_accuracy']:.1f} | "
      f"{100 * r['final_accuracy']:.1f} | {100 * r['best_accuracy']:.1f} ({r['best_step']}) | "
      f"{r['minutes']:.1f} | {r['steps_per_min']:.1f} | {r['train_accuracy']:.3f} | "
      f"{r['clip_frac_low']:.4f} / {r['clip_frac_high']:.4f} | {r['ratio_mean']:.4f} | "
      f"{weights} | {r['len_mean']:.1f} |"
    )
  return lines


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
  ]
  on = [r for r in results if not off_policy(r["variant"])]
  off = [r for r in results if off_policy(r["variant"])]
  if on:
    lines += [
      "",
      "## One update per batch, sampler = trainer (on-policy: ratio and IS weight exactly 1)",
      "",
      *table_rows(on),
    ]
  if off:
    lines += [
      "",
      "## Off-policy: several updates per batch, or a top-p sampler",
      "",
      *table_rows(off),
    ]
  lines += [
    "",
    "Columns: *acc after N steps* is the final evaluation (step N); *best* the highest of "
    f"the evaluations every {EVAL_EVERY} steps. *minutes* is wall-clock on a shared "
    f"2-core CPU, compilation and {1 + max(steps) // EVAL_EVERY} held-out evaluations "
    "included, so steps/min drifts "
    "with the machine's load. *train reward* is the exact-answer reward (1 right, 0 "
    "wrong) of every sample drawn, averaged over the last "
    f"{TAIL} steps (for dapo over all its dynamic-sampling rounds, not only the kept "
    "groups, and without the overlong penalty); samples are drawn at temperature 1, "
    "and for the top_p0.9 rows from the 0.9 nucleus, which drops unlikely (often wrong) "
    "tokens, so their train reward is not comparable with the other rows'. *clip frac* is "
    "the fraction of completion tokens where the clip binds: ratio below 1 - eps_low with a "
    "negative advantage / above 1 + eps_high with a positive one. *ratio "
    "mean* the token mean of pi_theta / pi_old (gspo, gspo_token: the sequence ratio), "
    "both averaged over every optimiser update of the run, so in the 2x2 rows a quarter "
    "of the updates "
    "(the first on each batch, at ratio 1) dilute them. *IS weight* is the token mean of "
    "the truncated pi_old / mu, *prefix factor* that of MinPRO's factor (- where off). "
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
  """Held-out accuracy and train reward; on-policy rows on top, off-policy rows below."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [
    ("one update per batch", [r for r in results if not off_policy(r["variant"])]),
    ("off-policy", [r for r in results if off_policy(r["variant"])]),
  ]
  rows = [(title, rs) for title, rs in rows if rs]
  reference = next((r for r in results if r["variant"] == "grpo"), None)
  # One y scale per column, so the two rows compare at a glance.
  fig, axes = plt.subplots(len(rows), 2, figsize=(15, 5 * len(rows)), squeeze=False, sharey="col")
  for (title, rs), (ax_acc, ax_rew) in zip(rows, axes, strict=True):
    # tab10 without its grey (7): grey is the reference curve.
    colors = [plt.get_cmap("tab10")(i) for i in range(10) if i != 7]
    curves = [(" = ".join(x["variant"] for x in g), g[0], {}) for g in identical_runs(rs)]
    if reference is not None and reference not in rs:
      # The single-update baseline, for scale in the off-policy panels.
      curves.insert(0, ("grpo (one update per batch)", reference, {"ls": "--", "lw": 2.5}))
    for i, (label, r, style) in enumerate(curves):
      style = {"color": "0.3" if style else colors[i % len(colors)], **style}
      steps, acc = zip(*r["eval_curve"], strict=True)
      ax_acc.plot(steps, 100 * np.asarray(acc), marker="o", label=label, **style)
      steps, reward = map(np.asarray, zip(*r["reward_curve"], strict=True))
      # One step's reward is a mean of 128 samples; a running mean shows the trend.
      k = min(TAIL, len(reward))
      smooth = np.convolve(reward, np.ones(k) / k, mode="valid")
      ax_rew.plot(steps[k - 1 :], smooth, label=label, **style)
    ax_acc.set(
      xlabel="RL step", ylabel="held-out mul2x2 accuracy (%)", title=f"held-out accuracy: {title}"
    )
    ax_rew.set(
      xlabel="RL step",
      ylabel=f"exact-answer reward (running mean of {TAIL} steps)",
      title=f"train reward: {title}",
    )
    for ax in (ax_acc, ax_rew):
      ax.grid(alpha=0.3)
    # Right of the row: the curves fill the panels.
    ax_rew.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


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
    loaded = load_result(args.root, name)
    if loaded is not None:
      done[name] = loaded
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
