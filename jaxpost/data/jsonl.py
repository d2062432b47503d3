"""User data from JSON Lines files.

Each non-blank line is one record, either

    {"prompt": "...", "response": "<think>...</think>..."}   (think block optional)
    {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", ...}]}

Other keys (ids, sources, ...) are allowed and ignored. A malformed record is an error
naming the file and line; with ``skip_malformed=True`` it is skipped, counted, logged
and its error kept, so nothing disappears unreported.

Malformed also covers what JSON itself allows but is never meant: a key given twice in
one object (``json`` would silently keep the last), a NUL character or a lone surrogate
in a text field (SentencePiece cannot represent either), and a prompt or response with
no text at all (empty or whitespace only, including an empty think block and nothing
else). A blank prompt is rejected too: it leaves the model nothing to condition on and
almost always means a field was lost on export. A file that yields no example at all
(empty, or every record malformed) is an error naming the file, so it fails here and
not later inside tokenizer training.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from absl import logging

from jaxpost.data.template import Example, marked_pieces, render_messages, split_response


class DataError(ValueError):
  """A malformed data record (the message says where and what is wrong)."""


@dataclasses.dataclass
class ReadResult:
  """What `read_jsonl` read.

  Attributes:
    examples: the well-formed records, in file order.
    lines: the 1-based line of each example (parallel to ``examples``), so later checks
      (e.g. over-long examples) can name ``path:line``.
    skipped: number of malformed records skipped (only with ``skip_malformed``).
    errors: one message per skipped record.
  """

  examples: list[Example]
  lines: list[int] = dataclasses.field(default_factory=list)
  skipped: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
  """``object_pairs_hook`` for `json.loads`: a repeated key is an error, not last-wins."""
  out = {}
  for key, value in pairs:
    if key in out:
      raise ValueError(f"duplicate key {key!r} in a JSON object")
    out[key] = value
  return out


def text_error(value: str) -> str | None:
  """Why ``value`` cannot be training text (NUL, lone surrogate); None if it can.

  JSON escapes make both possible (``"\\u0000"``, ``"\\ud800"``). A lone surrogate
  cannot be UTF-8 encoded for the tokenizer; NUL is dropped by SentencePiece's trainer
  and in text data nearly always marks binary junk or a broken export.
  """
  if "\x00" in value:
    return f"contains a NUL character at offset {value.index(chr(0))}"
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    return f"contains a lone surrogate at offset {e.start} (not valid Unicode)"
  return None


def _check_text(name: str, value: str) -> None:
  error = text_error(value)
  if error is not None:
    raise ValueError(f"{name} {error}")


def record_to_example(record: object) -> Example:
  """Converts one decoded JSON record to an `Example`.

  Raises:
    ValueError: the record has the wrong shape, types, roles or think tags, a text
      field with a NUL or lone surrogate, or a blank (empty/whitespace-only) prompt or
      response. (Duplicate keys are caught by `read_jsonl`'s parser, before this.)
  """
  if not isinstance(record, Mapping):
    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
  has_chat = "messages" in record
  has_pair = "prompt" in record or "response" in record
  context: tuple[tuple[str, str], ...] = ()
  if has_chat and has_pair:
    raise ValueError("record has both 'messages' and 'prompt'/'response'; use one format")
  if has_chat:
    prompt, response = render_messages(record["messages"])
    for i, msg in enumerate(record["messages"]):
      _check_text(f"messages[{i}].content", msg["content"])
    user_text = "".join(m["content"] for m in record["messages"][:-1] if m["role"] == "user")
    if not user_text.strip():
      raise ValueError("empty prompt: no user message has any text (only whitespace)")
    # The turns before the answer, for a model with a chat template (template.encode_prompt);
    # a lone user turn is just the prompt.
    context = tuple((m["role"], m["content"]) for m in record["messages"][:-1])
    if len(context) == 1:
      context = ()
  elif has_pair:
    missing = [k for k in ("prompt", "response") if k not in record]
    if missing:
      raise ValueError(f"missing key {missing[0]!r}")
    prompt, response = record["prompt"], record["response"]
    for key, value in (("prompt", prompt), ("response", response)):
      if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
      _check_text(repr(key), value)
    if not prompt.strip():
      raise ValueError("empty prompt" + (" (whitespace only)" if prompt else ""))
  else:
    raise ValueError(f"expected keys 'prompt' and 'response', or 'messages'; got {sorted(record)}")
  if not response.strip():
    raise ValueError("empty response" + (" (whitespace only)" if response else ""))
  thinking, answer = split_response(response)
  if not (thinking + answer).strip():
    raise ValueError("empty response (an empty think block and no answer)")
  marks = _spans("marks", record.get("marks", []))
  observed = _spans("observed", record.get("observed", []))
  marked_pieces(thinking, marks, observed)  # sorted, disjoint, in the thinking: else ValueError
  return Example(prompt=prompt, thinking=thinking, answer=answer, context=context, marks=marks,
                 observed=observed)  # fmt: skip


def _spans(name: str, value) -> tuple[tuple[int, int], ...]:
  """A record's optional ``"marks"`` / ``"observed"``: [[start, end], ...] character
  spans of its thinking whose tokens are marked (``ROLE_MARKED``; e.g. CFT's critical
  tokens) / read but not written by the model (``ROLE_OBSERVED``: a tool's output)."""
  if not isinstance(value, list) or not all(
    isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m) for m in value
  ):
    raise ValueError(f"'{name}' must be a list of [start, end] integer pairs, got {value!r}")
  return tuple((m[0], m[1]) for m in value)


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
      file, the 1-based line number and the problem. Also when the file yields no
      example: it is empty (or blank), or every record was malformed and skipped (the
      message then has the count and the first error).
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
          record = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
          raise ValueError(f"invalid JSON: {e}") from e
        result.examples.append(record_to_example(record))
        result.lines.append(lineno)
      except ValueError as e:  # UnicodeDecodeError is a ValueError too
        message = f"{path}:{lineno}: {e}"
        if not skip_malformed:
          raise DataError(message) from e
        logging.warning("skipping malformed record: %s", message)
        result.skipped += 1
        result.errors.append(message)
  if not result.examples:
    raise DataError(_no_examples_message(path, result))
  return result


def _no_examples_message(path: Path, result: ReadResult) -> str:
  if result.skipped:
    return (
      f"{path}: every record is malformed ({result.skipped} skipped under "
      f"data.skip_malformed), so there is nothing to train on; the first: {result.errors[0]}"
    )
  return f"{path}: no records (the file is empty or has only blank lines)"
