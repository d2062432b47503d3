"""LfU, Learning-from-the-Undesirable: SFT + lambda * the hidden states' drift under a
normalised gradient-ascent step on per-layer steering vectors (jaxpost/losses/lfu.py).

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``), only the loss changed.

  ``loss.lfu.weight`` (lambda, 5.0), ``loss.lfu.alpha`` (the step length, 0.1).

  python -m jaxpost.main --config=configs/lfu.py:tiny --workdir=runs/lfu
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "sft_objectives").get_config(variant)
  c.loss.name = "lfu"
  return c
