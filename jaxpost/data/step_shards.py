"""Per-step arrays computed once over a run's batches, stored on disk, read back by step.

The SFT recipe's batches are a pure function of the config (data, tokenizer, seed,
batch and row sizes, packing), so anything computed from training batch t by a frozen
model (a teacher's top-k log-probs, a token-selection mask) can be computed once ahead of
training and read back at step t. ``write`` runs ``compute`` over the first
``train.steps`` batches and saves safetensors shards of ``steps_per_shard`` steps with
each batch's tokens; ``Reader.step`` returns step t's arrays after checking the stored
tokens against the training batch, so a shard made for other data, another seed or
another packing is refused, never silently misaligned. Users: ``teacher_shards``
(offline teacher) and ``token_selection`` (T3S).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from jaxpost.data import pipeline, streams
from jaxpost.types import Batch
from jaxpost.workdir import data_fingerprint

META = "meta.json"


def shard_name(first: int) -> str:
  return f"shard_{first:07d}.safetensors"


def make_packer(config, tok):
  """The SFT recipe's batch stream for ``config`` (one host): what training will see."""
  source, _ = pipeline.build_source(config, tok, {})
  return streams.StreamPacker.for_config(source, config.data)


def write(
  config,
  tok,
  out: str,
  compute: Callable[[Batch], dict[str, np.ndarray]],
  meta: dict,
  *,
  steps_per_shard: int = 100,
  desc: str = "shards",
) -> dict:
  """Saves ``compute(batch t)`` for t = 1 .. ``config.train.steps``; returns the metadata.

  ``meta`` is recorded beside the run shape (steps, batch, row length, vocabulary, data
  fingerprint, seed) in ``out/meta.json``.
  """
  if steps_per_shard < 1:
    raise ValueError(f"steps_per_shard must be >= 1, got {steps_per_shard}")
  if os.path.exists(os.path.join(out, META)):
    raise ValueError(f"{out!r} already holds shards")
  packer = make_packer(config, tok)
  steps = config.train.steps
  os.makedirs(out, exist_ok=True)
  for first in tqdm(range(1, steps + 1, steps_per_shard), desc=desc, unit="shard"):
    parts: dict[str, list] = {}
    for _ in range(first, min(first + steps_per_shard, steps + 1)):
      arrays, _ = packer.next_batch()
      values = {k: np.asarray(v) for k, v in compute(Batch(**arrays)).items()}
      values["tokens"] = np.asarray(arrays["tokens"], np.int32)
      for k, v in values.items():
        parts.setdefault(k, []).append(v)
    save_file({k: np.stack(v) for k, v in parts.items()}, os.path.join(out, shard_name(first)))
  meta = {
    **meta,
    "steps": steps,
    "steps_per_shard": steps_per_shard,
    "batch_size": config.data.batch_size,
    "seq_len": config.data.seq_len,
    "vocab_size": tok.vocab_size,
    "data": data_fingerprint(config),
    "seed": config.seed,
  }
  with open(os.path.join(out, META), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)
  return meta


class Reader:
  """Shards of one directory, read step by step (one shard in memory at a time).

  Args:
    directory: what ``write`` wrote.
    field: the config field that named it, for error messages.
  """

  def __init__(self, directory: str, field: str):
    path = os.path.join(directory, META)
    if not os.path.exists(path):
      raise ValueError(f"{field}={directory!r} holds no {META}: write the shards first")
    with open(path, encoding="utf-8") as f:
      self.meta = json.load(f)
    self.directory, self.field = directory, field
    self._first, self._arrays = None, None

  def check(self, config, vocab_size: int, **want) -> None:
    """Refuses shards of another run shape (or another value of any ``want`` key)."""
    want = {
      "batch_size": config.data.batch_size,
      "seq_len": config.data.seq_len,
      "vocab_size": vocab_size,
      **want,
    }
    for key, value in want.items():
      if self.meta.get(key) != value:
        raise ValueError(
          f"{self.field}={self.directory!r} was written with {key}={self.meta.get(key)!r}, "
          f"this run has {value!r}"
        )
    if config.train.steps > self.meta["steps"]:
      raise ValueError(
        f"{self.field}={self.directory!r} covers {self.meta['steps']} steps, "
        f"train.steps={config.train.steps}"
      )

  def step(self, step: int, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of training step ``step`` (1-based), after checking that they were
    computed for this very batch of ``tokens``."""
    per = self.meta["steps_per_shard"]
    first = (step - 1) // per * per + 1
    if first != self._first:
      self._arrays = load_file(os.path.join(self.directory, shard_name(first)))
      self._first = first
    i = step - first
    if not np.array_equal(self._arrays["tokens"][i], tokens):
      raise ValueError(
        f"{self.field}={self.directory!r}: step {step}'s shard was written for other "
        "tokens (another dataset, seed, tokenizer or packing than this run's)"
      )
    return {k: v[i] for k, v in self._arrays.items() if k != "tokens"}
