"""Discriminative fine-tuning (DiscFT, arXiv 2502.18679; jaxpost/losses/discft.py).

The gold response is pushed up against m negatives the start model wrote for the same
prompt (``data.source=negatives``: a gold row and m negative rows per example,
jaxpost/data/negatives.py), each weighted by its importance ratio against a moving
per-example estimate of the partition function (the loss's state, checkpointed).

Variants:
  tiny        CPU seconds: the zoo's ``tiny-sft`` on the shipped file of 256 mul2x2
              prompts, each with the gold trace and 4 negatives sampled at T 0.7 from the
              zoo's ``rl-start@0`` (configs/data/negatives_mul2x2_256.jsonl).
  quickstart  the comparison's regime (configs/sft_objectives.py:quickstart: ``rl-start``,
              mul2x2, lr 5e-4, 300 steps) with 16 examples x (1 + 2) rows per step; the
              negatives come from the start itself (data.path; experiments/discft).
Append ``-dft2`` for the reference-free form at the card's DFT2 values (tau 0.3,
gamma_min 0.9); DFT reads the frozen start as its reference (``teacher.init_from``).

  python -m jaxpost.main --config=configs/discft.py:tiny --workdir=runs/discft
"""

import os

from jaxpost.config_lib import load_sibling

SHIPPED = os.path.join(os.path.dirname(__file__), "data", "negatives_mul2x2_256.jsonl")


def get_config(variant: str = "tiny"):
  base, _, form = variant.partition("-")
  objectives = load_sibling(__file__, "sft_objectives")
  if base == "tiny":
    c = objectives.get_config("tiny")
    c.data.path = SHIPPED
    c.data.seq_len = 64  # one mul2x2 response per row (the longest sample: ~60 tokens)
    c.data.batch_size = 24  # 8 examples x (gold + 2 negatives)
    c.train.steps = 20
    c.train.checkpoint_every = 20
    c.eval.every = 10
    c.eval.num_examples = 16
    c.eval.levels = "mul2x2"
  elif base == "quickstart":
    c = objectives.get_config("quickstart")
    c.data.path = ""  # a negatives file of the start's samples: experiments/discft
    c.data.seq_len = 64
    # A few sampled negatives ramble past 64 tokens (0.02%): cut them, as the authors'
    # trainer cuts responses past max_length (the gold traces all fit).
    c.data.overlong = "truncate"
    c.data.batch_size = 48  # 16 examples x (gold + 2 negatives)
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart [-dft2]")
  c.data.source = "negatives"
  c.data.pack = False  # rows g*(1+m) .. : one example's gold and negatives
  c.data.streams = 1
  c.data.negatives = 2  # the card's m
  c.loss.name = "discft"
  c.loss.discft.negatives = c.data.negatives
  if form == "dft2":
    c.loss.discft.form = "dft2"
    c.loss.discft.tau = 0.3
    c.loss.discft.gamma_min = 0.9
  elif form:
    raise ValueError(f"unknown form {form!r} in {variant!r}; expected dft2")
  else:
    c = objectives.reference(c)  # pi_ref: the frozen start
  return c
