"""DFT, Dynamic Fine-Tuning: -sg(p) log p per token (jaxpost/losses/probability.py).

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``), only the loss changed.

  python -m jaxpost.main --config=configs/dft.py:tiny --workdir=runs/dft
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  base = load_sibling(__file__, "sft_objectives")
  c = base.get_config(variant)
  c.loss.name = "dft"
  return c
