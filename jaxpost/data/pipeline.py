"""From config to a stateless example source: tokenizer, task mixture or user data.

A source maps a global example index to ``(tokens, roles)``; the packer reads it in
order, so the data position of a run is one integer. Procedural tasks are an unbounded
stream by index; finite datasets (JSONL, tfds) are read in a fresh seeded permutation
per epoch.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from jaxpost.data import tasks, template
from jaxpost.data.packing import ExampleSource
from jaxpost.data.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer

TOKENIZER_PREFIX = "tokenizer"


def prepare_tokenizer(config, workdir: str) -> Tokenizer:
  """Loads ``tokenizer.path``, or the one a previous run trained in ``workdir``, or trains one.

  A trained tokenizer is saved in the workdir so that resuming (and evaluating) a
  run uses exactly the same vocabulary.
  """
  if config.tokenizer.path:
    return load_tokenizer(config.tokenizer.path)
  if config.model.hf_dir:
    # A pretrained checkpoint comes with its own vocabulary.
    return load_tokenizer(config.model.hf_dir)
  prefix = os.path.join(workdir, TOKENIZER_PREFIX)
  if os.path.exists(prefix + ".model"):
    return SentencePieceTokenizer.load(prefix + ".model")
  os.makedirs(workdir, exist_ok=True)
  texts = _tokenizer_corpus(config)
  logging.info("training a %d-piece sentencepiece tokenizer", config.tokenizer.vocab_size)
  return SentencePieceTokenizer.train(
    texts,
    prefix,
    vocab_size=config.tokenizer.vocab_size,
    byte_fallback=config.tokenizer.byte_fallback,
  )


def _tokenizer_corpus(config) -> list[str]:
  n = config.tokenizer.train_examples
  if config.data.source == "tasks":
    # Every shipped level, so evaluation on unseen levels is never out of vocabulary.
    return list(tasks.training_corpus(tuple(tasks.LEVELS), n, config.seed))
  examples = load_examples(config)
  return [
    template.render_prompt(ex.prompt) + template.render_response(ex)
    for ex in examples[: min(n, len(examples))]
  ]


def load_examples(config, counts: dict | None = None):
  """The user dataset of ``config.data`` as a random-access sequence of Examples.

  ``counts``, if given, receives ``data/skipped_malformed`` (records dropped under
  ``data.skip_malformed``) so the caller can record it. The last dataset read is kept
  (keyed by its path's size and modification time), so training a tokenizer on it and
  then building the training source reads it once.
  """
  d = config.data
  if d.source not in ("jsonl", "tfds"):
    raise ValueError(f"data.source={d.source!r} has no example list")
  # A missing path is left to the reader, whose error says what it looked for.
  stat = os.stat(d.path) if os.path.exists(d.path) else None
  version = (stat.st_size, stat.st_mtime_ns) if stat else None
  examples, skipped = _read_examples(d.source, d.path, d.split, d.skip_malformed, version)
  if counts is not None and d.source == "jsonl":
    counts["data/skipped_malformed"] = skipped
  return examples


@functools.lru_cache(maxsize=1)
def _read_examples(source: str, path: str, split: str, skip_malformed: bool, version: tuple):
  """(examples, skipped records) of one dataset; ``version`` only keys the cache."""
  del version
  if source == "jsonl":
    from jaxpost.data.jsonl import read_jsonl

    result = read_jsonl(path, skip_malformed=skip_malformed)
    if result.skipped:
      logging.warning("skipped %d malformed records in %s", result.skipped, path)
    return result.examples, result.skipped
  from jaxpost.data.tfds_source import read_tfds

  return read_tfds(path, split), 0


def _encoded(tok: Tokenizer, ex: template.Example) -> tuple[np.ndarray, np.ndarray]:
  enc = template.encode_example(tok, ex)
  return enc.tokens, enc.roles


def task_source(levels: dict[str, float], tok: Tokenizer, seed: int) -> ExampleSource:
  """index -> encoded problem from a weighted mixture of task levels (train split)."""
  mix = tasks.mixture(levels, "train", seed)
  return lambda index: _encoded(tok, mix(index).example)


def dataset_source(examples, tok: Tokenizer, seed: int) -> ExampleSource:
  """index -> encoded example, one seeded permutation per epoch."""
  n = len(examples)
  if n == 0:
    raise ValueError("the dataset has no examples")
  perms: dict[int, np.ndarray] = {}

  def source(index: int):
    epoch, offset = divmod(index, n)
    if epoch not in perms:
      perms.clear()  # only the current epoch is ever needed again
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    return _encoded(tok, examples[int(perms[epoch][offset])])

  return source


def build_source(
  config, tok: Tokenizer, counts: dict | None = None
) -> tuple[ExampleSource, int | None]:
  """The training example source of ``config``, and the dataset size (None if unbounded).

  ``counts``, if given, receives the data counts to record (see `load_examples`).
  """
  from jaxpost.config_lib import parse_levels

  if config.data.source == "tasks":
    return task_source(parse_levels(config.data.levels), tok, config.seed), None
  examples = load_examples(config, counts)
  return dataset_source(examples, tok, config.seed), len(examples)
