"""One small registry for every named, swappable piece: losses, rewards, advantages, recipes.

A ``Registry`` maps a config name to a function plus what the framework needs to know
about it without calling it: its *family* (which contract it follows, e.g. a token loss
or a policy loss) and an optional *check* of its hyperparameters. Hyperparameters are
the function's keyword-only parameters with defaults; ``hparams`` reads them off the
signature, so a method's config section (``hparams_config``) and its validation
(``validate_hparams``) come from the function itself and can never drift from it.

Entries are plain functions or ``functools.partial`` objects (a preset is a partial of a
general function with some defaults replaced: the signature then shows the preset's
values). Registering a name twice is an error, never a silent overwrite.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ml_collections import config_dict


class HparamError(ValueError):
  """A hyperparameter is unknown, of the wrong type or has a bad value (names it)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered function.

  Attributes:
    name: registry key (equal to the config name).
    fn: the function (or partial).
    family: which contract it follows (registry-specific, e.g. "token" / "policy").
    check: optional ``check(**hparams) -> None`` raising ValueError on a bad value
      (conditions across hyperparameters; one value's range is a rule).
    rules: ``{hparam: jaxpost.fields.Rule}``, what each hyperparameter accepts.
    meta: anything else the registry's users attach (e.g. how a token reward enters
      the advantages).
  """

  name: str
  fn: Callable
  family: str
  check: Callable[..., None] | None = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  rules: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Registry:
  """Name -> ``Entry``, with lazily imported built-ins.

  Args:
    kind: what is registered ("loss", "reward", ...), used in error messages.
    families: the allowed family names.
    builtins: modules whose import registers the built-in entries (imported on first
      lookup, so importing the registry itself stays cheap and cycle-free); "pkg.*"
      means every module of package ``pkg``, so a new file there registers by existing.
    contract: per family, the parameters every entry of that family takes from the
      framework (arrays, normalisers) and that are therefore not hyperparameters.
  """

  def __init__(
    self,
    kind: str,
    *,
    families: Iterable[str] = ("default",),
    builtins: Iterable[str] = (),
    contract: Mapping[str, Iterable[str]] | None = None,
  ):
    self.kind = kind
    self.families = tuple(families)
    self._builtins = tuple(builtins)
    self._contract = {f: frozenset(v) for f, v in (contract or {}).items()}
    self._entries: dict[str, Entry] = {}
    self._loaded = False

  def register(
    self,
    name: str,
    *,
    family: str | None = None,
    check: Callable[..., None] | None = None,
    rules: Mapping[str, Any] | None = None,
    **meta: Any,
  ) -> Callable[[Callable], Callable]:
    """Decorator adding ``fn`` under ``name``; returns ``fn`` unchanged.

    ``rules`` (``{hparam: jaxpost.fields.Rule}``) declare what each hyperparameter
    accepts; ``check`` is for conditions across them.
    """
    family = family or self.families[0]
    if family not in self.families:
      raise ValueError(f"{self.kind} family {family!r}; expected one of {self.families}")
    if not name or "/" in name or "." in name:
      raise ValueError(f"invalid {self.kind} name {name!r}")

    def wrap(fn: Callable) -> Callable:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      unknown = set(rules or {}) - set(_signature_hparams(fn))
      if unknown:
        raise ValueError(f"{self.kind} {name!r}: rules for unknown hyperparameters {unknown}")
      self._entries[name] = Entry(name, fn, family, check, dict(meta), dict(rules or {}))
      return fn

    return wrap

  def _load(self) -> None:
    if not self._loaded:
      self._loaded = True
      for module in self._builtins:
        for name in _expand(module):
          importlib.import_module(name)

  def entry(self, name: str) -> Entry:
    self._load()
    try:
      return self._entries[name]
    except KeyError:
      raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}") from None

  def get(self, name: str) -> Callable:
    """The registered function, with the known names in the error."""
    return self.entry(name).fn

  def family(self, name: str) -> str:
    return self.entry(name).family

  def names(self, family: str | None = None) -> list[str]:
    """Sorted names, optionally of one family only."""
    self._load()
    return sorted(n for n, e in self._entries.items() if family in (None, e.family))

  def __contains__(self, name: str) -> bool:
    self._load()
    return name in self._entries

  def __iter__(self):
    """The sorted names (so a registry serves as the choices of a config field)."""
    return iter(self.names())

  def hparams(self, name: str) -> dict[str, Any]:
    """The entry's hyperparameters and their defaults, read off its signature.

    These are the keyword parameters with a default that are not part of the
    family's contract (e.g. ``norm`` of a loss).
    """
    e = self.entry(name)
    skip = self._contract.get(e.family, frozenset())
    out = {}
    for p in inspect.signature(e.fn).parameters.values():
      if p.name in skip or p.default is inspect.Parameter.empty:
        continue
      if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
        out[p.name] = p.default
    return out

  def hparams_config(self, name: str) -> config_dict.ConfigDict:
    """A ConfigDict of the entry's hyperparameters at their defaults (a config section)."""
    return config_dict.ConfigDict(self.hparams(name))

  def validate_hparams(self, name: str, hparams: Mapping[str, Any], *, where: str = "") -> dict:
    """Checks ``hparams`` against the signature and the entry's check; returns a plain dict.

    Raises:
      HparamError: an unknown key, a value whose type differs from the default's (an
        int where a float is expected is accepted), or a value the check rejects; the
        message starts with ``where`` (e.g. "loss.grpo").
    """
    where = where or f"{self.kind} {name!r}"
    known = self.hparams(name)
    out = {}
    for key, value in dict(hparams).items():
      if key not in known:
        raise HparamError(
          f"{where}.{key}: not a hyperparameter of {name!r}{_did_you_mean(key, known)}; "
          f"expected one of {sorted(known)}"
        )
      out[key] = _typed(value, known[key], f"{where}.{key}")
      rule = self.entry(name).rules.get(key)
      problem = rule.problem(out[key]) if rule is not None else None
      if problem:
        raise HparamError(f"{where}.{key}={out[key]!r}: {problem}")
    check = self.entry(name).check
    if check is not None:
      try:
        check(**{**known, **out})
      except (ValueError, TypeError) as e:
        raise HparamError(f"{where}: {e}") from None
    return out

  def bind(self, name: str, hparams: Mapping[str, Any] | None = None, *, where: str = ""):
    """The function with its (validated) hyperparameters bound, as a ``functools.partial``."""
    return functools.partial(
      self.get(name), **self.validate_hparams(name, hparams or {}, where=where)
    )


def _did_you_mean(word: str, candidates) -> str:
  hits = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
  return f" (did you mean {hits[0]!r}?)" if hits else ""


def _signature_hparams(fn: Callable) -> list[str]:
  """Names of ``fn``'s parameters that can be passed by keyword (hyperparameter candidates)."""
  kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
  return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def _expand(module: str) -> list[str]:
  """``"pkg.*"`` -> the modules of package ``pkg`` (sorted); a plain name -> itself."""
  if not module.endswith(".*"):
    return [module]
  package = importlib.import_module(module[:-2])
  return sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__))


def _typed(value: Any, default: Any, field: str) -> Any:
  """``value`` if its type fits the default's; tuples/lists compare as sequences."""
  if default is None or value is None:
    return value
  want = type(default)
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(default, tuple | list):
    ok = isinstance(value, tuple | list)
    value = tuple(value) if ok else value
  else:
    ok = isinstance(value, want)
  if not ok:
    raise HparamError(f"{field}={value!r} is a {type(value).__name__}; expected {want.__name__}")
  return value
