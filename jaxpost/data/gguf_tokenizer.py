"""The byte-level BPE tokenizer stored in a GGUF file's metadata, as an ``HFTokenizer``.

llama.cpp keeps a GPT-2-style tokenizer (``tokenizer.ggml.model == "gpt2"``) as its
vocabulary (``tokens``, already in byte-level form: a space is ``Ġ``), its ``merges``,
a ``token_type`` per token (3 = control, 4 = user-defined: both are matched whole in
the input, like HF's added tokens), the special ids and the name of the
pre-tokenizer (``tokenizer.ggml.pre``) that splits text before BPE. We rebuild the
same ``tokenizers.Tokenizer`` a ``tokenizer.json`` would hold, so encoding runs in the
Rust library and export writes an ordinary ``tokenizer.json``.

Pre-tokenizers, by llama.cpp name: ``gpt2`` / ``default`` use the GPT-2 split;
``smollm`` (and the StarCoder family) first isolate every digit, as SmolLM2's own
``tokenizer.json`` does; ``qwen2`` and ``llama-bpe`` (Llama 3) use their own split
patterns (single digits and up-to-3-digit runs respectively) with NFC normalization
for Qwen2. Any other name is an error that names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers

from jaxpost.data.tokenizer import HFTokenizer

if TYPE_CHECKING:
  from jaxpost.models.gguf import GGUFFile

_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4

# Split patterns of the tokenizers llama.cpp names (the models' published regexes).
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
  r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
  r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS_FIRST = ("smollm", "starcoder", "refact", "codeshell")


def _pre_tokenizer(name: str, where: str):
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if name in ("gpt2", "default"):
    return byte_level
  if name in _DIGITS_FIRST:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  patterns = {"qwen2": _QWEN2_SPLIT, "llama-bpe": _LLAMA3_SPLIT}
  if name in patterns:
    split = pre_tokenizers.Split(tokenizers.Regex(patterns[name]), "isolated")
    return pre_tokenizers.Sequence(
      [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
  known = sorted(("gpt2", "default", "qwen2", "llama-bpe", *_DIGITS_FIRST))
  raise ValueError(f"{where}: unsupported pre-tokenizer {name!r}; supported: {known}")


def tokenizer_from_gguf(f: GGUFFile) -> HFTokenizer:
  """The tokenizer of an open GGUF file.

  Raises:
    GGUFError: not a byte-level BPE tokenizer, an unknown pre-tokenizer, or missing /
      inconsistent vocabulary metadata.
  """
  from jaxpost.models.gguf import GGUFError

  where = f.path.name
  kind = f.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise GGUFError(f"{where}: unsupported tokenizer model {kind!r} (only byte-level BPE, 'gpt2')")
  tokens = f.require("tokenizer.ggml.tokens")
  merges = f.require("tokenizer.ggml.merges")
  types = f.get("tokenizer.ggml.token_type") or [1] * len(tokens)
  if len(types) != len(tokens):
    raise GGUFError(f"{where}: {len(types)} token types for {len(tokens)} tokens")
  vocab = {}
  for i, t in enumerate(tokens):
    vocab.setdefault(t, i)  # a repeated piece keeps its first id, as llama.cpp does
  pairs = []
  for m in merges:
    left, sep, right = m.partition(" ")
    if not sep:
      raise GGUFError(f"{where}: malformed merge {m!r} (expected 'left right')")
    pairs.append((left, right))
  try:
    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
    pre = _pre_tokenizer(f.get("tokenizer.ggml.pre", "default"), where)
  except ValueError as e:
    raise GGUFError(str(e)) from e
  except Exception as e:  # the Rust side raises bare Exceptions (e.g. a merge not in vocab)
    raise GGUFError(f"{where}: inconsistent BPE vocabulary: {e}") from e
  tok = tokenizers.Tokenizer(bpe)
  if f.get("tokenizer.ggml.pre") == "qwen2":
    tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre
  tok.decoder = decoders.ByteLevel()
  added = [
    AddedToken(tokens[i], special=types[i] == _TOKEN_CONTROL, normalized=False)
    for i in range(len(tokens))
    if types[i] in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
  ]
  tok.add_special_tokens([t for t in added if t.special])
  tok.add_tokens([t for t in added if not t.special])

  def special(kind: str) -> int:
    i = f.get(f"tokenizer.ggml.{kind}_token_id")
    if i is None:
      return -1
    if not 0 <= int(i) < len(tokens):
      raise GGUFError(f"{where}: {kind}_token_id {i} is outside the vocabulary")
    return int(i)

  eos = special("eos")
  if eos < 0:
    raise GGUFError(f"{where}: no tokenizer.ggml.eos_token_id")
  pad = special("padding")
  return HFTokenizer(
    tok,
    pad_id=eos if pad < 0 else pad,
    bos_id=special("bos"),
    eos_id=eos,
    path=str(f.path),
    chat_template=f.get("tokenizer.chat_template"),
    add_bos=bool(f.get("tokenizer.ggml.add_bos_token", False)),
  )
