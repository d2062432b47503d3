"""S3FT and SSR: plain SFT on targets the start model chose itself (jaxpost/datagen/selective.py).

The data is built first, from the model the run starts from: its own greedy answer where
the judge accepts it, else (S3FT only) its paraphrase of the gold answer if that is
correct, else the gold answer. Training is configs/sft_objectives.py's fine-tuning with
``data.source=jsonl`` on the built ``data.jsonl``; nothing else differs from SFT on the
gold data (``--judge=never`` builds that baseline through the same path).

Variants (``-ssr`` suffix: the SSR file):
  ``tiny``        configs/sft_objectives.py:tiny on a shipped dataset,
                  configs/data/s3ft_mul2x2 (the zoo's ``rl-start@0`` on 256 mul2x2 training
                  problems, seed 1234; 66% own answers, 0% paraphrases, 34% gold)
  ``quickstart``  configs/sft_objectives.py:quickstart (``rl-start``, mul2x2, 300 steps)
                  on the same file; point ``data.path`` at your own build:

  python -m jaxpost.datagen.selective --method=s3ft --model=zoo:rl-start --levels=mul2x2 \\
      --n=1600 --out=runs/data/s3ft
  python -m jaxpost.main --config=configs/s3ft.py:quickstart --workdir=runs/s3ft \\
      --config.data.path=runs/data/s3ft/data.jsonl

  ``smollm2``     configs/sft.py:smollm2, 60 steps, on add3 problems asked "What is X?",
                  the data built from SmolLM2-135M-Instruct itself with the lenient judge
                  (its own wording is right when its last number is):

  python -m jaxpost.datagen.selective --method=s3ft --judge=number --ask='What is {prompt}?' \\
      --model=smollm2 --levels=add3 --n=128 --max_new_tokens=64 --batch_size=32 \\
      --out=runs/data/s3ft-smollm2
  python -m jaxpost.main --config=configs/s3ft.py:smollm2 --workdir=runs/s3ft-smollm2
"""

import os

from jaxpost.config_lib import load_sibling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def get_config(variant: str = "tiny"):
  base, _, method = variant.partition("-")
  if method not in ("", "ssr") or base not in ("tiny", "quickstart", "smollm2"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart | smollm2 [-ssr]")
  if base == "smollm2":
    return _smollm2(method or "s3ft")
  c = load_sibling(__file__, "sft_objectives").get_config(base)
  c.data.source = "jsonl"
  c.data.path = os.path.join(DATA, f"{method or 's3ft'}_mul2x2", "data.jsonl")
  c.data.levels = "mul2x2:1.0"  # the held-out problems evaluated
  return c


def _smollm2(method: str):
  """configs/sft.py:smollm2 (full fine-tuning of SmolLM2-135M-Instruct) for 60 steps on
  a dataset built from the model itself, asked "What is X?" in the data and in the
  evaluation (eval/last_number/add3: the answer in any wording)."""
  c = load_sibling(__file__, "sft").get_config("smollm2-ask")
  c.data.source = "jsonl"
  c.data.path = f"runs/data/{method}-smollm2/data.jsonl"  # build it first (docstring)
  c.data.levels = "add3:1.0"
  c.eval.max_new_tokens = 64
  c.eval.every = 0
  c.train.steps = 60
  return c
