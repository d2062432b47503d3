"""Device meshes, logical-axis sharding rules, and the multi-host switch.

The model never sees a mesh. Parameters carry logical axis names
(``nnx.Param(..., out_sharding=('embed', 'mlp'))``); a rule table maps each name to
mesh axes, and this module shards the state pytrees, the batches and the KV cache
outside the model, then keeps the jitted train step's returned state on the declared
shardings. XLA's sharding propagation partitions everything in between.

Mesh axes, outermost first:
  data    batch rows split, parameters replicated (plain data parallelism)
  fsdp    batch rows split *and* parameters split on their 'embed' axis
  tensor  heads, MLP width and vocabulary split (Megatron-style tensor parallelism)

A dimension whose size is not divisible by its mesh axes is sharded over the longest
prefix of them that divides it, replicated if none does, and logged, e.g. Qwen2.5's
2 kv heads on tensor=4.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxpost import config_lib
from jaxpost.models.decoder import KVCache

MESH_AXES = config_lib.MESH_AXES

# (logical axis, mesh axis | tuple of mesh axes | None); the first entry for a name wins
# and names not listed are replicated. Parameter names come from jaxpost.models.decoder.
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
DEFAULT_RULES: Rules = (
  ("batch", ("data", "fsdp")),  # B: activations, batches, KV cache rows
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("q_heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("head_dim", None),
  ("norm", None),
  ("seq", None),  # T
  ("cache_seq", None),  # S, KV-cache slots
)

# Logical names of the non-parameter arrays.
BATCH_AXES = ("batch", "seq")  # every Batch field is [B, T]
# A KVCache holds one k and one v array per layer; these name each layer's axes.
CACHE_AXES = KVCache(
  k=("batch", "kv_heads", "head_dim", "cache_seq"),
  v=("batch", "kv_heads", "cache_seq", "head_dim"),
  segment_ids=("batch", "cache_seq"),
  length=(),
)


def initialize_distributed(config) -> bool:
  """Calls ``jax.distributed.initialize()`` if ``distributed.initialize`` is set.

  Must run before anything touches JAX's devices. Unset fields (""/0/-1) are left to
  JAX's cluster auto-detection (SLURM, Open MPI, TPU pods, ``JAX_COORDINATOR_ADDRESS``
  ...). Idempotent.

  Returns:
    True if the process runs under ``jax.distributed``.
  """
  d = config.distributed
  if not d.initialize:
    return False
  if not jax.distributed.is_initialized():
    kwargs = {}
    if d.coordinator_address:
      kwargs["coordinator_address"] = d.coordinator_address
    if d.num_processes:
      kwargs["num_processes"] = d.num_processes
    if d.process_id >= 0:
      kwargs["process_id"] = d.process_id
    jax.distributed.initialize(**kwargs)
  logging.info(
    "process %d of %d: %d local of %d devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def make_mesh(config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh of ``config.mesh`` over ``devices`` (default all).

  Axes are ``AxisType.Auto``: shardings are hints that XLA propagates (GSPMD style),
  not part of array types, so unannotated model code runs unchanged.

  Raises:
    config_lib.ConfigError: the mesh does not cover the devices exactly, or the batch
      does not split over data * fsdp.
  """
  devices = jax.devices() if devices is None else list(devices)
  sizes = config_lib.validate_mesh(config, len(devices))
  return jax.make_mesh(
    tuple(sizes[a] for a in MESH_AXES),
    MESH_AXES,
    axis_types=(AxisType.Auto,) * len(MESH_AXES),
    devices=devices,
  )


def logical_to_spec(
  names: Sequence[str | None],
  shape: Sequence[int],
  mesh: Mesh,
  rules: Rules = DEFAULT_RULES,
  fallbacks: list | None = None,
) -> PartitionSpec:
  """PartitionSpec of an array with logical axis ``names`` and ``shape`` on ``mesh``.

  A mesh axis shards at most one dimension (the first that claims it). A dimension not
  divisible by the product of its mesh axes keeps the longest prefix of them that
  divides it (none = replicated); each such case is appended to ``fallbacks`` as
  ``(name, size, wanted axes, kept axes)``.
  """
  if len(names) != len(shape):
    raise ValueError(f"{len(names)} axis names {tuple(names)} for a {len(shape)}-d shape")
  table = {}
  for name, axes in rules:
    table.setdefault(name, axes)
  used, spec = set(), []
  for name, size in zip(names, shape, strict=True):
    axes = table.get(name)
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used)
    kept = axes
    while kept and size % math.prod(mesh.shape[a] for a in kept):
      kept = kept[:-1]
    if kept != axes and fallbacks is not None:
      fallbacks.append((name, size, axes, kept))
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else kept)
  return PartitionSpec(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _log_fallbacks(fallbacks: list, mesh: Mesh) -> None:
  for name, size, axes, kept in dict.fromkeys(fallbacks):
    logging.warning(
      "sharding: %r dimension of size %d is not divisible by mesh axes %s %s; sharded over %s",
      name,
      size,
      axes,
      tuple(mesh.shape[a] for a in axes),
      kept or "nothing (replicated)",
    )


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """``NamedSharding``s for every array of ``tree``, with the same tree structure.

  ``nnx.Variable`` leaves (parameters, and optax states built by mapping over them, such
  as Adam's ``mu``/``nu``) are sharded by their logical names; everything else
  (step counters, scalars, RNG keys, factored statistics whose shape differs from the
  names) is replicated. Variables in the result hold their sharding as value, so the
  result's structure equals ``tree``'s, as ``jax.device_put`` and sharding constraints
  need.

  Args:
    tree: pytree of arrays or ``jax.ShapeDtypeStruct``s, e.g. a ``TrainState``.
    mesh: target mesh.
    rules: logical-to-mesh axis rules.
  """
  fallbacks = []

  def leaf(x):
    value = x.get_value() if _is_variable(x) else x
    ndim = len(getattr(value, "shape", ()))
    names = x.get_metadata("out_sharding", None) if _is_variable(x) else None
    if names is not None and len(names) == ndim:
      spec = logical_to_spec(names, value.shape, mesh, rules, fallbacks)
    else:
      spec = PartitionSpec()
    sharding = NamedSharding(mesh, spec)
    return x.replace(sharding) if _is_variable(x) else sharding

  out = jax.tree.map(leaf, tree, is_leaf=_is_variable)
  _log_fallbacks(fallbacks, mesh)
  return out


def _put(x, sharding: NamedSharding):
  """``x`` on ``sharding``; multi-host, from this host's copy of a replicated value."""
  if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_tree(tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """``tree`` placed on ``mesh`` per ``tree_shardings`` (e.g. the model's non-param state).

  Multi-host, every process must pass the same values (e.g. the same init seed).
  """
  shardings = tree_shardings(tree, mesh, rules)
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(
    treedef, [_put(x, s) for x, s in zip(leaves, jax.tree.leaves(shardings), strict=True)]
  )


def shard_train_state(state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """A ``train.TrainState`` with params and optimizer state sharded by their logical names.

  Step and RNG are replicated. The result also serves as the ``like`` of
  ``Checkpointer.restore``, which then restores straight onto this mesh.
  """
  return shard_tree(state, mesh, rules)


def abstract_state(state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
  """``jax.ShapeDtypeStruct``s of ``state`` (arrays or abstract) carrying its mesh shardings.

  The restore target for ``Checkpointer.restore(step, like=...)`` onto ``mesh``, without
  allocating the state first.
  """
  shardings = jax.tree.leaves(tree_shardings(state, mesh, rules))
  leaves, treedef = jax.tree.flatten(state)
  return jax.tree.unflatten(
    treedef,
    [
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
      for x, s in zip(leaves, shardings, strict=True)
    ],
  )


def keep_state_sharding(
  step_fn: Callable, state_shardings: Any, *, donate: bool = True
) -> Callable:
  """Jits ``step_fn(state, *args) -> (state, out)`` so the new state keeps ``state_shardings``.

  ``step_fn`` is e.g. ``train.make_train_step(...)`` (already jitted: it is inlined).
  Without the constraint XLA may return updated parameters or optimizer moments laid
  out differently from the declared rules (its choice, not ours).

  Args:
    step_fn: the step.
    state_shardings: ``tree_shardings(state, mesh, rules)``.
    donate: donate the input state's buffers.
  """

  def step(state, *args):
    new, out = step_fn(state, *args)
    return jax.lax.with_sharding_constraint(new, state_shardings), out

  return jax.jit(step, donate_argnums=(0,) if donate else ())


def batch_sharding(
  shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES, fallbacks: list | None = None
) -> NamedSharding:
  """Sharding of a batch-major array of global ``shape`` (leading axis 'batch')."""
  names = ("batch",) + (None,) * (len(shape) - 1)
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules, fallbacks))


def process_rows(mesh: Mesh, batch_size: int, rules: Rules = DEFAULT_RULES) -> np.ndarray:
  """Global batch rows this process feeds to its devices, in its local-batch order.

  That order is the one ``jax.make_array_from_process_local_data`` (``shard_batch``)
  expects: the distinct row blocks of this process's devices, ascending. One process:
  all rows.
  """
  sharding = batch_sharding((batch_size,), mesh, rules)
  index_map = sharding.addressable_devices_indices_map((batch_size,))
  blocks = sorted({(idx[0].start or 0, idx[0].stop or batch_size) for idx in index_map.values()})
  return np.concatenate([np.arange(start, stop) for start, stop in blocks])


def shard_batch(
  batch: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, global_batch_size: int | None = None
) -> Any:
  """Host numpy batch -> global ``jax.Array``s sharded over the batch axis (data, fsdp).

  Args:
    batch: pytree (e.g. ``Batch``) of batch-major host arrays. One process: every row
      of the global batch. Several: this process's rows, ``process_rows`` order.
    mesh: target mesh.
    rules: rules for the 'batch' axis; a batch that does not split evenly falls back to
      fewer axes or replication (logged).
    global_batch_size: rows of the global batch; needed with several processes.
  """
  multi = jax.process_count() > 1
  if multi and global_batch_size is None:
    raise ValueError("shard_batch needs global_batch_size with several processes")
  fallbacks = []

  def one(x):
    x = np.asarray(x)
    rows = global_batch_size if multi else x.shape[0]
    shape = (rows, *x.shape[1:])
    sharding = batch_sharding(shape, mesh, rules, fallbacks)
    return jax.make_array_from_process_local_data(sharding, x, shape if multi else None)

  out = jax.tree.map(one, batch)
  _log_fallbacks(fallbacks, mesh)
  return out


def cache_shardings(cache: KVCache, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> KVCache:
  """``NamedSharding``s of a ``KVCache`` (rows over data/fsdp, kv heads over tensor)."""
  fallbacks = []

  def one(names, x):
    return NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules, fallbacks))

  out = KVCache(
    k=tuple(one(CACHE_AXES.k, x) for x in cache.k),
    v=tuple(one(CACHE_AXES.v, x) for x in cache.v),
    segment_ids=one(CACHE_AXES.segment_ids, cache.segment_ids),
    length=one(CACHE_AXES.length, cache.length),
  )
  _log_fallbacks(fallbacks, mesh)
  return out


def primary_first(fn: Callable[[], Any], name: str = "primary_first") -> Any:
  """Runs ``fn`` on process 0, then (after a barrier) on the others.

  For work with shared side effects, e.g. training a tokenizer into the workdir that
  the other processes then load. One process: just ``fn()``.
  """
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils

  out = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(name)
  return out if jax.process_index() == 0 else fn()
