"""Sequence packing: templated examples -> fixed-shape ``Batch`` rows.

Examples are laid end to end in rows of ``seq_len`` tokens; ``segment_ids`` keeps
them apart in attention and ``positions`` restarts at 0 for each, so a packed row
computes exactly what the examples would compute alone (tested: packed == unpacked).

The packer reads examples by a global index from a stateless source, so the whole
data position is one integer (``next_index``) that checkpoints save and restore. A
source may also say where each index comes from (`PlacedSource`), so an over-long
example is reported as ``data.jsonl:17`` or a task level rather than a bare index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxpost.data.jsonl import DataError
from jaxpost.types import RESPONSE_ROLES, ROLE_PAD

OVERLONG_CHOICES = ("truncate", "reject", "error")

# index -> (tokens i32[n], roles i32[n]); roles are per token (ROLE_* of the token itself).
ExampleSource = Callable[[int], tuple[np.ndarray, np.ndarray]]


class OverlongError(DataError):
  """An example is longer than the row and the config says overlong='error'.

  A `DataError` (so a ValueError): the data, not the program, is what must change.
  """


@dataclasses.dataclass(frozen=True)
class PlacedSource:
  """An `ExampleSource` that can also say where an index comes from, for error messages.

  Attributes:
    fn: index -> (tokens, roles).
    where: index -> a short place, e.g. ``"data.jsonl:17"``.
    example_id: optional index -> which dataset example it is (stable across epochs;
      rows of one record share it). A source that gives it gets ``example_ids`` in its
      batches (``Batch.example_ids``).
  """

  fn: ExampleSource
  where: Callable[[int], str]
  example_id: Callable[[int], int] | None = None

  def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    return self.fn(index)


def where(source: ExampleSource, index: int) -> str:
  """The place of ``source``'s example ``index`` (``"example <index>"`` if it cannot say)."""
  if isinstance(source, PlacedSource):
    return source.where(index)
  return f"example {index}"


@dataclasses.dataclass
class PackStats:
  """Counts for one batch; the recipe logs them so nothing is dropped silently."""

  examples: int = 0
  truncated: int = 0
  rejected: int = 0
  tokens: int = 0

  def as_metrics(self, capacity: int) -> dict[str, float]:
    return {
      "data/examples": float(self.examples),
      "data/truncated": float(self.truncated),
      "data/rejected_overlong": float(self.rejected),
      "data/fill": self.tokens / capacity,
    }


def overlong_message(
  place: str, n_tokens: int, seq_len: int, *, note: str = "", at_least: bool = False
) -> str:
  """The one-line error for an example of ``n_tokens`` > ``seq_len``, with the fix.

  ``at_least``: ``n_tokens`` is a lower bound; ``note`` goes in parentheses after it.
  """
  count = f"at least {n_tokens}" if at_least else str(n_tokens)
  note = f" ({note})" if note else ""
  return (
    f"{place} has {count} tokens > seq_len={seq_len}{note}; set data.overlong to "
    "'truncate' or 'reject', or raise data.seq_len"
  )


def _fit(tokens, roles, seq_len: int, overlong: str, stats: PackStats, place: Callable[[], str]):
  """Applies the overlong policy; returns (tokens, roles) or None when rejected.

  ``place`` is only called to name the example in an error.
  """
  if len(tokens) <= seq_len:
    return tokens, roles
  if overlong == "truncate":
    stats.truncated += 1
    return tokens[:seq_len], roles[:seq_len]
  if overlong == "reject":
    stats.rejected += 1
    return None
  raise OverlongError(overlong_message(place(), len(tokens), seq_len))


def pack_batch(
  source: ExampleSource,
  start: int,
  *,
  batch_size: int,
  seq_len: int,
  pack: bool = True,
  overlong: str = "error",
  max_consecutive_rejects: int = 10_000,
  stop: int | None = None,
) -> tuple[dict[str, np.ndarray], int, PackStats]:
  """Fills ``batch_size`` rows of ``seq_len`` tokens from ``source(start), source(start+1), ...``.

  An example that does not fit in the space left in a row starts the next row; one
  that does not fit in the last row is not consumed (the next batch starts with it).

  Args:
    source: index -> (tokens, roles) of one templated example.
    start: index of the first example to read.
    batch_size: rows B.
    seq_len: tokens per row T.
    pack: several examples per row if True, else one example per row.
    overlong: what to do with an example longer than T: 'truncate' | 'reject' | 'error'.
    max_consecutive_rejects: guards against a source whose every example is rejected.
    stop: the index one past the last example (a finite pass over a dataset, e.g. an
      evaluation): the rows after it stay padding. None = the source never ends.

  Returns:
    (arrays for ``Batch`` with numpy [B, T] fields, plus ``example_ids`` [B] when the
    source gives them, next index to read, stats).
  """
  if overlong not in OVERLONG_CHOICES:
    raise ValueError(f"overlong={overlong!r}; expected one of {OVERLONG_CHOICES}")
  tokens = np.zeros((batch_size, seq_len), np.int32)
  roles = np.full((batch_size, seq_len), ROLE_PAD, np.int32)
  segments = np.zeros((batch_size, seq_len), np.int32)
  positions = np.zeros((batch_size, seq_len), np.int32)
  keyed = isinstance(source, PlacedSource) and source.example_id is not None
  example_ids = np.full((batch_size,), -1, np.int32)
  stats = PackStats()
  index = start
  pending = None  # an example read but not yet placed
  rejects = 0
  for row in range(batch_size):
    fill, seg = 0, 0
    while True:
      if pending is None and stop is not None and index >= stop:
        break
      if pending is None:
        fitted = _fit(*source(index), seq_len, overlong, stats, lambda i=index: where(source, i))
        if fitted is None:
          index += 1
          rejects += 1
          if rejects > max_consecutive_rejects:
            raise OverlongError(f"{rejects} consecutive examples were rejected as overlong")
          continue
        rejects = 0
        pending = fitted
      ex_tokens, ex_roles = pending
      n = len(ex_tokens)
      if fill + n > seq_len or (seg > 0 and not pack):
        break
      seg += 1
      if keyed and seg == 1:
        example_ids[row] = source.example_id(index)
      tokens[row, fill : fill + n] = ex_tokens
      roles[row, fill : fill + n] = ex_roles
      segments[row, fill : fill + n] = seg
      positions[row, fill : fill + n] = np.arange(n)
      fill += n
      stats.examples += 1
      stats.tokens += n
      pending = None
      index += 1
  arrays = _to_batch_arrays(tokens, roles, segments, positions)
  if keyed:
    arrays["example_ids"] = example_ids
  return arrays, index, stats


def _to_batch_arrays(tokens, roles, segments, positions) -> dict[str, np.ndarray]:
  """Next-token targets within each segment; the loss counts response tokens only."""
  nxt = lambda a, fill: np.concatenate([a[:, 1:], np.full_like(a[:, :1], fill)], axis=1)
  targets = nxt(tokens, 0)
  target_roles = nxt(roles, ROLE_PAD)
  same_segment = (nxt(segments, 0) == segments) & (segments > 0)
  target_roles = np.where(same_segment, target_roles, ROLE_PAD)
  is_response = np.isin(target_roles, RESPONSE_ROLES)
  return {
    "tokens": tokens,
    "targets": np.where(same_segment, targets, 0).astype(np.int32),
    "loss_mask": is_response.astype(np.float32),
    "segment_ids": segments,
    "positions": positions,
    "roles": target_roles.astype(np.int32),
  }
