"""Config helpers: loading sibling config files, validation before any work starts."""

from __future__ import annotations

import importlib.util
import os
import types

from ml_collections import config_dict

from jaxpost.data.packing import OVERLONG_CHOICES
from jaxpost.losses.reduce import REDUCTIONS
from jaxpost.optim import OPTIMIZERS, SCHEDULES


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


def _import_file(path: str, name: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(f"jaxpost_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sibling(config_file: str, name: str) -> types.ModuleType:
  """Imports ``<dir of config_file>/<name>.py`` (config files are loaded by path, not package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  return _import_file(path, name)


def load_config(spec: str) -> config_dict.ConfigDict:
  """``"configs/sft.py:tiny"`` -> that config, as ``--config=`` gives it (scripts, notebooks)."""
  path, _, variant = spec.partition(":")
  module = _import_file(os.path.abspath(path), os.path.splitext(os.path.basename(path))[0])
  return module.get_config(variant) if variant else module.get_config()


def parse_levels(spec: str) -> dict[str, float]:
  """'add3:0.2,mul2x2:1' -> {'add3': 0.2, 'mul2x2': 1.0}; a bare name weighs 1."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, weight = part.partition(":")
    try:
      out[name.strip()] = float(weight) if weight else 1.0
    except ValueError:
      raise ConfigError(f"bad level weight in {part!r} (expected name:weight)") from None
  return out


def _choice(value, field: str, choices) -> None:
  if value not in choices:
    raise ConfigError(f"{field}={value!r}; expected one of {tuple(choices)}")


def _positive(value, field: str) -> None:
  if value <= 0:
    raise ConfigError(f"{field}={value!r} must be > 0")


def validate(c: config_dict.ConfigDict) -> None:
  """Checks values that types alone cannot; raises ConfigError naming the field."""
  from jaxpost import recipes
  from jaxpost.data import tasks
  from jaxpost.losses import registry
  from jaxpost.models import NAMED_SIZES

  _choice(c.recipe, "recipe", recipes.RECIPES)
  _choice(c.model.size, "model.size", NAMED_SIZES)
  _choice(c.model.dtype, "model.dtype", ("float32", "bfloat16"))
  _choice(c.model.param_dtype, "model.param_dtype", ("float32", "bfloat16"))
  _choice(c.data.source, "data.source", ("tasks", "jsonl", "tfds"))
  _choice(c.data.overlong, "data.overlong", OVERLONG_CHOICES)
  _choice(c.loss.name, "loss.name", registry.names())
  _choice(c.loss.reduction, "loss.reduction", REDUCTIONS)
  _choice(c.optim.name, "optim.name", OPTIMIZERS)
  _choice(c.optim.decay, "optim.decay", SCHEDULES)
  for field in (
    "data.seq_len",
    "data.batch_size",
    "train.steps",
    "train.microbatches",
    "optim.lr",
    "eval.num_examples",
    "eval.batch_size",
    "eval.max_new_tokens",
    "tokenizer.vocab_size",
  ):
    section, key = field.split(".")
    _positive(c[section][key], field)
  if c.train.stop_after < 0:
    raise ConfigError(f"train.stop_after={c.train.stop_after!r} must be >= 0 (0 = never)")
  if c.data.batch_size % c.train.microbatches:
    raise ConfigError(
      f"data.batch_size={c.data.batch_size} is not divisible by "
      f"train.microbatches={c.train.microbatches}"
    )
  if c.data.seq_len > c.model.max_seq_len:
    raise ConfigError(f"data.seq_len={c.data.seq_len} > model.max_seq_len={c.model.max_seq_len}")
  if c.data.source == "tasks":
    levels = parse_levels(c.data.levels)
    if not levels:
      raise ConfigError("data.levels is empty")
    for name, w in levels.items():
      _choice(name, "data.levels", tasks.LEVELS)
      if w <= 0:
        raise ConfigError(f"data.levels weight for {name!r} must be > 0")
  elif not c.data.path:
    raise ConfigError(f"data.source={c.data.source!r} needs data.path")
  for field in ("eval.levels", "eval.final_levels"):
    section, key = field.split(".")
    spec = c[section][key]
    if spec and spec != "all":
      for name in parse_levels(spec):
        _choice(name, field, tasks.LEVELS)
