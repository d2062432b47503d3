"""Tests for jaxpost.eval.heldout and jaxpost.eval.checkers."""

import json
import math
import os

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flax import nnx
from recipes.tiny_configs import sft_tiny  # tests/ is on sys.path (its conftest.py)

from jaxpost import scoring
from jaxpost.data import Example, tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.eval import accuracy, checkers, heldout
from jaxpost.models import ModelConfig
from jaxpost.recipes import sft
from jaxpost.types import ROLE_PROMPT

EXAMPLES = [
  Example("357+468", "7+8+0=15,5+6+1=12,3+4+1=08", "825"),
  Example("12+30", "", "42"),
  Example("2*3", "2*3=6", "6"),
  Example("9+9+9", "9+9=18,18+9=27", "27"),
  Example("1+1", "", "2"),
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  corpus = list(tasks.training_corpus(["add3", "expr2"], 400, seed=0))
  return SentencePieceTokenizer.train(corpus, tmp_path_factory.mktemp("tok") / "sp", vocab_size=300)


@pytest.fixture(scope="module")
def model(random_decoder, tok):
  config = ModelConfig(
    vocab_size=tok.vocab_size,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    max_seq_len=128,
  )
  return random_decoder(config)


def _naive_loss(model, tok, examples):
  """Token-mean NLL of the response tokens, one example at a time, no packing."""
  total, count = 0.0, 0
  for ex in examples:
    enc = template.encode_example(tok, ex)
    logits = np.asarray(model(jax.numpy.asarray(enc.tokens[None])), np.float64)[0]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    for t in range(len(enc.tokens) - 1):
      if enc.roles[t + 1] != ROLE_PROMPT:  # the target is a response token
        total -= logp[t, enc.tokens[t + 1]]
        count += 1
  return total / count


def _evaluator(model, tok, examples, *, batch_size=2, seq_len=64, checker="exact_match"):
  graphdef, _ = nnx.split(model)
  generator = accuracy.Evaluator(
    graphdef, tok, num_examples=len(examples), batch_size=batch_size, max_new_tokens=6
  )
  return heldout.HeldOutEvaluator(
    scoring.make_scorer(graphdef),
    generator,
    examples,
    batch_size=batch_size,
    seq_len=seq_len,
    overlong="error",
    checker=checker,
  )


@pytest.mark.parametrize("batch_size, seq_len", [(2, 64), (1, 48), (4, 128)])
def test_loss_equals_per_example_reference(model, tok, batch_size, seq_len):
  """Packed rows, a padded last batch and any batch size give the naive token mean."""
  ev = _evaluator(model, tok, EXAMPLES, batch_size=batch_size, seq_len=seq_len)
  m = ev.loss(nnx.state(model))
  want = _naive_loss(model, tok, EXAMPLES)
  assert m["eval/loss"] == pytest.approx(want, rel=1e-5)
  assert m["eval/perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
  n_response = sum(
    int((template.encode_example(tok, ex).roles[1:] != ROLE_PROMPT).sum()) for ex in EXAMPLES
  )
  assert sum(float(b.loss_mask.sum()) for b in ev.batches) == n_response


def test_generate_judges_greedy_responses_with_the_checker(model, tok):
  seen = []

  def record(response, example):
    seen.append((response, example))
    return example.answer in ("42", "6")

  checkers.CHECKERS["_test_record"] = record
  try:
    ev = _evaluator(model, tok, EXAMPLES, checker="_test_record")
    result = ev.generate(nnx.state(model))
  finally:
    del checkers.CHECKERS["_test_record"]
  want = ev.generator.responses(nnx.state(model), [ex.prompt for ex in EXAMPLES])
  assert [r for r, _ in seen] == want and [e for _, e in seen] == EXAMPLES
  assert (result.level, result.n, result.accuracy) == ("heldout", 5, 2 / 5)


@pytest.mark.parametrize(
  "response, answer, exact, normalized",
  [
    ("<think>2+2=4</think>4", "4", True, True),
    ("<think>x</think> 4 \n", "4", True, True),
    ("4", "4", True, True),
    ("<think>x</think>Paris.", "paris", False, True),
    ("<think>x</think>New   York", "new york", False, True),
    ("<think>x</think>5", "4", False, False),
    ("<think>4</think><think>4</think>4", "4", False, False),  # malformed: no answer
  ],
)
def test_builtin_checkers(response, answer, exact, normalized):
  ex = Example("q", "", answer)
  assert checkers.get("exact_match")(response, ex) is exact
  assert checkers.get("normalized_match")(response, ex) is normalized


def test_checker_by_import_path_and_errors():
  assert checkers.get("jaxpost.eval.checkers:exact_match") is checkers.exact_match
  for spec, message in [
    ("nope", "unknown checker 'nope'"),
    ("no_such_module_xyz:f", "No module named"),
    ("jaxpost.eval.checkers:missing", "has no attribute"),
    ("jaxpost.eval.checkers:CHECKERS", "not callable"),
  ]:
    with pytest.raises(ValueError, match=message):
      checkers.get(spec)
  with pytest.raises(ValueError, match="registered twice"):
    checkers.register("exact_match")(lambda r, e: True)


def test_sft_on_parquet_reports_heldout_loss_and_accuracy(tmp_path):
  """A user's Parquet file with a held-out fraction: evaluated by loss, perplexity and
  exact match (the tasks' problems as user data, so a few steps move the loss)."""
  problems = [tasks.make_problem("add3", "train", 0, i) for i in range(64)]
  rows = [{"prompt": p.prompt, "response": template.render_response(p.example)} for p in problems]
  path = tmp_path / "add.parquet"
  pq.write_table(pa.Table.from_pylist(rows), path)
  c = sft_tiny(
    **{
      "data.source": "parquet",
      "data.path": str(path),
      "data.eval_fraction": 0.125,
      "eval.every": 2,
      "eval.max_new_tokens": 24,
    }
  )
  workdir = str(tmp_path / "run")
  result = sft.run(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    evals = [r for r in map(json.loads, f) if "eval/loss" in r]
  assert [r["step"] for r in evals] == [2, 4]
  for r in evals:
    assert r["eval/perplexity"] == pytest.approx(math.exp(r["eval/loss"]), rel=1e-6)
    assert 0.0 <= r["eval/accuracy/heldout"] <= 1.0 and "eval/format/heldout" in r
    assert r["eval/accuracy"] == r["eval/accuracy/heldout"]
  assert evals[1]["eval/loss"] < evals[0]["eval/loss"]
  assert result["eval/loss"] == evals[-1]["eval/loss"]
