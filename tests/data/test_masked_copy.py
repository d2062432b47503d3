"""Masked fine-tuning's demasking examples (jaxpost/data/masked_copy.py): the card's tests."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpost.data import masked_copy, packing
from jaxpost.types import RESPONSE_ROLES, ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK

MASK = 0


def _example(seed=0, n_prompt=6, n_think=30, n_answer=5):
  rng = np.random.default_rng(seed)
  roles = np.asarray([ROLE_PROMPT] * n_prompt + [ROLE_THINK] * n_think + [ROLE_ANSWER] * n_answer)
  return rng.integers(4, 60, len(roles)).astype(np.int32), roles.astype(np.int32)


def test_the_copy_sits_in_the_prompt_and_the_target_is_the_original():
  tokens, roles = _example()
  out_t, out_r = masked_copy.masked_example(tokens, roles, 0.5, MASK, np.random.default_rng(1))
  n_resp = int(np.isin(roles, RESPONSE_ROLES).sum())
  assert len(out_t) == len(tokens) + n_resp
  np.testing.assert_array_equal(out_t[-n_resp:], tokens[-n_resp:])  # target: the original
  np.testing.assert_array_equal(out_r[-n_resp:], roles[-n_resp:])
  assert np.all(out_r[: len(out_t) - n_resp] == ROLE_PROMPT)  # the copy carries no loss
  copy = out_t[6 : 6 + n_resp]
  kept = copy != MASK
  np.testing.assert_array_equal(copy[kept], tokens[6:][kept])
  # through packing: only the original response is in the loss mask
  arrays = packing._to_batch_arrays(
    out_t[None], out_r[None], np.ones((1, len(out_t)), np.int32), np.arange(len(out_t))[None]
  )
  assert arrays["loss_mask"].sum() == n_resp
  # r -> 0: the task is copying
  copy0 = masked_copy.masked_example(tokens, roles, 0.0, MASK, np.random.default_rng(2))[0]
  np.testing.assert_array_equal(copy0[6 : 6 + n_resp], tokens[6:])


def test_realised_ratios_are_uniform_and_the_fraction_holds():
  tokens, roles = _example(n_think=200)
  src = masked_copy.wrap(lambda i: (tokens, roles), 0.5, (0.05, 0.95), MASK, seed=3)
  ratios = []
  for i in range(800):
    t, r = src(i)
    if len(t) > len(tokens):
      copy = t[6 : 6 + 205]
      ratios.append(float(np.mean(copy == MASK)))
    else:
      np.testing.assert_array_equal(t, tokens)
    np.testing.assert_array_equal(src(i)[0], t)  # deterministic per index
  assert len(ratios) / 800 == pytest.approx(0.5, abs=0.06)
  ratios = np.asarray(ratios)
  assert ratios.min() >= 0.0 and ratios.max() <= 1.0
  # U(0.05, 0.95): quartiles near 0.275, 0.5, 0.725 (binomial noise of 205 tokens is small)
  np.testing.assert_allclose(np.quantile(ratios, [0.25, 0.5, 0.75]), [0.275, 0.5, 0.725], atol=0.06)
  assert ratios.min() < 0.12 and ratios.max() > 0.88


def test_ratio_rule():
  masked_copy.check_ratio((0.05, 0.95))
  for bad in ((0.9, 0.1), (0.0, 1.5), 0.5):
    with pytest.raises((ValueError, TypeError)):
      masked_copy.check_ratio(bad)
