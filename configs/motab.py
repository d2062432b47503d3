"""MOTAB: on-policy distillation whose rollouts backtrack when they stray from the teacher.

The ``gkd`` recipe with every step on-policy (``gkd.lmbda=1``) and ``gkd.rollout=motab``
(``jaxpost/rollout/motab.py``): the teacher scores each sampled token; past an adaptive
boundary (mean + 3 std of recent teacher surprise, -log p_T(y_t)) the rollout goes back
to the end of the last complete reasoning step and the teacher writes the rest
greedily; the ``kd`` loss (JSD(0.5), as GKD) runs on the spliced rows. The paper's
monitored quantity, boundary rule and granularity are not public: each is a
``gkd.motab_*`` field.

Variants:
  tiny        configs/gkd.py:tiny with MOTAB (smoke test).
  quickstart  configs/gkd.py:quickstart with MOTAB: ``student-mul2x2-40`` distilled from
              ``teacher-mul2x2``, 300 steps.

  python -m jaxpost.main --config=configs/motab.py:tiny --workdir=runs/motab
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  if variant not in ("tiny", "quickstart"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart")
  c = load_sibling(__file__, "gkd").get_config(variant)
  c.gkd.lmbda = 1.0  # every step on-policy: MOTAB shapes the on-policy rollouts
  c.gkd.rollout = "motab"
  return c
