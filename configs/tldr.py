"""TLDR: GRPO with a length-regularised reward whose strength is set by a level tag in
the prompt (jaxpost/rewards/tldr.py), so one model serves several thinking budgets.

Reward: ``exact_answer`` minus ``tldr``'s lambda_level * L / L_cap on correct completions.
Training prompts cycle through the levels; evaluate one level with
``eval.prompt_prefix=<its tag>`` (``python -m jaxpost.eval RUN --set eval.prompt_prefix=...``),
and the training-free controls (temperature-scaled stopping ``eval.stop_bias``, budget
forcing ``eval.force_after``) the same way. The paper's P(L) and lambdas are not published
(``../shared/methods/rl.md`` section 3): ours are fields of ``reward.tldr``.

Variants:
  tiny        CPU seconds: configs/grpo.py:tiny with three levels (tags the tiny
              tokenizer can spell: ``(1) ``, ``(2) ``, ``(3) ``).
  quickstart  CPU minutes: configs/grpo.py:quickstart (start from --config.train.init_from=
              zoo:rl-start), the same tags.
  smollm2     configs/grpo.py:smollm2 with the worded tags ``[short] `` / ``[medium] `` /
              ``[long] ``.

  python -m jaxpost.main --config=configs/tldr.py:tiny --workdir=runs/tldr
"""

from jaxpost.config_lib import load_sibling

VARIANTS = ("tiny", "quickstart", "smollm2")
# (name, tag, lambda), shortest first: the penalty for using the whole cap on a right answer.
TINY_LEVELS = (("short", "(1) ", 0.6), ("medium", "(2) ", 0.3), ("long", "(3) ", 0.0))
WORD_LEVELS = (("short", "[short] ", 0.6), ("medium", "[medium] ", 0.3), ("long", "[long] ", 0.0))


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected {' | '.join(VARIANTS)}")
  c = load_sibling(__file__, "grpo").get_config(variant)
  c.reward.terms = (("exact_answer", 1.0), ("tldr", 1.0))
  c.reward.tldr.levels = WORD_LEVELS if variant == "smollm2" else TINY_LEVELS
  c.reward.tldr.norm_tokens = 0  # P(L) = L / rl.max_new_tokens
  c.reward.tldr.penalize_wrong = False  # only a right answer pays for its length
  return c
