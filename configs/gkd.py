"""GKD: distillation on a mix of the data and the student's own samples (``recipe=gkd``).

Each step is on-policy with probability ``gkd.lmbda``: the student samples completions of
``gkd.prompts_per_step`` task prompts and the ``kd`` loss (JSD(0.5) here, GKD's default)
compares it with the teacher on those tokens; otherwise on the next data batch. With
``loss.name=sampled_rkl`` (and ``gkd.lmbda=1``) the sampled token's reverse-KL log-ratio is
a per-token advantage instead (``jaxpost/recipes/gkd.py``).

Variants:
  ``tiny``        configs/distill.py:tiny's student, data and teacher (smoke test).
  ``quickstart``  a quickstart-size student from the zoo's ``student-mul2x2-40`` (an SFT
                  run stopped at 40% held-out mul2x2) distilled from ``teacher-mul2x2``,
                  300 steps.

  python -m jaxpost.main --config=configs/gkd.py:tiny --workdir=runs/gkd --config.gkd.lmbda=1
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "base").get_config("gkd")
  if variant == "tiny":
    source = load_sibling(__file__, "distill").get_config("tiny")
    c.gkd.prompts_per_step = 16
    c.gkd.max_new_tokens = 48
  elif variant == "quickstart":
    source = load_sibling(__file__, "quickstart").get_config()
    source.teacher.init_from = "zoo:teacher-mul2x2"
    c.train.init_from = "zoo:student-mul2x2-40"
    c.gkd.prompts_per_step = 64
    c.gkd.max_new_tokens = 64
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart")
  for section in ("model", "tokenizer", "data", "optim", "train", "eval", "teacher"):
    for key, value in source[section].items():
      if not (section == "train" and key == "init_from" and c.train.init_from):
        c[section][key] = value
  c.loss.kd.divergence = "jsd"  # GKD's default beta = 0.5
  if variant == "quickstart":
    c.train.steps = 300
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 10
    c.eval.every = 100
    c.eval.levels = "mul2x2"
    c.eval.final_levels = ""
  return c
