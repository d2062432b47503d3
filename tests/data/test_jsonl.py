"""Tests for jaxpost.data.jsonl."""

import json
import logging
import re

import pytest

from jaxpost.data import DataError, Example, read_jsonl


def _write(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def test_reads_both_formats_and_skips_blank_lines(tmp_path):
  path = _write(
    tmp_path / "data.jsonl",
    [
      json.dumps({"prompt": "1+1", "response": "<think>1+1=2</think>2", "id": 7}),
      "",
      "   ",
      json.dumps({"prompt": "hi", "response": "hello"}),
      json.dumps(
        {
          "messages": [
            {"role": "user", "content": "2+3"},
            {"role": "assistant", "content": "<think>2+3=5</think>5"},
          ]
        }
      ),
      json.dumps({"prompt": "ünï 🙂", "response": "ok"}, ensure_ascii=False),
    ],
  )
  result = read_jsonl(path)
  assert result.examples == [
    Example("1+1", "1+1=2", "2"),
    Example("hi", "", "hello"),
    Example("2+3", "2+3=5", "5"),
    Example("ünï 🙂", "", "ok"),
  ]
  assert (result.skipped, result.errors) == (0, [])


def test_tolerates_byte_order_mark(tmp_path):
  path = tmp_path / "bom.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a", "response": "b"}).encode())
  assert read_jsonl(path).examples == [Example("a", "", "b")]


BAD_RECORDS = [
  ("{not json", "invalid JSON"),
  ("[1, 2]", "expected a JSON object"),
  (json.dumps({"prompt": "x"}), "missing key 'response'"),
  (json.dumps({"response": "x"}), "missing key 'prompt'"),
  (json.dumps({"text": "x"}), "expected keys"),
  (json.dumps({"prompt": 1, "response": "x"}), "'prompt' must be a string"),
  (json.dumps({"prompt": "p", "response": None}), "'response' must be a string"),
  (json.dumps({"prompt": "p", "response": ""}), "empty response"),
  (json.dumps({"prompt": "p", "response": "<think>open"}), "without a closing"),
  (json.dumps({"prompt": "p", "response": "a</think>b"}), "without an opening"),
  (json.dumps({"messages": []}), "non-empty list"),
  (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "last message"),
  (
    json.dumps(
      {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    ),
    "role 'robot'",
  ),
  (
    json.dumps({"prompt": "p", "response": "r", "messages": []}),
    "both 'messages' and 'prompt'",
  ),
  # Valid JSON, never meant: json.loads alone would accept each of these.
  ('{"prompt": "a", "response": "b", "prompt": "c"}', "duplicate key 'prompt'"),
  (
    '{"messages": [{"role": "user", "content": "x", "content": "y"},'
    ' {"role": "assistant", "content": "z"}]}',
    "duplicate key 'content'",
  ),
  (json.dumps({"prompt": "a\u0000b", "response": "r"}), "'prompt' contains a NUL character"),
  (json.dumps({"prompt": "p", "response": "r\u0000"}), "'response' contains a NUL character"),
  (
    json.dumps(
      {
        "messages": [
          {"role": "system", "content": "s\u0000"},
          {"role": "user", "content": "u"},
          {"role": "assistant", "content": "a"},
        ]
      }
    ),
    "messages[0].content contains a NUL",
  ),
  ('{"prompt": "\\ud800", "response": "r"}', "'prompt' contains a lone surrogate"),
  (json.dumps({"prompt": "p", "response": " \n\t "}), "empty response (whitespace only)"),
  (json.dumps({"prompt": "p", "response": "<think> </think>\n"}), "an empty think block"),
  (json.dumps({"prompt": "  ", "response": "r"}), "empty prompt (whitespace only)"),
  (json.dumps({"prompt": "", "response": "r"}), "empty prompt"),
  (
    json.dumps(
      {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]}
    ),
    "no user message has any text",
  ),
]


@pytest.mark.parametrize("line, message", BAD_RECORDS)
def test_malformed_record_names_file_and_line(tmp_path, line, message):
  good = json.dumps({"prompt": "a", "response": "b"})
  path = _write(tmp_path / "bad.jsonl", [good, "", line, good])
  with pytest.raises(DataError, match=re.escape(message)) as info:
    read_jsonl(path)
  assert f"{path}:3:" in str(info.value)
  assert isinstance(info.value, ValueError)


def test_invalid_utf8_is_a_malformed_line(tmp_path):
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xe9", "response": "b"}\n')
  with pytest.raises(DataError, match=r"latin1.jsonl:2:.*utf-8"):
    read_jsonl(path)


def test_skip_malformed_counts_and_logs(tmp_path, caplog):
  good = json.dumps({"prompt": "a", "response": "b"})
  lines = [good] + [line for line, _ in BAD_RECORDS] + [good]
  path = _write(tmp_path / "mixed.jsonl", lines)
  with caplog.at_level(logging.WARNING):
    result = read_jsonl(path, skip_malformed=True)
  assert result.examples == [Example("a", "", "b")] * 2
  assert result.skipped == len(BAD_RECORDS) == len(result.errors)
  for i, (error, (_, message)) in enumerate(zip(result.errors, BAD_RECORDS, strict=True)):
    assert error.startswith(f"{path}:{i + 2}:")
    assert message in error
  assert sum("skipping malformed record" in r.getMessage() for r in caplog.records) == len(
    BAD_RECORDS
  )


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="JSONL file not found"):
    read_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("text", ["", "\n  \n\n"])
def test_empty_file_is_an_error_naming_it(tmp_path, text):
  # Before: an empty list, and later SentencePiece's opaque "[!sentences_.empty()]".
  path = tmp_path / "empty.jsonl"
  path.write_text(text)
  with pytest.raises(DataError, match=re.escape(f"{path}: no records")):
    read_jsonl(path)


def test_lines_are_kept_next_to_examples(tmp_path):
  good = json.dumps({"prompt": "a", "response": "b"})
  path = _write(tmp_path / "d.jsonl", ["", good, "{bad", "  ", good])
  result = read_jsonl(path, skip_malformed=True)
  assert result.lines == [2, 5] and len(result.examples) == 2 and result.skipped == 1


def test_pipeline_reads_a_dataset_once_for_tokenizer_and_source(tmp_path, monkeypatch):
  """Training the tokenizer on the dataset and building the source read the file once;
  a changed file is read again."""
  import os

  from jaxpost import config_lib
  from jaxpost.data import jsonl, pipeline

  path = _write(
    tmp_path / "d.jsonl",
    [json.dumps({"prompt": f"{i}+{i}", "response": f"{2 * i}"}) for i in range(200)],
  )
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  c = config_lib.load_config(os.path.join(repo, "configs/sft.py:tiny"))
  c.data.source, c.data.path, c.tokenizer.vocab_size = "jsonl", str(path), 64
  reads = []
  real = jsonl.read_jsonl
  monkeypatch.setattr(jsonl, "read_jsonl", lambda *a, **k: reads.append(a) or real(*a, **k))
  tok = pipeline.prepare_tokenizer(c, str(tmp_path / "run"))
  counts = {}
  source, size = pipeline.build_source(c, tok, counts)
  assert len(reads) == 1 and size == 200 and counts == {"data/skipped_malformed": 0}
  assert len(source(0)[0]) > 0
  _write(path, [json.dumps({"prompt": "1+1", "response": "2"})])
  assert len(pipeline.load_examples(c)) == 1 and len(reads) == 2


def test_observed_spans_are_read_and_never_trained_on(tmp_path):
  import numpy as np

  from jaxpost.data import packing, template
  from jaxpost.data.jsonl import record_to_example
  from jaxpost.data.tokenizer import SentencePieceTokenizer
  from jaxpost.types import RESPONSE_ROLES, ROLE_OBSERVED

  thinking = "```python\nprint(6*7)\n```\n```output\n42\n```\n"
  start = thinking.index("```output")
  record = {"prompt": "6*7", "response": f"<think>{thinking}</think>42",
            "observed": [[start, len(thinking)]]}  # fmt: skip
  ex = record_to_example(record)
  assert ex.observed == ((start, len(thinking)),) and ex.marks == ()
  tok = SentencePieceTokenizer.train([template.render_example(ex)] * 50, str(tmp_path / "tok"),
                                     vocab_size=40, byte_fallback=False)  # fmt: skip
  enc = template.encode_example(tok, ex)
  observed = enc.roles == ROLE_OBSERVED
  assert tok.decode(enc.tokens[observed].tolist()) == thinking[start:]
  arrays = packing._to_batch_arrays(
    enc.tokens[None], enc.roles[None], np.ones((1, len(enc)), np.int32), np.arange(len(enc))[None]
  )
  mask, roles = arrays["loss_mask"][0], arrays["roles"][0]
  assert (
    mask[roles == ROLE_OBSERVED].sum() == 0 and (roles == ROLE_OBSERVED).sum() == observed.sum()
  )
  assert mask.sum() == np.isin(enc.roles[1:], RESPONSE_ROLES).sum()  # every other response token
  for bad in ([[0, start + 3]], [[start, len(thinking) + 1]]):  # overlaps a mark / leaves it
    with pytest.raises(ValueError, match="spans"):
      record_to_example({**record, "observed": bad, "marks": [[0, 3]]})
