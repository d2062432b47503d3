"""Masked Thought (MFT): cross-entropy with response tokens of the input masked.

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``); the loss stays ``cross_entropy``, the inputs change
(jaxpost/data/masked_thought.py): each response token of the input becomes the pad token
with probability p, rising linearly to ``data.mask_thought`` over the first
``data.mask_thought_warmup`` fraction of the steps. Labels and prompts are never masked.

  python -m jaxpost.main --config=configs/masked_thought.py:tiny --workdir=runs/mft
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "sft_objectives").get_config(variant)
  c.data.mask_thought = 0.4  # the paper's GSM8K rate (0.2 on MATH)
  return c
