"""SFT with the token-priority loss: L = -(1/N) sum_t w_t log p(y_t).

The ``token_priority`` loss (``jaxpost/losses/token_priority.py``) weights every target
token by a stop-gradient priority w_t built from ``loss.token_priority.*``:
``prob_power`` (alpha of sg(p)^alpha; 1 = DFT), ``min_prob`` (drop tokens with
p < q; Beyond Log Likelihood), per-role factors ``think_weight`` / ``answer_weight``, and
``priority="signed"`` for negative weights (``negative="ascent" | "unlikelihood"``).
With every field at its default the loss is the plain token-mean NLL (cross_entropy).

Variants:
  ``tiny``        CPU seconds-minutes (configs/sft.py:tiny's model, data and budget) with
                  DFT's priority, prob_power=1.0.
  ``quickstart``  configs/quickstart.py's model, data and 1500-step budget (about 5 CPU
                  minutes), with the same DFT priority.

Any field can be overridden on the command line, e.g.

  python -m jaxpost.main --config=configs/token_priority.py:tiny --workdir=runs/tp \\
    --config.loss.token_priority.prob_power=0.0 --config.loss.token_priority.min_prob=0.05
  python -m jaxpost.main --config=configs/token_priority.py:quickstart --workdir=runs/tp_qs \\
    --config.loss.token_priority.think_weight=0.5
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  if variant == "tiny":
    c = load_sibling(__file__, "sft").get_config("tiny")
  elif variant == "quickstart":
    c = load_sibling(__file__, "quickstart").get_config()
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart")
  c.loss.name = "token_priority"
  c.loss.token_priority.prob_power = 1.0  # DFT: w_t = sg(p(y_t))
  return c
