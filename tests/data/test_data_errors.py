"""Data errors name their place, and come before tokenizer training and model building.

Each test reproduces a failure a user hit (an over-long example found only at the first
training step, an empty file failing inside SentencePiece, ...) and checks that it is
now one clear `DataError` naming ``path:line`` (or the tfds/task place).
"""

import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxpost import config_lib
from jaxpost.data import DataError, packing, pipeline, streams, tasks, template
from jaxpost.data.packing import OverlongError
from jaxpost.data.tokenizer import SentencePieceTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD = [
  {"prompt": f"{i}+{i}", "response": f"<think>{i}+{i}={2 * i}</think>{2 * i}"} for i in range(8)
]
# 100k characters of ordinary text: hopeless at any seq_len a config would use.
HUGE = {"prompt": "Write a long essay.", "response": "words and more words " * 5000}


def _write(path, records):
  lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def _config(path, **fields):
  """configs/base.py's sft config on a JSONL file (small tokenizer, fields as 'a.b': v)."""
  c = config_lib.load_config(os.path.join(REPO, "configs", "base.py:sft"))
  c.data.source, c.data.path = "jsonl", path
  c.tokenizer.vocab_size, c.tokenizer.train_examples = 300, 2000
  for field, value in fields.items():
    config_lib.set_field(c, field, value)
  return c


@pytest.fixture(autouse=True)
def _fresh_dataset_cache():
  # load_dataset keeps the last file read (keyed by size and mtime); tests rewrite files fast.
  pipeline._read_dataset.cache_clear()
  yield
  pipeline._read_dataset.cache_clear()


class CharTokenizer:
  """One token per character: an exact, instant stand-in for the exact-length checks."""

  vocab_size, pad_id, bos_id, eos_id = 1 << 21, 0, 2, 3

  def encode(self, text):
    return [ord(c) for c in text]


# ----------------------------------------------------------------- over-long examples


@pytest.mark.parametrize("byte_fallback", [True, False])
def test_hopeless_example_fails_before_tokenizer_training(tmp_path, byte_fallback):
  path = _write(tmp_path / "d.jsonl", [GOOD[0], "", HUGE, *GOOD[1:]])  # HUGE on line 3
  config = _config(path, **{"tokenizer.byte_fallback": byte_fallback})
  workdir = tmp_path / "run"
  with pytest.raises(DataError) as info:
    pipeline.prepare_tokenizer(config, str(workdir))
  message = str(info.value)
  assert isinstance(info.value, OverlongError)
  assert message.startswith(f"{path}:3 has at least ")
  assert "> seq_len=128" in message and "1 of 9 examples" in message
  assert "data.overlong" in message and "data.seq_len" in message and "\n" not in message
  assert not (workdir / "tokenizer.model").exists()


@pytest.mark.parametrize("policy", ["truncate", "reject"])
def test_other_policies_train_the_tokenizer_as_before(tmp_path, policy):
  path = _write(tmp_path / "d.jsonl", [GOOD[0], HUGE, *GOOD[1:]])
  config = _config(path, **{"data.overlong": policy})
  tok = pipeline.prepare_tokenizer(config, str(tmp_path / "run"))
  source, size = pipeline.build_source(config, tok)
  assert size == 9 and len(source(0)[0]) > 0


def test_exact_check_after_training_and_before_the_model(tmp_path):
  # 300 digits: the bound (300 / 16 characters per piece) passes, but digits are split
  # one per token, so the exact count (> 300) does not fit in 128.
  long = {"prompt": "digits", "response": "1" * 300}
  path = _write(tmp_path / "d.jsonl", [*GOOD[:3], long, GOOD[3], long])
  config = _config(path)
  workdir = tmp_path / "run"
  tok = pipeline.prepare_tokenizer(config, str(workdir))  # the bound lets it through
  assert (workdir / "tokenizer.model").exists()
  with pytest.raises(OverlongError, match=re.escape(f"{path}:4 has 3")) as info:
    pipeline.build_source(config, tok)
  assert "> seq_len=128 (2 of 6 examples are over-long)" in str(info.value)
  assert isinstance(info.value, DataError)
  # A resumed run (tokenizer already in the workdir) gets the same exact check.
  pipeline._read_dataset.cache_clear()
  tok = pipeline.prepare_tokenizer(config, str(workdir))
  with pytest.raises(OverlongError, match=re.escape(f"{path}:4 ")):
    pipeline.build_source(config, tok)


def test_exact_length_is_what_the_source_yields():
  tok = CharTokenizer()
  for ex in [template.Example("p", "", "a"), template.Example("日本 🙂", "x" * 40, "")]:
    assert pipeline.encoded_length(tok, ex) == len(template.encode_example(tok, ex))


def test_exact_check_counts_and_names_the_first(tmp_path):
  dataset = pipeline.Dataset([template.Example("p", "t" * n, "a") for n in (1, 50, 2, 60)], str)
  with pytest.raises(OverlongError, match=r"^1 has 75 tokens > seq_len=40 \(2 of 4 examples"):
    pipeline.check_overlong(dataset, CharTokenizer(), 40)
  pipeline.check_overlong(dataset, CharTokenizer(), 85)  # all fit: no error


def test_packer_error_names_the_dataset_place():
  examples = [template.Example("p", "t" * n, "a") for n in (1, 50)]
  source = pipeline.dataset_source(examples, CharTokenizer(), 0, lambda i: f"d.jsonl:{10 + i}")
  index = next(i for i in range(2) if len(source(i)[0]) > 40)
  with pytest.raises(OverlongError, match=r"^d\.jsonl:11 has 75 tokens > seq_len=40;"):
    packing.pack_batch(source, index, batch_size=1, seq_len=40)


@pytest.mark.parametrize("streams_, rows", [(1, None), (2, [1])])
def test_tasks_overlong_names_level_and_index(streams_, rows):
  levels = {"add3": 1.0, "mul4x3": 1.0}
  source = pipeline.task_source(levels, CharTokenizer(), seed=0)
  packer = streams.StreamPacker(source, batch_size=2, seq_len=8, streams=streams_, rows=rows)
  with pytest.raises(OverlongError) as info:
    packer.next_batch()
  # With 2 streams and only row 1 (stream 1) packed here, the first index read is 1.
  first = 0 if streams_ == 1 else 1
  level = tasks.mixture(levels, "train", 0).level_at(first)
  expected = f"task example {first} (level {level!r}) has "
  assert str(info.value).startswith(expected) and "seq_len=8" in str(info.value)


# ----------------------------------------------------------------- the lower bound

# Long repeated words teach BPE pieces of the full 16 characters, so the bound is tight
# there; "<" and ">" occur only inside the think tags (no piece of their own); "§" only
# in a text the trainer skips (it holds the reserved U+2585).
_BOUND_CORPUS = [
  *tasks.training_corpus(list(tasks.LEVELS), 600, seed=0),
  *["abcdefghijklmnopqrstuvwxyz " * 8] * 200,
  *["abcdefghijklmnop" * 8] * 200,
  *["  spaces   and\ttabs\n\nnewlines  "] * 50,
  "Ωμέγα 日本語のテキスト 🙂🚀 héllo wörld",
  "§§§§\u2585",
]


@pytest.fixture(scope="module", params=[True, False], ids=["byte_fallback", "no_byte_fallback"])
def trained(request, tmp_path_factory):
  prefix = tmp_path_factory.mktemp("bound") / "tok"
  tok = SentencePieceTokenizer.train(
    _BOUND_CORPUS, prefix, vocab_size=400, byte_fallback=request.param
  )
  bound = pipeline.TokenBound.for_training(_BOUND_CORPUS, byte_fallback=request.param)
  return tok, bound


def test_no_piece_is_longer_than_the_bound_assumes(trained):
  tok, _ = trained
  pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
  learned = [p for p in pieces if not re.fullmatch(r"<0x[0-9A-F]{2}>", p)]
  assert max(len(p) for p in learned) == pipeline.MAX_PIECE_CHARS  # reached, never passed


def test_characters_without_a_piece_do_not_count(trained):
  tok, bound = trained
  if bound.known is not None:
    for text in ["<" * 40, "§" * 40]:
      assert bound.text(text) == 0
      assert len(tok.encode(text)) == 1  # one <unk> for the whole run
    assert bound.text("\t" * 40) == 0  # tab: assumed pieceless (safe even where it has one)
  assert bound.text("abcdefghijklmnop" * 4) == 4 == len(tok.encode("abcdefghijklmnop" * 4))


_ALPHABET = sorted(set("".join(_BOUND_CORPUS)) | set("<>/"))
_TEXT = st.text(
  alphabet=st.one_of(st.sampled_from(_ALPHABET), st.characters(exclude_categories=("Cs",))),
  max_size=300,
)
# Repeats, including the corpus's own long words: where pieces are longest, so a bound
# assuming even 15 characters per piece fails here (checked by hand).
_RUNS = st.builds(
  lambda c, n: c * n,
  st.sampled_from(
    [*_ALPHABET, "ab", "abcdefgh", "abcdefghijklmnop", "abcdefghijklmnopqrstuvwxyz "]
  ),
  st.integers(1, 80),
)
_PIECES = st.lists(
  st.one_of(_TEXT, _RUNS, st.sampled_from(["<think>", "</think>", "<s>"])), max_size=6
)


@settings(
  max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=_PIECES)
def test_bound_never_exceeds_the_true_count(trained, parts):
  tok, bound = trained
  text = "".join(parts)
  assert bound.text(text) <= len(tok.encode(text))
  if "<think>" not in text and "</think>" not in text:
    ex = template.Example(prompt=text[::-1], thinking=text, answer=text[: len(text) // 2])
    assert bound.example(ex) <= len(template.encode_example(tok, ex))


# ---------------------------------------------------------- empty and all-skipped data


def test_empty_file_fails_before_tokenizer_training(tmp_path):
  path = _write(tmp_path / "empty.jsonl", ["", "   "])
  workdir = tmp_path / "run"
  with pytest.raises(DataError, match=re.escape(f"{path}: no records")):
    pipeline.prepare_tokenizer(_config(path), str(workdir))
  assert not (workdir / "tokenizer.model").exists()


def test_every_line_skipped_fails_with_count_and_first_error(tmp_path):
  path = _write(
    tmp_path / "bad.jsonl", ["{oops", {"prompt": "p"}, {"prompt": "p", "response": " "}]
  )
  workdir = tmp_path / "run"
  with pytest.raises(DataError) as info:
    pipeline.prepare_tokenizer(_config(path, **{"data.skip_malformed": True}), str(workdir))
  message = str(info.value)
  assert message.startswith(f"{path}: every record is malformed (3 skipped")
  assert f"the first: {path}:1: invalid JSON" in message and "\n" not in message
  assert not (workdir / "tokenizer.model").exists()
  with pytest.raises(DataError, match=re.escape(f"{path}:1: invalid JSON")):
    pipeline.prepare_tokenizer(_config(path), str(workdir))  # strict: the first bad line


def test_empty_dataset_source_is_a_data_error():
  with pytest.raises(DataError, match="no examples"):
    pipeline.dataset_source([], CharTokenizer(), 0)


# ------------------------------------- duplicate keys, NUL, blank text, both settings


_NEW_MALFORMED = [
  ('{"prompt": "a", "response": "b", "response": "c"}', "duplicate key 'response'"),
  (json.dumps({"prompt": "a\u0000", "response": "b"}), "'prompt' contains a NUL character"),
  (json.dumps({"prompt": "a", "response": "   "}), "empty response (whitespace only)"),
  (json.dumps({"prompt": "\n", "response": "b"}), "empty prompt (whitespace only)"),
]


@pytest.mark.parametrize("line, message", _NEW_MALFORMED)
def test_malformed_records_through_the_pipeline(tmp_path, line, message):
  path = _write(tmp_path / "d.jsonl", [GOOD[0], line, *GOOD[1:]])
  with pytest.raises(DataError, match=re.escape(f"{path}:2: {message}")):
    pipeline.load_dataset(_config(path))
  counts = {}
  dataset = pipeline.load_dataset(_config(path, **{"data.skip_malformed": True}), counts)
  assert len(dataset) == len(GOOD) and counts == {"data/skipped_malformed": 1}
  assert dataset.where(0) == f"{path}:1" and dataset.where(1) == f"{path}:3"


def test_tfds_style_places_in_the_overlong_error():
  examples = [template.Example("p", "t" * n, "a") for n in (1, 2, 90)]
  dataset = pipeline.Dataset(examples, lambda i: f"my_ds[train][{i}]")
  with pytest.raises(OverlongError, match=re.escape("my_ds[train][2] has 115 tokens")):
    pipeline.check_overlong(dataset, CharTokenizer(), 64)
  np.testing.assert_array_equal(len(dataset), 3)


# ------------------------------------------------------------------------ the recipe


def test_sft_recipe_fails_on_the_huge_example_before_tokenizer_and_model(tmp_path):
  from jaxpost.recipes import sft

  path = _write(tmp_path / "d.jsonl", [*GOOD[:4], HUGE, *GOOD[4:]])  # HUGE on line 5
  workdir = tmp_path / "run"
  with pytest.raises(DataError, match=re.escape(f"{path}:5 has at least ")) as info:
    sft.run(_config(path), str(workdir))
  assert "seq_len=128" in str(info.value)
  assert not (workdir / "tokenizer.model").exists()
  assert not (workdir / "checkpoints").exists()


def test_prompt_tags_rotate_over_the_task_examples():
  levels = {"add3": 1.0}
  tags = ("(1) ", "(2) ", "(3) ")
  tok = CharTokenizer()
  plain = pipeline.task_source(levels, tok, seed=0)
  tagged = pipeline.task_source(levels, tok, seed=0, tags=tags)
  mix = tasks.mixture(levels, "train", 0)
  for i in range(6):
    ids, _ = tagged(i)
    expected = pipeline.tagged(mix(i).example, i, tags)
    assert expected.prompt == tags[i % 3] + mix(i).prompt
    assert list(ids) == list(pipeline._encoded(tok, expected)[0])
    assert len(ids) == len(plain(i)[0]) + len(tags[i % 3])  # one char, one token
  c = config_lib.load_config(os.path.join(config_lib.CONFIGS_DIR, "quickstart.py"))
  config_lib.set_field(c, "data.prompt_tags", ("x", ""))
  with pytest.raises(config_lib.ConfigError, match="data.prompt_tags"):
    config_lib.validate(c)
