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

A copy of the parameters that *follows* them (``follow_params``: a lagged copy synced
every N updates, or an exponential moving average) lives in the optimizer state, so it
is checkpointed, restored, sharded and updated inside the compiled step like Adam's
moments. Self-distillation reads it as its teacher (``teacher.follow``; the train step
passes it to the objective as ``frozen["teacher"]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "sgd")
FOLLOW = ("lagged", "ema")


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


class StartState(NamedTuple):
  start: optax.Params  # the parameters at the first update


def pull_to_start(strength: float) -> optax.GradientTransformation:
  """Adds ``strength`` * (params - start) to the gradient: the gradient of the penalty
  (strength / 2) ||theta - theta_0||^2, theta_0 the parameters the run started from
  (kept in the state, so a resume pulls toward the same point). For adapters it is
  RegLoRA's L2-to-initialisation; for full fine-tuning, L2-SP. Put it first in a chain,
  where the loss's gradient enters."""
  if strength < 0:
    raise ValueError(f"pull_to_start strength must be >= 0, got {strength}")

  def init(params):
    return StartState(jax.tree.map(jnp.array, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pull_to_start needs params")
    pulled = jax.tree.map(lambda u, p, s: u + strength * (p - s).astype(u.dtype),
                          updates, params, state.start)  # fmt: skip
    return pulled, state

  return optax.GradientTransformation(init, update)


class FollowState(NamedTuple):
  """The following copy: ``count`` updates seen, ``params`` the copy (params' structure)."""

  count: jax.Array
  params: Any


def follow_params(kind: str, *, every: int = 1, decay: float = 0.99):
  """A stateful no-op transformation whose state is a copy that follows the parameters.

  It starts as the initial parameters. After each update (the parameters it is given
  plus the final updates, so put it last in a chain):

    lagged  copy <- new params when the update count is a multiple of ``every``
            (the copy is the parameters of at most ``every`` - 1 updates ago);
    ema     copy <- decay * copy + (1 - decay) * new params.

  The updates pass through unchanged; ``followed_params`` reads the copy.
  """
  if kind not in FOLLOW:
    raise ValueError(f"follow kind {kind!r}; expected one of {FOLLOW}")
  if every < 1 or not 0.0 <= decay < 1.0:
    raise ValueError(f"follow needs every >= 1 and 0 <= decay < 1, got {every}, {decay}")

  def init(params):
    return FollowState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.array, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("follow_params needs params (the copy follows them)")
    new = optax.apply_updates(params, updates)
    count = state.count + 1
    if kind == "lagged":
      sync = count % every == 0
      copy = jax.tree.map(lambda n, c: jnp.where(sync, n, c), new, state.params)
    else:
      copy = jax.tree.map(
        lambda n, c: (decay * c.astype(jnp.float32) + (1.0 - decay) * n).astype(c.dtype),
        new,
        state.params,
      )
    return updates, FollowState(count, copy)

  return optax.GradientTransformation(init, update)


def followed_params(opt_state) -> Any | None:
  """The following copy held in ``opt_state`` (``follow_params``), or None."""
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, FollowState))
    if isinstance(s, FollowState)
  ]
  if len(found) > 1:
    raise ValueError("the optimizer state holds more than one following copy")
  return found[0].params if found else None


def make_optimizer(
  optim_config,
  total_steps: int,
  *,
  trainable: Callable | None = None,
  follow: optax.GradientTransformation | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax chain (pull to start -> clip -> optimiser) and its schedule from
  ``config.optim``.

  Args:
    optim_config: the ``optim`` section.
    total_steps: optimiser updates of the run (the schedule's length).
    trainable: optional label function ``params -> pytree`` of True / False / bool
      arrays (see the module docstring); None trains every leaf it is given.
    follow: a ``follow_params`` transformation, chained last (it sees the final updates).
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
  if c.get("l2_to_start", 0.0) > 0:
    parts = [pull_to_start(c.l2_to_start), *parts]
  if trainable is not None:
    parts = [mask_updates(trainable), *parts, opt, mask_updates(trainable)]
  else:
    parts = [*parts, opt]
  return optax.chain(*parts, *([follow] if follow is not None else [])), schedule
