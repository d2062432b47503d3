"""From config to a stateless example source: tokenizer, task mixture or user data.

A source maps a global example index to ``(tokens, roles)``; the packer reads it in
order, so the data position of a run is one integer. Procedural tasks are an unbounded
stream by index; finite datasets (JSONL, Parquet, Arrow, tfds) are read in a fresh
seeded permutation per epoch.

Data errors surface before anything expensive: an empty dataset fails in the reader,
and with ``data.overlong='error'`` an over-long example fails twice over early, first
by a lower bound on its token count before a tokenizer is trained (`TokenBound`), then
exactly once the tokenizer exists and before the model is built (`check_overlong`),
each time naming the example's place (``file.jsonl:17``, ``name[split][i]``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import unicodedata
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from jaxpost.data import corrupt, sources, tasks, template
from jaxpost.data.jsonl import DataError
from jaxpost.data.packing import ExampleSource, OverlongError, PlacedSource, overlong_message
from jaxpost.data.tokenizer import (
  DEFAULT_SPECIAL_TOKENS,
  SentencePieceTokenizer,
  Tokenizer,
  load_tokenizer,
)

TOKENIZER_PREFIX = "tokenizer"


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A finite user dataset: its examples and where each one came from.

  Attributes:
    examples: random-access Examples (a list for JSONL, a lazy view for tfds).
    where: index -> the example's place, ``path:line`` or ``name[split][index]``.
    skipped: malformed records dropped under ``data.skip_malformed``.
    group: examples per record, adjacent (pairs: 2; negatives: 1 + the pool size).
    units: example -> the record it came from, when one record gives several examples
      that must be held out together (an agent trajectory's turns); None = each
      example its own.
  """

  examples: Sequence[template.Example]
  where: Callable[[int], str]
  skipped: int = 0
  group: int = 1
  units: Sequence[int] | None = None

  def __len__(self) -> int:
    return len(self.examples)


def prepare_tokenizer(config, workdir: str) -> Tokenizer:
  """Loads ``tokenizer.path``, or the one a previous run trained in ``workdir``, or trains one.

  A trained tokenizer is saved in the workdir so that resuming (and evaluating) a
  run uses exactly the same vocabulary.
  """
  if config.tokenizer.path:  # a file, a directory holding one, a run / zoo:NAME's, a GGUF's
    from jaxpost import zoo
    from jaxpost.models import gguf

    path = config.tokenizer.path
    if path in gguf.PACKAGED or path.endswith(".gguf"):  # e.g. a student of SmolLM2's ids
      return gguf.load_tokenizer(path)
    return load_tokenizer(zoo.resolve(path))
  if config.model.hf_dir:
    # A pretrained checkpoint comes with its own vocabulary.
    return load_tokenizer(config.model.hf_dir)
  if config.model.gguf:
    from jaxpost.models import gguf

    return gguf.load_tokenizer(config.model.gguf)
  prefix = os.path.join(workdir, TOKENIZER_PREFIX)
  if os.path.exists(prefix + ".model"):
    return SentencePieceTokenizer.load(prefix + ".model")
  os.makedirs(workdir, exist_ok=True)
  texts = _tokenizer_corpus(config)
  if not sources.get(config.data.source).generated and config.data.overlong == "error":
    # Hopeless examples fail now, not after training the tokenizer and building the model.
    bound = TokenBound.for_training(texts, byte_fallback=config.tokenizer.byte_fallback)
    check_overlong_bound(load_dataset(config), bound, config.data.seq_len)
  logging.info("training a %d-piece sentencepiece tokenizer", config.tokenizer.vocab_size)
  return SentencePieceTokenizer.train(
    texts,
    prefix,
    vocab_size=config.tokenizer.vocab_size,
    byte_fallback=config.tokenizer.byte_fallback,
  )


def _tokenizer_corpus(config) -> list[str]:
  n = config.tokenizer.train_examples
  if sources.get(config.data.source).generated:
    # Every shipped level, so evaluation on unseen levels is never out of vocabulary,
    # and the prompt tags.
    tags = [template.render_prompt(t) for t in config.data.prompt_tags]
    return list(tasks.training_corpus(tuple(tasks.LEVELS), n, config.seed)) + tags
  examples = load_examples(config)
  return [
    template.render_prompt(ex.prompt) + template.render_response(ex)
    for ex in examples[: min(n, len(examples))]
  ]


# The generated sources (from data.levels) and those whose rows say their example.
TASK_SOURCES = sources.generated()
KEYED_SOURCES = sources.keyed()
# The held-out fraction is drawn with this seed, not the run's: runs of a sweep that
# differ only in their seed evaluate on the same examples.
HELDOUT_SEED = 0


def load_examples(config, counts: dict | None = None) -> Sequence[template.Example]:
  """The user dataset of ``config.data`` as a random-access sequence of Examples.

  See `load_dataset`, which also says where each example came from.
  """
  return load_dataset(config, counts).examples


def load_dataset(config, counts: dict | None = None) -> Dataset:
  """The training part of the user dataset of ``config.data``, with each example's place.

  ``data.eval_fraction`` > 0 holds that fraction out (`heldout_dataset`); the rest is
  returned. ``counts``, if given, receives ``data/skipped_malformed`` (records dropped
  under ``data.skip_malformed``) so the caller can record it. The last datasets read
  are kept (keyed by their path's size and modification time), so training a tokenizer
  on one and then building the training source reads it once.

  Raises:
    DataError: a malformed record (unless skipped), or no examples at all.
  """
  d = config.data
  dataset = _load(d.source, d.path, d.split, d.skip_malformed)
  if counts is not None and d.source != "tfds":
    counts["data/skipped_malformed"] = dataset.skipped
  if d.eval_fraction:
    return split_heldout(dataset, d.eval_fraction)[0]
  return dataset


def heldout_dataset(config) -> Dataset | None:
  """The held-out user examples ``config.data`` names, or None when it names none.

  ``data.eval_fraction`` of ``data.path`` (a fixed seeded draw), or the examples of
  ``data.eval_path`` (default ``data.path``) at ``data.eval_split`` (default
  ``data.split``; tfds and arrow sources), read with the training data's rules.
  """
  d = config.data
  if d.eval_fraction:
    return split_heldout(_load(d.source, d.path, d.split, d.skip_malformed), d.eval_fraction)[1]
  if d.eval_path or d.eval_split:
    return _load(d.source, d.eval_path or d.path, d.eval_split or d.split, d.skip_malformed)
  return None


class _Subset(Sequence):
  """Some examples of a random-access sequence, by index (lazy: tfds views stay lazy)."""

  def __init__(self, examples: Sequence[template.Example], indices: np.ndarray):
    self._examples, self._indices = examples, indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    return self._examples[int(self._indices[i])]


def split_heldout(dataset: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
  """(training part, held-out part): ``round(fraction * n)`` of the n units (examples,
  or with ``dataset.units`` the records they came from, whole) drawn with
  `HELDOUT_SEED`, both parts in the original order.

  Raises:
    DataError: the held-out part would leave no training example.
  """
  units = np.arange(len(dataset)) if dataset.units is None else np.asarray(dataset.units)
  ids = np.unique(units)
  k = max(1, round(fraction * len(ids)))
  if k >= len(ids):
    what = "examples" if dataset.units is None else "records"
    raise DataError(
      f"data.eval_fraction={fraction} of {len(ids)} {what} leaves none to train on; lower it"
    )
  held = np.isin(units, np.random.default_rng(HELDOUT_SEED).permutation(ids)[:k])

  def part(indices: np.ndarray, skipped: int = 0) -> Dataset:
    where = lambda i: dataset.where(int(indices[i]))  # noqa: E731 (a place per index)
    return Dataset(_Subset(dataset.examples, indices), where, skipped)

  return part(np.flatnonzero(~held), dataset.skipped), part(np.flatnonzero(held))


def _load(source: str, path: str, split: str, skip_malformed: bool) -> Dataset:
  if sources.get(source).generated:
    raise ValueError(f"data.source={source!r} has no example list")
  return _read_dataset(source, path, split, skip_malformed, _version(path))


def _version(path: str) -> tuple | None:
  """What changes when the data at ``path`` changes: size and mtime of the file, or of
  every file under a directory. None for a missing path (the reader reports it) or a
  tfds name."""
  if os.path.isfile(path):
    stat = os.stat(path)
    return (stat.st_size, stat.st_mtime_ns)
  if not os.path.isdir(path):
    return None
  out = []
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      stat = os.stat(os.path.join(root, name), follow_symlinks=False)
      out.append((os.path.join(root, name), stat.st_size, stat.st_mtime_ns))
  return tuple(out)


@functools.lru_cache(maxsize=2)
def _read_dataset(
  source: str, path: str, split: str, skip_malformed: bool, version: tuple
) -> Dataset:
  """One dataset, read; ``version`` only keys the cache."""
  del version
  return sources.get(source).read(path, split, skip_malformed)


# ------------------------------------------------------------------ over-long examples

# A SentencePiece piece is at most max_sentencepiece_length characters (Unicode code
# points of the normalized text). SentencePieceTokenizer.train leaves it at
# SentencePiece's default, 16, and normalizes nothing ("identity": one character in,
# one character out; a space becomes one U+2581), so no token covers more than 16
# characters of the text (tested against trained models).
MAX_PIECE_CHARS = 16
# Names the trainer treats as meta pieces: it blanks them out of the corpus before it
# counts characters, so characters seen only inside them get no piece of their own.
_META_PIECES = ("<unk>", "<s>", "</s>", "<pad>", *DEFAULT_SPECIAL_TOKENS)
_TRAINER_MAX_SENTENCE_BYTES = 1 << 24  # SentencePieceTokenizer.train's max_sentence_length
_RESERVED_UNK_CHAR = "\u2585"  # the trainer skips corpus texts that contain it
_SPACE_PIECE_CHAR = "\u2581"
# The trainer's character coverage test runs in float32: with coverage 1.0 a character
# whose count is below ~2^-25 of all characters can still be left out of the alphabet.
# Only characters above this (much larger) share are assumed to have a piece.
_SAFE_CHAR_SHARE = 2.0**-20


def _may_have_piece(c: str) -> bool:
  """False for characters SentencePiece never gives a piece (tab, NUL, controls, ...)."""
  if c in ("\t", "\x00", _RESERVED_UNK_CHAR):
    return False
  return c == "\n" or not unicodedata.category(c).startswith("C")


@dataclasses.dataclass(frozen=True)
class TokenBound:
  """A lower bound on token counts under a SentencePiece model not yet trained.

  Every token of a model trained by `SentencePieceTokenizer.train` is one of: a learned
  piece (at most `MAX_PIECE_CHARS` known characters), a special token (one string of
  at most 16 characters), a byte piece (part of one character), or ``<unk>``, which
  stands for a run of characters without a piece and may be arbitrarily long. So with
  byte fallback (no ``<unk>``) a text of n characters has at least ceil(n / 16)
  tokens; without it, only characters certain to have a piece count, and those are the
  characters of the training corpus itself (coverage 1.0 puts every one of them in the
  alphabet), less those the trainer drops (see `_may_have_piece`, `_SAFE_CHAR_SHARE`).
  Counting fewer characters only lowers the bound, so it stays a bound.

  Attributes:
    known: characters certain to have a piece, or None for "every character counts"
      (byte fallback).
  """

  known: frozenset[str] | None

  @classmethod
  def for_training(cls, texts: Iterable[str], *, byte_fallback: bool) -> TokenBound:
    """The bound for a model about to be trained on ``texts`` (see the class doc)."""
    if byte_fallback:
      return cls(known=None)
    counts = collections.Counter()
    for text in texts:
      too_long = len(text) * 4 > _TRAINER_MAX_SENTENCE_BYTES and (
        len(text.encode("utf-8", "replace")) > _TRAINER_MAX_SENTENCE_BYTES
      )
      if too_long or _RESERVED_UNK_CHAR in text:
        continue  # the trainer skips the whole text
      for meta in _META_PIECES:
        text = text.replace(meta, "\t")
      counts.update(text)
    counts[_SPACE_PIECE_CHAR] += counts.pop(" ", 0)  # the normalizer maps " " to U+2581
    floor = _SAFE_CHAR_SHARE * sum(counts.values())
    known = {c for c, n in counts.items() if n >= floor and _may_have_piece(c)}
    if _SPACE_PIECE_CHAR in known:
      known.add(" ")
    return cls(known=frozenset(known))

  def text(self, text: str) -> int:
    """At most the number of tokens ``text`` encodes to."""
    if self.known is None or set(text) <= self.known:
      n = len(text)
    else:
      n = sum(map(self.known.__contains__, text))
    return -(-n // MAX_PIECE_CHARS)

  def example(self, ex: template.Example) -> int:
    """At most ``len(template.encode_example(tok, ex))`` (no BOS, with EOS)."""
    # Spans are encoded separately (template.encode_example); the two think tags are
    # one token each and EOS is one more.
    spans = (template.render_prompt(ex.prompt), ex.thinking, ex.answer)
    return sum(self.text(span) for span in spans) + 3


def _raise_first_overlong(dataset: Dataset, lengths, seq_len: int, *, bound: bool) -> None:
  """OverlongError naming the first example longer than ``seq_len`` (and how many are)."""
  lengths = np.asarray(lengths, np.int64)
  over = np.flatnonzero(lengths > seq_len)
  if len(over) == 0:
    return
  first = int(over[0])
  note = f"{len(over)} of {len(dataset)} examples are over-long"
  if bound:
    note += "; found by a lower bound, before training the tokenizer"
  raise OverlongError(
    overlong_message(dataset.where(first), int(lengths[first]), seq_len, note=note, at_least=bound)
  )


def check_overlong_bound(dataset: Dataset, bound: TokenBound, seq_len: int) -> None:
  """Fails on an example that cannot fit in ``seq_len`` whatever the tokenizer learns.

  Raises:
    OverlongError: (a `DataError`) naming the first such example's place.
  """
  by_length = TokenBound(known=None)  # >= any bound, and cheap: lengths only
  lengths = []
  for ex in dataset.examples:
    n = by_length.example(ex)
    lengths.append(n if n <= seq_len else bound.example(ex))
  _raise_first_overlong(dataset, lengths, seq_len, bound=True)


def encoded_length(tok: Tokenizer, ex: template.Example) -> int:
  """``len(template.encode_example(tok, ex))`` (what the training source yields), faster."""
  fixed = len(tok.encode(template.THINK_OPEN)) + len(tok.encode(template.THINK_CLOSE)) + 1
  prompt = len(template.encode_prompt(tok, ex.prompt, context=ex.context))
  return fixed + prompt + sum(len(tok.encode(span)) for span in (ex.thinking, ex.answer))


def check_overlong(dataset: Dataset, tok: Tokenizer, seq_len: int) -> None:
  """Encodes every example once and fails on the first one longer than ``seq_len``.

  For ``data.overlong='error'``: run before the model is built, so the error comes in
  seconds rather than at the training step that first reads the example.

  Raises:
    OverlongError: (a `DataError`) naming the first over-long example's place, its
      length and the number of over-long examples.
  """
  lengths = [encoded_length(tok, ex) for ex in dataset.examples]
  _raise_first_overlong(dataset, lengths, seq_len, bound=False)


def _encoded(tok: Tokenizer, ex: template.Example) -> tuple[np.ndarray, np.ndarray]:
  enc = template.encode_example(tok, ex)
  return enc.tokens, enc.roles


def check_prompt_tags(tags) -> None:
  """``data.prompt_tags``: a tuple (or list) of non-empty strings."""
  if not isinstance(tags, tuple | list) or not all(isinstance(t, str) and t for t in tags):
    raise ValueError(f"got {tags!r}")


def tagged(example: template.Example, index: int, tags: Sequence[str]) -> template.Example:
  """``example`` with tag ``index mod K`` before its prompt (no tags: unchanged)."""
  if not tags:
    return example
  return dataclasses.replace(example, prompt=tags[index % len(tags)] + example.prompt)


def task_source(
  levels: dict[str, float],
  tok: Tokenizer,
  seed: int,
  tags: Sequence[str] = (),
  corruptions: dict[str, float] | None = None,
) -> ExampleSource:
  """index -> encoded problem from a weighted mixture of task levels (train split), its
  prompt tagged with ``tags[index mod K]`` (``tagged``) and its trace corrupted as
  ``corruptions`` say (``corrupt.corrupt``: {kind: fraction}, marked tokens).

  Its place names the problem's level and index, which is all `tasks.make_problem`
  needs to regenerate it.
  """
  mix = tasks.mixture(levels, "train", seed)
  return PlacedSource(
    lambda index: _encoded(
      tok, corrupt.corrupt(tagged(mix(index).example, index, tags), index, corruptions, seed)
    ),
    lambda index: f"task example {index} (level {mix.level_at(index)!r})",
  )


def dataset_source(
  examples, tok: Tokenizer, seed: int, where: Callable[[int], str] | None = None
) -> ExampleSource:
  """index -> encoded example, one seeded permutation per epoch.

  ``where`` (example -> place, e.g. `Dataset.where`) lets errors name the example's
  place instead of its source index.
  """
  n = len(examples)
  if n == 0:
    raise DataError("the dataset has no examples")
  perms: dict[int, np.ndarray] = {}

  def example_at(index: int) -> int:
    epoch, offset = divmod(index, n)
    if epoch not in perms:
      perms.clear()  # only the current epoch is ever needed again
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    return int(perms[epoch][offset])

  def source(index: int):
    return _encoded(tok, examples[example_at(index)])

  if where is None:
    return source
  return PlacedSource(source, lambda index: where(example_at(index)))


def build_source(
  config, tok: Tokenizer, counts: dict | None = None
) -> tuple[ExampleSource, int | None]:
  """The training example source of ``config``, and the dataset size (None if unbounded).

  ``counts``, if given, receives the data counts to record (see `load_dataset`). With
  ``data.overlong='error'`` every example of a finite dataset is encoded once here
  (`check_overlong`), so an over-long one fails before the model is built. With
  ``data.masked_copy`` a fraction of the examples become demasking examples
  (`masked_copy.wrap`; their length is checked when packed).

  Raises:
    DataError: see `load_dataset`; `OverlongError` from `check_overlong`.
  """
  source, size = _base_source(config, tok, counts)
  if config.data.masked_copy:
    from jaxpost.data import masked_copy, masked_thought

    source = masked_copy.wrap(
      source,
      config.data.masked_copy,
      tuple(config.data.masked_copy_ratio),
      masked_thought.mask_token(tok),
      config.seed,
    )
  return source, size


def _base_source(config, tok: Tokenizer, counts: dict | None) -> tuple[ExampleSource, int | None]:
  spec = sources.get(config.data.source)
  if config.data.corrupt and config.data.source != "tasks":
    raise DataError(f"data.corrupt acts on the tasks source, not {config.data.source!r}")
  if spec.generated:
    return spec.build(config, tok, None)
  dataset = load_dataset(config, counts)
  if config.data.overlong == "error":
    check_overlong(dataset, tok, config.data.seq_len)
  return spec.build(config, tok, dataset)
