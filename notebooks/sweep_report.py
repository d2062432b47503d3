# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A sweep and its report
#
# Runs `configs/sweeps/sft_lr.py` (SFT at several peak learning rates x 3 seeds, each
# run its own `python -m jaxpost.main` process), then reads the report: per learning
# rate the mean, standard deviation and 95% interval over seeds, the per-seed values, and
# the difference to the baseline learning rate paired by seed. Full mode: 3 learning
# rates x 3 seeds of 100 steps (about 10 minutes on 2 CPU cores); tiny mode: 2 x 3 runs of
# 6 steps. The same from a shell:
#
# ```
# python -m jaxpost.sweep --config=configs/sweeps/sft_lr.py --report
# python -m jaxpost.sweep.report runs/sweeps/sft_lr
# ```

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
import numpy as np

from jaxpost.sweep import launch, load, report

sweep_file = os.path.join(REPO, "configs", "sweeps", "sft_lr.py") + (":tiny" if TINY else "")
sweep = load(sweep_file)
print(f"{sweep.name}: base {sweep.base}, seeds {tuple(sweep.seeds)}")
for run in sweep.runs():
  print(f"  {run.id:24s} {run.overrides}")

# %% [markdown]
# ## Run it
#
# Each cell's workdir is `ROOT/runs/<group>/seed<k>`, and `ROOT/manifest.json` records
# its status, config hash, wall time and commit. Running this cell again skips the cells
# that are done (and resumes interrupted ones from their checkpoints).

# %%
root = os.path.join(OUT, "sweeps", sweep.name)
workers = 2 if TINY else 1  # a tiny run is mostly its start-up: two at a time
rc = launch.main(
  [f"--config={sweep_file}", f"--root={root}", "--no-progress", f"--workers={workers}"]
)
manifest = launch.read_manifest(root)
for cell in manifest["cells"]:
  print(f"  {cell['id']:24s} {cell['status']:8s} {cell['wall_s']:6.1f} s  commit {cell['commit']}")
assert rc == 0 and all(c["status"] == "done" for c in manifest["cells"])

# %% [markdown]
# ## The report
#
# `report.build` reads every cell's `metrics.jsonl`; the metrics, baseline and curves come
# from the sweep file's `report` block (or arguments). `report.write` writes
# `results.md`, `results.csv`, `results.json` and one curve PNG per curve metric.

# %%
from IPython.display import Image, Markdown, display

r = report.build(root)
display(Markdown(report.to_markdown(r)))
written = report.write(r, os.path.join(OUT, "sweeps", sweep.name + "-report"))
for path in written:
  if path.endswith(".png"):
    display(Image(filename=path))

# %% [markdown]
# ## The numbers behind a row
#
# `r.results[metric]` is one `GroupStats` per group: `n`, `mean`, `std`, the interval
# (`low`, `high`), the per-seed `values`, and `diff`, the paired difference to the
# baseline. The interval is the Student t one: mean ± t(0.975, n-1) · std / sqrt(n).

# %%
from scipy import stats as sps

metric = "train/loss:last=1"  # the last logged training loss of each run
row = r.results[metric][-1]
values = np.array([row.values[s] for s in sorted(row.values)])
half = sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
print(f"{metric}, {row.group}: per seed {row.values}")
print(f"  mean {row.mean:.4f}, 95% interval [{row.low:.4f}, {row.high:.4f}]")
print("  paired difference to the baseline:", row.diff)
assert row.n == len(sweep.seeds)
np.testing.assert_allclose([row.low, row.high], [values.mean() - half, values.mean() + half])
