"""Pairs files from generated JSONL: SODA (teacher vs snapshot), REDI (correct vs incorrect)."""

import json

import pytest

from jaxpost.data.jsonl import DataError
from jaxpost.data.pairs import build_pairs, main, read_pairs


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _rec(prompt, response, correct=None):
  r = {"prompt": prompt, "response": response}
  if correct is not None:
    r["correct"] = correct
  return r


def _read(path):
  return [json.loads(line) for line in open(path)]


def test_soda_join_by_prompt_skips_equal_and_unmatched(tmp_path):
  teacher = _write(
    tmp_path / "t.jsonl",
    [_rec("1+1", "<think>1+1</think>2"), _rec("2*3", "<think>2*3</think>6"), _rec("9+9", "18")],
  )
  student = _write(
    tmp_path / "s.jsonl",
    [_rec("2*3", "<think>2*3</think>5"), _rec("1+1", "<think>1+1</think>2"), _rec("7+7", "x")],
  )
  out = str(tmp_path / "pairs.jsonl")
  counts = build_pairs(teacher, student, out, require=("differ",))
  # 1+1: equal responses (no DPO gradient) dropped; 9+9 and 7+7 have no partner
  assert _read(out) == [
    {"prompt": "2*3", "chosen": "<think>2*3</think>6", "rejected": "<think>2*3</think>5"}
  ]
  assert counts == {"pairs": 1, "prompts": 2, "without_pair": 1, "malformed": 0}
  examples, _, skipped = read_pairs(out)  # what data.source=pairs reads
  assert len(examples) == 2 and skipped == 0
  assert examples[0].answer == "6" and examples[1].answer == "5"


def test_redi_correct_vs_incorrect_each_rejected_used_once(tmp_path):
  samples = [
    _rec("q", "a1", True),
    _rec("q", "b1", False),
    _rec("q", "a2", True),
    _rec("q", "a3", True),
    _rec("q", "b2", False),
    _rec("r", "c", True),  # no incorrect sample: no pair
  ]
  path = _write(tmp_path / "x.jsonl", samples)
  out = str(tmp_path / "pairs.jsonl")
  counts = build_pairs(
    path, path, out, require=("chosen_correct", "rejected_incorrect"), per_prompt=3
  )
  assert [(p["chosen"], p["rejected"]) for p in _read(out)] == [("a1", "b1"), ("a2", "b2")]
  assert counts == {"pairs": 2, "prompts": 2, "without_pair": 1, "malformed": 0}
  build_pairs(path, path, out, require=("chosen_correct", "rejected_incorrect"))
  assert len(_read(out)) == 1  # per_prompt defaults to one


def test_errors_name_the_problem(tmp_path):
  path = _write(tmp_path / "x.jsonl", [_rec("q", "a")])
  out = str(tmp_path / "p.jsonl")
  with pytest.raises(DataError, match="no 'correct' key"):
    build_pairs(path, path, out, require=("chosen_correct",))
  with pytest.raises(DataError, match="unknown requirement"):
    build_pairs(path, path, out, require=("chosen_good",))
  with pytest.raises(DataError, match="no pairs"):
    build_pairs(path, path, out, require=("differ",))
  (tmp_path / "bad.jsonl").write_text('{"prompt": "q"}\n')
  with pytest.raises(DataError, match="bad.jsonl:1"):
    build_pairs(str(tmp_path / "bad.jsonl"), path, out)


def test_cli(tmp_path, capsys):
  a = _write(tmp_path / "a.jsonl", [_rec("q", "1")])
  b = _write(tmp_path / "b.jsonl", [_rec("q", "2")])
  out = str(tmp_path / "p.jsonl")
  main([f"--chosen={a}", f"--rejected={b}", f"--out={out}", "--require=differ"])
  assert json.loads(capsys.readouterr().out)["pairs"] == 1
  assert _read(out) == [{"prompt": "q", "chosen": "1", "rejected": "2"}]


def test_rationales_become_label_and_rationale_tasks(tmp_path):
  from jaxpost.data.pairs import EXPLAIN_PREFIX, read_rationales

  path = _write(
    tmp_path / "t.jsonl",
    [
      _rec("2*3", "<think>2*3=6</think>6"),
      _rec("1+1", "2"),  # no rationale: malformed for this source
      _rec("4*4", "<think>4*4=16</think>"),  # no answer
    ],
  )
  with pytest.raises(DataError, match=r"t.jsonl:2: the response has no rationale"):
    read_rationales(path)
  examples, where, skipped = read_rationales(path, skip_malformed=True)
  assert skipped == 2 and len(examples) == 2
  label, rationale = examples
  assert (label.prompt, label.thinking, label.answer) == ("2*3", "", "6")
  assert (rationale.prompt, rationale.thinking, rationale.answer) == (
    EXPLAIN_PREFIX + "2*3",
    "2*3=6",
    "",
  )
  assert where(0).endswith("(label task)") and where(1).endswith("(rationale task)")


def test_a_pairs_record_missing_a_side_is_a_data_error_naming_its_line(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text('{"prompt": "q", "chosen": "a", "note": "no rejected side"}\n')
  with pytest.raises(DataError, match=r"p.jsonl:1: expected keys 'prompt', 'chosen', 'rejected'"):
    read_pairs(str(path))


def test_malformed_responses_never_enter_a_pair(tmp_path):
  teacher = _write(
    tmp_path / "t.jsonl", [_rec("q", "<think>1</think>2"), _rec("r", "<think>x</think>y")]
  )
  student = _write(
    tmp_path / "s.jsonl",
    [
      _rec("q", "<think>1,1,1"),
      _rec("q", "<think>1</think>3"),
      _rec("r", "<think>a</think>b</think>"),
    ],
  )  # cut off at the budget; a good one; a repeated closing tag
  out = str(tmp_path / "p.jsonl")
  counts = build_pairs(teacher, student, out)
  assert _read(out) == [
    {"prompt": "q", "chosen": "<think>1</think>2", "rejected": "<think>1</think>3"}
  ]
  assert counts["malformed"] == 2 and counts["without_pair"] == 1
  read_pairs(out)  # what data.source=pairs reads: every record lays out
