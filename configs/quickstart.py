"""The 5-minute CPU quickstart: a tokenizer and a 0.4M-parameter model from scratch.

Trains on 2x2-digit multiplication with partial products (the medium level),
``47*86`` -> ``<think>47*6=282,47*80=3760,282+3760=4042</think>4042``, mixed with
3-digit addition with a digit-by-digit trace (the easy level), then reports held-out
exact-match accuracy on every shipped level, a plot and the logs.
"""

from jaxpost.config_lib import load_sibling


def get_config():
  c = load_sibling(__file__, "base").get_config("sft")
  c.model.size = "tiny"
  c.tokenizer.vocab_size = 64  # arithmetic needs few pieces; no byte fallback
  c.tokenizer.byte_fallback = False
  c.data.levels = "add3:0.2,mul2x2:1.0"
  c.data.seq_len = 52  # one mul2x2 example per row (the longest is 52 tokens): no wasted attention
  c.data.batch_size = 64  # small batches, many steps: learning here is step-limited
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.final_lr_frac = 0.1
  c.optim.weight_decay = 0.0
  c.train.steps = 1500
  c.train.log_every = 20
  c.train.checkpoint_every = 500
  c.train.max_minutes = 4.5  # safety net on slow machines; the step budget normally ends first
  c.eval.every = 500
  c.eval.num_examples = 200
  c.eval.batch_size = 200
  c.eval.final_levels = "all"
  c.eval.max_new_tokens = 96
  return c
