"""The one registry helper: families, hyperparameters from signatures, validation."""

import functools

import pytest

from jaxpost.registry import HparamError, Registry


def _registry():
  reg = Registry("widget", families=("a", "b"), contract={"a": ("norm",), "b": ()})

  @reg.register("plain", family="a", check=lambda *, scale, **_: _positive(scale))
  def plain(x, *, norm, scale: float = 1.0, mode: str = "x", flag: bool = False, n: int = 2):
    """plain. Args: scale: s. mode: m. flag: f. n: k."""
    return x * scale

  def general(x, *, kind="p", width=3):
    return (x, kind, width)

  reg.register("preset", family="b")(functools.partial(general, kind="q"))
  return reg


def _positive(scale):
  if scale <= 0:
    raise ValueError(f"scale={scale} must be > 0")


def test_names_families_and_lookup():
  reg = _registry()
  assert reg.names() == ["plain", "preset"] == list(reg)
  assert reg.names("a") == ["plain"] and reg.family("preset") == "b"
  assert "plain" in reg and "nope" not in reg
  with pytest.raises(KeyError, match=r"unknown widget 'nope'; registered: \['plain', 'preset'\]"):
    reg.get("nope")
  with pytest.raises(ValueError, match="already registered"):
    reg.register("plain", family="a")(lambda x: x)
  with pytest.raises(ValueError, match="family 'c'"):
    reg.register("other", family="c")
  for bad in ("", "a.b", "a/b"):
    with pytest.raises(ValueError, match="invalid"):
      reg.register(bad)


def test_hparams_come_from_the_signature_and_a_preset_shows_its_values():
  reg = _registry()
  assert reg.hparams("plain") == {"scale": 1.0, "mode": "x", "flag": False, "n": 2}  # no norm
  assert reg.hparams("preset") == {"kind": "q", "width": 3}
  assert reg.hparams_config("preset").kind == "q"


def test_validate_names_the_field():
  reg = _registry()
  assert reg.validate_hparams("plain", {"scale": 2, "n": 3}) == {"scale": 2.0, "n": 3}
  with pytest.raises(HparamError, match=r"loss\.plain\.scal: not a hyperparameter"):
    reg.validate_hparams("plain", {"scal": 1.0}, where="loss.plain")
  for key, value in (("scale", "big"), ("n", 1.5), ("flag", 1), ("mode", 3)):
    with pytest.raises(HparamError, match=f"widget 'plain'.{key}="):
      reg.validate_hparams("plain", {key: value})
  with pytest.raises(HparamError, match="scale=-1.0 must be > 0"):
    reg.validate_hparams("plain", {"scale": -1.0})
  bound = reg.bind("plain", {"scale": 3.0})
  assert bound(2.0, norm=None) == 6.0


def test_package_builtins_import_every_module():
  from jaxpost.losses import LOSSES

  # jaxpost/losses is registered as "jaxpost.losses.*": every file's losses are there.
  assert {"cross_entropy", "token_priority", "grpo"} <= set(LOSSES.names())
