"""Optimisers and learning-rate schedules from config."""

from __future__ import annotations

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


def make_optimizer(
  optim_config, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax chain (clip -> optimiser) and its schedule from ``config.optim``."""
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
  return optax.chain(*parts, opt), schedule
