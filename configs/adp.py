"""SFT on agent trajectories in the Agent Data Protocol's shape (jaxpost/data/adp.py).

``data.source=adp`` reads a JSONL file of trajectories and trains on every agent turn
(tool calls and messages) with the turns before it as context: observations and user
turns are never trained on. 10% of the trajectories are held out, every turn of each
(``data.eval_fraction``; no question on both sides): the held-out loss on agent turns
and the exact-match rate of the generated turn.

Variant ``tiny``: configs/sft.py:tiny (a tokenizer and model from scratch) on
configs/data/adp_tir_256.jsonl, 256 tool-use trajectories (a question, a python call,
its output, the answer) converted from configs/data/tir_sft.jsonl:

  python -m jaxpost.data.adp --from_tir=configs/data/tir_sft.jsonl --n=256 \\
      --out=configs/data/adp_tir_256.jsonl
  python -m jaxpost.main --config=configs/adp.py:tiny --workdir=runs/adp

Variant ``rollout``: configs/simpletir.py:sft on the same trajectories rendered as
jaxpost's own tool rollouts (``data.source=adp_rollout``, ``adp.to_rollout``): one
example per trajectory, the tool's output fence read but never trained on, as in RL's
tool turns (the raw records, ``data.source=jsonl``, train on it too).
"""

import os

from jaxpost.config_lib import load_sibling

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "adp_tir_256.jsonl")


def get_config(variant: str = "tiny"):
  if variant not in ("tiny", "rollout"):
    raise ValueError(f"unknown variant {variant!r}; expected tiny | rollout")
  if variant == "rollout":
    return _rollout()
  c = load_sibling(__file__, "sft").get_config("tiny")
  c.data.source = "adp"
  c.data.path = DATA
  c.data.eval_fraction = 0.1
  c.data.seq_len = 96  # the longest turn with its context: ~70 tokens
  c.tokenizer.vocab_size = 128  # the tags and the python call's words
  c.eval.levels = ""  # no task levels: the held-out turns are the evaluation
  c.eval.final_levels = ""
  c.eval.every = 100
  c.train.steps = 300
  return c


def _rollout():
  """configs/simpletir.py:sft (a tool-using model from scratch, evaluated by greedy tool
  rollouts on mul3x3 and mul4x3) on the trajectories in jaxpost's rollout layout: one
  example each, the tool's output read but not trained on (``data.source=adp_rollout``);
  the raw records train on the outputs too."""
  c = load_sibling(__file__, "simpletir").get_config("sft")
  c.data.source = "adp_rollout"
  c.data.path = DATA
  return c
