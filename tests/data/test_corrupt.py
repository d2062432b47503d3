"""Known corruptions of the task traces (jaxpost/data/corrupt.py), marked token by token."""

from __future__ import annotations

import numpy as np
import pytest

from jaxpost.data import corrupt, packing, pipeline, tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.types import ROLE_MARKED, ROLE_THINK


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  corpus = list(tasks.training_corpus(["mul2x2", "add3"], 400, seed=0))
  return SentencePieceTokenizer.train(corpus, tmp_path_factory.mktemp("tok") / "sp", vocab_size=300)


def _clean(i):
  return tasks.mixture({"mul2x2": 1.0}, "train", 0)(i).example


def test_parse_accepts_specs_and_rejects_bad_ones():
  assert corrupt.parse("") == {}
  assert corrupt.parse("noise:0.3, repeat:0.2") == {"noise": 0.3, "repeat": 0.2}
  for bad in ("noise", "typo:0.1", "noise:1.5", "noise:0.6,repeat:0.6", "noise:0.1,noise:0.2"):
    with pytest.raises(ValueError):
      corrupt.parse(bad)


def test_noise_puts_the_first_result_off_by_one_and_marks_it():
  for i in range(50):
    clean = _clean(i)
    ex = corrupt.noise(clean)
    diff = [k for k, (a, b) in enumerate(zip(ex.thinking, clean.thinking, strict=True)) if a != b]
    assert len(diff) == 1 and ex.marks == ((diff[0], diff[0] + 1),)
    at = diff[0]
    assert ex.thinking[at + 1] == ","  # the last digit of the first step
    assert int(ex.thinking[at]) == (int(clean.thinking[at]) + 1) % 10
    assert ex.answer == clean.answer and ex.prompt == clean.prompt


def test_repeat_writes_the_first_step_twice_and_marks_the_copy():
  clean = _clean(3)
  ex = corrupt.repeat(clean)
  first = clean.thinking.split(",")[0]
  assert ex.thinking == first + "," + clean.thinking
  ((start, end),) = ex.marks
  assert ex.thinking[:start] + ex.thinking[end:] == clean.thinking
  assert corrupt.repeated_step(ex.thinking) and not corrupt.repeated_step(clean.thinking)


def test_fractions_and_determinism():
  fractions = corrupt.parse("noise:0.3,repeat:0.2")
  kinds = []
  for i in range(2000):
    ex = corrupt.corrupt(_clean(i), i, fractions, seed=5)
    assert ex == corrupt.corrupt(_clean(i), i, fractions, seed=5)
    clean = _clean(i)
    kinds.append(
      "clean" if ex == clean else "repeat" if len(ex.thinking) > len(clean.thinking) else "noise"
    )
  counts = {k: kinds.count(k) / len(kinds) for k in ("noise", "repeat", "clean")}
  assert counts["noise"] == pytest.approx(0.3, abs=0.04)
  assert counts["repeat"] == pytest.approx(0.2, abs=0.04)


def test_marked_tokens_decode_to_the_marked_text_and_count_in_the_loss(tok):
  clean = _clean(7)
  plain = template.encode_example(tok, clean)
  same = template.encode_example(tok, corrupt.corrupt(clean, 0, {}, 0))
  np.testing.assert_array_equal(plain.tokens, same.tokens)  # no marks: the old encoding
  for ex in (corrupt.repeat(clean), corrupt.noise(clean)):
    enc = template.encode_example(tok, ex)
    marked = enc.tokens[enc.roles == ROLE_MARKED]
    ((start, end),) = ex.marks
    assert tok.decode(marked.tolist()) == ex.thinking[start:end]
    think = enc.tokens[(enc.roles == ROLE_THINK) | (enc.roles == ROLE_MARKED)]
    assert tok.decode(think.tolist()) == template.THINK_OPEN + ex.thinking + template.THINK_CLOSE
    arrays = packing._to_batch_arrays(
      enc.tokens[None], enc.roles[None], np.ones((1, len(enc)), np.int32),
      np.arange(len(enc))[None],
    )  # fmt: skip
    counted = arrays["loss_mask"][0] > 0
    assert np.all(counted[arrays["roles"][0] == ROLE_MARKED])
    assert (arrays["roles"][0] == ROLE_MARKED).sum() == len(marked)


def test_the_task_source_corrupts_training_examples(tok):
  src = pipeline.task_source({"mul2x2": 1.0}, tok, 0, (), corrupt.parse("repeat:1.0"))
  tokens, roles = src(0)
  assert (roles == ROLE_MARKED).any()
  tokens, roles = pipeline.task_source({"mul2x2": 1.0}, tok, 0)(0)
  assert not (roles == ROLE_MARKED).any()
