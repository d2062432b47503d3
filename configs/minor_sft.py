"""MinorSFT: sequence-level, reference-relative SFT (jaxpost/losses/anchored.py).

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``), only the loss changed.

  ``loss.minor_sft.beta`` (0.1), ``loss.minor_sft.form`` (paper | unscaled). The
  reference is the start (``teacher.*`` set by configs/sft_objectives.reference).

  python -m jaxpost.main --config=configs/minor_sft.py:tiny --workdir=runs/minor_sft
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  base = load_sibling(__file__, "sft_objectives")
  c = base.get_config(variant)
  c.loss.name = "minor_sft"
  base.reference(c)
  return c
