"""Skill-SD: GRPO plus a self-distillation term from the policy's synced, privileged copy.

The student samples from the plain task prompt; a copy of it (``teacher.follow=lagged``,
synced every ``teacher.sync_every`` RL steps) re-scores the same completion tokens with
privileged text in its prompt (``teacher.privileged``: ``skill``, the task family's
workflow note, our stand-in for the paper's retrieved skill; or ``trace`` / ``answer``).
Its log-ratio log p_T(y_t) - log pi_old(y_t) is a per-token advantage with weight lambda
(``reward.token_terms``: ``teacher_log_ratio``), added after GRPO's group estimator, and
the policy loss multiplies it by the importance ratio pi/pi_old (clipped like every
advantage): the importance-weighted, sampled-token reverse KL. The paper's exact form
is not published (``../shared/methods/rl.md`` section 9); this reading makes its two
checks hold exactly: lambda = 0 is GRPO, and a teacher equal to the student (same
weights, same context) adds nothing (tested).

Variants:
  tiny        CPU seconds: configs/grpo.py:tiny plus the term (smoke test).
  quickstart  CPU minutes: configs/grpo.py:quickstart (start from --config.train.init_from=
              zoo:rl-start) with lambda 0.001 (the paper's best) and a sync every 10 steps.

  python -m jaxpost.main --config=configs/skill_sd.py:tiny --workdir=runs/skill_sd
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  if variant not in ("tiny", "quickstart"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | quickstart")
  c = load_sibling(__file__, "grpo").get_config(variant)
  c.reward.token_terms = (("teacher_log_ratio", 0.001),)  # lambda: the paper's best, 0.001
  c.teacher.follow = "lagged"  # synced from the student every sync_every RL steps
  c.teacher.sync_every = 2 if variant == "tiny" else 10  # sync period: not in the paper
  c.teacher.privileged = "skill"  # the teacher's prompt only; never the student's
  return c
