"""Recipe configs shrunk to seconds on CPU, shared by the recipe test modules."""

import os

from jaxpost import config_lib, metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shipped(spec: str, **overrides):
  """``configs/<spec>`` (e.g. ``"fedsd.py:tiny"``) without progress bars, overrides applied
  (dotted fields)."""
  c = config_lib.load_config(os.path.join(REPO, "configs", spec))
  c.train.progress = False
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


def sft_tiny(**overrides):
  """configs/sft.py:tiny, 4 steps of 8 x 64 tokens; overrides are dotted fields."""
  c = config_lib.load_config(os.path.join(REPO, "configs", "sft.py:tiny"))
  c.tokenizer.train_examples = 2000
  c.data.batch_size = 8
  c.data.seq_len = 64
  c.train.steps = 4
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.progress = False
  c.eval.every = 0
  c.eval.num_examples = 8
  c.eval.batch_size = 8
  c.eval.max_new_tokens = 4
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


def train_records(workdir):
  """{step: record} of a run's metrics.jsonl records that hold a train loss."""
  return {
    r["step"]: r
    for r in metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
    if "train/loss" in r
  }
