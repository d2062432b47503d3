"""GRPO demo: what RL adds to an under-trained SFT model, against continued SFT.

For each seed:
  1. SFT (configs/quickstart.py) stopped early, after --sft_steps of a 3000-step cosine
     schedule, so that held-out mul2x2 accuracy is roughly 40-60%;
  2. RL (configs/grpo.py:quickstart) from that checkpoint for at most --rl_minutes;
  3. continued SFT from the same checkpoint (same schedule, resumed) for the wall-clock
     the RL run took.
Then writes results.md (table, mean and spread over seeds) and reward_curve.png.

  python experiments/grpo_demo/run.py --seeds=0,1,2 --rl_minutes=10
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import time

import numpy as np

from jaxpost import config_lib, metrics
from jaxpost.recipes import rl, sft

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LEVEL = "mul2x2"


def sft_config(seed: int, workdir_steps: int, minutes: float = 0.0):
  c = config_lib.load_config(os.path.join(REPO, "configs/quickstart.py"))
  c.seed = seed
  c.train.steps = 3000  # the schedule; the run is stopped long before its end
  c.train.stop_after = workdir_steps
  c.train.max_minutes = minutes
  c.train.checkpoint_every = 100_000  # one checkpoint, at the stop
  c.train.progress = False
  c.eval.every = 0
  c.eval.levels = LEVEL
  c.eval.final_levels = ""
  return c


def rl_config(seed: int, init_from: str, minutes: float, overrides: dict):
  c = config_lib.load_config(os.path.join(REPO, "configs/grpo.py:quickstart"))
  c.seed = seed
  c.train.init_from = init_from
  c.train.max_minutes = minutes
  c.train.progress = False
  c.eval.levels = LEVEL
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


def run_seed(seed: int, args) -> dict:
  root = os.path.join(args.root, f"seed{seed}")
  sft_dir = os.path.join(root, "sft")
  t0 = time.time()
  if not os.path.isdir(os.path.join(sft_dir, "checkpoints")):
    sft_result = sft.run(sft_config(seed, args.sft_steps), sft_dir)
  else:  # an earlier invocation's SFT run: evaluate it again (cheap) for the table
    sft_result = None
  sft_minutes = (time.time() - t0) / 60

  rl_dir = os.path.join(root, "rl")
  shutil.rmtree(rl_dir, ignore_errors=True)
  rl_result = rl.run(rl_config(seed, sft_dir, args.rl_minutes, args.overrides), rl_dir)

  more_dir = os.path.join(root, "sft_more")
  shutil.rmtree(more_dir, ignore_errors=True)
  shutil.copytree(sft_dir, more_dir)
  os.remove(os.path.join(more_dir, "metrics.jsonl"))
  shutil.rmtree(os.path.join(more_dir, "tensorboard"), ignore_errors=True)
  more = sft_config(seed, 0, minutes=rl_result["wall_minutes"])
  more_result = sft.run(more, more_dir)
  out = {
    "seed": seed,
    "sft_steps": args.sft_steps,
    "sft_minutes": sft_minutes,
    "start_accuracy": rl_result.get("start/accuracy"),
    "sft_accuracy_reported": None if sft_result is None else sft_result.get("eval/accuracy"),
    "rl_accuracy": rl_result["eval/accuracy"],
    "rl_steps": rl_result["step"],
    "rl_minutes": rl_result["wall_minutes"],
    "sft_more_accuracy": more_result["eval/accuracy"],
    "sft_more_steps": more_result["step"] - args.sft_steps,
    "sft_more_minutes": more_result["wall_minutes"],
  }
  with open(os.path.join(root, "result.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


def write_table(results: list[dict], path: str, args) -> None:
  def stat(key):
    x = 100 * np.asarray([r[key] for r in results], float)
    return f"{x.mean():.1f} ± {x.std():.1f}" if len(x) > 1 else f"{x.mean():.1f}"

  lines = [
    "# GRPO demo: RL vs continued SFT from an under-trained SFT checkpoint",
    "",
    f"Held-out exact-match accuracy on {LEVEL} (200 problems per seed, greedy), seeds "
    f"{', '.join(str(r['seed']) for r in results)}; mean ± std over seeds. RL budget "
    f"{args.rl_minutes} min; continued SFT gets the wall-clock the RL run used.",
    "",
    "| seed | SFT steps | start | RL (steps, min) | continued SFT (steps, min) |",
    "|---|---|---|---|---|",
  ]
  for r in results:
    lines.append(
      f"| {r['seed']} | {r['sft_steps']} | {100 * r['start_accuracy']:.1f} | "
      f"{100 * r['rl_accuracy']:.1f} ({r['rl_steps']}, {r['rl_minutes']:.1f}) | "
      f"{100 * r['sft_more_accuracy']:.1f} ({r['sft_more_steps']}, "
      f"{r['sft_more_minutes']:.1f}) |"
    )
  lines.append(
    f"| mean | | {stat('start_accuracy')} | {stat('rl_accuracy')} | {stat('sft_more_accuracy')} |"
  )
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def plot(results: list[dict], args, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for r in results:
    recs = metrics.read_jsonl_metrics(
      os.path.join(args.root, f"seed{r['seed']}", "rl", "metrics.jsonl")
    )
    train = [x for x in recs if "rl/reward_mean" in x]
    axes[0].plot(
      [x["step"] for x in train], [x["rl/reward_mean"] for x in train], label=f"seed {r['seed']}"
    )
    ev = [x for x in recs if "eval/accuracy" in x]
    axes[1].plot(
      [x["step"] for x in ev],
      [100 * x["eval/accuracy"] for x in ev],
      marker="o",
      label=f"RL seed {r['seed']}",
    )
  axes[0].set(xlabel="RL step", ylabel="mean reward (train samples, T=1)", title="reward")
  axes[1].set(xlabel="RL step", ylabel=f"held-out {LEVEL} accuracy (%)", title="held-out accuracy")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--sft_steps", type=int, default=700)
  p.add_argument("--rl_minutes", type=float, default=10.0)
  p.add_argument("--root", default="/tmp/grpo_demo")
  p.add_argument("--out", default=HERE)
  p.add_argument("--set", action="append", default=[], help="RL override section.key=value")
  args = p.parse_args()
  args.overrides = {}
  for item in args.set:
    k, v = item.split("=", 1)
    args.overrides[k] = type(config_lib.get_field(rl_config(0, "", 1, {}), k))(v)
  logging.basicConfig(level=logging.WARNING)
  # Seeds finished by earlier invocations (their result.json under --root) stay in the
  # table, so seeds can be run one at a time.
  done = {}
  for seed_dir in sorted(glob.glob(os.path.join(args.root, "seed*", "result.json"))):
    with open(seed_dir) as f:
      r = json.load(f)
    done[r["seed"]] = r
  for seed in map(int, args.seeds.split(",")):
    done[seed] = run_seed(seed, args)
    print(json.dumps(done[seed]), flush=True)
    results = [done[k] for k in sorted(done)]
    write_table(results, os.path.join(args.out, "results.md"), args)
    plot(results, args, os.path.join(args.out, "reward_curve.png"))


if __name__ == "__main__":
  main()
