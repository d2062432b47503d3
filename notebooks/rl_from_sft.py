# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # RL from an SFT checkpoint (GRPO)
#
# Starts GRPO from an under-trained SFT model and watches the verifiable reward and the
# held-out accuracy climb. The SFT model comes from the **model zoo**: `zoo:NAME[@SEED]`
# in a run-dir field names a small trained model that is built on first use and cached
# (`python -m jaxpost.zoo list`). Full mode starts from `rl-start` (the quickstart
# stopped at step 700, ~50% held-out; building it takes ~2.5 minutes the first time) and
# runs 150 GRPO steps (~3 minutes on a 2-core CPU); tiny mode starts from `tiny-sft` and
# runs 4 steps.

# %% [markdown]
# ## Set-up
#
# On Colab the next cell clones and installs jaxpost: set `JAXPOST_REPO` to the git URL
# of your checkout or fork first (Runtime > Change runtime type picks a CPU, GPU or TPU
# runtime; the default CPU runtime runs the tiny settings in seconds). Anywhere else it
# uses the jaxpost installed in this kernel's environment
# (`pip install -e '.[test]'` from the repository root).
#
# **On a TPU VM**: create one with `tpu/create.sh --name NAME --zone ZONE` (default
# v5litepod-8), install on every worker with `tpu/setup.sh --name NAME --zone ZONE`
# (`pip install -e '.[tpu]'` in `~/jaxpost/.venv`), then on the VM run
# `~/jaxpost/.venv/bin/pip install jupyter` and
# `~/jaxpost/.venv/bin/jupyter lab --no-browser --port 8888`,
# and reach it from your machine with
# `gcloud compute tpus tpu-vm ssh NAME --zone ZONE -- -L 8888:localhost:8888`.
# `jax.devices()` below then lists the TPU cores.

# %%
import os
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
JAXPOST_REPO = os.environ.get("JAXPOST_REPO", "")  # e.g. https://github.com/<you>/jaxpost
if IN_COLAB:
  if not JAXPOST_REPO:
    raise SystemExit("set JAXPOST_REPO to the git URL of your jaxpost checkout or fork")
  if not os.path.isdir("jaxpost"):
    subprocess.run(["git", "clone", "--depth=1", JAXPOST_REPO, "jaxpost"], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "jaxpost"], check=True)
  sys.path.insert(0, os.path.abspath("jaxpost"))
else:
  print("not on Colab: using the installed jaxpost")

# %%
import tempfile

import jax

import jaxpost

# TINY: seconds-long settings (the test suite runs every notebook this way).
TINY = os.environ.get("JAXPOST_NOTEBOOK_TINY") == "1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(jaxpost.__file__)))
OUT = tempfile.mkdtemp(prefix="jaxpost-nb-") if TINY else os.path.join(REPO, "runs", "notebooks")
os.makedirs(OUT, exist_ok=True)
print("python:", sys.prefix)
print("devices:", jax.devices())
print("tiny mode:", TINY, "| outputs under", OUT)

# %%
from jaxpost import config_lib, metrics, zoo
from jaxpost.recipes import rl

start = "tiny-sft" if TINY else "rl-start"
print(f"zoo:{start} ->", zoo.path(start))  # builds it the first time, then reuses it
print(zoo.info(start))

# %% [markdown]
# ## Configure and run GRPO
#
# `configs/grpo.py:quickstart`: 16 prompts x 8 samples at temperature 1, reward 1 for an
# exact answer, group z-score advantages, clip 0.2, no KL. Any policy loss is a field
# away (`loss.name` = `dapo`, `gspo`, `dr_grpo`, ...).

# %%
if TINY:
  config = config_lib.load_config(os.path.join(REPO, "configs", "grpo.py:tiny"))
  overrides = {"train.steps": 4, "eval.every": 2, "train.log_every": 1}
else:
  config = config_lib.load_config(os.path.join(REPO, "configs", "grpo.py:quickstart"))
  overrides = {
    "train.steps": 150,
    "train.max_minutes": 0.0,
    "eval.every": 25,
    "eval.levels": "mul2x2",
    "train.log_every": 1,
  }
overrides.update({"train.init_from": f"zoo:{start}", "train.progress": False})
for field, value in overrides.items():
  config_lib.set_field(config, field, value)

workdir = os.path.join(OUT, "rl_from_sft")
result = rl.run(config, workdir)
print({k: round(v, 3) for k, v in result.items() if k.startswith(("eval/", "reward/"))})

# %% [markdown]
# ## Reward and held-out accuracy against RL step

# %%
import matplotlib.pyplot as plt

records = metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
reward = [(r["step"], r["reward/exact_answer"]) for r in records if "reward/exact_answer" in r]
acc = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
assert reward and acc, "no reward or evaluation records"
print(f"{len(reward)} RL steps logged; held-out accuracy {acc[0][1]:.1%} -> {acc[-1][1]:.1%}")
if not TINY:
  assert acc[-1][1] > acc[0][1], "GRPO should raise held-out accuracy from this start"

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(*zip(*reward, strict=True), label="train reward (mean over samples)", alpha=0.7)
ax.plot(*zip(*acc, strict=True), marker="o", label="held-out exact match")
ax.set(xlabel="RL step", ylim=(-0.05, 1.05), title=f"GRPO from zoo:{start}")
ax.legend()
plt.show()

# %% [markdown]
# ## What else the run logged
#
# Every step also logs the policy loss's diagnostics (ratio, clip fractions), rollout
# statistics (lengths, groups with identical rewards) and timings. The keys:

# %%
keys = sorted({k for r in records for k in r if k != "step"})
print(len(keys), "metrics:", ", ".join(keys))
assert "train/loss" in keys
