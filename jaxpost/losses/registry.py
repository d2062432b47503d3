"""Loss registry: config name -> loss function.

Two families share the registry, each with one contract. Token-level losses (SFT and its
variants, distillation; ``sft.py``)::

    loss(logits: f32[B, T, V] | FusedHead, batch: Batch, *, norm: Normalizers, **hparams)
        -> (loss: f32[], metrics: dict[str, f32[]])

Policy losses (the GRPO family; ``policy.py``) take the current policy's log-probs::

    loss(logp: f32[B, T], rollout: Rollout, *, norm: Normalizers, entropy=None, **hparams)
        -> (loss: f32[], metrics: dict[str, f32[]])

``norm`` holds the global-batch counts (see ``losses/reduce.py``). Both the loss and
every metric must be *additive over micro-batches*: already divided by the global
normalisers, so the train step can sum them across gradient-accumulation steps.
Hyperparameters are keyword-only and bound with ``functools.partial`` outside jit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LossFn = Callable[..., tuple[Any, dict[str, Any]]]

_LOSSES: dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
  """Decorator adding a loss under ``name`` (equal to the config's ``loss.name``)."""

  def wrap(fn: LossFn) -> LossFn:
    if name in _LOSSES:
      raise ValueError(f"loss {name!r} is already registered")
    _LOSSES[name] = fn
    return fn

  return wrap


def get(name: str) -> LossFn:
  """Looks up a loss by name, with the list of known names in the error."""
  _import_builtin_losses()
  try:
    return _LOSSES[name]
  except KeyError:
    raise KeyError(f"unknown loss {name!r}; registered: {sorted(_LOSSES)}") from None


def names() -> list[str]:
  _import_builtin_losses()
  return sorted(_LOSSES)


def _import_builtin_losses() -> None:
  # Importing the family modules runs their @register decorators.
  from jaxpost.losses import policy, sft  # noqa: F401
