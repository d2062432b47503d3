"""CurioSFT: SFT + a squared gap to a lagged, per-token-tempered self-teacher
(jaxpost/losses/curio.py).

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``), only the loss changed.

  ``loss.curio_sft.*`` (alpha 1, temperatures in [1.1, 1.5], ...); the self-teacher is a
  copy of the model synced every 5 steps (``teacher.follow=lagged``, ``teacher.sync_every``).

  python -m jaxpost.main --config=configs/curio_sft.py:tiny --workdir=runs/curio_sft
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  base = load_sibling(__file__, "sft_objectives")
  c = base.get_config(variant)
  c.loss.name = "curio_sft"
  c.teacher.follow = "lagged"  # the self-teacher: a copy of the model
  c.teacher.sync_every = 5  # the code's theta_T <- 0.01 theta_T + 0.99 theta every 5 steps
  return c
