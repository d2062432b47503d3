"""Multi-format multiple choice (data/choices.py), its evaluation (eval/choices.py) and a
short F²C run through the SFT recipe."""

import json
import os

import numpy as np
import pytest

from jaxpost import config_lib
from jaxpost.config_lib import ConfigError
from jaxpost.data import choices, tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.eval import choices as eval_choices
from jaxpost.recipes import sft
from jaxpost.types import ROLE_ANSWER

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL = tuple(choices.FORMATS)


@pytest.mark.parametrize("level", ["add3", "mul2x2", "mul3x2", "expr3"])
def test_every_format_asks_for_the_same_value(level):
  for problem in tasks.heldout_set(level, 20):
    for name in ALL:
      if name == "commuted" and level.startswith("expr"):
        with pytest.raises(ValueError, match="commuted"):
          choices.FORMATS[name](problem.prompt)
        continue
      text = choices.FORMATS[name](problem.prompt).removesuffix("=")
      assert eval(text, {"__builtins__": {}}) == int(problem.answer), (name, text)  # noqa: S307


def test_choice_sets_hold_the_answer_once_among_distinct_wrong_ones():
  for problem in tasks.heldout_set("mul2x2", 50):
    s = choices.choice_set(problem, ("plain", "paren", "equals"), 4, seed=3)
    assert len(set(s.choices)) == 4 and s.choices[s.gold] == problem.answer
    assert all(c != problem.answer and int(c) >= 0 for i, c in enumerate(s.choices) if i != s.gold)
    assert s == choices.choice_set(problem, ("plain", "paren", "equals"), 4, seed=3)
    rows = s.rows()  # format-major: row k*C + c
    assert [r.prompt for r in rows[4:8]] == [f"({problem.prompt})"] * 4
    assert [r.answer for r in rows[4:8]] == list(s.choices)
  problems = tasks.heldout_set("add3", 200)
  golds = [choices.choice_set(p, ("plain", "paren"), 4, 0).gold for p in problems]
  counts = np.bincount(golds, minlength=4)
  assert counts.min() > 30  # the answer's place is shuffled, not fixed


@pytest.mark.parametrize("level", ["add3", "add5", "mul2x2", "mul3x2"])
def test_slipped_solutions_have_one_wrong_step_carried_to_a_wrong_answer(level):
  for problem in tasks.heldout_set(level, 30):
    wrong = choices.slipped_solutions(problem)
    assert len(wrong) >= 3 and len({a for _, a in wrong}) == len(wrong)
    for thinking, answer in wrong:
      assert answer != problem.answer
      assert len(tasks.trace_errors(thinking)) == 1, thinking  # the slip, nothing else
      # The rest carries through to the answer the trace gives.
      values = [int(step.split("=")[1]) for step in thinking.split(",")]
      if level.startswith("mul"):
        assert values[-1] == int(answer), thinking  # the sum line
      else:
        digits = "".join(str(v % 10) for v in reversed(values))
        assert int(str(values[-1] // 10) + digits) == int(answer), thinking
  with pytest.raises(ValueError, match="add or mul"):
    choices.slipped_solutions(tasks.heldout_set("expr2", 1)[0])


def test_solution_choice_sets_hold_the_reference_solution_at_gold():
  golds = []
  for problem in tasks.heldout_set("mul2x2", 100):
    s = choices.choice_set(problem, ("plain", "commuted"), 4, seed=1, response="solution")
    assert (s.thinking[s.gold], s.choices[s.gold]) == (problem.thinking, problem.answer)
    assert len(set(s.choices)) == 4
    second_format = [(r.thinking, r.answer) for r in s.rows()[4:]]
    assert second_format == list(zip(s.thinking, s.choices, strict=True))
    golds.append(s.gold)
  assert np.bincount(golds, minlength=4).min() > 10


def test_parse_formats_refuses_unknown_repeated_or_single():
  assert choices.parse_formats("plain, paren") == ("plain", "paren")
  for bad in ("plain,nope", "plain,plain", "plain"):
    with pytest.raises(ValueError):
      choices.parse_formats(bad)


def _f2c_tiny(**overrides):
  c = config_lib.load_config(os.path.join(REPO, "configs", "f2c.py:tiny"))
  c.train.progress = False
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  """A task tokenizer like configs/sft.py:tiny's (64 pieces, no byte fallback)."""
  texts = list(tasks.training_corpus(tuple(tasks.LEVELS), 2000, 0))
  prefix = str(tmp_path_factory.mktemp("tok") / "sp")
  return SentencePieceTokenizer.train(texts, prefix, vocab_size=64, byte_fallback=False)


def test_source_lays_out_whole_groups_with_aligned_answers(tok):
  c = _f2c_tiny()
  formats = choices.parse_formats(c.data.choice_formats)
  source = choices.choices_source({"mul2x2": 1.0}, tok, 0, formats, c.data.choices)
  group = len(formats) * c.data.choices
  for j in range(3):
    rows = [source(j * group + r) for r in range(group)]
    answers = [tuple(t[r == ROLE_ANSWER]) for t, r in rows]
    for ch in range(c.data.choices):  # one choice's answer tokens, the same in every format
      assert len({answers[k * c.data.choices + ch] for k in range(len(formats))}) == 1
    assert len(set(answers[: c.data.choices])) == c.data.choices
  assert "format 'paren', choice 1" in source.where(group + 5)


@pytest.mark.parametrize(
  "override,match",
  [
    ({"data.pack": True}, "pack=False"),
    ({"data.batch_size": 24}, "multiple of 16"),
    ({"loss.f2c.choices": 3}, "4 formats x 4 choices"),
    ({"data.choice_formats": "plain,nope"}, "nope"),
    ({"data.levels": "expr2:1.0"}, "commuted"),
    ({"eval.choice_formats": "plain,plain"}, "eval.choice_formats"),
    ({"data.choice_response": "solution"}, "span"),
    (
      {
        "data.choice_response": "solution",
        "loss.f2c.span": "response",
        "data.levels": "expr2:1.0",
        "data.choice_formats": "plain,paren",
        "loss.f2c.formats": 2,
      },
      "add or mul",
    ),  # fmt: skip
  ],
)
def test_bad_layouts_fail_at_validation(override, match):
  c = _f2c_tiny(**override)
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_summary_measures_by_hand():
  gold = np.array([0, 1])
  scores = np.full((2, 3, 2), -5.0)  # 2 problems, 3 formats, 2 choices
  scores[0, :, 0] = -1.0  # problem 0: every format right
  scores[1, 0, 1] = scores[1, 1, 0] = scores[1, 2, 0] = -1.0  # problem 1: only format 0
  m = eval_choices.summarize(scores, gold)
  assert m["choice_accuracy"] == pytest.approx(4 / 6)
  assert m["choice_agreement"] == pytest.approx(1 / 2)
  assert m["choice_format_std"] == pytest.approx(np.std([1.0, 0.5, 0.5]))


def test_row_batch_counts_only_the_answer(tok):
  enc = template.encode_example(tok, template.Example(prompt="12+34", thinking="", answer="46"))
  batch = eval_choices.row_batch([enc], seq_len=24, rows=2)
  n_answer = int(np.sum(enc.roles == ROLE_ANSWER))  # the answer and EOS
  assert float(batch.loss_mask.sum()) == n_answer and float(batch.loss_mask[1].sum()) == 0
  counted = np.asarray(batch.targets[0])[np.asarray(batch.loss_mask[0]) > 0]
  np.testing.assert_array_equal(counted, enc.tokens[enc.roles == ROLE_ANSWER])


def test_row_batch_response_span_counts_the_whole_solution(tok):
  ex = template.Example(prompt="12+34", thinking="2+4+0=06,1+3+0=04", answer="46")
  enc = template.encode_example(tok, ex)
  batch = eval_choices.row_batch([enc], seq_len=40, rows=1, span="response")
  counted = np.asarray(batch.targets[0])[np.asarray(batch.loss_mask[0]) > 0]
  np.testing.assert_array_equal(counted, enc.tokens[enc.roles != 1])  # all but the prompt


def test_f2c_trains_and_reports_choice_measures(tmp_path):
  c = _f2c_tiny(
    **{"train.steps": 2, "eval.every": 0, "eval.num_examples": 8, "eval.max_new_tokens": 4}
  )
  workdir = str(tmp_path / "run")
  sft.run(c, workdir)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  last = records[-1]
  for name in ("choice_accuracy", "choice_agreement", "choice_format_std"):
    assert 0.0 <= last[f"eval/{name}/mul2x2"] <= 1.0
  train = [r for r in records if "train/cce" in r]
  assert train and all(0 <= r["train/consensus"] <= 1 for r in train)
