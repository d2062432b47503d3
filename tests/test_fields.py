"""Every field of every shipped config has a declared rule, and validation follows it.

Property tests (hypothesis) over every field of the base and method configs: a value
the field's rule rejects is rejected by ``config_lib.validate`` with a one-line
ConfigError naming that field, before any work; a value it accepts passes the field
checks, and validation then raises nothing but ConfigError (a cross-field condition).
"""

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxpost import config_lib, fields
from jaxpost.data import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = (
  "configs/sft.py",
  "configs/sft.py:tiny",
  "configs/grpo.py",
  "configs/grpo.py:tiny",
  "configs/quickstart.py",
  "configs/token_priority.py:tiny",
  "configs/token_priority.py:quickstart",
  "configs/sft.py:smollm2",
  "configs/grpo.py:smollm2",
  "configs/token_priority.py:smollm2",
)


def _load(spec):
  return config_lib.load_config(os.path.join(REPO, spec))


_LOADED = {spec: _load(spec) for spec in CONFIGS}


def _fields_once(specs):
  """(spec, field) for every field of ``specs``, each field under the first spec that has it."""
  seen, out = set(), []
  for spec in specs:
    for field, _ in config_lib.leaves(_LOADED[spec]):
      if field not in seen:
        seen.add(field)
        out.append((spec, field))
  return out


# The SFT and RL method configs between them hold every section and loss family.
_FIELDS = _fields_once(("configs/sft.py:tiny", "configs/grpo.py:tiny"))


@pytest.mark.parametrize("spec", CONFIGS)
def test_every_field_declares_what_it_accepts(spec):
  c = _LOADED[spec]
  missing = [f for f, _ in config_lib.leaves(c) if config_lib.rule_for(c, f) is None]
  assert not missing, f"{spec}: no declared rule for {missing}"
  config_lib.validate(c)  # and the shipped values follow them
  for field, value in config_lib.leaves(c):
    assert config_lib.rule_for(c, field).problem(value) is None, (field, value)


# Strategies from a rule's data: values on each side of it.


def _num_values(rule: fields.Num, valid: bool):
  lo = rule.ge if rule.ge is not None else rule.gt
  hi = rule.le if rule.le is not None else rule.lt
  if rule.integer:
    lo_i = None if lo is None else math.ceil(lo + (rule.gt is not None and lo == int(lo)))
    hi_i = None if hi is None else math.floor(hi - (rule.lt is not None and hi == int(hi)))
    if valid:
      return st.integers(lo_i, hi_i).filter(lambda x: rule.problem(x) is None)
    outside = []
    if lo_i is not None:
      outside.append(st.integers(max_value=lo_i - 1))
    if hi_i is not None:
      outside.append(st.integers(min_value=hi_i + 1))
    if not outside:
      return st.nothing()
    return st.one_of(outside).filter(lambda x: x not in rule.special)
  if valid:
    return st.floats(
      min_value=lo,
      max_value=hi,
      exclude_min=rule.gt is not None,
      exclude_max=rule.lt is not None,
      allow_nan=False,
      allow_infinity=False,
    ).filter(lambda x: rule.problem(x) is None)
  outside = [st.sampled_from([math.nan, math.inf, -math.inf])]
  if lo is not None:
    outside.append(st.floats(max_value=lo, exclude_max=rule.ge is not None, allow_nan=False))
  if hi is not None:
    outside.append(st.floats(min_value=hi, exclude_min=rule.le is not None, allow_nan=False))
  return st.one_of(outside).filter(lambda x: rule.problem(x) is not None)


def _level_mixture():
  names = st.lists(st.sampled_from(sorted(tasks.LEVELS)), min_size=1, max_size=3, unique=True)
  weights = st.floats(0.01, 10, allow_nan=False)
  return st.builds(lambda ns, w: ",".join(f"{n}:{w:g}" for n in ns), names, weights)


_JUNK = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


def _values(field: str, rule: fields.Rule, default, valid: bool):
  """A strategy of values the rule accepts (valid) or rejects, of the field's type."""
  if isinstance(rule, fields.Num):
    return _num_values(rule, valid)
  if isinstance(rule, fields.OneOf):
    choices = [c for c in rule.values() if type(c) is type(default)]
    if valid:
      return st.sampled_from(choices)
    return _JUNK.filter(lambda s: s not in choices)
  if isinstance(rule, fields.Flag):
    return st.booleans() if valid else st.sampled_from([0, 1, "yes"])
  if rule in (config_lib.OPTIONAL_LEVELS, config_lib.FINAL_LEVELS):
    if valid:
      return st.one_of(st.just(""), _level_mixture())
    return _JUNK.filter(lambda s: s != "all" and rule.problem(s) is not None)
  if rule is fields.PATTERN:
    return st.sampled_from(["", "attn", "mlp|embed", r"layers\.0\."]) if valid else st.just("(")
  if isinstance(rule, fields.Text):
    if not valid:
      return st.just(12345) if not rule.check else _JUNK.filter(lambda s: rule.problem(s))
    return st.just(default)  # free text (paths, addresses): other values hit path checks
  if isinstance(rule, fields.Custom):
    if valid:
      return st.just(default)
    return st.sampled_from([(("no_such_reward", 1.0),), (("exact_answer",),), "exact_answer"])
  raise AssertionError(f"{field}: no strategy for {rule!r}")


def _set(c, field, value):
  """Sets the field, or None when its type refuses the value (ml_collections' own check)."""
  try:
    config_lib.set_field(c, field, value)
  except config_lib.ConfigError:
    return None
  return True


_SETTINGS = settings(
  max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("spec, field", _FIELDS, ids=[f"{s}-{f}" for s, f in _FIELDS])
@_SETTINGS
@given(data=st.data())
def test_invalid_values_are_rejected_naming_the_field(spec, field, data):
  c = _load(spec)
  rule = config_lib.rule_for(c, field)
  invalid = _values(field, rule, config_lib.get_field(c, field), valid=False)
  value = data.draw(st.one_of(st.none(), invalid))  # None: ml_collections lets it into any field
  if _set(c, field, value) is None:
    return  # refused on assignment already, with a ConfigError naming the field
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  message = str(e.value)
  assert message.startswith(f"{field}=") or message.startswith(field), message
  assert "\n" not in message


@pytest.mark.parametrize("spec, field", _FIELDS, ids=[f"{s}-{f}" for s, f in _FIELDS])
@_SETTINGS
@given(data=st.data())
def test_valid_values_pass_the_field_checks(spec, field, data):
  c = _load(spec)
  rule = config_lib.rule_for(c, field)
  value = data.draw(_values(field, rule, config_lib.get_field(c, field), valid=True))
  assert _set(c, field, value)
  config_lib.check_fields(c)
  try:
    config_lib.validate(c)
  except config_lib.ConfigError as e:  # a condition across fields, never this field's own
    assert "\n" not in str(e)
    assert not str(e).startswith(f"{field}={value!r}: must"), str(e)


def test_set_field_names_unknown_fields_with_a_suggestion():
  c = _load("configs/sft.py:tiny")
  with pytest.raises(config_lib.ConfigError, match=r"'optim.lrr' \(did you mean 'optim.lr'\?\)"):
    config_lib.set_field(c, "optim.lrr", 1.0)
  with pytest.raises(config_lib.ConfigError, match=r"section 'optimizer' \(did you mean 'optim'"):
    config_lib.set_field(c, "optimizer.lr", 1.0)
  with pytest.raises(config_lib.ConfigError, match="optim.lr='x'"):
    config_lib.set_field(c, "optim.lr", "x")


def test_rule_descriptions_read_as_conditions():
  assert fields.num(ge=0, lt=1).problem(1.0) == "must be a finite number >= 0 and < 1"
  assert fields.integer(ge=1, special=(-1,)).problem(0) == "must be an int >= 1 (or -1)"
  assert fields.integer(ge=1).problem(True) == "must be an int >= 1"
  assert fields.num(gt=0).problem(math.nan) == "must be a finite number > 0"
  assert "did you mean 'adamw'" in fields.one_of(("adamw", "sgd")).problem("adamww")
