"""Tests for jaxpost.data.tables (Parquet and datasets' save_to_disk) and the held-out split."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from recipes.tiny_configs import sft_tiny  # tests/ is on sys.path (its conftest.py)

from jaxpost import config_lib
from jaxpost.data import DataError, Example, pipeline
from jaxpost.data.tables import read_table

ROWS = [
  {"prompt": "1+1", "response": "<think>1+1=2</think>2", "id": 0},
  {"prompt": "hi", "response": "hello", "id": 1},
  {"prompt": "ünï 🙂", "response": "ok", "id": 2},
]
CHAT = {
  "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+3"},
    {"role": "assistant", "content": "<think>2+3=5</think>5"},
  ]
}
WANT = [Example("1+1", "1+1=2", "2"), Example("hi", "", "hello"), Example("ünï 🙂", "", "ok")]


def _parquet(path, rows):
  pq.write_table(pa.Table.from_pylist(rows), path)
  return path


def test_parquet_file_and_directory(tmp_path):
  assert read_table("parquet", str(_parquet(tmp_path / "a.parquet", ROWS))).examples == WANT
  # A Hub-style split directory: files in sorted path order, rows in file order.
  (tmp_path / "d" / "data").mkdir(parents=True)
  _parquet(tmp_path / "d" / "data" / "train-00001-of-00002.parquet", ROWS[2:])
  _parquet(tmp_path / "d" / "data" / "train-00000-of-00002.parquet", ROWS[:2])
  result = read_table("parquet", str(tmp_path / "d"))
  assert result.examples == WANT
  assert result.places[2].endswith("train-00001-of-00002.parquet[row 0]")


def test_chat_rows_keep_their_turns(tmp_path):
  (ex,) = read_table("parquet", str(_parquet(tmp_path / "c.parquet", [CHAT]))).examples
  assert (ex.thinking, ex.answer) == ("2+3=5", "5")
  assert ex.context == (("system", "Be brief."), ("user", "2+3"))


def test_mixed_formats_read_nulls_as_absent(tmp_path):
  # One table with both formats: each row has nulls in the other format's columns.
  rows = [{**ROWS[0], "messages": None}, {"prompt": None, "response": None, "id": None, **CHAT}]
  table = read_table("parquet", str(_parquet(tmp_path / "m.parquet", rows)))
  assert [e.answer for e in table.examples] == ["2", "5"]


@pytest.mark.parametrize(
  "row, message",
  [
    ({"prompt": "p", "response": ""}, "empty response"),
    ({"prompt": "p"}, "missing key 'response'"),
    ({"text": "x"}, "expected keys"),
    ({"prompt": "a\x00b", "response": "r"}, "NUL"),
  ],
)
def test_malformed_rows_name_file_and_row_or_are_skipped(tmp_path, row, message):
  path = _parquet(tmp_path / "bad.parquet", [ROWS[0], row, ROWS[1]])
  with pytest.raises(DataError, match=rf"bad\.parquet\[row 1\]: .*{message}"):
    read_table("parquet", str(path))
  result = read_table("parquet", str(path), skip_malformed=True)
  assert result.examples == WANT[:2] and result.skipped == 1
  assert "[row 1]" in result.errors[0]


def test_empty_or_missing_sources_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    read_table("parquet", str(tmp_path / "nope.parquet"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no \\*.parquet files"):
    read_table("parquet", str(tmp_path / "empty"))
  bad = _parquet(tmp_path / "allbad.parquet", [{"prompt": "p", "response": " "}])
  with pytest.raises(DataError, match="every row is malformed"):
    read_table("parquet", str(bad), skip_malformed=True)
  (tmp_path / "junk.parquet").write_bytes(b"not parquet")
  with pytest.raises(DataError, match="cannot read it as parquet"):
    read_table("parquet", str(tmp_path / "junk.parquet"))
  with pytest.raises(DataError, match="not a datasets save_to_disk directory"):
    read_table("arrow", str(tmp_path / "empty"))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
  datasets = pytest.importorskip("datasets", reason="writing save_to_disk needs datasets")
  one = datasets.Dataset.from_list(ROWS)
  one.save_to_disk(str(tmp_path / "one"))
  assert read_table("arrow", str(tmp_path / "one")).examples == WANT
  splits = datasets.DatasetDict(
    {"train": one, "test": datasets.Dataset.from_list([CHAT, {"messages": CHAT["messages"][1:]}])}
  )
  # Several shards: rows come back in order across the Arrow files.
  splits.save_to_disk(str(tmp_path / "dict"), num_shards={"train": 2, "test": 1})
  assert read_table("arrow", str(tmp_path / "dict"), split="train").examples == WANT
  test = read_table("arrow", str(tmp_path / "dict"), split="test")
  assert [e.context for e in test.examples] == [(("system", "Be brief."), ("user", "2+3")), ()]
  with pytest.raises(DataError, match="no split 'validation'.*train, test|no split 'validation'"):
    read_table("arrow", str(tmp_path / "dict"), split="validation")


def _config(path, source="parquet", **overrides):
  return sft_tiny(**{"data.source": source, "data.path": str(path), **overrides})


def test_heldout_fraction_is_a_fixed_disjoint_split(tmp_path):
  rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(40)]
  path = _parquet(tmp_path / "d.parquet", rows)
  pipeline._read_dataset.cache_clear()
  c = _config(path, **{"data.eval_fraction": 0.25})
  config_lib.validate(c)
  train, held = pipeline.load_dataset(c), pipeline.heldout_dataset(c)
  assert (len(train), len(held)) == (30, 10)
  train_prompts = {e.prompt for e in train.examples}
  held_prompts = [e.prompt for e in held.examples]
  assert not train_prompts & set(held_prompts)
  assert train_prompts | set(held_prompts) == {r["prompt"] for r in rows}
  # In file order, and named by their place in the file.
  assert held_prompts == sorted(held_prompts, key=lambda p: int(p[1:]))
  assert held.where(0) == f"{path}[row {held_prompts[0][1:]}]"
  # The same draw whatever the run's seed.
  c2 = _config(path, **{"data.eval_fraction": 0.25, "seed": 7})
  assert [e.prompt for e in pipeline.heldout_dataset(c2).examples] == held_prompts
  with pytest.raises(DataError, match="leaves none to train on"):
    pipeline.split_heldout(pipeline.Dataset(rows[:1], str), 0.5)


def test_heldout_file_and_split_and_config_errors(tmp_path):
  train = _parquet(tmp_path / "train.parquet", ROWS)
  held = _parquet(tmp_path / "held.parquet", ROWS[:1])
  c = _config(train, **{"data.eval_path": str(held)})
  config_lib.validate(c)
  assert pipeline.heldout_dataset(c).examples == WANT[:1]
  assert len(pipeline.load_dataset(c)) == 3  # a separate file holds nothing out of data.path
  assert pipeline.heldout_dataset(_config(train)) is None

  bad = [
    ({"data.eval_fraction": 0.1, "data.eval_path": str(held)}, "not both"),
    ({"data.eval_split": "test"}, "for tfds / arrow sources"),
    ({"data.eval_path": str(tmp_path / "missing")}, "no such file"),
    ({"data.eval_fraction": 0.1, "eval.checker": "nope"}, "unknown checker 'nope'"),
    ({"data.eval_fraction": 0.1, "eval.checker": "json:nope"}, "has no attribute"),
  ]
  for overrides, message in bad:
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate(_config(train, **overrides))
  with pytest.raises(config_lib.ConfigError, match="tasks source"):
    config_lib.validate(sft_tiny(**{"data.eval_fraction": 0.1}))
  with pytest.raises(config_lib.ConfigError, match="no such file or directory"):
    config_lib.validate(_config(tmp_path / "absent.parquet"))


def test_a_rewritten_file_in_a_directory_is_read_again(tmp_path):
  """The reader's cache is keyed by every file under a directory, not the directory's
  own size and mtime (which do not change when a file is rewritten in place)."""
  (tmp_path / "d").mkdir()
  _parquet(tmp_path / "d" / "part-0.parquet", ROWS[:1])
  pipeline._read_dataset.cache_clear()
  c = _config(tmp_path / "d")
  assert len(pipeline.load_dataset(c)) == 1
  _parquet(tmp_path / "d" / "part-0.parquet", ROWS)
  assert len(pipeline.load_dataset(c)) == 3
