"""User data from JSON Lines files.

Each non-blank line is one record, either

    {"prompt": "...", "response": "<think>...</think>..."}   (think block optional)
    {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", ...}]}

Other keys (ids, sources, ...) are allowed and ignored. A malformed record is an error
naming the file and line; with ``skip_malformed=True`` it is skipped, counted, logged
and its error kept, so nothing disappears unreported.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from absl import logging

from jaxpost.data.template import Example, render_messages, split_response


class DataError(ValueError):
  """A malformed data record (the message says where and what is wrong)."""


@dataclasses.dataclass
class ReadResult:
  """What `read_jsonl` read.

  Attributes:
    examples: the well-formed records, in file order.
    skipped: number of malformed records skipped (only with ``skip_malformed``).
    errors: one message per skipped record.
  """

  examples: list[Example]
  skipped: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)


def record_to_example(record: object) -> Example:
  """Converts one decoded JSON record to an `Example`.

  Raises:
    ValueError: the record has the wrong shape, types, roles or think tags.
  """
  if not isinstance(record, Mapping):
    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
  has_chat = "messages" in record
  has_pair = "prompt" in record or "response" in record
  if has_chat and has_pair:
    raise ValueError("record has both 'messages' and 'prompt'/'response'; use one format")
  if has_chat:
    prompt, response = render_messages(record["messages"])
  elif has_pair:
    missing = [k for k in ("prompt", "response") if k not in record]
    if missing:
      raise ValueError(f"missing key {missing[0]!r}")
    prompt, response = record["prompt"], record["response"]
    for key, value in (("prompt", prompt), ("response", response)):
      if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
  else:
    raise ValueError(f"expected keys 'prompt' and 'response', or 'messages'; got {sorted(record)}")
  if not response:
    raise ValueError("empty response")
  thinking, answer = split_response(response)
  return Example(prompt=prompt, thinking=thinking, answer=answer)


def read_jsonl(path: str | os.PathLike, *, skip_malformed: bool = False) -> ReadResult:
  """Reads prompt/response or chat records from a JSON Lines file.

  Args:
    path: the ``.jsonl`` file (UTF-8).
    skip_malformed: skip (and report in the result) malformed records instead of
      raising.

  Returns:
    A `ReadResult`.

  Raises:
    FileNotFoundError: no such file.
    DataError: a malformed record, unless ``skip_malformed``; the message names the
      file, the 1-based line number and the problem.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"JSONL file not found: {path}")
  result = ReadResult(examples=[])
  # Bytes, decoded line by line, so one bad line is reported as that line.
  with path.open("rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
        if lineno == 1:
          line = line.removeprefix("\ufeff")  # tolerate a UTF-8 byte-order mark
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"invalid JSON: {e}") from e
        result.examples.append(record_to_example(record))
      except ValueError as e:  # UnicodeDecodeError is a ValueError too
        message = f"{path}:{lineno}: {e}"
        if not skip_malformed:
          raise DataError(message) from e
        logging.warning("skipping malformed record: %s", message)
        result.skipped += 1
        result.errors.append(message)
  return result
