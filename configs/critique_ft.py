"""Critique fine-tuning (CFT, jaxpost/datagen/critique.py): learn to critique noisy
solutions instead of imitating gold ones; plain NLL on the critique tokens.

Variants:
  ``tiny``     configs/sft.py:tiny (a tokenizer and model from scratch: the critiques are
               English) on configs/data/critique_mul2x2, the zoo's ``rl-start@0``'s samples
               at T 0.7 for 256 mul2x2 problems (seed 1234), each critiqued by the
               programmatic teacher; a smoke test of the path
  ``smollm2``  configs/sft.py:smollm2 (SmolLM2-135M-Instruct) on critiques of its own
               add3 samples; build them first:

  python -m jaxpost.datagen.critique --model=smollm2 --levels=add3 --n=512 \\
      --out=runs/data/cft-add3
  python -m jaxpost.main --config=configs/critique_ft.py:smollm2 --workdir=runs/cft \\
      --config.data.path=runs/data/cft-add3/data.jsonl
"""

import os

from jaxpost.config_lib import load_sibling

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "critique_mul2x2")


def get_config(variant: str = "tiny"):
  if variant not in ("tiny", "smollm2"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | smollm2")
  c = load_sibling(__file__, "sft").get_config(variant)
  c.data.source = "jsonl"
  if variant == "tiny":
    c.data.path = os.path.join(DATA, "data.jsonl")
    c.data.seq_len = 192  # a solution and its critique
    c.tokenizer.vocab_size = 256  # the critiques' English
  else:
    c.data.path = os.path.join(os.path.dirname(HERE), "runs", "data", "cft-add3", "data.jsonl")
    c.data.seq_len = 320  # the chat template, a sampled solution and its critique
  return c
