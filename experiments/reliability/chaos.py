"""Chaos benchmark: kill -9 runs at chosen points and check the resumed run is exact.

For each recipe (SFT and RL on their tiny configs) one uninterrupted reference run,
then N trials. A trial starts the same run in a fresh workdir, kills it with SIGKILL
at a point of one phase (tokenizer training, compilation, mid-step, mid-checkpoint
save, final evaluation), sometimes twice, and re-runs it until it finishes. Then:

* the final checkpoint (params, optimizer state, step, RNG, data position) must equal
  the reference's byte for byte;
* ``metrics.jsonl`` must equal the reference's line for line (timing keys ``perf/*``
  dropped), so no step is missing or logged twice.

The phase a kill landed in is observed, not assumed: the watcher reads the run's log
and workdir (the tokenizer log line, the model-size line, metric lines, Orbax's
temporary checkpoint directories, the final training line) and kills when the chosen
phase is under way, after a random delay. A kill that came too late (the run finished)
is reported as such.

    python experiments/reliability/chaos.py --trials 12 --out experiments/reliability/results.md

Not a test: it takes ~6 minutes on 2 CPU cores (12 trials per recipe).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMMON = [
  "--config.train.progress=False",
  "--config.train.async_checkpoint=True",
  "--config.tokenizer.train_examples=2000",
]
RECIPES = {
  "sft": [
    "--config=configs/sft.py:tiny",
    "--config.train.steps=24",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=4",
    "--config.train.keep_checkpoints=2",
    "--config.data.batch_size=16",
    "--config.eval.every=8",
    "--config.eval.num_examples=16",
    "--config.eval.batch_size=16",
    "--config.eval.max_new_tokens=8",
  ],
  "rl": [
    "--config=configs/grpo.py:tiny",
    "--config.train.steps=10",
    "--config.train.checkpoint_every=2",
    "--config.train.keep_checkpoints=2",
    "--config.eval.every=4",
  ],
}
PHASES = ("tokenizer", "compile", "mid-step", "mid-save", "final-eval")


class Watched:
  """A run as a subprocess, its stderr collected by a thread."""

  def __init__(self, recipe: str, workdir: str, env: dict):
    cmd = [sys.executable, "-m", "jaxpost.main", *RECIPES[recipe], *COMMON, f"--workdir={workdir}"]
    self.proc = subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    self.lines: list[str] = []
    self.workdir = workdir
    threading.Thread(target=self._read, daemon=True).start()
    threading.Thread(target=self.proc.stdout.read, daemon=True).start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  def log_has(self, text: str) -> bool:
    return any(text in line for line in list(self.lines))

  def train_lines(self) -> list[dict]:
    path = os.path.join(self.workdir, "metrics.jsonl")
    if not os.path.exists(path):
      return []
    out = []
    for line in open(path, encoding="utf-8"):
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue
      if any(k.startswith(("train/", "rl/")) for k in r):
        out.append(r)
    return out

  def saving(self) -> bool:
    d = os.path.join(self.workdir, "checkpoints")
    return os.path.isdir(d) and any("tmp" in name for name in os.listdir(d))


def _in_phase(run: Watched, phase: str, steps: int, target_step: int) -> bool:
  """Whether ``phase`` is under way now."""
  lines = run.train_lines()
  if phase == "tokenizer":
    return run.log_has("sentencepiece tokenizer") and not run.log_has("] model: ")
  if phase == "compile":
    return run.log_has("] model: ") and not lines
  if phase == "mid-step":
    return bool(lines) and lines[-1]["step"] >= target_step
  if phase == "mid-save":
    return run.saving()
  if phase == "final-eval":
    return bool(lines) and lines[-1]["step"] == steps
  raise ValueError(phase)


def kill_in(run: Watched, phase: str, steps: int, rng: random.Random, timeout: float) -> str:
  """Waits for ``phase`` and SIGKILLs after a random delay; returns what happened."""
  target = rng.randint(1, steps - 1)
  delay = {"tokenizer": 0.3, "compile": 1.5, "mid-step": 0.3, "mid-save": 0.0}.get(phase, 0.5)
  t0 = time.time()
  while run.proc.poll() is None and time.time() - t0 < timeout:
    if _in_phase(run, phase, steps, target):
      time.sleep(rng.uniform(0, delay))
      if run.proc.poll() is not None:
        break
      still = phase != "mid-save" or run.saving()  # a save may finish within the delay
      run.proc.send_signal(signal.SIGKILL)
      run.proc.wait()
      return "killed" if still else "killed-after"
    time.sleep(0.005 if phase == "mid-save" else 0.02)
  run.proc.wait()
  return "finished" if run.proc.returncode == 0 else f"exit {run.proc.returncode}"


def _finish(recipe: str, workdir: str, env: dict) -> None:
  run = Watched(recipe, workdir, env)
  run.proc.wait()
  if run.proc.returncode != 0:
    raise RuntimeError(f"resume of {workdir} failed:\n{''.join(run.lines[-30:])}")


def final_state(workdir: str) -> dict:
  """{leaf path: bytes} of the latest checkpoint's state, plus its data item."""
  import jax
  import orbax.checkpoint as ocp

  manager = ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"), item_names=("state", "data")
  )
  step = manager.latest_step()
  saved = manager.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()),
  )
  manager.close()
  flat = jax.tree_util.tree_flatten_with_path(saved.state)[0]
  out = {jax.tree_util.keystr(p): np.asarray(x).tobytes() for p, x in flat}
  out["data"] = json.dumps(dict(saved.data), sort_keys=True).encode()
  return out


def metric_lines(workdir: str) -> list[str]:
  out = []
  for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8"):
    r = json.loads(line)
    out.append(
      json.dumps({k: v for k, v in r.items() if not k.startswith("perf/")}, sort_keys=True)
    )
  return out


def duplicates(lines: list[str]) -> int:
  """Records whose (step, key set) appear more than once."""
  keys = collections.Counter((json.loads(x)["step"], tuple(sorted(json.loads(x)))) for x in lines)
  return sum(n - 1 for n in keys.values() if n > 1)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--trials", type=int, default=12, help="trials per recipe")
  p.add_argument("--recipes", default="sft,rl")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  args = p.parse_args()
  rng = random.Random(args.seed)
  root = tempfile.mkdtemp(prefix="jaxpost-chaos-")
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "",
    "JAX_COMPILATION_CACHE_DIR": os.path.join(root, "jax-cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  rows, t_start = [], time.time()
  for recipe in args.recipes.split(","):
    steps = int(next(a for a in RECIPES[recipe] if "train.steps" in a).split("=")[1])
    ref_dir = os.path.join(root, f"{recipe}-ref")
    _finish(recipe, ref_dir, env)
    ref_state, ref_lines = final_state(ref_dir), metric_lines(ref_dir)
    print(f"{recipe}: reference done ({len(ref_lines)} metric lines)", flush=True)
    for trial in range(args.trials):
      phases = [PHASES[trial % len(PHASES)]]
      if trial % 3 == 2:  # every third trial is killed twice before it may finish
        phases.append(rng.choice(PHASES[1:]))
      d = os.path.join(root, f"{recipe}-{trial}")
      outcomes = []
      for phase in phases:
        outcomes.append((phase, kill_in(Watched(recipe, d, env), phase, steps, rng, 600)))
      _finish(recipe, d, env)
      state, lines = final_state(d), metric_lines(d)
      exact = state.keys() == ref_state.keys() and all(state[k] == ref_state[k] for k in state)
      row = {
        "recipe": recipe,
        "trial": trial,
        "kills": " + ".join(f"{ph} ({o})" for ph, o in outcomes),
        "landed": sum(o.startswith("killed") for _, o in outcomes),
        "exact": exact,
        "metrics_equal": lines == ref_lines,
        "duplicates": duplicates(lines),
      }
      rows.append(row)
      print(json.dumps(row), flush=True)
      shutil.rmtree(d, ignore_errors=True)
  table = render(rows, time.time() - t_start)
  print(table)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(table)
  shutil.rmtree(root, ignore_errors=True)


def render(rows: list[dict], seconds: float) -> str:
  kills = sum(r["landed"] for r in rows)
  lines = [
    "| recipe | trial | kill points (outcome) | bit-exact state | metrics.jsonl identical | "
    "duplicated records |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['recipe']} | {r['trial']} | {r['kills']} | {'yes' if r['exact'] else 'NO'} | "
      f"{'yes' if r['metrics_equal'] else 'NO'} | {r['duplicates']} |"
    )
  ok = sum(r["exact"] and r["metrics_equal"] and not r["duplicates"] for r in rows)
  lines.append("")
  lines.append(
    f"{kills} kills landed over {len(rows)} trials; {ok}/{len(rows)} trials bit-exact with "
    f"identical metrics and no duplicates ({seconds / 60:.1f} min)."
  )
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
