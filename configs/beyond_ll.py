"""Beyond Log Likelihood's f_alpha family (jaxpost/losses/probability.py).

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``), only the loss changed.

  ``loss.beyond_ll.alpha``: 0 = NLL, 1 = the paper's "-p" objective (the default);
  ``keep`` / ``q`` / ``normalize``: the thresholded variants, e.g. OnlyTopLogP-0.2 is
  alpha=0, keep=top, q=0.2 (normalize=kept: the authors' mean over kept tokens).

  python -m jaxpost.main --config=configs/beyond_ll.py:tiny --workdir=runs/beyond_ll
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  base = load_sibling(__file__, "sft_objectives")
  c = base.get_config(variant)
  c.loss.name = "beyond_ll"
  return c
