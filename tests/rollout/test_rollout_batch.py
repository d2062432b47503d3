"""Rollout layout: prompts + completions -> right-padded Batch; sampler logp == trainer logp.

The central check: the log-probs the sampler records (KV cache, left padding, truncated
sampling) equal log_softmax(logits / temperature) that the trainer computes from one
full forward pass over the built ``Batch``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import ModelConfig
from jaxpost.rollout.batching import rollout_batch, think_block
from jaxpost.rollout.sampler import (
  GenerateOutput,
  apply_stop_strings,
  generate_groups,
  group_keys,
  left_pad,
  make_generate_fn,
)
from jaxpost.types import ROLE_ANSWER, ROLE_PAD, ROLE_PROMPT, ROLE_THINK

CFG = ModelConfig(
  vocab_size=40,
  d_model=32,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  head_dim=8,
  mlp_dim=64,
  max_seq_len=64,
  qk_norm=True,
)
N = 6
TEMPERATURE = 0.7
# Sampler (KV cache, left padding) vs trainer (one full forward, right padding): same
# math in f32, different summation order; ~1e-7 seen.
ATOL = 1e-5
P_, A_, X_, T_ = ROLE_PROMPT, ROLE_ANSWER, ROLE_PAD, ROLE_THINK


@pytest.fixture(scope="module")
def model(random_decoder):
  return random_decoder(CFG)


def _detok(ids):
  return "".join(chr(ord("a") + i) for i in ids)


def _golden_output(pad):
  """Two rows, N = 4: row 0 ended on its stop token (2), row 1 ran out of budget."""
  return GenerateOutput(
    tokens=np.array([[1, 2, pad, pad], [3, 4, 9, 6]], np.int32),
    lengths=np.array([2, 4], np.int32),
    logp=np.array([[-0.1, -0.2, 0, 0], [-0.3, -0.4, -0.5, -0.6]], np.float32),
    filtered_logp=np.array([[-0.05, -0.1, 0, 0], [-0.2, -0.3, -0.4, -0.5]], np.float32),
    stopped=np.array([True, False]),
  )


def test_layout_golden():
  pad = 99
  tokens, mask = left_pad([[5, 6, 7], [8]], pad)  # [[5, 6, 7], [99, 99, 8]]
  rb = rollout_batch(tokens, mask, _golden_output(pad), pad_id=pad)
  b = rb.batch
  # T = P + N = 3 + 4. Row 0: prompt 5 6 7, completion 1 2; row 1: prompt 8, completion
  # 3 4 9 6. Target t is token t + 1; completion targets start at the last prompt token.
  np.testing.assert_array_equal(b.tokens, [[5, 6, 7, 1, 2, 99, 99], [8, 3, 4, 9, 6, 99, 99]])
  np.testing.assert_array_equal(b.targets, [[6, 7, 1, 2, 99, 99, 99], [3, 4, 9, 6, 99, 99, 99]])
  np.testing.assert_array_equal(b.loss_mask, [[0, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(
    b.roles, [[P_, P_, A_, A_, X_, X_, X_], [A_, A_, A_, A_] + [X_] * 3]
  )
  np.testing.assert_array_equal(b.segment_ids, [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(b.positions, [[0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 4, 0, 0]])
  np.testing.assert_allclose(
    rb.sampler_logp, [[0, 0, -0.1, -0.2, 0, 0, 0], [-0.3, -0.4, -0.5, -0.6, 0, 0, 0]]
  )
  np.testing.assert_allclose(
    rb.filtered_logp, [[0, 0, -0.05, -0.1, 0, 0, 0], [-0.2, -0.3, -0.4, -0.5, 0, 0, 0]]
  )
  np.testing.assert_array_equal(rb.truncated, [False, True])
  np.testing.assert_array_equal(rb.prompt_lengths, [3, 1])
  np.testing.assert_array_equal(rb.completion_lengths, [2, 4])
  assert b.tokens.dtype == b.targets.dtype == b.roles.dtype == np.int32
  assert b.loss_mask.dtype == rb.sampler_logp.dtype == np.float32

  # A stop string ("de" = tokens 3 4) cuts row 1: no longer truncated, two targets count.
  cut = rollout_batch(
    tokens, mask, apply_stop_strings(_golden_output(pad), _detok, ["de"], pad_id=pad), pad_id=pad
  )
  np.testing.assert_array_equal(cut.truncated, [False, False])
  np.testing.assert_array_equal(cut.batch.tokens[1], [8, 3, 4, 99, 99, 99, 99])
  np.testing.assert_array_equal(cut.batch.loss_mask[1], [1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(cut.sampler_logp[1], [-0.3, -0.4, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(cut.batch.loss_mask[0], rb.batch.loss_mask[0])

  # A wider layout only adds padding columns.
  wide = rollout_batch(tokens, mask, _golden_output(pad), pad_id=pad, width=9)
  for x, y in zip(jax.tree.leaves(wide.batch), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x[:, :7], y)
    assert np.all(x[:, 7:] == (pad if x is wide.batch.tokens or x is wide.batch.targets else 0))


def test_think_block_by_hand():
  # Tags: open = [1], close = [7, 8] (a two-token tag). Generated rows, lengths 6 6 4 5 3:
  tokens = np.array(
    [
      [1, 4, 7, 8, 5, 2],  # block through the close tag, then the answer 5 and stop 2
      [1, 7, 4, 8, 5, 2],  # 7 alone is not the close tag: no close -> all think
      [5, 1, 7, 8, 0, 0],  # the block must lead the completion: none here
      [1, 7, 8, 7, 8, 0],  # the first close after the open tag ends it
      [1, 4, 7, 8, 0, 0],  # the close tag past the row's length does not count
    ]
  )
  got = think_block(tokens, [6, 6, 4, 5, 3], [1], [7, 8])
  want = [
    [1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
  ]
  np.testing.assert_array_equal(got, np.asarray(want, bool))
  with pytest.raises(ValueError, match="non-empty"):
    think_block(tokens, [6] * 5, [], [7])


def test_layout_tags_the_think_block():
  pad = 99
  tokens, mask = left_pad([[5, 6, 7], [8]], pad)
  # Row 0's completion 1 2 is "<think> <stop>", an unclosed block; row 1's 3 4 9 6 is
  # "<think> x </think> answer" with open = [3], close = [9].
  rb = rollout_batch(tokens, mask, _golden_output(pad), pad_id=pad, think_tags=([3], [9]))
  np.testing.assert_array_equal(
    rb.batch.roles, [[P_, P_, A_, A_, X_, X_, X_], [T_, T_, T_, A_] + [X_] * 3]
  )
  rb = rollout_batch(tokens, mask, _golden_output(pad), pad_id=pad, think_tags=([1], [9]))
  np.testing.assert_array_equal(rb.batch.roles[0], [P_, P_, T_, T_, X_, X_, X_])
  # Only roles change: the loss mask is the same with or without tags.
  plain = rollout_batch(tokens, mask, _golden_output(pad), pad_id=pad)
  np.testing.assert_array_equal(rb.batch.loss_mask, plain.batch.loss_mask)


def test_layout_rejects_bad_inputs():
  tokens, mask = left_pad([[5, 6, 7], [8]], 0)
  out = _golden_output(0)
  with pytest.raises(ValueError, match="width"):
    rollout_batch(tokens, mask, out, width=4)  # row 1 has 5 tokens
  with pytest.raises(ValueError, match="left padding"):
    rollout_batch(tokens, mask[:, ::-1], out)
  with pytest.raises(ValueError, match="match"):
    rollout_batch(tokens[:1], mask[:1], out)


def test_group_keys_layout():
  key = jax.random.key(3)
  g3 = np.asarray(jax.random.key_data(group_keys(key, 2, 3)))
  g2 = np.asarray(jax.random.key_data(group_keys(key, 2, 2)))
  # Row p * G + g is fold_in(fold_in(key, p), g): the same (p, g) whatever G is.
  np.testing.assert_array_equal(g3[[0, 1, 3, 4]], g2)
  want = jax.random.key_data(jax.random.fold_in(jax.random.fold_in(key, 1), 2))
  np.testing.assert_array_equal(g3[5], want)
  assert len({tuple(k) for k in g3}) == 6


@functools.partial(jax.jit, static_argnames="graphdef")
def _trainer_logp(graphdef, state, batch):
  """What the trainer scores: log_softmax(logits / T) of each target, full forward, f32."""
  logits = nnx.merge(graphdef, state)(
    batch.tokens, positions=batch.positions, segment_ids=batch.segment_ids
  )
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / TEMPERATURE, axis=-1)
  return jnp.take_along_axis(logp, batch.targets[..., None], axis=-1)[..., 0]


def test_group_sampling_logp_matches_trainer_recomputation(model):
  prompts = [[5, 3, 9, 17], [11]]
  p, g = len(prompts), 2
  graphdef, state = nnx.split(model)
  key = jax.random.key(0)
  settings = dict(max_new_tokens=N, pad_id=0, temperature=TEMPERATURE, top_k=10, top_p=0.9)
  free = generate_groups(make_generate_fn(graphdef, eos_id=-1, **settings), state, prompts, g, key)
  free_tokens = np.asarray(free[2].tokens)
  # EOS := the first token of row 0 that is new at step >= 1: row 0 then stops there,
  # since every row's draws come from its own key stream, whatever the stop set.
  step = next(i for i in range(1, N) if free_tokens[0, i] not in free_tokens[0, :i])
  eos = int(free_tokens[0, step])
  fn = make_generate_fn(graphdef, eos_id=eos, **settings)
  tokens, mask, out = generate_groups(fn, state, prompts, g, key)
  np.testing.assert_array_equal(out.tokens[0, : step + 1], free_tokens[0, : step + 1])
  assert int(out.lengths[0]) == step + 1 < N and bool(out.stopped[0])

  # G layout: row p * G + g holds prompt p; rows of one prompt differ (own key streams).
  assert tokens.shape == (p * g, 4)
  for row in range(p * g):
    want = prompts[row // g]
    np.testing.assert_array_equal(tokens[row, -len(want) :], want)
    assert mask[row].sum() == len(want)
  assert not np.array_equal(free_tokens[0], free_tokens[1])
  assert not np.array_equal(free_tokens[2], free_tokens[3])
  # Same key, same samples; row order does not matter to a row's draws. And
  # generate_groups prefills each prompt once (group_size=G) where this call prefills
  # every row: the same draws and log-probs.
  again = fn(state, jnp.asarray(tokens[::-1]), jnp.asarray(mask[::-1]), group_keys(key, p, g)[::-1])
  np.testing.assert_array_equal(np.asarray(again.tokens)[::-1], out.tokens)
  np.testing.assert_allclose(np.asarray(again.logp)[::-1], out.logp, atol=1e-5)

  rb = rollout_batch(tokens, mask, out)
  b = rb.batch
  lengths = np.asarray(out.lengths)
  np.testing.assert_array_equal(b.loss_mask.sum(axis=1), lengths)
  np.testing.assert_array_equal(rb.truncated, ~np.asarray(out.stopped))
  np.testing.assert_array_equal(
    rb.truncated,
    [tok[n - 1] != eos for tok, n in zip(np.asarray(out.tokens), lengths, strict=True)],
  )
  for row in range(p * g):
    seq = prompts[row // g] + list(np.asarray(out.tokens[row, : lengths[row]]))
    np.testing.assert_array_equal(b.tokens[row, : len(seq)], seq)

  trainer = np.asarray(_trainer_logp(graphdef, state, b))
  on = b.loss_mask > 0
  np.testing.assert_allclose(rb.sampler_logp[on], trainer[on], atol=ATOL, rtol=0)
  assert np.all(rb.sampler_logp[~on] == 0.0)
  # The filters were active: the truncated distribution differs from the scored one.
  assert np.all(rb.filtered_logp[on] >= rb.sampler_logp[on] - 1e-6)
  assert np.any(rb.filtered_logp[on] > rb.sampler_logp[on] + 1e-3)
