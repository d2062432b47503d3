"""ISPO's intrinsic signals (jaxpost/rewards/ispo.py): the card's properties, by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.data import tasks
from jaxpost.losses import advantages
from jaxpost.losses.policy import policy_loss
from jaxpost.losses.reduce import compute_normalizers
from jaxpost.rewards import ispo
from jaxpost.rewards import token as token_rewards
from jaxpost.rollout import batching, sampler
from jaxpost.rollout import groups as groups_lib
from jaxpost.types import Rollout

OPEN, CLOSE, EOS, PAD = 4, 5, 3, 0
WINDOW = 10


class _Tok:
  pad_id, eos_id = PAD, EOS

  def encode(self, text):
    return {"<think>": [OPEN], "</think>": [CLOSE]}[text]


def _groups(completions, correct, prompt=(7, 8, 9)):
  """One group: the same prompt, the given completion ids, correctness by hand."""
  prompts = [list(prompt)] * len(completions)
  p_tok, p_mask = sampler.left_pad(prompts, PAD)
  gen = np.zeros((len(completions), WINDOW), np.int32)
  for i, c in enumerate(completions):
    gen[i, : len(c)] = c
  lengths = np.asarray([len(c) for c in completions], np.int32)
  zeros = np.zeros(gen.shape, np.float32)
  out = sampler.GenerateOutput(gen, lengths, zeros, zeros, np.ones(len(completions), bool))
  laid = batching.rollout_batch(p_tok, p_mask, out, pad_id=PAD, think_tags=([OPEN], [CLOSE]))
  n = len(completions)
  return groups_lib.Groups(
    batch=laid.batch,
    sampler_logp=laid.filtered_logp,
    raw_logp=laid.sampler_logp,
    rewards=np.asarray(correct, np.float32),
    correct=np.asarray(correct, bool),
    truncated=np.zeros(n, bool),
    lengths=lengths,
    completions=[""] * n,
    problems=[tasks.Problem("add3", "1+1", "", "2")],
  )


def test_counterfactual_rows_move_the_answer_after_an_emptied_or_cut_think_block():
  g = _groups([[OPEN, 10, 11, 12, 13, CLOSE, 20, 21, EOS], [10, 20, EOS]], [True, False])
  for keep, kept in ((0.0, []), (0.5, [10, 11]), (1.0, [10, 11, 12, 13])):
    cf, valid = ispo.counterfactual_rows(
      g.batch, open_ids=[OPEN], close_ids=[CLOSE], keep_thinking=keep, window=WINDOW
    )
    np.testing.assert_array_equal(valid, [True, False])  # row 1 has no think block
    row = [7, 8, 9, OPEN, *kept, CLOSE, 20, 21, EOS]
    np.testing.assert_array_equal(cf.tokens[0, : len(row)], row)
    on = cf.loss_mask[0] > 0
    np.testing.assert_array_equal(cf.targets[0][on], [20, 21, EOS])  # only the answer
    assert cf.tokens.shape[1] % 16 == WINDOW % 16  # prompt bucket + window


def _by_column(values):
  """A fake policy_logp: row b, column j -> values[b][j] (so a test knows what it read)."""
  return lambda batch: np.asarray(values(batch), np.float32)


def test_information_gain_is_the_mean_answer_log_ratio():
  g = _groups([[OPEN, 10, CLOSE, 20, 21, EOS], [OPEN, 10, 11, CLOSE, 20, EOS]], [True, True])
  old = np.where(g.batch.loss_mask > 0, -0.1, 0.0).astype(np.float32)  # with the thinking
  cf, valid = ispo.counterfactual_rows(
    g.batch, open_ids=[OPEN], close_ids=[CLOSE], keep_thinking=0.0, window=WINDOW
  )
  cf_logp = np.where(cf.loss_mask > 0, -np.arange(cf.tokens.shape[1])[None] / 10, 0.0)
  gain = ispo.information_gain(old, g.batch, cf_logp, cf, valid)
  # Row 0: answer 20 21 EOS is predicted at counterfactual columns 4, 5, 6 (prompt of
  # 5 tokens: 7 8 9 OPEN CLOSE); row 1: 20 EOS at 4, 5.
  np.testing.assert_allclose(gain, [-0.1 + 0.5, -0.1 + 0.45], rtol=1e-6)


def _signal(groups, cf_value, **kw):
  def policy_logp(batch):  # every answer token of row b gets log-prob -cf_value[b]
    return np.where(batch.loss_mask > 0, -np.asarray(cf_value)[:, None], 0.0)

  scores = {"old_logp": np.where(groups.batch.loss_mask > 0, -0.1, 0.0)}
  return ispo.ispo_signal(
    groups, scores, tokenizer=_Tok(), policy_logp=policy_logp, window=WINDOW, **kw
  )


ROWS = [[OPEN, 10, CLOSE, 20, EOS]] * 4


def test_an_all_correct_group_with_differing_signals_has_a_nonzero_gradient():
  groups = _groups(ROWS, [True] * 4)
  signal = _signal(groups, [0.5, 1.0, 2.0, 4.0])
  np.testing.assert_allclose(signal.sum(axis=1), [0.4, 0.9, 1.9, 3.9], rtol=1e-6)
  assert (np.count_nonzero(signal, axis=1) == 1).all()  # on the last completion token
  mask = groups.batch.loss_mask
  for by_mode, zero in (({}, True), ({"outcome": 0.1 * signal}, False)):
    token_adv, seq, _ = advantages.combine(
      groups.rewards, by_mode, mask, estimator="grpo", group_size=4
    )
    old = jnp.where(mask > 0, -0.1, 0.0)
    rollout = Rollout(
      batch=groups.batch,
      advantages=token_adv,
      old_logp=old,
      sampler_logp=old,
      ref_logp=old,
      group_ids=jnp.zeros(4, jnp.int32),
      turn_ids=(mask > 0).astype(jnp.int32),
    )
    norm = compute_normalizers(rollout.batch.loss_mask, rollout.batch.segment_ids)
    grad = jax.grad(lambda z, r=rollout, n=norm: policy_loss(z, r, norm=n)[0])(old)
    assert (np.abs(np.asarray(grad)).max() == 0) == zero  # GRPO alone: exactly 0
    assert (np.abs(np.asarray(seq)).max() == 0) == zero


def test_signal_direction_clip_and_undefined_rows():
  groups = _groups([ROWS[0], ROWS[0], [10, 20, EOS]], [True, False, True])
  signal = _signal(groups, [2.0, 2.0, 2.0]).sum(axis=1)
  np.testing.assert_allclose(signal, [1.9, -1.9, 0.0], rtol=1e-6)  # no think block: 0
  plain = _signal(groups, [2.0, 2.0, 2.0], directional=False).sum(axis=1)
  np.testing.assert_allclose(plain, [1.9, 1.9, 0.0], rtol=1e-6)
  clipped = _signal(groups, [9.0, 9.0, 9.0], clip=1.5).sum(axis=1)
  np.testing.assert_allclose(clipped, [1.5, -1.5, 0.0])


def _certainty(groups, p, entropy=None, **kw):
  on = groups.batch.loss_mask > 0
  scores = {"old_logp": np.where(on, np.log(p), 0.0), "old_entropy": entropy}
  return ispo.ispo_certainty(groups, scores, tokenizer=_Tok(), **kw)


def test_hinge_is_zero_on_correct_rollouts_and_below_the_threshold():
  groups = _groups([ROWS[0]] * 2, [True, False])
  answer = (groups.batch.loss_mask > 0) & (groups.batch.targets == 20)  # EOS is not critical
  for p in (0.2, 0.6, 0.99):
    r = _certainty(groups, np.full(groups.batch.tokens.shape, p), bonus=0.0, threshold=0.5)
    assert not r[0].any()  # correct rollout: the hinge never fires
    expected = -max(p - 0.5, 0.0) / 0.5
    np.testing.assert_allclose(r[1][answer[1]], [expected], rtol=1e-6)
    assert not r[1][~answer[1]].any()  # only critical tokens
  ps = np.linspace(0, 1, 21)
  h = ispo.certainty_hinge(ps, 0.5)
  assert (h[ps <= 0.5] == 0).all() and (np.diff(h[ps >= 0.5]) < 0).all()  # grows past tau


def test_correct_bonus_and_entropy_critical_tokens():
  groups = _groups([ROWS[0]] * 2, [True, False])
  shape = groups.batch.tokens.shape
  r = _certainty(groups, np.full(shape, 0.8), bonus=0.5)
  answer = (groups.batch.loss_mask > 0) & (groups.batch.targets == 20)
  np.testing.assert_allclose(r[0][answer[0]], [0.5 * 0.2], rtol=1e-5)
  # Entropy: only completion tokens at or above the threshold, EOS included.
  entropy = np.zeros(shape)
  cols = np.flatnonzero(groups.batch.loss_mask[1] > 0)
  entropy[:, cols[1]] = 2.0  # the token after <think>
  r = _certainty(groups, np.full(shape, 0.9), entropy, critical="entropy", entropy_threshold=1.0)
  assert np.flatnonzero(r[1]).tolist() == [cols[1]]
  both = _certainty(groups, np.full(shape, 0.9), entropy, critical="both", bonus=0.0)
  assert set(np.flatnonzero(both[1])) == {cols[1], np.flatnonzero(answer[1])[0]}
  with pytest.raises(ValueError, match="entropy"):
    _certainty(groups, np.full(shape, 0.9), None, critical="entropy")


def test_signals_read_only_the_policy_s_own_scores():
  # No frozen model behind them: the recipe loads no reference or teacher for ISPO.
  spec = token_rewards.make_spec((("ispo_signal", 0.1), ("ispo_certainty", 0.1)), {})
  assert token_rewards.needs(spec) == {"old_logp", "old_entropy"}
  assert {t.mode for t in spec} == {"outcome", "direct"}
