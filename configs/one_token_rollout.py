"""One-Token Rollout: token-level policy gradient on SFT data
(jaxpost/losses/one_token_rollout.py).

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``), only the loss changed.

  ``loss.one_token_rollout.samples`` (K = 8), ``temperature``, ``match_reward`` /
  ``mismatch_reward`` (+1 / -0.1), ``include_gold``.

  python -m jaxpost.main --config=configs/one_token_rollout.py:tiny --workdir=runs/one_token_rollout
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  base = load_sibling(__file__, "sft_objectives")
  c = base.get_config(variant)
  c.loss.name = "one_token_rollout"
  return c
