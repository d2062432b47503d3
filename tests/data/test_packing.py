import numpy as np
import pytest

from jaxpost.data import packing
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK


def _source(lengths):
  """Example i: tokens 100*i+1..., 2 prompt tokens, then think, then answer tokens."""

  def source(i):
    n = lengths[i % len(lengths)]
    tokens = np.arange(n, dtype=np.int32) + 100 * i + 1
    roles = np.array([ROLE_PROMPT] * 2 + [ROLE_THINK] * (n - 3) + [ROLE_ANSWER], np.int32)
    return tokens, roles

  return source


def test_packing_layout_golden():
  arrays, nxt, stats = packing.pack_batch(_source([4, 3, 5]), 0, batch_size=2, seq_len=8)
  # Row 0: ex0 (4) + ex1 (3) = 7 tokens; ex2 (5) does not fit -> row 1; then ex3 (4) doesn't fit.
  np.testing.assert_array_equal(arrays["segment_ids"][0], [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(arrays["segment_ids"][1], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(arrays["positions"][0], [0, 1, 2, 3, 0, 1, 2, 0])
  assert nxt == 3 and stats.examples == 3
  # Targets stay inside each example; the last token of an example predicts nothing.
  np.testing.assert_array_equal(arrays["targets"][0, :3], [2, 3, 4])
  assert arrays["loss_mask"][0, 3] == 0 and arrays["targets"][0, 3] == 0
  # Loss counts response targets only: ex0 = [p p t a]: targets at 0 is prompt token -> 0.
  np.testing.assert_array_equal(arrays["loss_mask"][0], [0, 1, 1, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(arrays["roles"][0, :3], [ROLE_PROMPT, ROLE_THINK, ROLE_ANSWER])


def test_unconsumed_example_starts_next_batch():
  src = _source([4, 3, 5, 6])
  a1, n1, _ = packing.pack_batch(src, 0, batch_size=2, seq_len=8)
  a2, n2, _ = packing.pack_batch(src, n1, batch_size=2, seq_len=8)
  assert a2["tokens"][0, 0] == 100 * n1 + 1
  # Every example appears exactly once across consecutive batches.
  seen = []
  for arr in (a1, a2):
    for row in range(2):
      for s in range(1, arr["segment_ids"][row].max() + 1):
        seen.append(int(arr["tokens"][row][arr["segment_ids"][row] == s][0]) // 100)
  assert seen == list(range(n2))


def test_unpacked_mode_one_example_per_row():
  arrays, nxt, _ = packing.pack_batch(_source([3, 3]), 0, batch_size=3, seq_len=8, pack=False)
  assert nxt == 3
  assert arrays["segment_ids"].max() == 1


@pytest.mark.parametrize("policy", ["truncate", "reject", "error"])
def test_overlong_policies(policy):
  src = _source([3, 12, 3, 3, 3, 3])
  if policy == "error":
    with pytest.raises(packing.OverlongError, match="seq_len=8"):
      packing.pack_batch(src, 0, batch_size=2, seq_len=8, overlong=policy)
    return
  arrays, nxt, stats = packing.pack_batch(src, 0, batch_size=2, seq_len=8, overlong=policy)
  if policy == "truncate":
    assert stats.truncated == 1 and stats.rejected == 0
    assert (arrays["segment_ids"][1] == 1).sum() == 8
  else:
    assert stats.rejected == 1 and stats.truncated == 0
    assert 1 not in {int(t) // 100 for t in arrays["tokens"][arrays["segment_ids"] > 0]}


def test_all_rejected_source_fails_loudly():
  with pytest.raises(packing.OverlongError, match="consecutive"):
    packing.pack_batch(
      _source([20]), 0, batch_size=1, seq_len=8, overlong="reject", max_consecutive_rejects=50
    )


def test_bad_policy():
  with pytest.raises(ValueError, match="overlong"):
    packing.pack_batch(_source([3]), 0, batch_size=1, seq_len=8, overlong="drop")
