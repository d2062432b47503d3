"""Fuzz (hypothesis): hostile config overrides and JSONL records end in the documented
errors only, never a traceback of another kind.

* config: any field (or a misspelt one) set to any value of any type -> ``set_field`` and
  ``validate`` either pass or raise ``ConfigError``;
* data: any line of bytes, any JSON value, records with random keys and values ->
  ``read_jsonl`` returns examples or raises ``DataError``; with ``skip_malformed`` every
  bad line is skipped and counted, and only a dataset left empty raises.
"""

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxpost import config_lib
from jaxpost.data import DataError, read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPECS = ("configs/sft.py:tiny", "configs/grpo.py:tiny")
_CONFIGS = {s: config_lib.load_config(os.path.join(REPO, s)) for s in _SPECS}
_FIELDS = sorted({(s, f) for s, c in _CONFIGS.items() for f, _ in config_lib.leaves(c)})

_scalars = st.one_of(
  st.none(),
  st.booleans(),
  st.integers(-(10**12), 10**12),
  st.floats(allow_nan=True, allow_infinity=True),
  st.text(max_size=20),
)
_values = st.one_of(_scalars, st.tuples(_scalars, _scalars), st.lists(_scalars, max_size=3))


def _mangle(field: str, how: int) -> str:
  """The field, or a misspelling of it (a typo'd key, a wrong section)."""
  if how == 1:
    return field + "x"
  if how == 2:
    return "x" + field
  if how == 3:
    return field.replace(".", "_", 1)
  return field


@settings(max_examples=1000, deadline=None)
@given(
  target=st.sampled_from(_FIELDS),
  how=st.sampled_from([0, 0, 0, 1, 2, 3]),
  value=_values,
)
def test_config_overrides_fail_only_with_config_errors(target, how, value):
  spec, field = target
  c = config_lib.load_config(os.path.join(REPO, spec))
  try:
    config_lib.set_field(c, _mangle(field, how), value)
    config_lib.validate(c)
  except config_lib.ConfigError as e:
    assert str(e) and "\n" not in str(e)


_json_values = st.recursive(
  _scalars,
  lambda inner: (
    st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
  ),
  max_leaves=6,
)
_text = st.text(st.characters(codec="utf-8"), max_size=40)
_records = st.one_of(
  st.fixed_dictionaries({"prompt": _text, "response": _text}),
  st.fixed_dictionaries(
    {
      "messages": st.lists(
        st.fixed_dictionaries(
          {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]), "content": _text}
        ),
        max_size=4,
      )
    }
  ),
  st.dictionaries(st.sampled_from(["prompt", "response", "messages", "id"]), _json_values),
  _json_values,
)


def _line(kind: int, record, raw: bytes) -> bytes:
  if kind == 0:
    return json.dumps(record).encode() + b"\n"
  if kind == 1:
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
  if kind == 2:  # a record with a key repeated
    body = json.dumps(record)
    if body.startswith("{") and len(body) > 2:
      return (body[:-1] + ', "prompt": "again"}').encode() + b"\n"
    return body.encode() + b"\n"
  return raw + b"\n"  # arbitrary bytes: invalid UTF-8, NUL, blank lines


_lines = st.lists(
  st.builds(_line, st.sampled_from([0, 0, 1, 2, 3]), _records, st.binary(max_size=30)),
  min_size=0,
  max_size=6,
)


@settings(
  max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=_lines, skip=st.booleans())
def test_jsonl_reader_fails_only_with_data_errors(tmp_path, lines, skip):
  path = tmp_path / "fuzz.jsonl"
  path.write_bytes(b"".join(lines))
  try:
    result = read_jsonl(path, skip_malformed=skip)
  except DataError as e:
    assert str(e).startswith(str(path)), str(e)
    return
  assert result.examples, "an empty dataset must be a DataError"
  assert result.skipped == len(result.errors)
  for ex in result.examples:
    assert ex.answer.strip() or ex.thinking.strip()
