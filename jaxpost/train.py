"""The one train step: a pure, jitted function of (TrainState, Batch).

Every recipe that updates a model by gradient (SFT, distillation, RL) goes through
``make_train_step``: the model is split once with ``nnx.split`` into a static graph
and a state pytree, the loss is looked up by name and bound to its hyperparameters
outside jit, and gradient accumulation scans over micro-batches with normalisers
taken from the *whole* batch, so the result does not depend on the split.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxpost.losses.reduce import Normalizers, compute_normalizers
from jaxpost.types import Batch, Rollout


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs from the device side.

  Attributes:
    step: i32[] number of optimiser updates applied.
    params: trainable parameters (an ``nnx.State`` of ``nnx.Param``).
    opt_state: optax state.
    rng: u32[2] raw PRNG key data (raw so Orbax stores it as a plain array).
  """

  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array


def split_model(model: nnx.Module, trainable=nnx.Param):
  """Splits a model into (graphdef, trainable state, the rest)."""
  graphdef, params, rest = nnx.split(model, trainable, ...)
  return graphdef, params, rest


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation, seed: int):
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=jax.random.key_data(jax.random.key(seed)),
  )


# (params, rest, batch, norm) -> (loss, metrics). Recipes build one from a model call
# and a registered loss; distillation / RL provide their own (teacher, rollouts, ...).
# The batch is a ``Batch`` or a ``Rollout`` (RL: a Batch plus per-row advantages, ...).
ObjectiveFn = Callable[[nnx.State, nnx.State, Batch | Rollout, Normalizers], tuple[jax.Array, dict]]


def _token_batch(batch: Batch | Rollout) -> Batch:
  """The token ``Batch`` inside a ``Rollout`` (normalisers come from its loss mask)."""
  return batch.batch if isinstance(batch, Rollout) else batch


def model_outputs(
  model,
  batch: Batch,
  *,
  lm_head: str = "logits",
  chunk_size: int = 0,
  temperature: float = 1.0,
  columns: jax.Array | None = None,
):
  """What a loss consumes: f32 logits / T ``[B, T, V]``, or a ``FusedHead`` over the same.

  Args:
    model: the merged decoder.
    batch: uses tokens, positions, segment_ids.
    lm_head: "logits" (materialise [B, T, V]) or a fused path from
      ``jaxpost.losses.head.LM_HEADS``: the loss then gets a ``FusedHead`` and the fused
      kernel never builds the full logits. Values and gradients are the same.
    chunk_size: token rows per chunk of the fused op (0 = its default).
    temperature: divides the logits (a fused head folds it into the weight: logits / T =
      hidden @ (W / T)); the sampler records log_softmax(logits / T) the same way.
    columns: optional i32[B, W]: the LM head runs only at these positions of each row
      (the output is [B, W, V] or a head over [B, W] hidden states); the forward pass
      still covers all T tokens. E.g. an RL update scores completions, not prompts.
  """
  implementation = _fused_implementation(lm_head)
  if implementation is None and columns is None:
    logits = model(batch.tokens, positions=batch.positions, segment_ids=batch.segment_ids)
    logits = logits.astype(jnp.float32)
    return logits if temperature == 1.0 else logits / temperature  # divide, as sampled
  out = model.forward(
    batch.tokens,
    positions=batch.positions,
    segment_ids=batch.segment_ids,
    compute_logits=False,
  )
  hidden = out.final_hidden
  if columns is not None:
    hidden = jnp.take_along_axis(hidden, columns[..., None], axis=1)  # [B, W, D]
  return head_outputs(
    model, hidden, lm_head=lm_head, chunk_size=chunk_size, temperature=temperature
  )


def head_outputs(
  model, hidden: jax.Array, *, lm_head: str = "logits", chunk_size: int = 0, temperature=1.0
):
  """``model_outputs`` from final hidden states [..., D] already computed by the caller."""
  from jaxpost.losses.head import FusedHead

  implementation = _fused_implementation(lm_head)
  if implementation is None:
    logits = model.logits(hidden)
    return logits if temperature == 1.0 else logits / temperature
  weight = model.lm_head_weight().astype(jnp.float32)
  if temperature != 1.0:
    weight = weight / temperature
  return FusedHead(hidden, weight.astype(hidden.dtype), implementation, chunk_size)


def lm_objective(graphdef, loss_fn, *, lm_head: str = "logits", chunk_size: int = 0) -> ObjectiveFn:
  """Objective for losses on the model's own next-token distribution (SFT and variants).

  Args:
    graphdef: the model's static graph.
    loss_fn: registered loss with hyperparameters bound.
    lm_head, chunk_size: see ``model_outputs``.
  """
  _fused_implementation(lm_head)  # fail at build time, not inside jit

  def objective(params, rest, batch: Batch, norm: Normalizers):
    model = nnx.merge(graphdef, params, rest)
    outputs = model_outputs(model, batch, lm_head=lm_head, chunk_size=chunk_size)
    return loss_fn(outputs, batch, norm=norm)

  return objective


def _fused_implementation(lm_head: str) -> str | None:
  from jaxpost.losses.head import LM_HEADS

  if lm_head not in LM_HEADS:
    raise ValueError(f"unknown lm_head {lm_head!r}; expected one of {sorted(LM_HEADS)}")
  return LM_HEADS[lm_head]


def _split_microbatches(batch: Batch | Rollout, n: int) -> Batch | Rollout:
  # Every leaf is row-major (a Rollout's group_ids are [B]), so one reshape splits all.
  b = _token_batch(batch).tokens.shape[0]
  if b % n:
    raise ValueError(f"batch size {b} is not divisible by train.microbatches={n}")
  return jax.tree.map(lambda x: x.reshape(n, b // n, *x.shape[1:]), batch)  # [M, B/M, ...]


def accumulate_grads(
  objective: ObjectiveFn, params, rest, batch: Batch | Rollout, microbatches: int
):
  """Loss, metrics and gradient of the full batch, computed ``microbatches`` rows at a time.

  Every piece is normalised by the full batch's counts, so the sum over pieces equals
  the full-batch value and gradient (up to float summation order). ``batch`` may be a
  ``Rollout``: the counts then come from its ``batch.loss_mask`` (completion tokens).
  """
  tokens = _token_batch(batch)
  norm = compute_normalizers(tokens.loss_mask, tokens.segment_ids)
  grad_fn = jax.value_and_grad(objective, has_aux=True)
  if microbatches == 1:
    (loss, metrics), grads = grad_fn(params, rest, batch, norm)
    return loss, metrics, grads, norm

  def body(carry, mb):
    out = grad_fn(params, rest, mb, norm)
    return jax.tree.map(jnp.add, carry, out), None

  mbs = _split_microbatches(batch, microbatches)
  first = jax.tree.map(lambda x: x[0], mbs)
  zeros = jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype),
    jax.eval_shape(grad_fn, params, rest, first, norm),
  )
  ((loss, metrics), grads), _ = jax.lax.scan(body, zeros, mbs)
  return loss, metrics, grads, norm


def make_train_step(
  objective: ObjectiveFn,
  optimizer: optax.GradientTransformation,
  *,
  microbatches: int = 1,
  schedule: optax.Schedule | None = None,
  donate: bool = True,
):
  """Returns ``step(state, batch, rest) -> (state, metrics)``, jitted.

  Metrics are f32[] scalars named ``train/...``.
  """

  def step(state: TrainState, batch: Batch | Rollout, rest: nnx.State):
    loss, metrics, grads, norm = accumulate_grads(
      objective, state.params, rest, batch, microbatches
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {f"train/{k}": v for k, v in metrics.items()}
    out["train/loss"] = loss
    out["train/grad_norm"] = optax.tree.norm(grads)
    out["train/tokens"] = norm.tokens
    if schedule is not None:
      out["train/lr"] = schedule(state.step)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new, out

  return jax.jit(step, donate_argnums=(0,) if donate else ())


def bind_loss(name: str, hparams: dict) -> Callable:
  """Registered loss ``name`` with its hyperparameters bound (outside jit)."""
  from jaxpost.losses import registry

  return functools.partial(registry.get(name), **hparams)
