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
# # jaxpost quickstart: SFT, evaluation, plots
#
# Trains a SentencePiece tokenizer and a small Qwen-style decoder on the shipped
# arithmetic task (2x2-digit multiplication with a partial-product trace), evaluates it
# on held-out problems with greedy decoding, and plots what the run logged. Full mode is
# `configs/quickstart.py` (a 0.4M-parameter model, about 5 minutes on a 2-core laptop
# CPU); tiny mode (`JAXPOST_NOTEBOOK_TINY=1`) is a few seconds of training.

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

# %% [markdown]
# ## Configure and train
#
# A config is an `ml_collections.ConfigDict`: load a file (`path:variant`), change
# fields with `set_field` (the same dotted names as `--config.a.b=v` on the command line),
# and `sft.run` validates it and trains in `workdir`. Running the cell again resumes
# from the workdir's last checkpoint (here: returns at once, the run is finished).

# %%
from jaxpost import config_lib, metrics
from jaxpost.recipes import sft

if TINY:
  config = config_lib.load_config(os.path.join(REPO, "configs", "sft.py:tiny"))
  overrides = {
    "tokenizer.train_examples": 2000,
    "data.batch_size": 8,
    "data.seq_len": 64,
    "train.steps": 6,
    "train.log_every": 1,
    "train.checkpoint_every": 6,
    "eval.every": 3,
    "eval.num_examples": 8,
    "eval.batch_size": 8,
    "eval.max_new_tokens": 4,
  }
else:
  config = config_lib.load_config(os.path.join(REPO, "configs", "quickstart.py"))
  overrides = {}
overrides["train.progress"] = False
for field, value in overrides.items():
  config_lib.set_field(config, field, value)

workdir = os.path.join(OUT, "quickstart")
result = sft.run(config, workdir)
print({k: v for k, v in result.items() if k.startswith("eval/") or k in ("step", "wall_minutes")})

# %% [markdown]
# ## What the run logged
#
# `metrics.jsonl` holds one JSON object per logged step (`train/*` every `log_every`
# steps, `eval/*` at each evaluation). The same records are in TensorBoard
# (`workdir/tensorboard`) and in `workdir/metrics.png`.

# %%
import matplotlib.pyplot as plt
import numpy as np

records = metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
assert train and evals, "the run logged no train or eval records"
first, last = train[0][1], np.mean([loss for _, loss in train[-3:]])
print(f"train/loss {first:.3f} -> {last:.3f} over {train[-1][0]} steps")
assert last < first, "the loss did not go down"

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.plot(*zip(*train, strict=True))
ax1.set(xlabel="step", ylabel="train/loss", yscale="log", title="training loss")
ax2.plot(*zip(*evals, strict=True), marker="o")
ax2.set(xlabel="step", ylabel="held-out exact match", ylim=(-0.05, 1.05), title="eval/accuracy")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Evaluate the trained model yourself
#
# Rebuild the model from the workdir (tokenizer + latest checkpoint) and decode
# held-out problems greedily with `jaxpost.eval.accuracy.Evaluator`; each response is
# scored by the task's own checker.

# %%
from flax import nnx

from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.eval.accuracy import Evaluator
from jaxpost.recipes import common

tok = SentencePieceTokenizer.load(os.path.join(workdir, "tokenizer.model"))
model = common.build_model(config, tok.vocab_size, init_from=workdir)
graphdef, state = nnx.split(model)
evaluator = Evaluator(
  graphdef,
  tok,
  num_examples=8 if TINY else 100,
  batch_size=8 if TINY else 50,
  max_new_tokens=config.eval.max_new_tokens,
  seed=config.seed,
)
level = evaluator.evaluate_level(state, "mul2x2")
print(f"mul2x2: {level.accuracy:.1%} exact match, {level.format_rate:.1%} well-formed, n={level.n}")
for prompt, response, expected in level.samples:
  print(f"  {prompt!r} -> {response!r} (expected {expected})")
assert 0.0 <= level.accuracy <= 1.0 and level.n == evaluator.num_examples
if not TINY:
  assert level.accuracy > 0.5, "the quickstart model should solve most mul2x2 problems"
