"""Pair losses (DPO for SODA, REDI) and the pair data layout."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import LOSSES, compute_normalizers
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, Batch

B, T, V = 6, 7, 9  # three pairs


def _batch(seed=0) -> Batch:
  rng = np.random.default_rng(seed)
  mask = np.ones((B, T), np.float32)
  mask[:, :2] = 0.0  # prompts
  mask[1, 5:] = 0.0  # a shorter rejected response
  return Batch(
    tokens=jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32),
    targets=jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32),
    loss_mask=jnp.asarray(mask),
    segment_ids=jnp.ones((B, T), jnp.int32),
    positions=jnp.tile(jnp.arange(T, dtype=jnp.int32), (B, 1)),
    roles=jnp.asarray(np.where(mask > 0, ROLE_ANSWER, ROLE_PROMPT), jnp.int32),
  )


def _logits(seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, V)) * 2, jnp.float32)


def _norm(batch):
  return compute_normalizers(batch.loss_mask, batch.segment_ids)


def _row_logp(z, batch):
  lp = np.asarray(jax.nn.log_softmax(z), np.float64)
  picked = np.take_along_axis(lp, np.asarray(batch.targets)[..., None], -1)[..., 0]
  mask = np.asarray(batch.loss_mask)
  return (picked * mask).sum(1), mask.sum(1)


def test_dpo_is_log_2_at_the_reference_and_matches_a_hand_computation():
  batch = _batch()
  z, ref = _logits(1), _logits(2)
  dpo = LOSSES.bind("dpo", {"beta": 0.5})
  at_ref, metrics = dpo(z, z + 1.0, batch, norm=_norm(batch))  # policy == reference
  assert float(at_ref) == pytest.approx(np.log(2.0), rel=1e-6)
  assert float(metrics["reward_margin"]) == pytest.approx(0.0, abs=1e-6)
  loss, _ = dpo(z, ref, batch, norm=_norm(batch))
  lp, _ = _row_logp(z, batch)
  lr, _ = _row_logp(ref, batch)
  d = lp - lr
  margins = 0.5 * (d[0::2] - d[1::2])
  want = np.mean(np.log1p(np.exp(-margins)))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected_response():
  batch = _batch()
  z, ref = _logits(3), _logits(3)
  g = jax.grad(lambda x: LOSSES.bind("dpo", {})(x, ref, batch, norm=_norm(batch))[0])(z)
  step = z - 1.0 * g  # a gradient step
  before, _ = _row_logp(z, batch)
  after, _ = _row_logp(step, batch)
  assert np.all(after[0::2] > before[0::2]) and np.all(after[1::2] < before[1::2])


def test_redi_alpha_zero_is_length_normalised_sft_on_the_chosen_responses():
  batch = _batch()
  z = _logits(4)
  redi = LOSSES.bind("redi", {"alpha": 0.0})
  loss, metrics = redi(z, batch, norm=_norm(batch))
  lp, n = _row_logp(z, batch)
  np.testing.assert_allclose(float(loss), np.mean(-(lp / n)[0::2]), rtol=1e-5)
  # alpha > 0 adds alpha times the rejected responses' normalised log-likelihood.
  loss8, _ = LOSSES.bind("redi", {"alpha": 0.8})(z, batch, norm=_norm(batch))
  np.testing.assert_allclose(float(loss8), float(loss) + 0.8 * np.mean((lp / n)[1::2]), rtol=1e-5)
  plain = LOSSES.bind("redi", {"alpha": 0.0, "length_normalize": False})
  unnorm, _ = plain(z, batch, norm=_norm(batch))
  np.testing.assert_allclose(float(unnorm), np.mean(-lp[0::2]), rtol=1e-5)
  assert float(metrics["chosen_logp"]) == pytest.approx(np.mean((lp / n)[0::2]), rel=1e-5)


def test_a_pair_with_an_empty_row_does_not_count():
  batch = _batch()
  empty = batch.replace(loss_mask=batch.loss_mask.at[3].set(0.0))  # pair 1's rejected row
  z = _logits(5)
  loss, _ = LOSSES.bind("redi", {"alpha": 0.5})(z, empty, norm=_norm(empty))
  lp, n = _row_logp(z, empty)
  keep = [0, 2]  # pairs 0 and 2
  per = lp / np.maximum(n, 1)
  per_pair = [-per[2 * p] + 0.5 * per[2 * p + 1] for p in keep]
  # Normalised by half the counted sequences (5 rows -> 2.5): the data regime has none empty.
  np.testing.assert_allclose(float(loss), sum(per_pair) / 2.5, rtol=1e-5)


def _write_pairs(path, n=6):
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      a = 10 + i
      record = {
        "prompt": f"{a}+{a}",
        "chosen": f"<think>{a}+{a}={2 * a}</think>{2 * a}",
        "rejected": f"<think>{a}+{a}={2 * a + 1}</think>{2 * a + 1}",
      }
      f.write(json.dumps(record) + "\n")
    f.write('{"prompt": "1+1", "chosen": "2"}\n')  # malformed: no rejected response


def test_pair_data_keeps_each_pair_in_adjacent_rows_in_a_seeded_order(tmp_path):
  from jaxpost.data.jsonl import DataError
  from jaxpost.data.pairs import pair_source, read_pairs
  from jaxpost.data.tokenizer import SentencePieceTokenizer

  path = str(tmp_path / "pairs.jsonl")
  _write_pairs(path)
  with pytest.raises(DataError, match="pairs.jsonl:7"):
    read_pairs(path)
  examples, where, skipped = read_pairs(path, skip_malformed=True)
  assert skipped == 1 and len(examples) == 12 and "(rejected)" in where(1)
  texts = [f"{e.prompt} {e.thinking} {e.answer}" for e in examples] * 20
  tok = SentencePieceTokenizer.train(
    texts, str(tmp_path / "tok"), vocab_size=40, byte_fallback=False
  )
  source = pair_source(examples, tok, seed=3)
  seen = []
  for j in range(12):  # two epochs of six pairs
    chosen, rejected = source(2 * j)[0], source(2 * j + 1)[0]
    c, r = tok.decode(chosen.tolist()), tok.decode(rejected.tolist())
    a = int(re.search(r"(\d+)\+", c).group(1))
    assert int(re.search(r"(\d+)\+", r).group(1)) == a  # the same prompt in both rows
    assert str(2 * a) in c.split("</think>")[-1] and str(2 * a + 1) in r.split("</think>")[-1]
    seen.append(a)
  assert sorted(seen[:6]) == sorted(seen[6:]) == list(range(10, 16))
  assert seen[:6] != list(range(10, 16)) or seen[6:] != list(range(10, 16))  # shuffled


def test_step_by_step_is_the_alpha_mix_of_the_two_tasks_mean_token_ce():
  """Card checks (iv) and (i): the loss is alpha * L_label + (1 - alpha) * L_rationale
  with each task's per-sequence mean CE; alpha = 1 is length-normalised SFT on the
  label rows alone (the rationale rows get no gradient)."""
  batch = _batch(5)
  z = _logits(6)
  lp, n = _row_logp(z, batch)
  ce = -lp / n
  for alpha in (0.0, 0.3, 0.5, 1.0):
    loss, m = LOSSES.bind("step_by_step", {"alpha": alpha})(z, batch, norm=_norm(batch))
    want = np.mean(alpha * ce[0::2] + (1 - alpha) * ce[1::2])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(m["label_ce"]), ce[0::2].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["rationale_ce"]), ce[1::2].mean(), rtol=1e-5)
  g = jax.grad(
    lambda x: LOSSES.bind("step_by_step", {"alpha": 1.0})(x, batch, norm=_norm(batch))[0]
  )(z)
  assert np.all(np.asarray(g)[1::2] == 0.0) and np.any(np.asarray(g)[0::2] != 0.0)


def test_step_by_step_adds_up_over_micro_batches_of_whole_records():
  batch = _batch(7)
  z = _logits(8)
  fn = LOSSES.bind("step_by_step", {"alpha": 0.4})
  norm = _norm(batch)
  whole, _ = fn(z, batch, norm=norm)
  parts = sum(
    float(fn(z[i : i + 2], jax.tree.map(lambda x, i=i: x[i : i + 2], batch), norm=norm)[0])
    for i in range(0, B, 2)
  )
  np.testing.assert_allclose(parts, float(whole), rtol=1e-5)
