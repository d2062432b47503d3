import functools
import math

import pytest

from jaxpost import rewards
from jaxpost.rewards import registry
from jaxpost.rewards.registry import Sample

# Required hyperparameters of the built-in rewards; a new reward that needs some must
# be added here (its contract test fails otherwise).
_HPARAMS = {
  "overlong": {"max_len": 16, "cache_len": 4},
  "length": {"norm_tokens": 16},
}

_SAMPLES = [
  Sample("357+468", "<think>7+8+0=15</think>825", "825", 7),
  Sample("357+468", "<think>7+8+0=15</think>826", "825", 15, level="add3"),
  Sample("357+468", "<think>7+8", "825", 20, truncated=True),
  Sample("1+1", "", "2", 0),
]


def test_builtin_names():
  assert {"exact_answer", "think_format", "length", "overlong"} <= set(rewards.names())
  assert rewards.names() == sorted(rewards.names())


def test_unknown_name_lists_known_names():
  with pytest.raises(KeyError, match="exact_answer") as e:
    rewards.get("exact_anwser")
  assert "overlong" in str(e.value) and "exact_anwser" in str(e.value)
  with pytest.raises(KeyError, match="exact_answer"):
    registry.get_check("nope")


def test_register_rejects_duplicates_and_reserved_names(monkeypatch):
  registry.names()  # the built-ins are registered before the copy
  monkeypatch.setattr(registry.REWARDS, "_entries", dict(registry.REWARDS._entries))
  with pytest.raises(ValueError, match="already registered"):
    registry.register("exact_answer")(lambda sample: 0.0)
  for bad in ("errors", "timeouts", "mean", "restarted_workers", "a/b", ""):
    with pytest.raises(ValueError, match="reserved or invalid"):
      registry.register(bad)


def test_register_and_get(monkeypatch):
  registry.names()  # the built-ins are registered before the copy
  monkeypatch.setattr(registry.REWARDS, "_entries", dict(registry.REWARDS._entries))

  def check(*, scale):
    if scale <= 0:
      raise ValueError("scale")

  @registry.register("_test_len", check=check)
  def _test_len(sample, *, scale):
    return scale * sample.num_tokens

  assert rewards.get("_test_len") is _test_len
  assert registry.get_check("_test_len") is check
  assert "_test_len" in rewards.names()
  assert registry.get_check("exact_answer") is not None


@pytest.mark.parametrize("name", registry.names())
def test_contract_every_registered_reward(name):
  (term,) = rewards.make_spec([(name, 1.0, _HPARAMS.get(name, {}))])
  fn = functools.partial(rewards.get(name), **term.hparams)
  if registry.is_batched(name):  # one call per batch: B values
    values = list(fn(list(_SAMPLES)))
    assert len(values) == len(_SAMPLES) and values == list(fn(list(_SAMPLES)))
    assert all(isinstance(r, float) and math.isfinite(r) for r in values), (name, values)
    assert registry.is_trusted(name)
    return
  for sample in _SAMPLES:
    r = fn(sample)
    assert isinstance(r, float) and math.isfinite(r), (name, sample, r)
    assert fn(sample) == r  # deterministic


@pytest.mark.parametrize(
  "kwargs, error",
  [
    ({"num_tokens": -1}, ValueError),
    ({"num_tokens": 1.5}, TypeError),
    ({"completion": None}, TypeError),
    ({"answer": 825}, TypeError),
  ],
)
def test_sample_validation(kwargs, error):
  fields = {"prompt": "p", "completion": "c", "answer": "a", "num_tokens": 3, **kwargs}
  with pytest.raises(error):
    Sample(**fields)
