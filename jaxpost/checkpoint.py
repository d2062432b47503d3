"""Orbax checkpoints: train state + data position, async save, keep-N, resume.

A checkpoint holds two items: ``state`` (the ``TrainState`` pytree: params, optimizer
state, step, RNG) and ``data`` (a JSON dict with the data position and anything else
the host loop needs), so a resumed run continues exactly where the saved one was.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` with jaxpost's two items."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data")
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data: dict, *, force: bool = False) -> bool:
    """Starts a (possibly asynchronous) save of ``state`` and the JSON ``data``."""
    return self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
      force=force,
    )

  def restore(self, step: int | None, like: Any) -> tuple[Any, dict]:
    """Restores ``(state, data)`` at ``step`` (latest if None).

    Args:
      step: checkpoint step or None for the latest.
      like: a pytree with the target structure, shapes, dtypes and shardings
        (concrete arrays or ``jax.ShapeDtypeStruct``); Orbax needs it to rebuild
        the state on the current devices. The shardings need not be those the
        checkpoint was saved with: each process reads just its shards of the target
        layout, so a state saved on one mesh restores onto another (more or fewer
        devices, other axes), e.g. ``like=sharding.abstract_state(state, mesh)``.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
      ),
    )
    return out.state, dict(out.data)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def raw_restore():
  """Restore args for a checkpoint read without a target tree, onto this process's
  devices whatever topology saved it (a run on 8 devices read by one on 1)."""
  return ocp.args.StandardRestore(
    fallback_sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  )


def load_params(
  workdir: str, like: Any, *, what: str = "train.init_from", step: int | None = None
) -> tuple[Any, list[str]]:
  """Parameters of the latest (or ``step``'s) checkpoint of the run in ``workdir``,
  shaped like ``like``.

  Only the saved ``state.params`` are read (raw, without a target), so that run's
  optimizer, step and trainable subset may differ from this one's. A leaf of ``like``
  that the checkpoint does not hold (e.g. the frozen base of an adapter run) keeps its
  value from ``like``; the caller is told which, never silently.

  Args:
    workdir: a run directory with ``checkpoints/``.
    like: a params pytree (an ``nnx.State``) with the target structure and dtypes.
    what: the config field that named ``workdir``, for error messages.

  Returns:
    (params shaped and typed like ``like``, dotted paths taken from ``like``).

  Raises:
    ValueError: no checkpoint, a leaf whose shape differs, or no leaf in common.
  """
  import logging

  import jax.numpy as jnp

  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
  if step is not None and step not in manager.all_steps():
    manager.close()
    raise ValueError(f"{what}={workdir!r} has no checkpoint of step {step}")
  step = manager.latest_step() if step is None else step
  if step is None:
    manager.close()
    raise ValueError(f"{what}={workdir!r} has no checkpoint")
  saved = manager.restore(step, args=ocp.args.Composite(state=raw_restore()))
  manager.close()
  tree = saved.state["params"]
  flat, treedef = jax.tree_util.tree_flatten_with_path(like)
  leaves, kept = [], []
  for path, x in flat:
    names = [key_name(k) for k in path]
    node = tree
    for k in names:
      node = node.get(k) if isinstance(node, dict) else None
      if node is None:
        break
    if node is None:
      kept.append(".".join(names))
      leaves.append(x)
      continue
    if node.shape != x.shape:
      raise ValueError(
        f"{what}: parameter {'.'.join(names)} has shape {node.shape} in the checkpoint but "
        f"{x.shape} here; use that run's model size"
      )
    leaves.append(jnp.asarray(node, x.dtype))
  if len(kept) == len(flat):
    raise ValueError(f"{what}={workdir!r}: no parameter of this model is in its checkpoint")
  logging.info("loaded %s (step %d); %d leaves not in it", directory, step, len(kept))
  return jax.tree.unflatten(treedef, leaves), kept


def load_state(workdir: str, like: Any) -> tuple[Any, dict]:
  """The latest ``(state, data)`` of the run in ``workdir``, shaped like ``like``: another
  run's whole train state, to continue it in a new workdir (a fork). Read-only.

  Raises:
    ValueError: no checkpoint there, or one whose state does not fit ``like``.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise ValueError(f"{workdir!r} has no checkpoints/ directory")
  manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
  try:
    step = manager.latest_step()
    if step is None:
      raise ValueError(f"{workdir!r} has no checkpoint")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      out = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        ),
      )
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
        f"the train state saved in {workdir!r} (step {step}) does not fit this run's "
        f"(another model size, optimizer or trainable subset?): {str(e).splitlines()[0]}"
      ) from None
  finally:
    manager.close()
  return out.state, dict(out.data)


def key_name(k) -> str:
  """The name of one pytree key-path entry (dict key, attribute or index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def latest_params_tree(workdir: str, what: str = "run"):
  """The raw ``state.params`` pytree of a run's latest checkpoint (no target)."""
  return latest_state_tree(workdir, what)["params"]


def latest_state_tree(workdir: str, what: str = "run") -> dict:
  """The raw train state of a run's latest checkpoint as a dict (no target): ``step``,
  ``params``, ``opt_state``, ``rng`` and, for a stateful loss, ``loss_state``."""
  manager = ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")), item_names=("state", "data")
  )
  step = manager.latest_step()
  if step is None:
    manager.close()
    raise ValueError(f"{what} {workdir!r} has no checkpoint")
  saved = manager.restore(step, args=ocp.args.Composite(state=raw_restore()))
  manager.close()
  return dict(saved.state)


def saved_params(workdir: str) -> dict[str, np.ndarray]:
  """{dotted path: array} of the parameters in a run's latest checkpoint: what the run
  trained and saved (adapters only for a LoRA run)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(latest_params_tree(workdir))
  names = [[key_name(k) for k in path] for path, _ in flat]
  return {
    ".".join(n[:-1] if n and n[-1] == "value" else n): np.asarray(x)
    for n, (_, x) in zip(names, flat, strict=True)
  }
