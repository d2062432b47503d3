"""One tokenizer interface over SentencePiece models and HF ``tokenizer.json`` files.

``encode`` never adds BOS/EOS: the template (`jaxpost.data.template`) places them
explicitly, so every caller sees the same token layout whichever backend is used.
A special id the tokenizer does not define is reported as -1.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import sentencepiece as spm
import tokenizers

from jaxpost.data.template import THINK_CLOSE, THINK_OPEN

DEFAULT_SPECIAL_TOKENS = (THINK_OPEN, THINK_CLOSE)
PathLike = str | os.PathLike

# SentencePiece reserves these ids in the models we train; pad is 0 so zero-filled
# buffers are padding.
_PAD_ID, _UNK_ID, _BOS_ID, _EOS_ID = 0, 1, 2, 3
_NUM_BYTE_PIECES = 256


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of jaxpost needs from a tokenizer."""

  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (no BOS/EOS added)."""
    ...

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``."""
    ...

  def piece_to_id(self, piece: str) -> int:
    """Id of a vocabulary piece; KeyError if it is not in the vocabulary."""
    ...


def _check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
  """Ids as Python ints, rejecting out-of-range ones (backends fail obscurely)."""
  out = [int(i) for i in ids]
  bad = [i for i in out if not 0 <= i < vocab_size]
  if bad:
    raise ValueError(f"token ids out of range [0, {vocab_size}): {bad[:10]}")
  return out


class _CheckedTexts:
  """Iterates the training texts, failing clearly on a non-string.

  SentencePiece turns exceptions raised inside its input iterator into an opaque
  RuntimeError, so the original error is kept here and re-raised by the caller.
  """

  def __init__(self, texts: Iterable[str]):
    self._texts = texts
    self.error: Exception | None = None

  def __iter__(self) -> Iterator[str]:
    for i, text in enumerate(self._texts):
      if not isinstance(text, str):
        self.error = TypeError(f"training text {i} is {type(text).__name__}, expected str")
        raise self.error
      yield text


class SentencePieceTokenizer:
  """A SentencePiece model behind the `Tokenizer` interface."""

  def __init__(self, processor: spm.SentencePieceProcessor, path: str | None = None):
    self._sp = processor
    self.path = path
    self.vocab_size = processor.get_piece_size()
    self.pad_id = processor.pad_id()
    self.bos_id = processor.bos_id()
    self.eos_id = processor.eos_id()
    self.unk_id = processor.unk_id()

  @classmethod
  def train(
    cls,
    texts: Iterable[str],
    model_prefix: PathLike,
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    character_coverage: float = 1.0,
  ) -> SentencePieceTokenizer:
    """Trains a model on in-memory texts and writes ``<model_prefix>.model``.

    The model is set up for exact round trips of separately encoded segments: no
    dummy prefix, no whitespace or Unicode normalization, digits split one per token,
    and byte fallback so any text (even characters never seen in training) survives.
    Ids: pad 0, unk 1, bos 2, eos 3, then ``special_tokens`` (each a single token).
    Training is single-threaded over the texts in order, hence deterministic.

    Args:
      texts: training texts (each may span several lines).
      model_prefix: output path without the ``.model`` suffix.
      vocab_size: upper bound on the vocabulary size; the model may come out smaller
        when the corpus offers fewer merges (read ``.vocab_size`` afterwards). With
        ``byte_fallback`` it must leave room for the 256 byte pieces.
      special_tokens: user-defined symbols that always encode as one token.
      model_type: "bpe" (fast) or "unigram".
      byte_fallback: encode unknown characters as UTF-8 bytes instead of <unk>.
      character_coverage: fraction of characters given their own piece.

    Returns:
      The trained tokenizer.
    """
    if model_type not in ("bpe", "unigram"):
      raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    n_reserved = 4 + len(special_tokens) + (_NUM_BYTE_PIECES if byte_fallback else 0)
    if vocab_size <= n_reserved:
      fallback = f", {_NUM_BYTE_PIECES} byte-fallback pieces" if byte_fallback else ""
      hint = " or pass byte_fallback=False" if byte_fallback else ""
      raise ValueError(
        f"vocab_size={vocab_size} leaves no room for learned pieces: {n_reserved} ids are "
        f"reserved (4 control ids, {len(special_tokens)} special tokens{fallback}); use "
        f"vocab_size >= {n_reserved + 40}{hint}"
      )
    if len(set(special_tokens)) != len(special_tokens) or not all(special_tokens):
      raise ValueError(f"special_tokens must be distinct non-empty strings: {special_tokens}")
    model = io.BytesIO()
    checked = _CheckedTexts(texts)
    try:
      spm.SentencePieceTrainer.train(
        sentence_iterator=iter(checked),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        # A smaller vocabulary than asked is fine: tiny arithmetic corpora have few
        # merges, and a hard limit would make training fail instead.
        hard_vocab_limit=False,
        pad_id=_PAD_ID,
        unk_id=_UNK_ID,
        bos_id=_BOS_ID,
        eos_id=_EOS_ID,
        user_defined_symbols=list(special_tokens),
        split_digits=True,
        byte_fallback=byte_fallback,
        character_coverage=character_coverage,
        # Round-trip exactness: leave the text exactly as given.
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        # Determinism and no silent drops: every sentence, in order, one thread.
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        max_sentence_length=1 << 24,
        minloglevel=2,
      )
    except RuntimeError as e:
      if checked.error is not None:
        raise checked.error from None
      raise ValueError(f"SentencePiece training failed: {e}") from e
    path = Path(f"{os.fspath(model_prefix)}.model")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return cls.load(path)

  @classmethod
  def load(cls, path: PathLike) -> SentencePieceTokenizer:
    """Loads a ``.model`` file."""
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"SentencePiece model not found: {path}")
    processor = spm.SentencePieceProcessor()
    try:
      processor.load(str(path))
    except (OSError, RuntimeError) as e:
      raise ValueError(f"not a valid SentencePiece model: {path} ({e})") from e
    return cls(processor, str(path))

  def encode(self, text: str) -> list[int]:
    if not isinstance(text, str):
      raise TypeError(f"encode expects str, got {type(text).__name__}")
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode(_check_ids(ids, self.vocab_size))

  def piece_to_id(self, piece: str) -> int:
    i = self._sp.piece_to_id(piece)
    # SentencePiece maps unknown pieces to unk silently; make that an error.
    if i == self.unk_id and piece != self._sp.id_to_piece(self.unk_id):
      raise KeyError(f"piece {piece!r} is not in the vocabulary")
    return i

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(_check_ids([i], self.vocab_size)[0])

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"


# Fallback names for special tokens when neither the caller nor a tokenizer_config.json
# says which to use; tried in order.
_SPECIAL_CANDIDATES = {
  "eos": ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]"),
  "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]"),
  "pad": ("<pad>", "[PAD]", "<|pad|>", "<|endoftext|>"),
}


def _configured_specials(directory: Path) -> dict[str, str]:
  """Special-token names from tokenizer_config.json / special_tokens_map.json, if any."""
  found: dict[str, str] = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later file wins
    path = directory / name
    if not path.is_file():
      continue
    try:
      config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"cannot read {path}: {e}") from e
    for kind in ("eos", "bos", "pad"):
      value = config.get(f"{kind}_token")
      if isinstance(value, dict):  # {"content": "</s>", "lstrip": ...}
        value = value.get("content")
      if isinstance(value, str):
        found[kind] = value
  return found


def _configured_chat_template(directory: Path) -> str | None:
  """The chat template beside a tokenizer.json: ``chat_template.jinja``, else the
  ``chat_template`` of tokenizer_config.json (a string, or a list of named templates of
  which "default" is used)."""
  jinja = directory / "chat_template.jinja"
  if jinja.is_file():
    return jinja.read_text(encoding="utf-8")
  path = directory / "tokenizer_config.json"
  if not path.is_file():
    return None
  try:
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read {path}: {e}") from e
  if isinstance(
    template, list
  ):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  return template if isinstance(template, str) and template else None


def _configured_add_bos(directory: Path) -> bool:
  """tokenizer_config.json's ``add_bos_token`` (False when absent)."""
  path = directory / "tokenizer_config.json"
  if not path.is_file():
    return False
  try:
    return bool(json.loads(path.read_text(encoding="utf-8")).get("add_bos_token", False))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"cannot read {path}: {e}") from e


class HFTokenizer:
  """A HuggingFace ``tokenizers`` tokenizer (``tokenizer.json``) behind `Tokenizer`."""

  def __init__(
    self,
    tokenizer: tokenizers.Tokenizer,
    *,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    path=None,
    chat_template: str | None = None,
    add_bos: bool = False,
  ):
    """Wraps ``tokenizer``.

    Args:
      tokenizer: the ``tokenizers.Tokenizer``.
      pad_id, bos_id, eos_id: special ids (-1 = none).
      path: where it came from (for messages).
      chat_template: the model's Jinja chat template; when set, prompts are rendered
        with it (``jaxpost.data.template.encode_prompt``).
      add_bos: the model expects BOS before a prompt that has no chat template.
    """
    self._tok = tokenizer
    self.path = path
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    self.pad_id = pad_id
    self.bos_id = bos_id
    self.eos_id = eos_id
    self.chat_template = chat_template or None
    self.add_bos = add_bos

  @property
  def backend(self) -> tokenizers.Tokenizer:
    """The wrapped ``tokenizers.Tokenizer`` (e.g. to save it)."""
    return self._tok

  @classmethod
  def load(
    cls,
    path: PathLike,
    *,
    pad_token: str | None = None,
    eos_token: str | None = None,
    bos_token: str | None = None,
  ) -> HFTokenizer:
    """Loads ``tokenizer.json`` (or a directory holding one).

    Special tokens come from the arguments, else from a ``tokenizer_config.json`` or
    ``special_tokens_map.json`` beside the file, else from common names (``</s>``,
    ``<|endoftext|>``, ...). EOS is required; pad falls back to EOS; BOS may be
    absent (-1).

    Args:
      path: the tokenizer.json file or its directory.
      pad_token: name of the padding token.
      eos_token: name of the end-of-sequence token.
      bos_token: name of the beginning-of-sequence token.
    """
    path = Path(path)
    if path.is_dir():
      path = path / "tokenizer.json"
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer.json not found: {path}")
    try:
      tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception
      raise ValueError(f"not a valid tokenizer.json: {path} ({e})") from e

    configured = _configured_specials(path.parent)
    explicit = {"pad": pad_token, "eos": eos_token, "bos": bos_token}

    def resolve(kind: str) -> int:
      name = explicit[kind] or configured.get(kind)
      if name is not None:
        i = tok.token_to_id(name)
        if i is None:
          raise ValueError(f"{kind} token {name!r} is not in the vocabulary of {path}")
        return i
      for candidate in _SPECIAL_CANDIDATES[kind]:
        i = tok.token_to_id(candidate)
        if i is not None:
          return i
      return -1

    eos_id = resolve("eos")
    if eos_id < 0:
      raise ValueError(f"cannot tell the EOS token of {path}; pass eos_token=...")
    pad_id = resolve("pad")
    return cls(
      tok,
      pad_id=eos_id if pad_id < 0 else pad_id,
      bos_id=resolve("bos"),
      eos_id=eos_id,
      path=str(path),
      chat_template=_configured_chat_template(path.parent),
      add_bos=_configured_add_bos(path.parent),
    )

  def encode(self, text: str) -> list[int]:
    if not isinstance(text, str):
      raise TypeError(f"encode expects str, got {type(text).__name__}")
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(_check_ids(ids, self.vocab_size), skip_special_tokens=False)

  def piece_to_id(self, piece: str) -> int:
    i = self._tok.token_to_id(piece)
    if i is None:
      raise KeyError(f"piece {piece!r} is not in the vocabulary")
    return i

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(_check_ids([i], self.vocab_size)[0])

  def __repr__(self) -> str:
    return f"HFTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: PathLike) -> Tokenizer:
  """Loads a tokenizer, picking the backend from the path.

  ``*.model`` -> SentencePiece; ``*.json`` or a directory with ``tokenizer.json`` ->
  HF tokenizers; a directory with only ``tokenizer.model`` -> SentencePiece.
  """
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no tokenizer at {path}")
  if path.is_dir():
    if (path / "tokenizer.json").is_file():
      return HFTokenizer.load(path / "tokenizer.json")
    if (path / "tokenizer.model").is_file():
      return SentencePieceTokenizer.load(path / "tokenizer.model")
    raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer.model")
  if path.suffix == ".model":
    return SentencePieceTokenizer.load(path)
  if path.suffix == ".json":
    return HFTokenizer.load(path)
  raise ValueError(f"unknown tokenizer file type {path.name!r}; expected *.model or *.json")
