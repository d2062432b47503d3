"""Optimisers and learning-rate schedules from config, optionally over a trainable subset.

Two ways to train only part of a model, for two granularities:

* whole parameters (adapters, selected layers): split them off before the optimiser
  ever sees them (``train.split_model(model, train.trainable_filter(regex))``,
  ``train.trainable`` in the config); frozen leaves live in the train step's
  ``frozen["rest"]``, have no optimizer state and are not in checkpoints.
* slices of parameters (selected attention heads of a projection): pass
  ``trainable``, a label function ``params -> pytree`` whose leaf per parameter is
  True / False or a bool array of the parameter's shape, traced inside the step (so a
  mask built from shapes, e.g. with ``jnp.arange``, costs no constant). The mask zeroes
  the gradient before clipping (frozen entries do not count in the norm) and the final
  update after weight decay, so frozen entries receive an update of exactly 0 and stay
  bit-identical (p + 0 == p; only a stored -0.0 would turn into +0.0). Unlike the split,
  frozen entries still have (unused) optimizer moments.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "sgd")


def make_schedule(
  *, lr: float, warmup_steps: int, total_steps: int, decay: str, final_lr_frac: float
) -> optax.Schedule:
  """Linear warmup from 0 to ``lr`` then ``decay`` down to ``final_lr_frac * lr``."""
  if decay not in SCHEDULES:
    raise ValueError(f"optim.decay={decay!r}; expected one of {SCHEDULES}")
  warmup_steps = max(0, min(warmup_steps, total_steps))
  decay_steps = max(1, total_steps - warmup_steps)
  end = lr * final_lr_frac
  if decay == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=final_lr_frac)
  elif decay == "linear":
    after = optax.linear_schedule(lr, end, decay_steps)
  else:
    after = optax.constant_schedule(lr)
  if warmup_steps == 0:
    return after
  warm = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warm, after], [warmup_steps])


def mask_updates(trainable: Callable) -> optax.GradientTransformation:
  """Multiplies each update by its leaf's mask from ``trainable(params)`` (bool or array).

  Stateless; needs ``params`` in ``update`` (the masks are a function of them).
  """

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("mask_updates needs params (the trainable masks are built from them)")
    masks = trainable(params)
    out = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, masks)
    return out, state

  return optax.GradientTransformation(init, update)


def make_optimizer(
  optim_config, total_steps: int, *, trainable: Callable | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax chain (clip -> optimiser) and its schedule from ``config.optim``.

  Args:
    optim_config: the ``optim`` section.
    total_steps: optimiser updates of the run (the schedule's length).
    trainable: optional label function ``params -> pytree`` of True / False / bool
      arrays (see the module docstring); None trains every leaf it is given.
  """
  c = optim_config
  schedule = make_schedule(
    lr=c.lr,
    warmup_steps=c.warmup_steps,
    total_steps=total_steps,
    decay=c.decay,
    final_lr_frac=c.final_lr_frac,
  )
  if c.name == "adamw":
    opt = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
  elif c.name == "sgd":
    opt = optax.sgd(schedule, momentum=c.b1 or None)
  else:
    raise ValueError(f"optim.name={c.name!r}; expected one of {OPTIMIZERS}")
  parts = [optax.clip_by_global_norm(c.grad_clip)] if c.grad_clip > 0 else []
  if trainable is None:
    return optax.chain(*parts, opt), schedule
  return optax.chain(mask_updates(trainable), *parts, opt, mask_updates(trainable)), schedule
