"""The negatives source (jaxpost/data/negatives.py): files, layout, ids, epochs, builder."""

import json

import numpy as np
import pytest

from jaxpost.data import negatives, packing, tasks, template
from jaxpost.data.jsonl import DataError
from jaxpost.data.streams import StreamPacker
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.types import Batch


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  texts = list(tasks.training_corpus(("add3", "mul2x2"), 1000, 0))
  prefix = str(tmp_path_factory.mktemp("tok") / "sp")
  return SentencePieceTokenizer.train(texts, prefix, vocab_size=64, byte_fallback=False)


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _record(k: int, pool: int) -> dict:
  """Prompt ``k+1``; gold answer k + 1 + 1; negative j answers 100 * (j + 1) + k."""
  return {
    "prompt": f"{k}+1",
    "response": f"<think>{k}+1</think>{k + 1}",
    "negatives": [f"<think>{k}+1</think>{100 * (j + 1) + k}" for j in range(pool)],
  }


def _answer(tok, source, index) -> str:
  tokens, roles = source(index)
  return tok.decode([int(t) for t, r in zip(tokens, roles, strict=True) if r == 3]).strip()


def test_read_layout_places_and_errors(tmp_path):
  path = _write(tmp_path / "n.jsonl", [_record(k, 3) for k in range(4)])
  examples, where, skipped, pool = negatives.read_negatives(path)
  assert (len(examples), skipped, pool) == (16, 0, 3)
  assert examples[0].answer == "1" and examples[1].answer == "100" and examples[7].answer == "301"
  assert where(5) == f"{path}:2 (negative 1)" and where(4) == f"{path}:2 (gold)"
  bad = _write(tmp_path / "b.jsonl", [_record(0, 3), _record(1, 2)])
  with pytest.raises(DataError, match=r"b.jsonl:2: 2 negatives; the first record has 3"):
    negatives.read_negatives(bad)
  assert negatives.read_negatives(bad, skip_malformed=True)[2] == 1
  (tmp_path / "m.jsonl").write_text('{"prompt": "q", "response": "a"}\n')
  with pytest.raises(DataError, match="m.jsonl:1: expected keys"):
    negatives.read_negatives(str(tmp_path / "m.jsonl"))
  (tmp_path / "e.jsonl").write_text('{"prompt": "q", "response": "a", "negatives": []}\n')
  with pytest.raises(DataError, match="non-empty list"):
    negatives.read_negatives(str(tmp_path / "e.jsonl"))


def test_source_groups_ids_and_fresh_negatives_each_epoch(tmp_path, tok):
  """Gold first, then m negatives; every record once per epoch; epoch e takes negatives
  (e*m + j) mod M; the id is the record, whatever its position."""
  records, pool, m = 5, 3, 2
  path = _write(tmp_path / "n.jsonl", [_record(k, pool) for k in range(records)])
  examples, where, _, _ = negatives.read_negatives(path)
  source = negatives.negative_source(examples, tok, 7, pool, m, where)
  per_epoch = records * (1 + m)
  for epoch in range(3):
    ids = [source.example_id(epoch * per_epoch + i) for i in range(per_epoch)]
    groups = np.asarray(ids).reshape(records, 1 + m)
    assert np.all(groups == groups[:, :1]) and sorted(groups[:, 0]) == list(range(records))
    for g, k in enumerate(groups[:, 0]):
      base = epoch * per_epoch + g * (1 + m)
      assert _answer(tok, source, base) == str(k + 1)  # the gold response
      for j in range(m):
        want = 100 * ((epoch * m + j) % pool + 1) + k
        assert _answer(tok, source, base + 1 + j) == str(want)
      assert source.where(base + 1) == f"{path}:{k + 1} (negative {(epoch * m) % pool + 1})"
  orders = [[source.example_id(e * per_epoch + g * 3) for g in range(records)] for e in range(3)]
  assert orders[0] != orders[1] or orders[1] != orders[2]  # reshuffled per epoch
  with pytest.raises(DataError, match="data.negatives=4: the data has 3"):
    negatives.negative_source(examples, tok, 7, pool, 4, where)


def test_packed_batches_carry_example_ids(tmp_path, tok):
  path = _write(tmp_path / "n.jsonl", [_record(k, 2) for k in range(4)])
  examples, where, _, _ = negatives.read_negatives(path)
  source = negatives.negative_source(examples, tok, 0, 2, 2, where)
  arrays, nxt, _ = packing.pack_batch(source, 0, batch_size=6, seq_len=24, pack=False)
  batch = Batch(**arrays)
  assert nxt == 6
  np.testing.assert_array_equal(batch.example_ids, [source.example_id(i) for i in range(6)])
  assert batch.example_ids[0] == batch.example_ids[2] != batch.example_ids[3]
  # A source without ids gives none; a stream split keeps them (its own index mapping).
  plain, _, _ = packing.pack_batch(lambda i: source(i), 0, batch_size=6, seq_len=24, pack=False)
  assert "example_ids" not in plain
  packer = StreamPacker(source, batch_size=6, seq_len=24, streams=2, pack=False)
  arrays, _ = packer.next_batch()
  want = [source.example_id(j + 2 * k) for j in range(2) for k in range(3)]
  np.testing.assert_array_equal(arrays["example_ids"], want)
  # An empty row (past ``stop``) says -1.
  tail, _, _ = packing.pack_batch(source, 0, batch_size=4, seq_len=24, pack=False, stop=3)
  assert list(tail["example_ids"][3:]) == [-1]


def test_build_negatives_joins_by_prompt(tmp_path):
  gold = "<think>2*3</think>6"
  samples = [
    {"prompt": "2*3", "response": "<think>2*3</think>5", "correct": False, "gold": gold},
    {"prompt": "2*3", "response": gold, "correct": True, "gold": gold},
    {"prompt": "2*3", "response": "<think>2*3</think>7", "correct": False, "gold": gold},
    {"prompt": "1+1", "response": "<think>1+1</think>3", "correct": False, "gold": "2"},
    {"prompt": "1+1", "response": "<think>1+1</think>2</think>", "correct": True, "gold": "2"},
  ]
  path = _write(tmp_path / "s.jsonl", samples)
  out = str(tmp_path / "n.jsonl")
  counts = negatives.build_negatives(path, out, pool=2)
  assert counts == dict(records=1, prompts=2, too_few=1, malformed=1, equal_to_gold=1)
  assert [json.loads(x) for x in open(out)] == [
    {"prompt": "2*3", "response": gold, "negatives": ["<think>2*3</think>5", gold]}
  ]
  negatives.build_negatives(path, out, pool=2, require=("differ",))
  assert json.loads(open(out).readline())["negatives"][1] == "<think>2*3</think>7"
  counts = negatives.build_negatives(path, out, pool=1, require=("incorrect",))
  assert counts["records"] == 2
  with pytest.raises(DataError, match="unknown requirement"):
    negatives.build_negatives(path, out, pool=1, require=("wrong",))
  with pytest.raises(DataError, match="4 admissible negatives"):
    negatives.build_negatives(path, out, pool=4)
  no_gold = _write(tmp_path / "g.jsonl", [{"prompt": "q", "response": "a"}])
  with pytest.raises(DataError, match="no 'gold' key"):
    negatives.build_negatives(no_gold, out, pool=1)
  assert template.split_response(gold) == ("2*3", "6")
