"""Critique fine-tuning data (jaxpost/datagen/critique.py): the card's three properties
and the programmatic teacher's verdicts."""

import json

import numpy as np

from jaxpost.data import jsonl, tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.datagen import critique
from jaxpost.types import ROLE_PROMPT


def _problems(n):
  mix = tasks.mixture({"mul2x2": 1.0}, "train", 5)
  return [mix.problem_at(i) for i in range(n)]


def test_the_prompt_is_the_authors_layout_byte_for_byte():
  assert critique.prompt("12*34", "<think>x</think>408") == (
    "Question:\n12*34\n\nSolution:\n<think>x</think>408"
  )


def test_the_teacher_names_each_wrong_step_and_concludes():
  p = _problems(1)[0]
  gold = template.render_response(p.example)
  assert critique.task_critique(p, gold).endswith("Conclusion: right [END]")
  assert "Every step of the reasoning is correct." in critique.task_critique(p, gold)
  # one slipped step, the right final answer: still wrong
  steps = p.thinking.split(",")
  lhs, value = steps[0].split("=")
  slipped = ",".join([f"{lhs}={int(value) + 1}", *steps[1:]])
  text = critique.task_critique(p, f"<think>{slipped}</think>{p.answer}")
  assert f"Step 1 is wrong: '{lhs}={int(value) + 1}': {lhs} is {value}." in text
  assert text.endswith("Conclusion: wrong [END]") and f"final answer {p.answer} is correct" in text
  wrong = critique.task_critique(p, f"<think>{p.thinking}</think>{int(p.answer) + 1}")
  assert f"should be {p.answer}" in wrong and wrong.endswith("Conclusion: wrong [END]")
  assert critique.task_critique(p, "no think block").endswith("Conclusion: wrong [END]")


def test_the_number_teacher_checks_every_written_step_then_the_last_number():
  p = next(q for q in _problems(50) if int(q.answer) > 1000)  # a thousands comma to read
  a, b = p.prompt.split("*")
  wrong = int(p.answer) + 1
  cases = {
    # response -> (wrong steps named, the final answer's line, conclusion)
    f"{a} * {b} = {int(p.answer):,}.": ([], "is correct", "right"),
    f"({a} x {b}) is {wrong}. So {wrong}": ([f"'({a} x {b}) is {wrong}'"], "is wrong", "wrong"),
    f"3+4=8, so {p.answer}": (["'3+4=8'"], "is correct", "wrong"),  # right answer, bad step
    f"{a}*{b} equals 1.5 units": ([], "is wrong", "wrong"),  # 1.5 is no integer: no step
    "I cannot say.": ([], "no final number", "wrong"),
    f"<think>3+4+0=07,4+2+0=16</think>{p.answer}": (["'4+2+0=16'"], "is correct", "wrong"),
  }
  for response, (steps, final, verdict) in cases.items():
    text = critique.number_critique(p, response)
    named = [line.split(" is wrong")[0].removeprefix("The step ") for line in text.splitlines()
             if line.startswith("The step")]  # fmt: skip
    assert named == steps, (response, text)
    assert final in text and text.endswith(f"Conclusion: {verdict} [END]"), (response, text)
    assert ("Every written step is correct." in text) == (verdict == "right")
  assert f"should be {p.answer}" in critique.number_critique(p, f"{wrong}")


def test_ask_phrases_the_question_in_the_record_and_the_answer_check_is_the_teachers():
  ps = _problems(2)
  noisy = [f"It is {ps[0].answer}.", f"<think>{ps[1].thinking}</think>{ps[1].answer}"]
  critic, check = critique.TEACHERS["number"]
  recs = critique.records(ps, noisy, critic, check=check, ask="What is {prompt}?")
  for r, p, y in zip(recs, ps, noisy, strict=True):
    assert r["prompt"] == critique.prompt(f"What is {p.prompt}?", y)
    assert r["provenance"]["solution_correct"] is True
  # the task check wants the think block: the free-text answer is not "correct" for it
  strict = critique.records(ps, noisy)
  assert [r["provenance"]["solution_correct"] for r in strict] == [False, True]
  gold = critique.records(ps, None, ask="What is {prompt}?")
  assert [r["prompt"] for r in gold] == [f"What is {p.prompt}?" for p in ps]


def test_the_loss_covers_exactly_the_critique(tmp_path):
  ps = _problems(4)
  noisy = [template.render_response(p.example) for p in ps[:2]] + ["7", "<think>1+1=3</think>2"]
  recs = critique.records(ps, noisy)
  path = tmp_path / "cft.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  examples = jsonl.read_jsonl(str(path)).examples
  corpus = [e.prompt + " " + e.answer for e in examples] * 30
  tok = SentencePieceTokenizer.train(corpus, tmp_path / "sp", vocab_size=400)
  for ex, r, y in zip(examples, recs, noisy, strict=True):
    assert ex.prompt == critique.prompt(r["prompt"].split("\n")[1], y)
    assert ex.answer == r["response"] and ex.thinking == ""
    enc = template.encode_example(tok, ex)
    n_prompt = len(template.encode_prompt(tok, ex.prompt))
    assert np.all(enc.roles[:n_prompt] == ROLE_PROMPT)  # question and solution: no loss
    trained = [t for t, role in zip(enc.tokens, enc.roles, strict=True) if role != ROLE_PROMPT]
    assert tok.decode(trained).replace("<think>", "").replace("</think>", "").strip() == ex.answer
  assert [r["provenance"]["solution_correct"] for r in recs] == [True, True, False, False]


def test_no_noisy_solutions_gives_the_sft_records_through_the_same_path(tmp_path):
  ps = _problems(5)
  recs = critique.records(ps, None)
  path = tmp_path / "sft.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  assert jsonl.read_jsonl(str(path)).examples == [p.example for p in ps]


def test_the_shipped_dataset_matches_its_manifest():
  import os

  from jaxpost.config_lib import load_config
  from jaxpost.datagen import core

  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  folder = os.path.join(repo, "configs", "data", "critique_mul2x2")
  manifest = core.read_manifest(folder)
  assert manifest["method"] == "critique" and manifest["inputs"]["prompt"] == critique.PROMPT
  assert len(jsonl.read_jsonl(os.path.join(folder, core.DATA_FILE)).examples) == 256
  c = load_config(os.path.join(repo, "configs", "critique_ft.py:tiny"))
  assert c.data.path == os.path.join(folder, core.DATA_FILE)


def test_bad_teacher_or_ask_is_refused_before_any_generation():
  import pytest

  for kwargs, match in (({"teacher": "gpt4o"}, "teacher"), ({"ask": "What is it?"}, "ask")):
    with pytest.raises(ValueError, match=match):
      critique.build(None, {"add3": 1.0}, 4, "/nonexistent", **kwargs)
