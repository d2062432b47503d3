"""Uniform and weighted parameter averaging, of pytrees and of saved runs.

``average`` is pure and jit-able: each leaf is accumulated in float32 (or wider, for
f64 inputs) and cast back to its dtype, so bf16 models average without drift from
repeated rounding, and arrays keep whatever sharding ``jax.tree.map`` gives them (the
result of elementwise ops on identically sharded inputs is sharded the same way).
``merge_runs`` reads the latest parameters of several runs and writes the average as a
run directory that ``train.init_from`` (and ``jaxpost.data.generated.load_run``) accept.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

MERGED_FILE = "merged.json"  # provenance of a merged run directory


def average(trees: Sequence, weights: Sequence[float] | None = None):
  """sum_i w_i * tree_i with w normalised to sum to 1 (uniform when ``weights`` is None).

  Args:
    trees: K >= 1 pytrees of arrays with one structure, and the same shape and dtype
      leaf by leaf (parameters of K branches of one model).
    weights: K non-negative numbers, not all 0; normalised here.

  Returns:
    A pytree like ``trees[0]``.

  Raises:
    ValueError: no trees, structures / shapes / dtypes that differ (the first differing
      path is named), or bad weights.
  """
  if not trees:
    raise ValueError("average needs at least one tree")
  k = len(trees)
  w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"weights must be {k} finite numbers >= 0, not all 0; got {weights!r}")
  w = w / w.sum()
  first, treedef = jax.tree_util.tree_flatten_with_path(trees[0])
  flats = [first]
  for i, tree in enumerate(trees[1:], start=1):
    flat, other = jax.tree_util.tree_flatten_with_path(tree)
    if other != treedef:
      raise ValueError(f"tree {i} has another structure than tree 0")
    flats.append(flat)
  leaves = []
  for j, (path, x0) in enumerate(first):
    xs = [flat[j][1] for flat in flats]
    for i, x in enumerate(xs):
      if x.shape != x0.shape or x.dtype != x0.dtype:
        name = jax.tree_util.keystr(path)
        raise ValueError(
          f"{name}: tree {i} has {x.dtype}{list(x.shape)}, tree 0 {x0.dtype}{list(x0.shape)}"
        )
    acc = jnp.result_type(jnp.float32, x0.dtype)
    total = sum(jnp.asarray(x, acc) * float(wi) for x, wi in zip(xs, w, strict=True))
    leaves.append(total.astype(x0.dtype))
  return jax.tree.unflatten(treedef, leaves)


def merge_runs(
  runs: Sequence[str], out: str, weights: Sequence[float] | None = None, *, tokenizer: str = ""
) -> str:
  """Averages the latest parameters of ``runs`` into a new run directory ``out``.

  ``out`` gets ``checkpoints/`` (the averaged ``state.params``, step 0), the first
  run's ``run.json``, the runs' tokenizer (those holding a tokenizer file must hold
  the same one), and ``merged.json`` naming the sources and weights. Runs that trained
  different parameter subsets cannot be merged (their saved trees differ).

  Args:
    runs: run directories (or ``zoo:NAME``) with ``checkpoints/``.
    out: the directory to write; must not hold a checkpoint yet.
    weights: per run, as ``average``'s.
    tokenizer: where the runs' tokenizer is when they hold none themselves (their
      ``tokenizer.path``: a ``.model`` file, or a run / ``zoo:NAME`` holding one), so
      that ``out`` carries it.

  Returns:
    ``out``.
  """
  from jaxpost import checkpoint, workdir, zoo

  dirs = [zoo.resolve(r) for r in runs]
  params = [checkpoint.latest_params_tree(d, "merging") for d in dirs]
  # A run that read its tokenizer from elsewhere (tokenizer.path) holds no file to compare.
  tokenizers = {d: _read(os.path.join(d, "tokenizer.model")) for d in dirs}
  if len({t for t in tokenizers.values() if t is not None}) > 1:
    raise ValueError(f"the runs {dirs} were trained with different tokenizers")
  source = next((os.path.join(d, "tokenizer.model") for d, t in tokenizers.items() if t), None)
  if source is None and tokenizer:
    given = zoo.resolve(tokenizer)
    given = os.path.join(given, "tokenizer.model") if os.path.isdir(given) else given
    source = given if given.endswith(".model") and os.path.isfile(given) else None
  merged = average(params, weights)
  if os.path.isdir(os.path.join(out, "checkpoints")):
    raise ValueError(f"{out!r} already holds checkpoints")
  os.makedirs(out, exist_ok=True)
  ckpt = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), keep=1, async_save=False)
  ckpt.save(0, {"params": merged}, {"merged_from": dirs}, force=True)
  ckpt.close()
  if source is not None:
    shutil.copyfile(source, os.path.join(out, "tokenizer.model"))
  identity = os.path.join(dirs[0], workdir.IDENTITY_FILE)
  if os.path.exists(identity):
    shutil.copyfile(identity, os.path.join(out, workdir.IDENTITY_FILE))
  k = len(dirs)
  w = [1.0 / k] * k if weights is None else [float(x) / sum(weights) for x in weights]
  with open(os.path.join(out, MERGED_FILE), "w", encoding="utf-8") as f:
    json.dump({"runs": dirs, "weights": w}, f, indent=1)
  return out


def _read(path: str) -> bytes | None:
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    return f.read()
