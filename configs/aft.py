"""Aggregation fine-tuning (AFT, jaxpost/datagen/aggregate.py): SFT from a query and K
drafts in the prompt to one answer; at inference, propose-and-aggregate layers
(``aggregate.propose_and_aggregate``).

Variants:
  ``tiny``        configs/sft_objectives.py:tiny on configs/data/aft_mul2x2: 256 mul2x2
                  problems (seed 1234), each with 4 samples of the zoo's ``rl-start@0`` at
                  T 0.7 (60% right) in the compact layout, the gold as the target
  ``quickstart``  configs/sft_objectives.py:quickstart (``rl-start``, 300 steps) on the
                  same file, or your own:

  python -m jaxpost.datagen.aggregate --model=zoo:rl-start --levels=mul2x2 --n=1600 \\
      --proposals=4 --out=runs/data/aft
  python -m jaxpost.main --config=configs/aft.py:quickstart --workdir=runs/aft \\
      --config.data.path=runs/data/aft/data.jsonl
"""

import os

from jaxpost.config_lib import load_sibling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "aft_mul2x2")


def get_config(variant: str = "tiny"):
  if variant not in ("tiny", "quickstart"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart")
  c = load_sibling(__file__, "sft_objectives").get_config(variant)
  c.data.source = "jsonl"
  c.data.path = os.path.join(DATA, "data.jsonl")
  c.data.levels = "mul2x2:1.0"  # the held-out problems evaluated (one sample, no drafts)
  c.data.seq_len = 256  # four drafts in the prompt and the answer
  c.model.max_seq_len = max(c.model.max_seq_len, 256)
  return c
