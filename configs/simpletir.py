"""SimpleTIR: GRPO on multi-turn tool rollouts with the void-turn filter (jaxpost/tools/tir.py,
``rl.tool``; methods card rl.md section 7).

The task is exact multiplication of 3- and 4-digit numbers, which the tiny models cannot
do in their heads but a Python call does: the model writes ```` ```python ```` code, the
sandbox runs it, the output comes back as a tool turn (read, never trained on), and the
answer follows the think block. A trajectory with a void turn (neither code nor an
answer) gets no loss (``rl.tool.mask_void``) but stays in its group's baseline.

Variants:
  sft         CPU minutes: the tool-using start, SFT from scratch on one-call traces
              (configs/data/tir_sft.jsonl, written by ``python -m jaxpost.tools.tir``);
              the zoo's ``tir-start`` stops it early.
  tiny        CPU seconds: configs/grpo.py:tiny with two tool turns (smoke test; a random
              model writes no code, so every trajectory is void).
  quickstart  CPU minutes: GRPO with tools from --config.train.init_from=zoo:tir-start,
              up to 3 model turns, evaluated with greedy tool rollouts.

  python -m jaxpost.main --config=configs/simpletir.py:tiny --workdir=runs/simpletir
"""

import os

from jaxpost.config_lib import load_sibling

VARIANTS = ("sft", "tiny", "quickstart")
LEVELS = "mul3x3:1.0,mul4x3:1.0"
SFT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tir_sft.jsonl")


def _tokenizer_and_model(c):
  c.model.size = "tiny"
  c.tokenizer.vocab_size = 320  # byte fallback (256 ids): tool errors may print anything
  c.tokenizer.byte_fallback = True


def get_config(variant: str = "tiny"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected {' | '.join(VARIANTS)}")
  if variant == "sft":
    c = load_sibling(__file__, "base").get_config("sft")
    _tokenizer_and_model(c)
    c.data.source = "jsonl"
    c.data.path = SFT_DATA
    c.data.seq_len = 96
    c.data.batch_size = 32
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.optim.final_lr_frac = 0.1
    c.optim.weight_decay = 0.0
    c.train.steps = 1500
    c.train.log_every = 20
    c.train.checkpoint_every = 500
    c.eval.every = 100
    c.eval.levels = "mul3x3,mul4x3"
    c.eval.num_examples = 100
    c.eval.batch_size = 100
    c.eval.max_new_tokens = 64
    c.eval.tool_turns = 2
    return c
  c = load_sibling(__file__, "grpo").get_config(variant)
  c.rl.tool.max_turns = 2 if variant == "tiny" else 3
  c.rl.tool.mask_void = True
  c.rl.tool.void_in_group = True  # the released code's choice
  if variant == "tiny":
    c.rl.tool.turn_tokens = 8
    return c
  _tokenizer_and_model(c)
  c.data.levels = LEVELS
  c.rl.max_new_tokens = 96
  c.rl.tool.turn_tokens = 40
  c.eval.levels = "mul3x3,mul4x3"
  c.eval.tool_turns = 3
  c.eval.max_new_tokens = 96
  c.eval.num_examples = 100
  c.eval.batch_size = 100
  return c
