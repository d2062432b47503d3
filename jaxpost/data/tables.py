"""User data from columnar files: Parquet, and directories written by Hugging Face
``datasets``' ``save_to_disk`` (Arrow).

Rows hold the same records as JSONL lines (`jaxpost.data.jsonl`): columns ``prompt`` and
``response``, or ``messages`` (a list of ``{role, content}`` structs); other columns are
ignored. A null cell counts as an absent key, so one file may mix both formats. The same
rules apply as for JSONL: a malformed row is an error naming its file and row (0-based,
as ``datasets`` and pyarrow count), or with ``skip_malformed`` it is skipped, counted
and its error kept; a source that yields no example at all is an error.

Accepted paths:
  parquet  a ``.parquet`` file, or a directory searched recursively for ``*.parquet``
           (files in sorted path order, as the Hugging Face Hub lays out a split);
  arrow    a ``save_to_disk`` directory of one ``Dataset`` (``state.json`` lists its
           Arrow files) or of a ``DatasetDict`` (``dataset_dict.json``; the split is
           chosen by ``data.split``).
pyarrow reads both; the ``datasets`` package is not needed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from absl import logging

from jaxpost.data.jsonl import DataError, record_to_example
from jaxpost.data.template import Example

TABLE_SOURCES = ("parquet", "arrow")


@dataclasses.dataclass
class TableRead:
  """What `read_table` read.

  Attributes:
    examples: the well-formed rows, in file order.
    places: where each example came from (``file.parquet[row 17]``), parallel to it.
    skipped: malformed rows skipped (only with ``skip_malformed``).
    errors: one message per skipped row.
  """

  examples: list[Example]
  places: list[str]
  skipped: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)


def parquet_files(path: Path) -> list[Path]:
  """The Parquet files of ``path`` (itself, or those under a directory, sorted)."""
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"Parquet file or directory not found: {path}")
  files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
  if not files:
    raise DataError(f"{path}: no *.parquet files in this directory")
  return files


def arrow_files(path: Path, split: str) -> list[Path]:
  """The Arrow files of a ``save_to_disk`` directory (``split`` picks a DatasetDict's)."""
  if not path.is_dir():
    raise FileNotFoundError(f"save_to_disk directory not found: {path}")
  splits_file = path / "dataset_dict.json"
  if splits_file.is_file():
    splits = _json(splits_file).get("splits", [])
    if split not in splits:
      raise DataError(f"{path}: no split {split!r} (data.split); it has {', '.join(splits)}")
    path = path / split
  state_file = path / "state.json"
  if not state_file.is_file():
    raise DataError(
      f"{path}: not a datasets save_to_disk directory (no state.json or dataset_dict.json)"
    )
  names = [entry["filename"] for entry in _json(state_file).get("_data_files", [])]
  missing = [n for n in names if not (path / n).is_file()]
  if missing:
    raise DataError(f"{path}: state.json lists Arrow files that are missing: {missing}")
  return [path / n for n in names]


def _json(path: Path) -> dict:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"cannot read {path}: {e}") from e


def _rows(kind: str, files: list[Path]) -> Iterator[tuple[str, dict]]:
  """(place, row) of every row of ``files``, streamed a record batch at a time."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  for file in files:
    try:
      if kind == "parquet":
        batches = pq.ParquetFile(file).iter_batches(batch_size=4096)
      else:  # save_to_disk writes the Arrow IPC stream format
        batches = iter(pa.ipc.open_stream(pa.memory_map(str(file), "r")))
      row = 0
      for batch in batches:
        for record in batch.to_pylist():
          yield f"{file}[row {row}]", record
          row += 1
    except (OSError, pa.ArrowException) as e:
      raise DataError(f"{file}: cannot read it as {kind}: {e}") from e


def read_table(
  kind: str, path: str, *, split: str = "train", skip_malformed: bool = False
) -> TableRead:
  """Reads prompt/response or chat rows from a Parquet file/directory or an Arrow dataset.

  Args:
    kind: "parquet" or "arrow" (see the module docstring).
    path: the file or directory.
    split: a ``DatasetDict``'s split (arrow only).
    skip_malformed: skip (and report in the result) malformed rows instead of raising.

  Raises:
    FileNotFoundError: no such path.
    DataError: a malformed row (unless skipped), naming the file and row; an unreadable
      file; no example at all.
  """
  if kind not in TABLE_SOURCES:
    raise ValueError(f"kind={kind!r}; expected one of {TABLE_SOURCES}")
  root = Path(path)
  files = parquet_files(root) if kind == "parquet" else arrow_files(root, split)
  result = TableRead(examples=[], places=[])
  for place, row in _rows(kind, files):
    try:
      # A null cell is an absent key: a table holding both formats has nulls in the
      # other format's columns.
      result.examples.append(record_to_example({k: v for k, v in row.items() if v is not None}))
      result.places.append(place)
    except (ValueError, TypeError, KeyError) as e:
      message = f"{place}: {e}"
      if not skip_malformed:
        raise DataError(message) from e
      logging.warning("skipping malformed row: %s", message)
      result.skipped += 1
      result.errors.append(message)
  if not result.examples:
    if result.skipped:
      raise DataError(
        f"{path}: every row is malformed ({result.skipped} skipped under "
        f"data.skip_malformed); the first: {result.errors[0]}"
      )
    raise DataError(f"{path}: no rows")
  return result
