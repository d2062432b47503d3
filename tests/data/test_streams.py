"""StreamPacker: the global batch is the same however many hosts pack it; exact resume."""

import numpy as np
import pytest

from jaxpost.data import packing
from jaxpost.data.streams import StreamPacker
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT

B, T = 8, 24


def _source(i):
  """Deterministic examples of 4..11 tokens; token values encode the example index."""
  n = 4 + (i * 7919) % 8
  tokens = (np.arange(n) + 100 * i).astype(np.int32)
  return tokens, np.array([ROLE_PROMPT] * 2 + [ROLE_ANSWER] * (n - 2), np.int32)


def _packer(rows=None, streams=4):
  return StreamPacker(_source, batch_size=B, seq_len=T, streams=streams, rows=rows)


def _batches(packer, n=3):
  return [packer.next_batch()[0] for _ in range(n)]


def test_one_stream_is_sequential_packing():
  packer = _packer(streams=1)
  start = 0
  for got in _batches(packer):
    want, start, _ = packing.pack_batch(_source, start, batch_size=B, seq_len=T)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert packer.next_index == start
  assert packer.state() == {"next_index": start, "stream_positions": [start]}


@pytest.mark.parametrize("hosts", [2, 4, 8])
def test_global_batch_does_not_depend_on_host_count(hosts):
  reference = _batches(_packer())
  per_host = [
    _batches(_packer(rows=np.arange(h * B // hosts, (h + 1) * B // hosts))) for h in range(hosts)
  ]
  for step, want in enumerate(reference):
    for k in want:
      got = np.concatenate([batches[step][k] for batches in per_host])
      np.testing.assert_array_equal(got, want[k])
  # Streams really are packed independently: rows of different streams start at
  # different source indices (4 streams, 2 rows each).
  first = reference[0]["tokens"][::2, 0] // 100
  np.testing.assert_array_equal(first, [0, 1, 2, 3])


def test_any_row_order_and_shared_streams():
  """Rows need not be contiguous or stream-aligned (a host packs whole streams)."""
  reference = _batches(_packer())
  rows = np.array([6, 7, 1, 4])  # streams 3, 0 and 2 (row 1 shares stream 0 with row 0)
  packer = _packer(rows=rows)
  np.testing.assert_array_equal(packer.owned, [0, 2, 3])
  assert packer.capacity == 3 * 2 * T
  for got, want in zip(_batches(packer), reference, strict=True):
    for k in want:
      np.testing.assert_array_equal(got[k], want[k][rows])


def test_state_restore_resumes_exactly():
  full = _packer()
  batches = _batches(full, 4)
  part = _packer()
  _batches(part, 2)
  state = part.state()
  assert len(state["stream_positions"]) == 4 and state["next_index"] == sum(
    state["stream_positions"]
  )
  resumed = _packer()
  resumed.restore(state)
  for got, want in zip(_batches(resumed, 2), batches[2:], strict=True):
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  with pytest.raises(ValueError, match="data streams"):
    _packer(streams=2).restore(state)
  # A pre-streams checkpoint ({"next_index": n}) restores a one-stream packer.
  old = _packer(streams=1)
  old.restore({"next_index": 5, "dataset_size": None})
  assert old.next_index == 5


def test_bad_arguments():
  with pytest.raises(ValueError, match="divide"):
    _packer(streams=3)
  with pytest.raises(ValueError, match="outside the batch"):
    _packer(rows=[0, 8])
