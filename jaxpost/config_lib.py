"""Config helpers: loading sibling config files, validation before any work starts."""

from __future__ import annotations

import contextvars
import importlib.util
import math
import operator
import os
import re
import types

from ml_collections import config_dict

from jaxpost import fields


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


DTYPES = ("float32", "bfloat16")


def _check_levels(spec: str) -> None:
  """A task mixture 'name:weight,...' of shipped levels with positive weights."""
  from jaxpost.data import tasks

  levels = parse_levels(spec)
  if not levels:
    raise ValueError("no level named")
  for name, weight in levels.items():
    if name not in tasks.LEVELS:
      hint = fields.suggest(name, tasks.LEVELS)
      raise ValueError(
        f"unknown level {name!r}"
        + (f" (did you mean {hint!r}?)" if hint else "")
        + f"; levels: {', '.join(tasks.LEVELS)}"
      )
    if not (math.isfinite(weight) and weight > 0):
      raise ValueError(f"the weight of {name!r} must be > 0, got {weight}")


def _check_final_levels(spec: str) -> None:
  if spec != "all":
    _check_levels(spec)


# Rules of the level-mixture fields (data.levels, eval.levels, eval.final_levels).
OPTIONAL_LEVELS = fields.Text("a level mixture like 'add3:0.5,mul2x2:1' or ''", check=_check_levels)
FINAL_LEVELS = fields.Text("'all' or a level mixture", check=_check_final_levels)


# train.stop_when: METRIC OP VALUE, e.g. "eval/accuracy>=0.6".
_CONDITION = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+|inf)\s*$")
_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def parse_condition(spec: str):
  """``"eval/accuracy>=0.6"`` -> ``(metric, compare, threshold)``; ValueError if malformed."""
  m = _CONDITION.match(spec)
  if not m:
    raise ValueError(f"{spec!r} is not METRIC>=VALUE (or >, <=, <), e.g. 'eval/accuracy>=0.6'")
  try:
    threshold = float(m.group(3))
  except ValueError:
    raise ValueError(f"{m.group(3)!r} in {spec!r} is not a number") from None
  return m.group(1), _COMPARE[m.group(2)], threshold


def rule_for(c: config_dict.ConfigDict, field: str) -> fields.Rule | None:
  """The declared rule of a dotted field: ``fields.FIELDS``, or for ``loss.<name>.*``
  and ``reward.<name>.*`` the registered function's ``rules``."""
  if field in fields.FIELDS:
    return fields.FIELDS[field]
  parts = field.split(".")
  if len(parts) == 3 and parts[0] in ("loss", "reward", "select"):
    for registry in _hparam_registries(parts[0]):
      if parts[1] in registry:
        return registry.entry(parts[1]).rules.get(parts[2])
  return None


def _hparam_registries(section: str) -> list:
  if section == "loss":
    from jaxpost.losses import LOSSES

    return [LOSSES]
  if section == "select":
    from jaxpost.selection import SELECTORS

    return [SELECTORS]
  from jaxpost.rewards import registry as rewards_registry
  from jaxpost.rewards import token

  return [rewards_registry.REWARDS, token.TOKEN_REWARDS]


def leaves(c: config_dict.ConfigDict, prefix: str = ""):
  """``(dotted field, value)`` of every leaf of ``c``, in order."""
  for key, value in c.items():
    if isinstance(value, config_dict.ConfigDict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


def check_fields(c: config_dict.ConfigDict) -> None:
  """Every leaf against its declared rule; raises ConfigError for the first bad one."""
  for field, value in leaves(c):
    rule = rule_for(c, field)
    problem = rule.problem(value) if rule is not None else None
    if problem:
      raise ConfigError(f"{field}={value!r}: {problem}")


# Device mesh axes, outermost first (``mesh.*`` in the config; see jaxpost.sharding).
MESH_AXES = ("data", "fsdp", "tensor")


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


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def from_flat(
  recipe: str, flat: dict, *, strict: bool = True
) -> tuple[config_dict.ConfigDict, list]:  # noqa: E501
  """``configs/base.py``'s config for ``recipe`` with the dotted fields of ``flat`` set
  (e.g. a ``run.json``'s; JSON lists become tuples).

  Returns:
    (config, the fields of ``flat`` this config does not have: with ``strict`` they
    raise ConfigError instead).
  """
  c = load_config(os.path.join(CONFIGS_DIR, "base.py:" + recipe))
  unknown = []
  for field, value in flat.items():
    try:
      set_field(c, field, _tupled(value))
    except ConfigError:
      if strict:
        raise
      unknown.append(field)
  return c, unknown


def _tupled(x):
  return tuple(map(_tupled, x)) if isinstance(x, list) else x


def set_field(c: config_dict.ConfigDict, field: str, value) -> None:
  """Sets a dotted field such as ``loss.grpo.kl_coef`` (type-checked, like a flag).

  Raises:
    ConfigError: no such field (with the closest one), or a value of the wrong type.
  """
  *sections, key = field.split(".")
  node = _section(c, sections, field)
  if key not in node:
    raise ConfigError(unknown_field(c, field))
  try:
    node[key] = value
  except TypeError:  # ml_collections' message spans lines; say it in one
    kind = type(node[key]).__name__
    raise ConfigError(f"{field}={value!r}: must be {kind}, got {type(value).__name__}") from None


def get_field(c: config_dict.ConfigDict, field: str):
  """The value of a dotted field such as ``reward.overlong.cache_len``."""
  *sections, key = field.split(".")
  node = _section(c, sections, field)
  if key not in node:
    raise ConfigError(unknown_field(c, field))
  return node[key]


def _section(c: config_dict.ConfigDict, sections: list[str], field: str):
  node = c
  for name in sections:
    if name not in node or not isinstance(node[name], config_dict.ConfigDict):
      raise ConfigError(unknown_field(c, field))
    node = node[name]
  return node


def unknown_field(c: config_dict.ConfigDict, field: str) -> str:
  """'unknown config field X (did you mean Y?)', against every field and section of ``c``."""
  known = [f for f, _ in leaves(c)]
  sections = sorted({f.rsplit(".", i)[0] for f in known for i in range(1, f.count(".") + 1)})
  head = field.split(".")[0]
  if "." in field and head not in c:
    hint = fields.suggest(head, [s for s in sections if "." not in s])
    what = f"unknown config section {head!r}"
  else:
    hint = fields.suggest(field, known + sections)
    what = f"unknown config field {field!r}"
  return what + (f" (did you mean {hint!r}?)" if hint else "")


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


def run_dir(path: str, field: str) -> None:
  """Raises ConfigError unless ``path`` is "", a run directory with ``checkpoints/`` or a
  model of the zoo (``zoo:NAME[@SEED]``, built when the run first reads it)."""
  from jaxpost import zoo

  if zoo.is_ref(path):
    try:
      zoo.parse_ref(path)
    except ValueError as e:
      raise ConfigError(f"{field}={path!r}: {e}") from None
    return
  if path and checks_paths() and not os.path.isdir(os.path.join(path, "checkpoints")):
    raise ConfigError(f"{field}={path!r} has no checkpoints/ directory")


def rows_split_over_mesh(c: config_dict.ConfigDict, rows: int, what: str) -> None:
  """Raises ConfigError unless ``rows`` split over the mesh's data * fsdp devices."""
  if c.distributed.initialize:
    return  # the device count is known only after jax.distributed.initialize()
  import jax

  sizes = validate_mesh(c, jax.device_count())
  shards = sizes["data"] * sizes["fsdp"]
  if rows % shards:
    raise ConfigError(f"{rows} {what} do not split over mesh data*fsdp={shards}")


_CHECK_PATHS = contextvars.ContextVar("jaxpost_check_paths", default=True)


def checks_paths() -> bool:
  """Whether the running ``validate`` checks that paths exist (not for a sweep's plan,
  whose data and runs earlier cells or steps make)."""
  return _CHECK_PATHS.get()


def validate(c: config_dict.ConfigDict, *, paths: bool = True) -> None:
  """Checks a config before any work starts; raises ConfigError naming the field.

  First every field against its declared rule (``check_fields``: ranges and choices,
  declared next to the fields in ``configs/base.py``, the recipes' sections and the
  registered losses and rewards), then what no single value shows: the loss against the
  recipe, shapes that must divide, paths that must exist (``paths=False``: all but
  those, for a config whose files are made later), and the recipe's own conditions
  (its ``validate``). Recipes call this once, first thing, before touching the workdir.
  """
  token = _CHECK_PATHS.set(paths)
  try:
    _validate(c)
  finally:
    _CHECK_PATHS.reset(token)


def _validate(c: config_dict.ConfigDict) -> None:
  from jaxpost import recipes

  check_fields(c)
  if c.model.gguf and c.model.hf_dir:
    raise ConfigError("set one of model.hf_dir and model.gguf, not both")
  if checks_paths() and c.model.hf_dir:
    if not os.path.isfile(os.path.join(c.model.hf_dir, "config.json")):
      raise ConfigError(f"model.hf_dir={c.model.hf_dir!r} has no config.json")
  if checks_paths() and c.model.gguf:
    from jaxpost.models import gguf

    try:
      gguf.resolve(c.model.gguf)
    except (FileNotFoundError, KeyError) as e:
      raise ConfigError(f"model.gguf={c.model.gguf!r}: {e}") from None
  _validate_loss(c, recipes.get(c.recipe))
  run_dir(c.train.init_from, "train.init_from")
  if c.train.init_mode == "fork" and not c.train.init_from:
    raise ConfigError("train.init_mode='fork' continues another run: set train.init_from")
  if c.train.heads and (c.train.trainable or c.get("lora", {}).get("rank", 0)):
    raise ConfigError("train.heads chooses what trains: not with train.trainable or lora.rank")
  if c.train.stop_at > c.train.steps:
    raise ConfigError(f"train.stop_at={c.train.stop_at} > train.steps={c.train.steps}")
  if c.train.stop_when:
    metric = parse_condition(c.train.stop_when)[0]
    if not c.eval.every:
      raise ConfigError(
        f"train.stop_when={c.train.stop_when!r} needs periodic evaluations (eval.every)"
      )
    if not metric.startswith("eval/"):
      raise ConfigError(f"train.stop_when reads an evaluation metric (eval/...), not {metric!r}")
  if c.data.batch_size % c.train.microbatches:
    raise ConfigError(
      f"data.batch_size={c.data.batch_size} is not divisible by "
      f"train.microbatches={c.train.microbatches}"
    )
  if c.data.seq_len > c.model.max_seq_len:
    raise ConfigError(f"data.seq_len={c.data.seq_len} > model.max_seq_len={c.model.max_seq_len}")
  _validate_source(c)
  _validate_heldout(c)
  _validate_parallelism(c)
  recipe_validate = getattr(recipes.get(c.recipe), "validate", None)
  if recipe_validate is not None:
    recipe_validate(c)


def _validate_source(c: config_dict.ConfigDict) -> None:
  """``data.source``'s conditions (``jaxpost.data.sources``): levels for a generated
  source, a path for user data, the source's own checks, and whole records of adjacent
  rows per micro-batch for a source of row groups."""
  from jaxpost.data import sources

  spec = sources.get(c.data.source)
  if spec.generated and not c.data.levels:
    raise ConfigError(f"data.levels is empty: the {c.data.source} source needs a level mixture")
  if not spec.generated and not c.data.path:
    raise ConfigError(f"data.source={c.data.source!r} needs data.path")
  if spec.file and checks_paths() and not os.path.isfile(c.data.path):
    raise ConfigError(f"data.path={c.data.path!r}: no such file")
  if spec.validate is not None:
    spec.validate(c)
  if spec.rows is not None:
    group = spec.rows(c.data)
    rows = c.data.batch_size // c.train.microbatches
    if c.data.pack or c.data.streams != 1 or rows % group or c.data.eval_fraction:
      raise ConfigError(
        f"data.source={c.data.source} lays each record out in {group} adjacent rows: set "
        f"data.pack=False, data.streams=1, data.batch_size / train.microbatches a multiple "
        f"of {group} (now {rows}), no data.eval_fraction"
      )


def _validate_heldout(c: config_dict.ConfigDict) -> None:
  """The held-out user data fields name one held-out set the source can give."""
  d = c.data
  if not (d.eval_fraction or d.eval_path or d.eval_split):
    return
  from jaxpost.data import sources

  if sources.get(d.source).generated:
    raise ConfigError(
      f"data.eval_fraction / eval_path / eval_split hold out user data; the {d.source} source "
      "has held-out problems of its own (eval.levels)"
    )
  if d.eval_fraction and (d.eval_path or d.eval_split):
    raise ConfigError("set data.eval_fraction or data.eval_path / eval_split, not both")
  if d.eval_split and d.source not in ("tfds", "arrow"):
    raise ConfigError(f"data.eval_split is for tfds / arrow sources, not {d.source!r}")
  if d.eval_path and d.source != "tfds" and checks_paths() and not os.path.exists(d.eval_path):
    raise ConfigError(f"data.eval_path={d.eval_path!r}: no such file or directory")
  from jaxpost.eval import checkers

  try:
    checkers.get(c.eval.checker)
  except ValueError as e:
    raise ConfigError(f"eval.checker={c.eval.checker!r}: {e}") from None


def _validate_loss(c: config_dict.ConfigDict, recipe) -> None:
  """``loss.name`` is a loss the recipe trains, and ``loss.<name>`` fits its signature."""
  from jaxpost.losses import LOSSES
  from jaxpost.registry import HparamError

  name, families = c.loss.name, recipe.LOSS_FAMILIES
  if not families:  # a recipe that trains no language model reads no loss section
    return
  # loss.name is a registered loss: its rule was checked first (check_fields)
  family = LOSSES.family(name)
  if family not in families:
    trained_by = [r for r in _recipes_for(family)]
    raise ConfigError(
      f"loss.name={name!r} is not a {'/'.join(families)} loss (it is a {family} loss, trained "
      f"by recipe={trained_by[0]!r}); the {c.recipe} recipe needs one of "
      f"{tuple(n for f in families for n in LOSSES.names(f))}"
    )
  if name not in c.loss:
    raise ConfigError(f"loss.{name}: the config has no section for loss {name!r}")
  try:
    LOSSES.validate_hparams(name, c.loss[name], where=f"loss.{name}")
  except HparamError as e:
    raise ConfigError(str(e)) from None


def _recipes_for(family: str) -> list[str]:
  from jaxpost import recipes

  return [n for n in recipes.RECIPES if family in recipes.get(n).LOSS_FAMILIES] or ["?"]


def _validate_parallelism(c: config_dict.ConfigDict) -> None:
  """Mesh, data streams and the distributed switch.

  The mesh is checked against ``jax.device_count()`` here unless
  ``distributed.initialize`` is set: then the device count is only known after
  ``jax.distributed.initialize()``, and ``sharding.make_mesh`` checks it.
  """
  if c.data.batch_size % c.data.streams:
    raise ConfigError(
      f"data.batch_size={c.data.batch_size} is not divisible by data.streams={c.data.streams}"
    )
  mesh_sizes(c.mesh)
  if not c.distributed.initialize:
    import jax

    validate_mesh(c, jax.device_count())


def mesh_sizes(mesh: config_dict.ConfigDict, num_devices: int | None = None) -> dict[str, int]:
  """Sizes of the ``MESH_AXES`` from the ``mesh`` config section.

  Args:
    mesh: the ``mesh`` section; each axis a positive int, or -1 (at most one) for the
      devices left over.
    num_devices: devices the mesh must cover exactly; None checks the values only
      (a -1 is then returned as -1).

  Returns:
    {axis: size} in ``MESH_AXES`` order.

  Raises:
    ConfigError: naming the ``mesh.*`` field.
  """
  sizes = {}
  for axis in MESH_AXES:
    value = mesh[axis]
    if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
      raise ConfigError(f"mesh.{axis}={value!r} must be a positive int or -1 (fill the rest)")
    sizes[axis] = value
  fill = [axis for axis, value in sizes.items() if value == -1]
  if len(fill) > 1:
    raise ConfigError(f"only one mesh axis may be -1, got mesh.{fill[0]} and mesh.{fill[1]}")
  if num_devices is None:
    return sizes
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if fill:
    if num_devices % fixed:
      raise ConfigError(
        f"mesh: the fixed axes ({fixed} devices) do not divide the {num_devices} devices, "
        f"so mesh.{fill[0]}=-1 cannot fill the rest"
      )
    sizes[fill[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    shape = "*".join(f"{a}={v}" for a, v in sizes.items())
    raise ConfigError(f"mesh {shape} has {math.prod(sizes.values())} devices, not {num_devices}")
  return sizes


def validate_mesh(c: config_dict.ConfigDict, num_devices: int) -> dict[str, int]:
  """``mesh_sizes`` for ``num_devices``, and the global batch splits over data * fsdp."""
  sizes = mesh_sizes(c.mesh, num_devices)
  shards = sizes["data"] * sizes["fsdp"]
  if c.data.batch_size % shards:
    raise ConfigError(
      f"data.batch_size={c.data.batch_size} is not divisible by mesh data*fsdp={shards} "
      "(batch rows are split over both axes)"
    )
  return sizes
