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
  ``smollm2``     configs/sft.py:smollm2-ask (SmolLM2-135M-Instruct, 60 steps of full
                  fine-tuning, add3 asked "What is X?") with 6 of its 30 blocks removed,
                  13-18, the span of least angular distance on add3's worked examples:

  python -m jaxpost.models.depth --model=smollm2 --levels=add3 --drop=6
  -> start 13 (distance 0.153; the first block 0.502, the last 0.437)
  python -m jaxpost.datagen.selective --method=self_distill --judge=number \\
      --ask='What is {prompt}?' --model=smollm2 --levels=add3 --n=128 \\
      --max_new_tokens=64 --batch_size=32 --out=runs/data/self_distill-smollm2
  python -m jaxpost.main --config=configs/self_distill.py:smollm2 --workdir=runs/sdd-smollm2
"""

import os

from jaxpost.config_lib import load_sibling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


# SmolLM2's 30 blocks without 13-18 (python -m jaxpost.models.depth, docstring).
SMOLLM2_KEEP = ",".join(str(i) for i in range(30) if not 13 <= i <= 18)


def get_config(variant: str = "tiny"):
  if variant not in ("tiny", "quickstart", "smollm2"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart | smollm2")
  if variant == "smollm2":
    c = load_sibling(__file__, "sft").get_config("smollm2-ask")
    c.model.keep_layers = SMOLLM2_KEEP
    c.data.source = "jsonl"
    c.data.path = "runs/data/self_distill-smollm2/data.jsonl"  # build it first (docstring)
    c.data.levels = "add3:1.0"
    c.eval.max_new_tokens = 64
    c.eval.every = 0
    c.train.steps = 60  # configs/s3ft.py:smollm2's budget
    return c
  c = load_sibling(__file__, "sft_objectives").get_config(variant)
  c.model.keep_layers = "0"  # the tiny models' 2 blocks: the last one removed
  c.data.source = "jsonl"
  c.data.path = os.path.join(DATA, "self_distill_mul2x2", "data.jsonl")
  c.data.levels = "mul2x2:1.0"  # the held-out problems evaluated
  return c
