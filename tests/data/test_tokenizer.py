"""Tests for jaxpost.data.tokenizer."""

import json
import time

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxpost.data import tasks
from jaxpost.data.tokenizer import (
  HFTokenizer,
  SentencePieceTokenizer,
  Tokenizer,
  load_tokenizer,
)

UNICODE_TEXTS = [
  "héllo wörld",
  "  two  leading spaces and trailing  ",
  "tabs\tand\nnew\nlines\n\n",
  "日本語のテキスト 🙂🚀",
  "Ωμέγα — «quotes» ‘single’ …",
  "mixed 123+456=579 and <think>tags</think> inside",
  "",
  " ",
]


@pytest.fixture(scope="module")
def corpus():
  return list(tasks.training_corpus(list(tasks.LEVELS), 1500, seed=0))


@pytest.fixture(scope="module")
def sp(corpus, tmp_path_factory):
  prefix = tmp_path_factory.mktemp("sp") / "tok"
  return SentencePieceTokenizer.train(corpus, prefix, vocab_size=300)


def test_reserved_ids_and_protocol(sp):
  assert isinstance(sp, Tokenizer)
  assert (sp.pad_id, sp.bos_id, sp.eos_id) == (0, 2, 3)
  assert 260 < sp.vocab_size <= 300


def test_special_tokens_are_single_ids(sp):
  for piece in ("<think>", "</think>"):
    assert sp.encode(piece) == [sp.piece_to_id(piece)]
  ids = sp.encode("<think>1+2=3</think>3")
  assert ids[0] == sp.piece_to_id("<think>")
  assert sp.piece_to_id("</think>") in ids


def test_digits_are_split(sp):
  assert len(sp.encode("9876543210")) == 10


def test_round_trip_arithmetic(sp, corpus):
  for text in corpus[:300]:
    assert sp.decode(sp.encode(text)) == text


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_round_trip_unicode(sp, text):
  assert sp.decode(sp.encode(text)) == text


def test_segments_concatenate(sp):
  # The template encodes spans separately; the pieces must join back exactly.
  for a, b in [("Q: 1+2\nA: ", "<think>"), (" x ", " y"), ("日本", " 語 "), ("a\n", "\nb")]:
    assert sp.decode(sp.encode(a) + sp.encode(b)) == a + b


def test_training_is_deterministic(corpus, tmp_path):
  a = SentencePieceTokenizer.train(corpus, tmp_path / "a", vocab_size=300)
  b = SentencePieceTokenizer.train(corpus, tmp_path / "b", vocab_size=300)
  assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
  assert a.encode(corpus[0]) == b.encode(corpus[0])


def test_training_is_quick_on_20k_strings(tmp_path):
  texts = list(tasks.training_corpus(["add3", "mul2x2"], 20_000, seed=1))
  start = time.perf_counter()
  tok = SentencePieceTokenizer.train(texts, tmp_path / "big", vocab_size=320)
  assert time.perf_counter() - start < 5.0
  assert tok.decode(tok.encode(texts[-1])) == texts[-1]


def test_small_vocab_without_byte_fallback(corpus, tmp_path):
  tok = SentencePieceTokenizer.train(corpus, tmp_path / "small", vocab_size=48, byte_fallback=False)
  assert tok.vocab_size <= 48
  assert tok.decode(tok.encode(corpus[3])) == corpus[3]


def test_unigram_model(corpus, tmp_path):
  tok = SentencePieceTokenizer.train(
    corpus[:500], tmp_path / "uni", vocab_size=300, model_type="unigram"
  )
  assert tok.decode(tok.encode(corpus[0])) == corpus[0]
  assert tok.encode("<think>") == [tok.piece_to_id("<think>")]


def test_train_rejects_bad_arguments(corpus, tmp_path):
  with pytest.raises(ValueError, match="256 byte-fallback"):
    SentencePieceTokenizer.train(corpus, tmp_path / "x", vocab_size=128)
  with pytest.raises(ValueError, match="model_type"):
    SentencePieceTokenizer.train(corpus, tmp_path / "x", vocab_size=300, model_type="wordpiece")
  with pytest.raises(TypeError, match="training text 1"):
    SentencePieceTokenizer.train(["1+1", b"bytes"], tmp_path / "x", vocab_size=300)


def test_load_dispatch_and_errors(sp, tmp_path):
  loaded = load_tokenizer(sp.path)
  assert isinstance(loaded, SentencePieceTokenizer)
  assert loaded.encode("12+34") == sp.encode("12+34")
  hf_style_dir = tmp_path / "model_dir"
  hf_style_dir.mkdir()
  (hf_style_dir / "tokenizer.model").write_bytes(open(sp.path, "rb").read())
  assert isinstance(load_tokenizer(hf_style_dir), SentencePieceTokenizer)

  with pytest.raises(FileNotFoundError, match="no tokenizer at"):
    load_tokenizer(tmp_path / "missing.model")
  with pytest.raises(FileNotFoundError, match="neither"):
    load_tokenizer(tmp_path)
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a valid SentencePiece model"):
    load_tokenizer(garbage)
  other = tmp_path / "vocab.txt"
  other.write_text("x")
  with pytest.raises(ValueError, match="unknown tokenizer file type"):
    load_tokenizer(other)


def test_unknown_piece_and_bad_ids(sp):
  with pytest.raises(KeyError, match="not in the vocabulary"):
    sp.piece_to_id("definitely-not-a-piece")
  assert sp.piece_to_id("<unk>") == 1
  with pytest.raises(ValueError, match="out of range"):
    sp.decode([sp.vocab_size])
  with pytest.raises(TypeError):
    sp.encode(b"bytes")


def _write_hf_tokenizer(directory, special=("<pad>", "<s>", "</s>", "<think>", "</think>")):
  """A tiny byte-level BPE tokenizer trained on a few strings, saved as tokenizer.json."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=300,
    special_tokens=list(special),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(["12+34=46", "hello world", "<think>2+2=4</think>4"], trainer)
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  return directory / "tokenizer.json"


def test_hf_tokenizer_round_trip(tmp_path):
  path = _write_hf_tokenizer(tmp_path / "hf")
  tok = load_tokenizer(tmp_path / "hf")
  assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.encode("<think>") == [tok.piece_to_id("<think>")]
  for text in UNICODE_TEXTS + ["Q: 12+34\nA: <think>4+2=6</think>46"]:
    assert tok.decode(tok.encode(text)) == text
  assert isinstance(load_tokenizer(path), HFTokenizer)


def test_hf_special_tokens_from_config_and_arguments(tmp_path):
  directory = tmp_path / "hf"
  _write_hf_tokenizer(directory, special=("[END]", "[BEGIN]", "<think>", "</think>"))
  with pytest.raises(ValueError, match="EOS token"):
    load_tokenizer(directory)
  explicit = HFTokenizer.load(directory, eos_token="[END]", bos_token="[BEGIN]")
  assert (explicit.eos_id, explicit.bos_id, explicit.pad_id) == (0, 1, 0)  # pad falls back
  (directory / "tokenizer_config.json").write_text(
    json.dumps({"eos_token": {"content": "[END]"}, "pad_token": "[BEGIN]"})
  )
  configured = load_tokenizer(directory)
  assert (configured.eos_id, configured.pad_id, configured.bos_id) == (0, 1, -1)
  with pytest.raises(ValueError, match="not in the vocabulary"):
    HFTokenizer.load(directory, eos_token="</s>")


def test_hf_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
    HFTokenizer.load(tmp_path)
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{}")
  with pytest.raises(ValueError, match="not a valid tokenizer.json"):
    load_tokenizer(bad)
