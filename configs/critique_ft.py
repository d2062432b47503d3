"""Critique fine-tuning (CFT, jaxpost/datagen/critique.py): learn to critique noisy
solutions instead of imitating gold ones; plain NLL on the critique tokens.

Variants:
  ``tiny``     configs/sft.py:tiny (a tokenizer and model from scratch: the critiques are
               English) on configs/data/critique_mul2x2, the zoo's ``rl-start@0``'s samples
               at T 0.7 for 256 mul2x2 problems (seed 1234), each critiqued by the
               programmatic teacher; a smoke test of the path
  ``smollm2``  configs/sft.py:smollm2-ask (SmolLM2-135M-Instruct, full fine-tuning, 60
               steps, evaluated on add3 asked "What is X?") on critiques of its own T 0.7
               answers to add3 asked the same way, each critiqued by the free-text teacher
               (every written step, then the last number); build them first:

  python -m jaxpost.datagen.critique --model=smollm2 --levels=add3 --n=128 \\
      --max_new_tokens=64 --batch_size=32 --teacher=number --ask='What is {prompt}?' \\
      --out=runs/data/cft-smollm2
  python -m jaxpost.main --config=configs/critique_ft.py:smollm2 --workdir=runs/cft
"""

import os

from jaxpost.config_lib import load_sibling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "critique_mul2x2")


def get_config(variant: str = "tiny"):
  if variant not in ("tiny", "smollm2"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | smollm2")
  if variant == "tiny":
    c = load_sibling(__file__, "sft").get_config("tiny")
    c.data.source = "jsonl"
    c.data.path = os.path.join(DATA, "data.jsonl")
    c.data.seq_len = 192  # a solution and its critique
    c.tokenizer.vocab_size = 256  # the critiques' English
    return c
  # The budget of configs/s3ft.py:smollm2 (the SFT baseline it is compared with).
  c = load_sibling(__file__, "sft").get_config("smollm2-ask")
  c.data.source = "jsonl"
  c.data.path = "runs/data/cft-smollm2/data.jsonl"  # build it first (docstring)
  c.data.levels = "add3:1.0"  # the training problems the data was built from
  # The chat template, a sampled answer (<= 64 tokens) and its critique: ~140 tokens, so
  # two a row, as many examples a step as SFT's rows of 160.
  c.data.seq_len = 320
  c.model.max_seq_len = 320
  c.eval.max_new_tokens = 64
  c.eval.every = 0
  c.train.steps = 60
  return c
