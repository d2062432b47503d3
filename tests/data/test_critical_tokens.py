"""CFT's critical tokens (jaxpost/data/critical_tokens.py): the card's tests with a mocked
continuation and verifier, the marks' round trip through JSONL, and the loss on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.data import critical_tokens, jsonl, tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.losses import LOSSES, compute_normalizers
from jaxpost.types import ROLE_ANSWER, ROLE_MARKED, ROLE_PROMPT, ROLE_THINK, Batch

GOOD = 5  # the one token whose counterfactual continuation still gets the answer right


class _Tok:
  def decode(self, ids):
    return "".join(str(i) for i in ids)


def _continue(prefixes):
  return ["OK" if p[-1] == GOOD else "BAD" for p in prefixes]


def test_a_position_is_critical_iff_every_alternative_fails():
  tokens = np.asarray([9, 9, 1, 2, 3, 4])
  positions = np.asarray([2, 3, 4, 5])
  v = 8
  logits = np.zeros((4, v))
  logits[0, [1, GOOD, 6]] = [3, 2, 1]  # alternatives of gold 1: [5, 6] -> 5 succeeds
  logits[1, [2, 6, 7]] = [3, 2, 1]  # alternatives of gold 2: [6, 7] -> both fail
  logits[2, [6, GOOD, 3]] = [3, 2, 1]  # gold 3 is third: alternatives [6, 5] -> 5 succeeds
  logits[3, [6, 7, GOOD]] = [3, 2, 1]  # alternatives [6, 7]; 5 would be the third
  verify = [lambda text: text.endswith("OK")]
  (mask,) = critical_tokens.critical_masks([(tokens, positions, logits)], _continue, verify, _Tok())
  np.testing.assert_array_equal(mask, [False, True, False, True])
  # with three alternatives the last one is rescued too
  (mask3,) = critical_tokens.critical_masks(
    [(tokens, positions, logits)], _continue, verify, _Tok(), n_alternatives=3
  )
  np.testing.assert_array_equal(mask3, [False, True, False, False])


def test_alternatives_skip_the_gold_token():
  logits = np.asarray([0.0, 5.0, 4.0, 3.0])
  assert critical_tokens.alternatives(logits, gold=1, k=2) == [2, 3]
  assert critical_tokens.alternatives(logits, gold=3, k=2) == [1, 2]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  corpus = list(tasks.training_corpus(["mul2x2"], 400, seed=0))
  return SentencePieceTokenizer.train(corpus, tmp_path_factory.mktemp("tok") / "sp", vocab_size=300)


def test_critical_tokens_become_marks_and_marked_tokens_again(tok):
  ex = tasks.mixture({"mul2x2": 1.0}, "train", 0)(0).example
  _, positions = critical_tokens.thinking_positions(tok, ex)
  ids = tok.encode(ex.thinking)
  assert len(positions) == len(ids)
  critical = np.zeros(len(ids), bool)
  critical[[0, 1, len(ids) - 1]] = True
  marks = critical_tokens.char_spans(tok, ex.thinking, critical)
  assert marks[0][0] == 0 and marks[-1][1] == len(ex.thinking)
  record = {
    "prompt": ex.prompt,
    "response": template.render_response(ex),
    "marks": [list(m) for m in marks],
  }
  back = jsonl.record_to_example(record)
  assert back.marks == marks
  enc = template.encode_example(tok, back)
  marked = enc.tokens[enc.roles == ROLE_MARKED]
  assert marked.tolist() == [ids[i] for i in np.flatnonzero(critical)]


@pytest.mark.parametrize("marks", [[[3, 2]], [[0, 2], [1, 3]], [[0, 999]], "0-2", [[0.5, 2]]])
def test_bad_marks_are_rejected(marks):
  with pytest.raises(ValueError, match="marks"):
    jsonl.record_to_example({"prompt": "1+2", "response": "<think>1+2=3</think>3", "marks": marks})


def test_the_cft_loss_gives_no_gradient_to_non_critical_reasoning_tokens():
  roles = np.asarray([[ROLE_PROMPT, ROLE_THINK, ROLE_MARKED, ROLE_THINK, ROLE_MARKED, ROLE_ANSWER]])
  mask = np.isin(roles, (ROLE_THINK, ROLE_MARKED, ROLE_ANSWER)).astype(np.float32)
  batch = Batch(
    tokens=jnp.zeros((1, 6), jnp.int32),
    targets=jnp.asarray([[1, 2, 3, 4, 5, 6]], jnp.int32),
    loss_mask=jnp.asarray(mask),
    segment_ids=jnp.ones((1, 6), jnp.int32),
    positions=jnp.arange(6)[None],
    roles=jnp.asarray(roles),
  )
  fn = LOSSES.bind("token_priority", {"think_weight": 0.0, "marked_weight": 1.0})
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 8)), jnp.float32)
  g = np.asarray(jax.grad(lambda z: fn(z, batch, norm=norm)[0])(logits))[0]
  assert np.all(g[roles[0] == ROLE_THINK] == 0) and np.all(g[roles[0] == ROLE_PROMPT] == 0)
  assert np.all(np.abs(g[roles[0] == ROLE_MARKED]).max(-1) > 0)
  assert np.abs(g[roles[0] == ROLE_ANSWER]).max() > 0
