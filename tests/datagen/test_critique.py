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
