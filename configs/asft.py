"""ASFT, Anchored SFT: DFT + lambda KL(reference || model) (jaxpost/losses/anchored.py).

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``), only the loss changed.

  ``loss.asft.kl_weight`` (lambda, 0.05), ``loss.asft.weighting`` (dft | sft). The
  reference is the start (``teacher.*`` set by configs/sft_objectives.reference).

  python -m jaxpost.main --config=configs/asft.py:tiny --workdir=runs/asft
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  base = load_sibling(__file__, "sft_objectives")
  c = base.get_config(variant)
  c.loss.name = "asft"
  base.reference(c)
  return c
