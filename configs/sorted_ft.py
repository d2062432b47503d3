"""Sorted fine-tuning: the SFT loss summed over the exits of chosen blocks, each through
the shared final norm and head (jaxpost/losses/sorted.py).

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``), only the loss changed.

  ``loss.sorted_ft.exits`` (block indices, () = every block), ``exit_weights``, ``combine``.

Early-exit decoding of the result: evaluate the run with its first n blocks only:

  python -m jaxpost.main --config=configs/sorted_ft.py:tiny --workdir=runs/sorted
  python -m jaxpost.eval runs/sorted --levels=mul2x2 --exit=1
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "sft_objectives").get_config(variant)
  c.loss.name = "sorted_ft"
  return c
