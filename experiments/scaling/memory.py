"""Per-device memory of parameters + AdamW state for the real model sizes on several meshes.

Computed from shapes, never allocated: the parameter shapes and dtypes come from
``nnx.eval_shape`` of the ``Decoder``, the optimizer state from
``jax.eval_shape(optimizer.init, params)`` of the optax chain that ``configs/sft.py`` builds
(clip-by-global-norm + AdamW: ``mu`` and ``nu``, each shaped and typed like the parameters,
plus step counts), and each array's logical axis names from ``nnx.get_partition_spec``.

The names go through jaxpost's own rules (``jaxpost.sharding.DEFAULT_RULES`` and
``logical_to_spec``, the code that shards a real run):
  embed -> fsdp;  vocab, q_heads, kv_heads, mlp -> tensor;  head_dim, norm -> replicated;
  parameters are replicated along data; arrays without names (step counts) are replicated.
A dimension is split only if its size divides by its mesh axis; otherwise it stays whole
(listed in the "kept whole" column). Per-device shapes come from
``NamedSharding(AbstractMesh(...), spec).shard_shape`` and are checked against dividing
each sharded dimension by hand.

  python experiments/scaling/memory.py [--out experiments/scaling/memory.md]

Prints the markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from jaxpost import models, optim, sharding, train
from jaxpost.config_lib import MESH_AXES, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = ("qwen2.5-0.5b", "qwen3-0.6b", "llama3.2-1b")
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class MeshShape:
  """Sizes of the (data, fsdp, tensor) mesh axes, and hardware with that many devices."""

  hardware: str
  data: int = 1
  fsdp: int = 1
  tensor: int = 1

  @property
  def devices(self) -> int:
    return self.data * self.fsdp * self.tensor

  def abstract(self) -> AbstractMesh:
    return AbstractMesh(tuple(getattr(self, a) for a in MESH_AXES), MESH_AXES)

  def overrides(self) -> str:
    """The main.py flags for this mesh (mesh.data defaults to -1: the devices left over)."""
    parts = [f"--config.mesh.{a}={getattr(self, a)}" for a in MESH_AXES if getattr(self, a) > 1]
    return " ".join(parts) or "(none)"

  def describe(self) -> str:
    parts = [f"{a}={getattr(self, a)}" for a in MESH_AXES if getattr(self, a) > 1]
    return " x ".join(parts) or "1 device"


MESHES = (
  MeshShape("any single accelerator"),
  MeshShape("v5e-8 = v5litepod-8; 8 x H100", fsdp=8),
  MeshShape("v5e-8", fsdp=4, tensor=2),
  MeshShape("v5e-8", fsdp=2, tensor=4),
  MeshShape("v4-32: 16 chips, 4 hosts", data=2, fsdp=4, tensor=2),
  MeshShape("v5e-32 = v5litepod-32; v4-64", data=2, fsdp=8, tensor=2),
)


@dataclasses.dataclass
class Footprint:
  """Bytes on one device, and the dimensions that could not be split."""

  params: int = 0
  opt_state: int = 0
  kept_whole: set = dataclasses.field(default_factory=set)

  @property
  def total(self) -> int:
    return self.params + self.opt_state


def per_device_bytes(shape, dtype, names, mesh: MeshShape, kept_whole: set) -> int:
  """Bytes of one array on one device, sharded as jaxpost.sharding shards it.

  Args:
    shape: the array's global shape.
    dtype: its dtype.
    names: one logical axis name per dimension, or () for an unnamed array (replicated).
    mesh: the mesh.
    kept_whole: collects ``(name, size, mesh axes)`` of each dimension whose size does not
      divide by its mesh axes (kept whole instead).
  """
  abstract = mesh.abstract()
  spec = PartitionSpec()
  if names and len(names) == len(shape):
    fallbacks = []
    spec = sharding.logical_to_spec(names, shape, abstract, sharding.DEFAULT_RULES, fallbacks)
    kept_whole.update((name, size, axes) for name, size, axes, _ in fallbacks)
  local = tuple(NamedSharding(abstract, spec).shard_shape(tuple(shape)))
  by_hand = []
  for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    n = math.prod(getattr(mesh, a) for a in axes)
    assert size % n == 0, (shape, spec)
    by_hand.append(size // n)
  assert local == tuple(by_hand), (shape, spec, local, by_hand)
  return math.prod(local) * jnp.dtype(dtype).itemsize


@functools.cache
def abstract_train_state(size: str, param_dtype: str):
  """((params, their PartitionSpecs), (optimizer state, its PartitionSpecs)), all abstract."""
  cfg = models.named_config(size, param_dtype=param_dtype, dtype=param_dtype)
  model = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
  _, params, _ = train.split_model(model)
  config = load_config(os.path.join(ROOT, "configs", "sft.py") + ":qwen2.5-0.5b")
  optimizer, _ = optim.make_optimizer(config.optim, config.train.steps)
  opt_state = jax.eval_shape(optimizer.init, params)
  return (params, nnx.get_partition_spec(params)), (opt_state, nnx.get_partition_spec(opt_state))


def leaves_with_names(tree, specs) -> list[tuple[tuple, object, tuple]]:
  """(shape, dtype, logical names) of every array leaf; names () when it has none."""

  def is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)

  arrays = jax.tree.leaves(tree)
  spec_leaves = jax.tree.leaves(specs, is_leaf=is_spec)
  assert len(arrays) == len(spec_leaves), (len(arrays), len(spec_leaves))
  return [
    (tuple(a.shape), a.dtype, tuple(s) if is_spec(s) else ())
    for a, s in zip(arrays, spec_leaves, strict=True)
  ]


def footprint(size: str, param_dtype: str, mesh: MeshShape) -> Footprint:
  (params, pspecs), (opt_state, ospecs) = abstract_train_state(size, param_dtype)
  fp = Footprint()
  for shape, dtype, names in leaves_with_names(params, pspecs):
    assert names, f"parameter of shape {shape} has no logical names"
    fp.params += per_device_bytes(shape, dtype, names, mesh, fp.kept_whole)
  for shape, dtype, names in leaves_with_names(opt_state, ospecs):
    fp.opt_state += per_device_bytes(shape, dtype, names, mesh, fp.kept_whole)
  return fp


def check_unsharded(size: str, param_dtype: str, fp: Footprint) -> None:
  """On one device: params == count x itemsize, AdamW == 2 x params + the step counts."""
  cfg = models.named_config(size, param_dtype=param_dtype)
  itemsize = jnp.dtype(cfg.jnp_param_dtype).itemsize
  count = models.param_count(cfg)
  assert fp.params == count * itemsize, (size, fp.params, count * itemsize)
  opt_state, ospecs = abstract_train_state(size, param_dtype)[1]
  leaves = leaves_with_names(opt_state, ospecs)
  scalars = sum(jnp.dtype(dtype).itemsize for shape, dtype, _ in leaves if shape == ())
  assert fp.opt_state == 2 * count * itemsize + scalars, (size, fp.opt_state, scalars)


def gib(n: int) -> str:
  return f"{n / GIB:.3f}"


def table() -> str:
  header = (
    "| model | params | devices | mesh (hardware) | overrides | f32 params | f32 AdamW "
    "| **f32 total** | bf16 params | bf16 AdamW | **bf16 total** | kept whole |"
  )
  rows = [header, "|" + "---|" * 12]
  for size in SIZES:
    count = models.param_count(models.named_config(size))
    for mesh in MESHES:
      f32 = footprint(size, "float32", mesh)
      bf16 = footprint(size, "bfloat16", mesh)
      if mesh.devices == 1:
        check_unsharded(size, "float32", f32)
        check_unsharded(size, "bfloat16", bf16)
      assert f32.kept_whole == bf16.kept_whole
      whole = ", ".join(
        f"{name} {n} on {'*'.join(axes)}={math.prod(getattr(mesh, a) for a in axes)}"
        for name, n, axes in sorted(f32.kept_whole)
      )
      rows.append(
        f"| {size} | {count / 1e6:.1f}M | {mesh.devices} | {mesh.describe()} ({mesh.hardware}) "
        f"| `{mesh.overrides()}` | {gib(f32.params)} | {gib(f32.opt_state)} "
        f"| **{gib(f32.total)}** | {gib(bf16.params)} | {gib(bf16.opt_state)} "
        f"| **{gib(bf16.total)}** | {whole or '-'} |"
      )
  return "\n".join(rows)


PREAMBLE = """\
# Scaling out: per-device memory of parameters + optimizer state

Generated by `python experiments/scaling/memory.py` (do not edit by hand). GiB = 2^30 bytes
on each device. Computed from `jax.eval_shape`, not estimated: parameter shapes from the
`Decoder` of each named size, optimizer state from `jax.eval_shape(optimizer.init, params)`
of the chain `configs/sft.py` builds (global-norm clip + AdamW: `mu` and `nu` shaped and
typed like the parameters, plus int32 step counts). On one device the script checks
params = parameter count x bytes per element and AdamW = 2 x params + the step counts.

- **f32**: float32 parameters (the master copy) and float32 `mu`/`nu`
  (`--config.model.param_dtype=float32`). **bf16**: bfloat16 parameters and, as optax keeps
  the moments in the parameter dtype, bfloat16 `mu`/`nu`
  (`--config.model.param_dtype=bfloat16`).
- Sharding: the logical axis names of `nnx.get_partition_spec` through jaxpost's rules
  (`jaxpost/sharding.py`, the code that shards a real run): `embed` -> fsdp; `vocab`,
  `q_heads`, `kv_heads`, `mlp` -> tensor; `head_dim`, `norm` replicated; parameters are
  replicated along data. A dimension whose size does not divide by its mesh axis stays whole
  (last column), so such rows cost more than total / (fsdp x tensor). Per-device shapes are
  JAX's `NamedSharding.shard_shape` on an `AbstractMesh`.
- Not included: gradients (one more params-sized buffer with the params' sharding during the
  step), activations (batch- and sequence-dependent), rollout KV caches, XLA scratch.
  HBM per device for scale: v5e 16 GiB, v4 32 GiB, H100 80 GB (74.5 GiB).
- Overrides: the mesh flags for `python -m jaxpost.main` (and `tpu/launch.sh`,
  `tpu/gpu_multinode.sh`); `mesh.data` defaults to -1, the devices left over. The global
  batch must divide by data x fsdp.

"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "scaling", "memory.md"))
  args = parser.parse_args()
  text = PREAMBLE + table() + "\n"
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
