"""DMT, dual-stage mixed fine-tuning (jaxpost/datagen/mixture.py), and its baselines.

Stage 1 fine-tunes on the specialised data; stage 2, starting from stage 1's model
(``train.init_from``), on the general data plus a fraction k of the specialised data.
Sequential training is k = 0; multi-task training is one stage on everything. The
stages' datasets come from ``python -m jaxpost.datagen.mixture``; here the specialised
ability is mul2x2 and the general one expr2 + add5 (levels the start never saw).

Variants (``STAGE`` of ``stage1`` | ``stage2`` | ``multitask``):
  ``tiny[-STAGE]``        configs/sft_objectives.py:tiny on configs/data/dmt_tiny (128 +
                          128 problems, k = 1/8); ``tiny-stage2`` starts from the zoo's
                          ``tiny-sft`` unless ``train.init_from`` names stage 1's run
  ``quickstart[-STAGE]``  configs/sft_objectives.py:quickstart (``rl-start``, 300 steps per
                          stage) on ``runs/data/dmt`` (build it first):

  python -m jaxpost.datagen.mixture --spec=mul2x2:1.0 --general=expr2:1.0,add5:1.0 \\
      --n_spec=1600 --n_general=1600 --k=0.0625 --out=runs/data/dmt
  python -m jaxpost.main --config=configs/dmt.py:quickstart --workdir=runs/dmt1
  python -m jaxpost.main --config=configs/dmt.py:quickstart-stage2 --workdir=runs/dmt2 \\
      --config.train.init_from=runs/dmt1
"""

import os

from jaxpost.config_lib import load_sibling

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = {
  "tiny": os.path.join(HERE, "data", "dmt_tiny"),
  "quickstart": os.path.join(os.path.dirname(HERE), "runs", "data", "dmt"),
}
STAGES = ("stage1", "stage2", "multitask")


def get_config(variant: str = "tiny"):
  base, _, stage = variant.partition("-")
  stage = stage or "stage1"
  if base not in DATA or stage not in STAGES:
    raise ValueError(
      f"unknown variant {variant!r}; expected tiny | quickstart [-{'|-'.join(STAGES)}]"
    )
  c = load_sibling(__file__, "sft_objectives").get_config(base)
  c.data.source = "jsonl"
  c.data.path = os.path.join(DATA[base], stage, "data.jsonl")
  c.data.levels = "mul2x2:1.0,expr2:1.0,add5:1.0"  # the held-out problems evaluated
  c.eval.levels = "mul2x2,expr2,add5"
  c.eval.final_levels = "add3,mul2x2,expr2,add5"
  if stage == "multitask":  # both stages' steps in one
    c.train.steps *= 2
  return c
