"""Masked Thought (jaxpost/data/masked_thought.py): the card's tests on packed batches."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpost.data.masked_thought import MaskedThought, rate, response_inputs
from jaxpost.types import ROLE_ANSWER, ROLE_PAD, ROLE_PROMPT, ROLE_THINK, Batch

P, TH, A, PAD = ROLE_PROMPT, ROLE_THINK, ROLE_ANSWER, ROLE_PAD
MASK = 0


def _packed(rows=64, seed=0):
  """Rows of two packed examples: 5 prompt targets, 20 think, 4 answer, then padding."""
  one = [P] * 5 + [TH] * 20 + [A] * 4
  roles = np.asarray([one + one + [PAD] * 6] * rows, np.int32)
  seg = np.asarray([[1] * 29 + [2] * 29 + [0] * 6] * rows, np.int32)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 60, roles.shape).astype(np.int32)
  targets = np.concatenate([tokens[:, 1:], np.zeros((rows, 1), np.int32)], 1)
  mask = np.isin(roles, (TH, A)).astype(np.float32)
  pos = np.concatenate([np.arange(29), np.arange(29), np.zeros(6, int)])
  return Batch(
    tokens=tokens,
    targets=targets,
    loss_mask=mask,
    segment_ids=seg,
    positions=np.broadcast_to(pos, roles.shape).astype(np.int32),
    roles=roles,
  )


def test_response_inputs_are_the_inputs_after_a_counted_target_within_an_example():
  b = _packed(rows=1)
  r = response_inputs(b)[0]
  # example 1: inputs 0..5 are prompt (the target at 4 is the last prompt target), 6..28
  # are response; the first input of example 2 (col 29) follows example 1's last target
  # but belongs to another example: prompt
  expected = np.zeros(64, bool)
  expected[6:29] = True
  expected[29 + 6 : 58] = True
  np.testing.assert_array_equal(r, expected)


def test_mask_rate_matches_p_prompts_untouched_labels_unchanged():
  b = _packed()
  view = MaskedThought(p_max=0.4, warmup=0.0, max_steps=100, mask_id=MASK, seed=3)
  out = view(50, b)
  tokens, new = np.asarray(b.tokens), np.asarray(out.tokens)
  changed = new != tokens
  resp = response_inputs(b)
  assert not changed[~resp].any()  # prompt and padding inputs are never masked
  assert np.all(new[changed] == MASK)
  n, k = resp.sum(), changed.sum()
  half = 3 * np.sqrt(n * 0.4 * 0.6)  # a 3-sigma binomial interval
  assert abs(k - 0.4 * n) < half, (k, n)
  for field in ("targets", "loss_mask", "segment_ids", "positions", "roles"):
    np.testing.assert_array_equal(getattr(out, field), getattr(b, field))
  # the same step draws the same mask (a resumed run); another step another
  np.testing.assert_array_equal(view(50, b).tokens, new)
  assert not np.array_equal(view(51, b).tokens, new)


def test_schedule_warms_up_linearly_then_holds():
  assert rate(0, 0.4, 0.66, 100) == 0.0
  assert rate(33, 0.4, 0.66, 100) == pytest.approx(0.4 * 33 / 67)
  assert rate(67, 0.4, 0.66, 100) == 0.4
  assert rate(100, 0.4, 0.66, 100) == 0.4
  b = _packed(rows=4)
  view = MaskedThought(p_max=0.4, warmup=0.66, max_steps=100, mask_id=MASK)
  np.testing.assert_array_equal(view(0, b).tokens, b.tokens)  # p = 0 at step 0
