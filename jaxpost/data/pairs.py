"""Preference pairs: one prompt, a chosen and a rejected response, in adjacent batch rows.

Pair losses (``losses/pairs.py``: DPO for SODA, REDI's asymmetric objective) compare a
chosen response with a rejected one for the same prompt. ``data.source=pairs`` reads a
JSONL file of ``{"prompt": ..., "chosen": ..., "rejected": ...}`` records (responses in
the usual ``<think>...</think>answer`` form; ``jaxpost.data.generated`` writes the
responses a teacher or a student gives) and lays each pair out as two consecutive
examples: source index 2j is pair p(j)'s chosen response, 2j + 1 its rejected one, with
p a seeded permutation per epoch. With one example per row (``data.pack=False``, one
stream, an even batch) row 2i of every batch is a chosen response and row 2i + 1 the
rejected response of the same prompt, which is the layout the pair losses read.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from jaxpost.data import template
from jaxpost.data.jsonl import DataError, record_to_example
from jaxpost.data.packing import PlacedSource


def read_pairs(path: str, *, skip_malformed: bool = False) -> tuple[list, Callable, int]:
  """(examples [chosen_0, rejected_0, chosen_1, ...], index -> place, skipped records).

  Raises:
    DataError: a malformed record (unless skipped; then counted) naming ``path:line``, or
      no pairs at all.
  """
  examples, lines, skipped = [], [], 0
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        if not isinstance(record, dict) or set(record) < {"prompt", "chosen", "rejected"}:
          raise ValueError("expected keys 'prompt', 'chosen' and 'rejected'")
        pair = [
          record_to_example({"prompt": record["prompt"], "response": record[key]})
          for key in ("chosen", "rejected")
        ]
      except ValueError as e:
        if not skip_malformed:
          raise DataError(f"{path}:{number}: {e}") from None
        skipped += 1
        continue
      examples += pair
      lines += [number, number]
  if not examples:
    raise DataError(f"{path} holds no preference pairs")

  def where(i: int) -> str:
    return f"{path}:{lines[i]} ({'chosen' if i % 2 == 0 else 'rejected'})"

  return examples, where, skipped


def pair_source(examples, tok, seed: int, where: Callable[[int], str] | None = None):
  """index -> encoded example, whole pairs in a seeded order per epoch (see module doc)."""
  n = len(examples) // 2
  perms: dict[int, np.ndarray] = {}

  def example_at(index: int) -> int:
    epoch, offset = divmod(index, 2 * n)
    if epoch not in perms:
      perms.clear()
      perms[epoch] = np.random.default_rng([seed, epoch, 0x9A12]).permutation(n)
    return 2 * int(perms[epoch][offset // 2]) + offset % 2

  def source(index: int):
    enc = template.encode_example(tok, examples[example_at(index)])
    return enc.tokens, enc.roles

  if where is None:
    return source
  return PlacedSource(source, lambda index: where(example_at(index)))
