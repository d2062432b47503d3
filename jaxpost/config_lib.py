"""Config helpers: loading sibling config files, validation before any work starts."""

from __future__ import annotations

import importlib.util
import math
import os
import types

from ml_collections import config_dict

from jaxpost.data.packing import OVERLONG_CHOICES
from jaxpost.losses.reduce import REDUCTIONS
from jaxpost.optim import OPTIMIZERS, SCHEDULES


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


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
  if c.model.hf_dir and not os.path.isfile(os.path.join(c.model.hf_dir, "config.json")):
    raise ConfigError(f"model.hf_dir={c.model.hf_dir!r} has no config.json")
  _choice(c.model.dtype, "model.dtype", ("float32", "bfloat16"))
  _choice(c.model.param_dtype, "model.param_dtype", ("float32", "bfloat16"))
  _choice(c.data.source, "data.source", ("tasks", "jsonl", "tfds"))
  _choice(c.data.overlong, "data.overlong", OVERLONG_CHOICES)
  _choice(c.loss.name, "loss.name", registry.names())
  _choice(c.loss.reduction, "loss.reduction", REDUCTIONS)
  from jaxpost.losses.head import LM_HEADS

  _choice(c.kernels.lm_head, "kernels.lm_head", sorted(LM_HEADS))
  if c.kernels.chunk_size < 0:
    raise ConfigError(f"kernels.chunk_size must be >= 0, got {c.kernels.chunk_size}")
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
  _validate_parallelism(c)
  _validate_rl(c)


def _validate_rl(c: config_dict.ConfigDict) -> None:
  """The ``rl`` and ``reward`` sections, and how the loss fits the recipe."""
  from jaxpost.losses import advantages, correction, kl, policy, registry
  from jaxpost.losses.reduce import AGGREGATIONS

  policy_losses = [n for n in registry.names() if registry.get(n).__module__ == policy.__name__]
  if c.recipe == "rl" and c.loss.name not in policy_losses:
    raise ConfigError(
      f"loss.name={c.loss.name!r} is not a policy loss; the rl recipe needs one of "
      f"{tuple(policy_losses)}"
    )
  if c.recipe != "rl" and c.loss.name in policy_losses:
    raise ConfigError(f"loss.name={c.loss.name!r} is a policy loss; it needs recipe='rl'")
  r = c.rl
  _choice(r.advantage, "rl.advantage", advantages.ADVANTAGES)
  _choice(r.kl_estimator, "rl.kl_estimator", kl.ESTIMATORS)
  _choice(r.ratio, "rl.ratio", ("", *policy.RATIOS))
  _choice(r.agg, "rl.agg", ("", *AGGREGATIONS))
  _choice(r.is_level, "rl.is_level", ("", *correction.IS_LEVELS))
  _choice(r.is_mode, "rl.is_mode", correction.IS_MODES)
  _choice(r.prefix, "rl.prefix", ("", *(p for p in policy.PREFIXES if p)))
  _choice(r.prefix_behavior, "rl.prefix_behavior", ("old", "sampler"))
  _choice(r.old_logp, "rl.old_logp", ("recompute", "sampler"))
  for field in (
    "rl.prompts_per_step",
    "rl.samples_per_prompt",
    "rl.max_new_tokens",
    "rl.epochs",
    "rl.minibatches",
    "rl.max_sample_rounds",
    "rl.is_cap",
    "rl.clip_ratio_c",
  ):
    _positive(c.rl[field.split(".")[1]], field)
  for field in ("rl.temperature", "rl.entropy_coef", "rl.step_reward", "rl.agg_constant"):
    if c.rl[field.split(".")[1]] < 0:
      raise ConfigError(f"{field}={c.rl[field.split('.')[1]]!r} must be >= 0")
  if r.temperature == 0:
    raise ConfigError("rl.temperature=0 (greedy) gives identical samples; use > 0")
  for field in ("rl.clip_eps_low", "rl.clip_eps_high", "rl.kl_coef"):
    value = c.rl[field.split(".")[1]]
    if value < 0 and value != -1.0:
      raise ConfigError(f"{field}={value!r} must be >= 0, or -1 for the loss's preset")
  if r.dual_clip and not r.clip_ratio_c > 1:
    raise ConfigError(f"rl.clip_ratio_c={r.clip_ratio_c!r} must be > 1 with rl.dual_clip")
  if r.top_k < 0 or not 0 < r.top_p <= 1 or not 0 <= r.min_p <= 1:
    raise ConfigError(f"rl.top_k/top_p/min_p out of range: {r.top_k}, {r.top_p}, {r.min_p}")
  if r.is_floor < 0 or (r.is_floor and r.is_floor > r.is_cap):
    raise ConfigError(f"rl.is_floor={r.is_floor!r} must be in [0, rl.is_cap]")
  if r.max_new_tokens >= c.model.max_seq_len:
    raise ConfigError(
      f"rl.max_new_tokens={r.max_new_tokens} leaves no room for a prompt in "
      f"model.max_seq_len={c.model.max_seq_len}"
    )
  rows = r.prompts_per_step * r.samples_per_prompt
  if rows % (r.minibatches * c.train.microbatches):
    raise ConfigError(
      f"rl.prompts_per_step * rl.samples_per_prompt = {rows} rows do not split into "
      f"rl.minibatches={r.minibatches} x train.microbatches={c.train.microbatches}"
    )
  if r.shared_prompt and r.prompts_per_step % (r.minibatches * c.train.microbatches):
    raise ConfigError(
      f"rl.shared_prompt needs whole groups in every update and micro-batch, but "
      f"rl.prompts_per_step={r.prompts_per_step} groups do not split into rl.minibatches="
      f"{r.minibatches} x train.microbatches={c.train.microbatches}; change them or set "
      "rl.shared_prompt=False"
    )
  if r.init_from and not os.path.isdir(os.path.join(r.init_from, "checkpoints")):
    raise ConfigError(f"rl.init_from={r.init_from!r} has no checkpoints/ directory")
  if c.reward.timeout_s < 0:
    raise ConfigError(f"reward.timeout_s={c.reward.timeout_s!r} must be >= 0 (0 = no limit)")
  if c.recipe == "rl":
    if c.data.source != "tasks":
      raise ConfigError("the rl recipe draws prompts from the tasks: data.source must be 'tasks'")
    try:
      reward_spec(c)
    except (KeyError, TypeError, ValueError) as e:
      raise ConfigError(f"reward: {e}") from None
    if not c.distributed.initialize:
      import jax

      shards = validate_mesh(c, jax.device_count())
      shards = math.prod(shards[a] for a in ("data", "fsdp"))
      if (rows // r.minibatches) % shards:
        raise ConfigError(
          f"{rows // r.minibatches} rows per update do not split over mesh data*fsdp={shards}"
        )


def reward_spec(c: config_dict.ConfigDict) -> tuple:
  """``reward.terms`` with each term's hyperparameter block, validated (``rewards.make_spec``).

  Length budgets left at 0 (``overlong.max_len``, ``length.norm_tokens``) mean the
  sampling cap ``rl.max_new_tokens``.
  """
  from jaxpost import rewards

  blocks = {}
  for name, block in c.reward.items():
    if isinstance(block, config_dict.ConfigDict):
      blocks[name] = dict(block)
  cap = c.rl.max_new_tokens
  if blocks.get("overlong", {}).get("max_len", 1) == 0:
    blocks["overlong"]["max_len"] = cap
    blocks["overlong"]["cache_len"] = min(blocks["overlong"]["cache_len"], cap)
  if blocks.get("length", {}).get("norm_tokens", 1) == 0:
    blocks["length"]["norm_tokens"] = cap
  terms = [tuple(t) for t in c.reward.terms]
  return rewards.make_spec(terms, blocks)


def _validate_parallelism(c: config_dict.ConfigDict) -> None:
  """Mesh, data streams and the distributed switch.

  The mesh is checked against ``jax.device_count()`` here unless
  ``distributed.initialize`` is set: then the device count is only known after
  ``jax.distributed.initialize()``, and ``sharding.make_mesh`` checks it.
  """
  _positive(c.data.streams, "data.streams")
  if c.data.batch_size % c.data.streams:
    raise ConfigError(
      f"data.batch_size={c.data.batch_size} is not divisible by data.streams={c.data.streams}"
    )
  mesh_sizes(c.mesh)
  if c.distributed.num_processes < 0:
    raise ConfigError(f"distributed.num_processes={c.distributed.num_processes!r} must be >= 0")
  if c.distributed.process_id < -1:
    raise ConfigError(f"distributed.process_id={c.distributed.process_id!r} must be >= -1")
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
