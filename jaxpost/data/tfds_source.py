"""Random-access TFDS datasets (array_record files) without TensorFlow.

`read_tfds` goes through ``tfds.data_source`` / ``as_data_source``, which read
array_record shards with pure-Python/C++ readers; TensorFlow is never imported.
Datasets must have been prepared with ``file_format="array_record"``; nothing is
downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import overload

from jaxpost.data.jsonl import DataError, text_error
from jaxpost.data.template import Example, split_response


def _to_str(value: object, key: str, where: str) -> str:
  if isinstance(value, bytes):  # tfds.features.Text decodes to bytes
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{where}: feature {key!r} is not valid UTF-8 ({e})") from e
  if isinstance(value, str):
    return value
  raise DataError(f"{where}: feature {key!r} is {type(value).__name__}, expected text")


class TfdsExamples(Sequence[Example]):
  """A lazily decoded, random-access view of a TFDS split as `Example` s.

  Records are decoded on access; a malformed record (bad think tags, a NUL character,
  an empty or whitespace-only prompt or response, as for JSONL) raises `DataError`
  naming the dataset, split and index (`where`).
  """

  def __init__(
    self,
    source,
    *,
    name: str,
    split: str,
    prompt_key: str,
    response_key: str,
    thinking_key: str | None,
  ):
    self._source = source
    self._name = name
    self._split = split
    self._prompt_key = prompt_key
    self._response_key = response_key
    self._thinking_key = thinking_key

  def __len__(self) -> int:
    return len(self._source)

  @overload
  def __getitem__(self, index: int) -> Example: ...

  @overload
  def __getitem__(self, index: slice) -> list[Example]: ...

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    n = len(self)
    i = index + n if index < 0 else index
    if not 0 <= i < n:
      raise IndexError(f"index {index} out of range for {n} examples")
    return self._decode(self._source[i], i)

  def where(self, index: int) -> str:
    """Where record ``index`` lives, for error messages: ``name[split][index]``."""
    return f"{self._name}[{self._split}][{index}]"

  def _decode(self, record: Mapping[str, object], i: int) -> Example:
    example = self._to_example(record, self.where(i))
    _check_example(example, self.where(i))
    return example

  def _to_example(self, record: Mapping[str, object], where: str) -> Example:
    prompt = _to_str(record[self._prompt_key], self._prompt_key, where)
    response = _to_str(record[self._response_key], self._response_key, where)
    if self._thinking_key is not None:
      # Reasoning stored separately: the response field is the bare answer.
      thinking = _to_str(record[self._thinking_key], self._thinking_key, where)
      return Example(prompt=prompt, thinking=thinking, answer=response)
    try:
      thinking, answer = split_response(response)
    except ValueError as e:
      raise DataError(f"{where}: {e}") from e
    return Example(prompt=prompt, thinking=thinking, answer=answer)

  def __repr__(self) -> str:
    return f"TfdsExamples({self._name!r}, split={self._split!r}, len={len(self)})"


def _check_example(ex: Example, where: str) -> None:
  """The text rules `jaxpost.data.jsonl` applies to records, with ``where`` in the error."""
  for name, text in (("prompt", ex.prompt), ("thinking", ex.thinking), ("answer", ex.answer)):
    error = text_error(text)
    if error is not None:
      raise DataError(f"{where}: {name} {error}")
  if not ex.prompt.strip():
    raise DataError(f"{where}: empty prompt (empty or whitespace only)")
  if not (ex.thinking + ex.answer).strip():
    raise DataError(f"{where}: empty response (empty or whitespace only)")


def _open_source(name_or_dir: str, split: str, data_dir: str | None):
  """The tfds data source for a prepared dataset directory or a registered name."""
  import tensorflow_datasets as tfds  # slow import, only when TFDS data is read

  path = Path(name_or_dir)
  if path.is_dir() and not (path / "dataset_info.json").is_file():
    raise FileNotFoundError(
      f"{path} is a directory without dataset_info.json; pass the prepared version "
      "directory (e.g. .../my_dataset/1.0.0) or a dataset name with data_dir"
    )
  try:
    if path.is_dir():
      return tfds.builder_from_directory(str(path)).as_data_source(split=split)
    return tfds.data_source(
      name_or_dir, split=split, data_dir=data_dir, download=False, try_gcs=False
    )
  except Exception as e:  # tfds raises assorted types for missing/unsupported data
    raise DataError(
      f"cannot open TFDS dataset {name_or_dir!r} split {split!r} (data_dir={data_dir!r}): "
      f"{e}. It must be prepared locally with file_format='array_record'."
    ) from e


def read_tfds(
  name_or_dir: str | os.PathLike,
  split: str,
  *,
  prompt_key: str = "prompt",
  response_key: str = "response",
  thinking_key: str | None = None,
  data_dir: str | os.PathLike | None = None,
) -> TfdsExamples:
  """Opens a TFDS split as a random-access sequence of `Example` s.

  Args:
    name_or_dir: a prepared dataset version directory (holding dataset_info.json), or
      a dataset name (optionally "name/config:version") looked up under ``data_dir``.
    split: split name, e.g. "train" or "test[:100]".
    prompt_key: text feature holding the prompt.
    response_key: text feature holding the response (a think block in it is split
      off), or the bare answer when ``thinking_key`` is given.
    thinking_key: optional text feature holding the reasoning separately.
    data_dir: TFDS data directory for the name lookup.

  Returns:
    A `TfdsExamples` sequence (``len`` and indexing).

  Raises:
    DataError: the dataset cannot be opened or lacks the requested features.
  """
  name_or_dir = os.fspath(name_or_dir)
  data_dir = None if data_dir is None else os.fspath(data_dir)
  source = _open_source(name_or_dir, split, data_dir)
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  if features is not None:
    wanted = [k for k in (prompt_key, response_key, thinking_key) if k is not None]
    missing = [k for k in wanted if k not in features]
    if missing:
      raise DataError(
        f"TFDS dataset {name_or_dir!r} lacks features {missing}; it has {sorted(features)}"
      )
  return TfdsExamples(
    source,
    name=name_or_dir,
    split=split,
    prompt_key=prompt_key,
    response_key=response_key,
    thinking_key=thinking_key,
  )
