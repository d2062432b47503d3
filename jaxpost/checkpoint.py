"""Orbax checkpoints: train state + data position, async save, keep-N, resume.

A checkpoint holds two items: ``state`` (the ``TrainState`` pytree: params, optimizer
state, step, RNG) and ``data`` (a JSON dict with the data position and anything else
the host loop needs), so a resumed run continues exactly where the saved one was.
"""

from __future__ import annotations

import os
from typing import Any

import jax
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
