"""Self-data distillation for a pruned model: SFT of the pruned copy on data its unpruned
self wrote (jaxpost/datagen/selective.py, ``--method=self_distill``).

The unpruned start writes each training problem's target (its rewrite of the gold, or,
with ``--rewrite=none``, its own answer: the tiny task models cannot read a prompt that
shows them the gold); a correct target that leaks nothing is kept, else the gold. The
student is the same start with a contiguous block of decoder blocks removed
(``model.keep_layers``: the embeddings, final norm and head stay), fine-tuned with plain
NLL on that data. The unpruned model is only read, while the data is built. The span
removed is the one whose input and output residual streams are closest in angle (the
paper's choice, after Gromov et al.; jaxpost/models/depth.py): for ``rl-start``,

  python -m jaxpost.models.depth --model=zoo:rl-start --levels=mul2x2 --drop=1
  -> distances [0.406, 0.366]: remove block 1, model.keep_layers=0

Variants:
  ``tiny``        configs/sft_objectives.py:tiny, the zoo's ``tiny-sft`` cut to its first
                  block, on configs/data/self_distill_mul2x2 (written by the zoo's
                  ``rl-start@0``, ``--rewrite=none``, 256 mul2x2 problems, seed 1234: 66%
                  its own answers, 34% gold)
  ``quickstart``  configs/sft_objectives.py:quickstart (``rl-start``, 300 steps), cut to
                  its first block; build the data from the same start:

  python -m jaxpost.datagen.selective --method=self_distill --rewrite=none \\
      --model=zoo:rl-start --levels=mul2x2 --n=1600 --out=runs/data/self_distill
  python -m jaxpost.main --config=configs/self_distill.py:quickstart --workdir=runs/sdd \\
      --config.data.path=runs/data/self_distill/data.jsonl
"""

import os

from jaxpost.config_lib import load_sibling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def get_config(variant: str = "tiny"):
  if variant not in ("tiny", "quickstart"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart")
  c = load_sibling(__file__, "sft_objectives").get_config(variant)
  c.model.keep_layers = "0"  # the tiny models' 2 blocks: the last one removed
  c.data.source = "jsonl"
  c.data.path = os.path.join(DATA, "self_distill_mul2x2", "data.jsonl")
  c.data.levels = "mul2x2:1.0"  # the held-out problems evaluated
  return c
