"""CFT, Critical Token Fine-tuning: cross-entropy on the critical tokens of correct
solutions only (jaxpost/data/critical_tokens.py finds them by counterfactual decoding).

The data is a JSONL of solutions whose ``"marks"`` are the critical reasoning tokens
(``ROLE_MARKED``); the ``token_priority`` loss weights reasoning tokens 0 and marked ones
1 (answer tokens are critical by construction: 1). On the shared fine-tuning set-up of
configs/sft_objectives.py (variants ``tiny``, ``quickstart``, ``smollm2``).

The shipped file, configs/data/cft_mul2x2.jsonl, holds the correct greedy solutions of
the zoo's ``rl-start@0`` to 96 mul2x2 training problems (seed 1234) with their critical
tokens; make your own (any run, level and size) with

  python -m jaxpost.data.critical_tokens --model=zoo:rl-start@0 --levels=mul2x2 \\
      --n=256 --out=runs/cft/data.jsonl
  python -m jaxpost.main --config=configs/cft.py:tiny --workdir=runs/cft \\
      --config.data.path=runs/cft/data.jsonl
"""

import os

from jaxpost.config_lib import load_sibling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cft_mul2x2.jsonl")


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "sft_objectives").get_config(variant)
  c.data.source = "jsonl"
  c.data.path = DATA
  c.loss.name = "token_priority"
  c.loss.token_priority.think_weight = 0.0  # the reasoning: only its critical tokens ...
  c.loss.token_priority.marked_weight = 1.0  # ... which the data marks
  return c
