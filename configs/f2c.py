"""F²C, flip-flop consistency (jaxpost/losses/f2c.py): one answer across prompt formats.

Unsupervised fine-tuning on the task levels as multi-format multiple choice
(``data.source=choices``, jaxpost/data/choices.py): each problem asked in K formats with
the same C choices, K*C adjacent rows, one example a row. The loss's layout
(``loss.f2c.formats`` / ``choices``) follows the data's (``layout``). Evaluation adds
``eval/choice_accuracy``, ``eval/choice_agreement`` and ``eval/choice_format_std`` per
level (jaxpost/eval/choices.py).

Variants (on configs/sft_objectives.py's starts):
  ``tiny``        the zoo's ``tiny-sft``, 4 formats x 4 choices, 20 steps: the wiring.
  ``quickstart``  the zoo's ``rl-start`` (configs/sft_objectives.py:quickstart's start)
                  on mul2x2 as multiple choice between worked solutions (the right one
                  and 3 with one step slipped), 4 training formats (plain, equals,
                  commuted, plus_zero) and 2 held-out ones evaluated (paren,
                  times_one), 100 steps. (Direct answers are below chance for it.)

  python -m jaxpost.main --config=configs/f2c.py:tiny --workdir=runs/f2c
"""

from jaxpost.config_lib import load_sibling


def layout(c, formats: str, choices: int):
  """``c`` asking in ``formats`` (comma-separated) with ``choices`` choices, loss to match."""
  c.data.choice_formats = formats
  c.data.choices = choices
  c.loss.f2c.formats = len(formats.split(","))
  c.loss.f2c.choices = choices
  return c


def get_config(variant: str = "tiny"):
  base = load_sibling(__file__, "sft_objectives")
  if variant == "tiny":
    c = base.get_config("tiny")
    c = layout(c, "plain,paren,equals,commuted", 4)
    c.data.batch_size = 32  # 2 problems x 4 formats x 4 choices
    c.data.seq_len = 32
    c.train.steps = 20
    c.train.checkpoint_every = 20
    c.eval.every = 10
    c.eval.num_examples = 16
  elif variant == "quickstart":
    c = base.get_config("quickstart")
    c.data.levels = "mul2x2:1.0"
    c = layout(c, "plain,equals,commuted,plus_zero", 4)
    c.data.choice_response = "solution"
    c.loss.f2c.span = "response"
    c.loss.f2c.align_tokens = 48  # a mul2x2 solution is at most ~40 tokens
    c.data.batch_size = 64  # 4 problems x 4 formats x 4 choices
    c.data.seq_len = 64
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 10
    c.train.steps = 100
    c.train.checkpoint_every = 100
    c.eval.every = 25
    c.eval.levels = "mul2x2"
    c.eval.final_levels = "add3,mul2x2"
    c.eval.choice_formats = "plain,equals,commuted,plus_zero,paren,times_one"
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart")
  c.data.source = "choices"
  c.data.pack = False
  c.loss.name = "f2c"
  return c
