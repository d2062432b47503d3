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
# # Hugging Face checkpoints: export, load, sample
#
# Writes a trained jaxpost model as a Hugging Face checkpoint directory (`config.json` +
# `model.safetensors`, never a pickle), loads it back, checks that the logits are
# unchanged, and samples from it: greedy and at temperature 1 with top-p. When `torch` and
# `transformers` are installed (the `interop` extra), `AutoModelForCausalLM` loads the same
# directory and its logits are compared too. The model is the zoo's `tiny-sft` in tiny mode
# and `rl-start` (the quickstart stopped at step 700) otherwise; a real pretrained
# checkpoint (e.g. Qwen2.5-0.5B) loads the same way with `hf.load_model_and_tokenizer(dir)`.

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
import shutil

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import zoo
from jaxpost.data import template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.models import hf
from jaxpost.recipes import common
from jaxpost.rollout import sampler

name = "tiny-sft" if TINY else "rl-start"
run_dir = zoo.path(name)  # a normal run directory: tokenizer.model, checkpoints/, metrics
config = zoo.config_of(name)
tok = SentencePieceTokenizer.load(os.path.join(run_dir, "tokenizer.model"))
model = common.build_model(config, tok.vocab_size, init_from=run_dir)
print(name, model.config)

# %% [markdown]
# ## Export
#
# `hf.save_model` writes the architecture `transformers` knows (Qwen2 here), the weights
# in their dtype as safetensors, and the special-token ids. This tokenizer is
# SentencePiece, so its model file is copied beside the weights
# (`hf.load_model_and_tokenizer` reads `tokenizer.json` or `tokenizer.model`).

# %%
hf_dir = os.path.join(OUT, "hf_checkpoint", name)
files = hf.save_model(model, hf_dir)
shutil.copy(os.path.join(run_dir, "tokenizer.model"), hf_dir)
for f in sorted(os.listdir(hf_dir)):
  print(f"{f:28s} {os.path.getsize(os.path.join(hf_dir, f)):>10,d} bytes")
assert any(str(f).endswith(".safetensors") for f in files)

# %% [markdown]
# ## Load it back: same logits

# %%
loaded, loaded_tok = hf.load_model_and_tokenizer(hf_dir)
prompts = ["47*86", "12*34", "90*11"]
ids = [template.encode_prompt(tok, p) for p in prompts]
tokens, mask = sampler.left_pad(ids, tok.pad_id)


def logits_of(m):
  return np.asarray(m(jnp.asarray(tokens), segment_ids=jnp.asarray(mask)))


ours, again = logits_of(model), logits_of(loaded)
print("max |logit difference| after the round trip:", np.abs(ours - again).max())
np.testing.assert_allclose(again, ours, rtol=0, atol=1e-6)
assert loaded_tok.encode("47*86") == tok.encode("47*86")

# %% [markdown]
# ## Sample from the loaded model
#
# `sampler.make_generate_fn` compiles prefill + KV-cache decode once per shape and
# setting; `temperature=0` is greedy. `gen.logp` holds each sampled token's log-probability
# under the sampling distribution (what RL's importance ratios need).

# %%
graphdef, state = nnx.split(loaded)
for settings in ({"temperature": 0.0}, {"temperature": 1.0, "top_p": 0.9}):
  generate = sampler.make_generate_fn(
    graphdef, max_new_tokens=48, eos_id=tok.eos_id, pad_id=tok.pad_id, **settings
  )
  gen = generate(state, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0))
  out, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
  print(settings)
  for p, row, n in zip(prompts, out, lengths, strict=True):
    text = tok.decode([int(t) for t in row[:n] if t != tok.eos_id])
    print(f"  {p} -> {text!r}")
  assert (lengths > 0).all() and (lengths <= 48).all()

# %% [markdown]
# ## The same directory in `transformers` (optional)

# %%
try:
  import torch
  import transformers
except ImportError as e:
  print(f"skipped: {e.name} is not installed (pip install -e '.[interop]')")
else:
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  with torch.no_grad():
    ref = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
  real = mask.astype(bool)  # left padding: compare real positions only
  diff = np.abs(ref.numpy()[real] - ours[real]).max()
  print(f"transformers {transformers.__version__}: max |logit difference| {diff:.2e}")
  assert diff < 1e-3
