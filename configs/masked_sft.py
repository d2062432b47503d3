"""Diffusion-inspired masked fine-tuning: some prompts carry a masked copy of the response
to restore (jaxpost/data/masked_copy.py); cross-entropy on the original response.

On the shared fine-tuning set-up of configs/sft_objectives.py (variants ``tiny``,
``quickstart``, ``smollm2``); the loss stays ``cross_entropy``, the examples change:
``data.masked_copy`` of them (0.5 here) get the copy, each token masked with probability
r ~ U(``data.masked_copy_ratio``) = U(0.05, 0.95). The copy doubles those examples'
length, so ``data.seq_len`` doubles too.

  python -m jaxpost.main --config=configs/masked_sft.py:tiny --workdir=runs/masked_sft
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "sft_objectives").get_config(variant)
  c.data.masked_copy = 0.5  # half the examples restore a masked copy; half stay plain
  c.data.seq_len = 2 * c.data.seq_len  # room for the copy
  c.model.max_seq_len = max(c.model.max_seq_len, c.data.seq_len)
  return c
