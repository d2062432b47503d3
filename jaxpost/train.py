"""The one train step: a pure, jitted function of (TrainState, batch, frozen states).

Every recipe that updates a model by gradient (SFT, distillation, RL) goes through
``make_train_step`` (or ``make_update`` for several steps over one batch): the model is
split once with ``nnx.split`` into a static graph, the trainable state and the rest;
the objective is ``(params, frozen, batch, norm) -> (loss, metrics)``, where ``frozen``
is a dict of frozen model states (the trained model's rest, a teacher, a reference),
passed as arguments, never closed over as constants. Gradient accumulation scans over
micro-batches with normalisers taken from the *whole* batch, so the result does not
depend on the split.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxpost import checkpoint, optim, scoring
from jaxpost.losses import head
from jaxpost.losses.reduce import Normalizers, compute_normalizers
from jaxpost.scoring import Scorer
from jaxpost.types import Batch, DistillBatch, PrivilegedBatch, Rollout


@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything a resumed run needs from the device side.

  Attributes:
    step: i32[] number of optimiser updates applied.
    params: trainable parameters (an ``nnx.State`` of ``nnx.Param``).
    opt_state: optax state.
    rng: u32[2] raw PRNG key data (raw so Orbax stores it as a plain array).
    loss_state: the loss's own state across steps (a loss of the ``stateful`` family,
      e.g. DiscFT's per-example partition estimates), checkpointed with the rest; None
      for every other loss, and then absent from the pytree, so checkpoints of runs
      without one keep exactly the four items above.
    select_state: the online batch selector's state (``jaxpost.selection``: UDS's queue);
      None, and absent from the pytree, without one.
  """

  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array
  loss_state: Any = None
  select_state: Any = None

  def replace(self, **changes) -> TrainState:
    return dataclasses.replace(self, **changes)


_STATE_FIELDS = ("step", "params", "opt_state", "rng")
_OPTIONAL_FIELDS = ("loss_state", "select_state")  # in the pytree only when not None


def _flatten_state(s: TrainState):
  present = tuple(n for n in _OPTIONAL_FIELDS if getattr(s, n) is not None)
  names = _STATE_FIELDS + present
  return [(jax.tree_util.GetAttrKey(n), getattr(s, n)) for n in names], present


def _unflatten_state(present: tuple, children) -> TrainState:
  children = list(children)
  return TrainState(*children[:4], **dict(zip(present, children[4:], strict=True)))


jax.tree_util.register_pytree_with_keys(TrainState, _flatten_state, _unflatten_state)


def init_train_state(
  params: nnx.State,
  optimizer: optax.GradientTransformation,
  seed: int,
  loss_state: Any = None,
  select_state: Any = None,
):
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=jax.random.key_data(jax.random.key(seed)),
    loss_state=loss_state,
    select_state=select_state,
  )


# (params, frozen, batch, norm) -> (loss, metrics). ``frozen`` is a dict pytree of frozen
# model states: "rest" (the trained model's non-trainable part) and whatever the method
# reads besides, e.g. "teacher" or "reference". The batch is any container with a
# ``token_batch`` (``Batch``, ``Rollout``, ...).
ObjectiveFn = Callable[[nnx.State, dict, Batch | Rollout, Normalizers], tuple[jax.Array, dict]]


def token_objective(scorer: Scorer, loss_fn) -> ObjectiveFn:
  """Objective of a token-family loss (SFT and variants): the model's own outputs.

  Args:
    scorer: how to read the trained model (``scoring.make_scorer``).
    loss_fn: ``loss(outputs, batch, *, norm)`` with hyperparameters bound.
  """

  def objective(params, frozen, batch: Batch, norm: Normalizers):
    outputs = scorer.outputs((params, frozen["rest"]), batch)
    return loss_fn(outputs, batch, norm=norm)

  return objective


def policy_objective(scorer: Scorer, loss_fn) -> ObjectiveFn:
  """Objective of a policy-family loss: current log-probs of a ``Rollout``'s targets.

  Args:
    scorer: how to read the policy (temperature, completion window, shared prompts).
    loss_fn: ``loss(logp, rollout, *, norm, entropy)`` with hyperparameters bound.
  """

  def objective(params, frozen, rollout: Rollout, norm: Normalizers):
    stats = scorer.target_stats((params, frozen["rest"]), rollout.batch)
    return loss_fn(stats.logp, rollout, norm=norm, entropy=stats.entropy)

  return objective


def distill_objective(
  scorer: Scorer, loss_fn, *, teacher: Scorer | None = None, shared_vocab: int = 0
):
  """Objective of a distill-family loss: the model's outputs and a frozen teacher's.

  Args:
    scorer: how to read the trained model.
    loss_fn: ``loss(outputs, teacher_outputs, batch, *, norm)`` with hyperparameters bound.
    teacher: how to read ``frozen["teacher"]`` (its own graph: any size or architecture
      with the same token ids). A ``DistillBatch`` brings its teacher's top k instead
      (offline shards, ``jaxpost.data.teacher_shards``): then no teacher is read. A
      ``PrivilegedBatch`` is read by the teacher on its own rows (the prompt with
      privileged text) at the aligned columns; without a ``frozen["teacher"]`` the
      teacher is the student itself (its current parameters, no gradient).
    shared_vocab: > 0 compares both distributions over token ids [0, shared_vocab) only
      (embeddings padded past the tokenizer's ids to different sizes); 0 = the two
      vocabulary sizes must be equal (checked when traced).
  """

  def objective(params, frozen, batch: Batch | DistillBatch | PrivilegedBatch, norm):
    if isinstance(batch, DistillBatch):  # an offline teacher: its top k came with the batch
      outputs = scorer.outputs((params, frozen["rest"]), batch.batch)
      teacher_outputs = head.TopK(ids=batch.teacher_ids, logp=batch.teacher_logp)
      return loss_fn(outputs, teacher_outputs, batch.batch, norm=norm)
    if isinstance(batch, PrivilegedBatch):  # the teacher reads its own (longer) rows
      # No "teacher" state: the student itself is the teacher (self-distillation).
      t_state = frozen.get("teacher", (params, frozen["rest"]))
      outputs = scorer.outputs((params, frozen["rest"]), batch.batch)
      teacher_outputs = jax.lax.stop_gradient(
        (teacher or scorer).outputs_at(t_state, batch.teacher_batch, batch.teacher_columns)
      )
      batch = batch.batch
    else:
      outputs = scorer.outputs((params, frozen["rest"]), batch)
      teacher_outputs = jax.lax.stop_gradient(teacher.outputs(frozen["teacher"], batch))
    if shared_vocab:
      outputs = head.first_tokens(outputs, shared_vocab)
      teacher_outputs = head.first_tokens(teacher_outputs, shared_vocab)
    vs, vt = head.vocab_size(outputs), head.vocab_size(teacher_outputs)
    if vs != vt:
      raise ValueError(
        f"student vocabulary {vs} != teacher vocabulary {vt}: set teacher.shared_vocab to "
        "the tokenizer's size to compare the real ids only"
      )
    return loss_fn(outputs, teacher_outputs, batch, norm=norm)

  return objective


def layers_objective(scorer: Scorer, loss_fn) -> ObjectiveFn:
  """Objective of a layers-family loss (sorted fine-tuning, early exits): every layer's
  exit through the shared final norm and head, from one forward pass.

  Args:
    scorer: how to read the trained model.
    loss_fn: ``loss(layers: LayerHeads, batch, *, norm)`` with hyperparameters bound.
  """

  def objective(params, frozen, batch: Batch, norm: Normalizers):
    return loss_fn(scorer.layer_heads((params, frozen["rest"]), batch), batch, norm=norm)

  return objective


def model_objective(scorer: Scorer, loss_fn) -> ObjectiveFn:
  """Objective of a model-family loss (LfU): the loss runs the model's forward passes
  itself (``scoring.ModelView``), e.g. a second, perturbed one.

  Args:
    scorer: how to read the trained model.
    loss_fn: ``loss(model: ModelView, batch, *, norm)`` with hyperparameters bound.
  """

  def objective(params, frozen, batch: Batch, norm: Normalizers):
    return loss_fn(scoring.ModelView(scorer, (params, frozen["rest"])), batch, norm=norm)

  return objective


# What a ``stateful`` loss reads besides the model (the step adds both to ``frozen``:
# ``with_loss_state``), and the metric name under which its objective hands back the
# loss's next state (``accumulate_grads`` threads it through the micro-batches; the step
# stores it in ``TrainState.loss_state``).
LOSS_STATE = "loss_state"
STEP = "step"
NEXT_LOSS_STATE = "next_loss_state"
SELECT_SALT = 0x5E1EC7  # the online batch selector's key: fold_in(step key, SELECT_SALT)


def stateful_objective(
  scorer: Scorer, loss_fn, *, teacher: Scorer | None = None, total_steps: int = 0
) -> ObjectiveFn:
  """Objective of a stateful-family loss (DiscFT): the model's outputs, a frozen
  reference's on the same rows (``frozen["teacher"]`` read by ``teacher``; None without
  one) and the loss's own state, which it updates.

  Args:
    scorer: how to read the trained model.
    loss_fn: ``loss(outputs, reference, batch, state, *, norm, step, total_steps)
      -> (loss, metrics, next_state)`` with hyperparameters bound.
    teacher: how to read the frozen reference, or None (the loss gets None).
    total_steps: optimiser updates of the whole run (schedules inside the loss).
  """

  def objective(params, frozen, batch: Batch, norm: Normalizers):
    if LOSS_STATE not in frozen:
      raise ValueError(
        "a stateful loss reads TrainState.loss_state, which is None: build the state "
        "with init_train_state(..., loss_state=losses.init_state(name, hparams, n))"
      )
    outputs = scorer.outputs((params, frozen["rest"]), batch)
    reference = None
    if teacher is not None:
      reference = jax.lax.stop_gradient(teacher.outputs(frozen["teacher"], batch))
      vs, vr = head.vocab_size(outputs), head.vocab_size(reference)
      if vs != vr:
        raise ValueError(f"model vocabulary {vs} != reference vocabulary {vr}")
    loss, metrics, state = loss_fn(
      outputs, reference, batch, frozen[LOSS_STATE], norm=norm, step=frozen[STEP],
      total_steps=total_steps,
    )  # fmt: skip
    return loss, {**metrics, NEXT_LOSS_STATE: state}

  return objective


def with_loss_state(frozen: dict, state: TrainState) -> dict:
  """``frozen`` plus the loss's state and the step, when the train state holds one."""
  if state.loss_state is None:
    return frozen
  return {**frozen, LOSS_STATE: state.loss_state, STEP: state.step}


# Loss family (``losses.registry``) -> how its objective reads the model(s).
OBJECTIVES = {
  "token": token_objective,
  "policy": policy_objective,
  "distill": distill_objective,
  "layers": layers_objective,
  "model": model_objective,
  "stateful": stateful_objective,
}


def make_objective(family: str, scorer: Scorer, loss_fn, **readers) -> ObjectiveFn:
  """The objective of a loss of ``family`` (a key of ``OBJECTIVES``); ``readers`` are
  its further models' scorers and options (``teacher=`` for distill)."""
  if family not in OBJECTIVES:
    raise ValueError(f"no objective for loss family {family!r}; known: {sorted(OBJECTIVES)}")
  return OBJECTIVES[family](scorer, loss_fn, **readers)


def split_microbatches(batch, n: int):
  """[B, ...] leaves -> [n, B / n, ...]: every leaf of a batch container is row-major."""
  b = batch.token_batch.tokens.shape[0]
  if b % n:
    raise ValueError(f"batch size {b} is not divisible by train.microbatches={n}")
  return jax.tree.map(lambda x: x.reshape(n, b // n, *x.shape[1:]), batch)  # [M, B/M, ...]


def accumulate_grads(objective: ObjectiveFn, params, frozen: dict, batch, microbatches: int):
  """Loss, metrics and gradient of the full batch, computed ``microbatches`` rows at a time.

  Every piece is normalised by the full batch's counts, so the sum over pieces equals
  the full-batch value and gradient (up to float summation order). The counts come from
  the container's ``token_batch.loss_mask`` (for a ``Rollout``: completion tokens).
  """
  tokens = batch.token_batch
  norm = compute_normalizers(tokens.loss_mask, tokens.segment_ids)
  grad_fn = jax.value_and_grad(objective, has_aux=True)
  if microbatches == 1:
    (loss, metrics), grads = grad_fn(params, frozen, batch, norm)
    return loss, metrics, grads, norm

  # A stateful loss's state is not summed: each micro-batch reads the state the one
  # before it left (``NEXT_LOSS_STATE``), and the last one's is the step's.
  stateful = LOSS_STATE in frozen

  def piece(loss_state, mb):
    f = {**frozen, LOSS_STATE: loss_state} if stateful else frozen
    (loss, metrics), grads = grad_fn(params, f, mb, norm)
    metrics = dict(metrics)
    return (loss, metrics, grads), metrics.pop(NEXT_LOSS_STATE, None)

  def body(carry, mb):
    total, loss_state = carry
    out, loss_state = piece(loss_state, mb)
    return (jax.tree.map(jnp.add, total, out), loss_state), None

  mbs = split_microbatches(batch, microbatches)
  first = jax.tree.map(lambda x: x[0], mbs)
  start = frozen.get(LOSS_STATE)
  zeros = jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(piece, start, first)[0]
  )
  ((loss, metrics, grads), loss_state), _ = jax.lax.scan(body, (zeros, start), mbs)
  if stateful:
    metrics = {**metrics, NEXT_LOSS_STATE: loss_state}
  return loss, metrics, grads, norm


def with_followed_teacher(frozen: dict, opt_state) -> dict:
  """``frozen`` plus "teacher" = the optimizer state's following copy of the student
  (``optim.follow_params``: a lagged or EMA teacher), when it holds one."""
  copy = optim.followed_params(opt_state)
  if copy is None:
    return frozen
  if "teacher" in frozen:
    raise ValueError("a frozen teacher and a following copy of the student: choose one")
  return {**frozen, "teacher": (copy, frozen["rest"])}


def apply_if(apply: jax.Array, optimizer: optax.GradientTransformation, grads, state: TrainState):
  """``state`` after one ``optimizer`` update with ``grads`` if ``apply`` (bool[]), else
  ``state`` itself, bit for bit.

  A ``lax.while_loop`` of zero or one trip rather than ``jnp.where(apply, new, old)``
  over the state: a loop's carry is updated in place, while a select keeps the old
  optimizer state alive beside the new one (XLA computes the new moments twice, once for
  the select and once inside the parameter update, and so copies every moment of a
  donated state first: two extra parameter-sized buffers of temporary memory under Adam).
  """

  def update(carry):
    trips, one, params, opt_state = carry
    updates, opt_state = optimizer.update(
      jax.tree.map(lambda g: g * one.astype(g.dtype), grads), opt_state, params
    )
    return trips + 1, 1.0 + 0.0 * trips, optax.apply_updates(params, updates), opt_state

  # ``one`` is 1.0 on every trip, but XLA cannot prove it (0 * x is not 0 for every
  # float x), so terms of the gradient ((1 - b1) g, g^2, ...) are not loop invariants:
  # XLA would hoist them out of the loop, each a parameter-sized buffer.
  trips, _, params, opt_state = jax.lax.while_loop(
    lambda carry: carry[0] < apply.astype(jnp.int32),
    update,
    (jnp.zeros((), jnp.int32), jnp.ones((), jnp.float32), state.params, state.opt_state),
  )
  return state.replace(step=state.step + trips, params=params, opt_state=opt_state)


def step_function(
  objective: ObjectiveFn,
  optimizer: optax.GradientTransformation,
  *,
  microbatches: int = 1,
  schedule: optax.Schedule | None = None,
  select: Callable | None = None,
):
  """The un-jitted ``step(state, batch, frozen) -> (state, metrics)``: what
  ``make_train_step`` jits, and what composes under other transforms (``vmap`` over
  federated clients: ``jaxpost.federated.clients``; ``make_update``'s scan).

  ``select`` (``jaxpost.selection.make_select``) first keeps the rows of ``batch`` the
  gradient is computed on, reading and updating ``state.select_state``.
  """

  def step(state: TrainState, batch, frozen: dict):
    frozen = with_followed_teacher(frozen, state.opt_state)
    frozen = with_dropout_keys(frozen, state)
    frozen = with_loss_state(frozen, state)
    select_metrics, next_select_state = {}, None
    if select is not None:  # its own key stream: fold_in(step key, SELECT_SALT)
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      key = jax.random.fold_in(key, SELECT_SALT)
      batch, next_select_state, select_metrics = select(
        state.params, frozen, batch, state.select_state, key
      )
    loss, metrics, grads, norm = accumulate_grads(
      objective, state.params, frozen, batch, microbatches
    )
    metrics = {**metrics, **select_metrics}
    next_loss_state = metrics.pop(NEXT_LOSS_STATE, None)
    grad_norm = optax.tree.norm(grads)
    out = {f"train/{k}": v for k, v in metrics.items()}
    out["train/loss"] = loss
    out["train/grad_norm"] = grad_norm
    out["train/tokens"] = norm.tokens
    if schedule is not None:
      out["train/lr"] = schedule(state.step)
    # One non-finite update would poison every later step (and Adam's moments), so a
    # step whose loss or gradient is not finite leaves the whole state as it was, step
    # counter and optimizer state included; the recipe counts these and stops a run
    # that keeps producing them (``recipes.common.count_skipped``).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = apply_if(finite, optimizer, grads, state)
    keep = lambda n, o: jnp.where(finite, n, o)
    if next_loss_state is not None:  # a skipped step leaves the loss's state too
      new = new.replace(loss_state=jax.tree.map(keep, next_loss_state, state.loss_state))
    if next_select_state is not None:  # and the selector's
      new = new.replace(select_state=jax.tree.map(keep, next_select_state, state.select_state))
    out["train/skipped_nonfinite"] = 1.0 - finite.astype(jnp.float32)
    return new, out

  return step


def with_dropout_keys(frozen: dict, state: TrainState) -> dict:
  """``frozen`` with every LoRA dropout key of the trained model's rest replaced by this
  step's (from ``state.rng`` and ``state.step``: a resumed run draws the same masks;
  each adapter its own). A model without dropout passes through unchanged."""
  rest = frozen.get("rest")
  if rest is None:
    return frozen
  flat, treedef = jax.tree_util.tree_flatten_with_path(rest)
  slots = [i for i, (path, _) in enumerate(flat) if "dropout_key" in path_name(path).split(".")]
  if not slots:
    return frozen
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  leaves = [x for _, x in flat]
  for n, i in enumerate(slots):
    key = jax.random.fold_in(step_key, n)
    # Never all zeros (zeros = off): fold again in the ~2^-64 case it is.
    data = jax.random.key_data(key)
    leaves[i] = jnp.where(jnp.any(data != 0), data, jnp.asarray([0, 1], data.dtype))
  return {**frozen, "rest": jax.tree_util.tree_unflatten(treedef, leaves)}


def make_train_step(
  objective: ObjectiveFn,
  optimizer: optax.GradientTransformation,
  *,
  microbatches: int = 1,
  schedule: optax.Schedule | None = None,
  select: Callable | None = None,
  donate: bool = True,
):
  """Returns ``step(state, batch, frozen) -> (state, metrics)``, jitted.

  ``frozen`` is the dict of frozen states the objective reads (at least "rest").
  Metrics are f32[] scalars named ``train/...``; ``train/skipped_nonfinite`` is 1 when
  the step's loss or gradient norm was not finite and the state was left unchanged.
  """
  step = step_function(
    objective, optimizer, microbatches=microbatches, schedule=schedule, select=select
  )
  return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_update(
  objective: ObjectiveFn,
  optimizer: optax.GradientTransformation,
  *,
  microbatches: int = 1,
  schedule: optax.Schedule | None = None,
  donate: bool = True,
):
  """Returns ``update(state, batch, frozen, order) -> (state, metrics)``, jitted.

  Several optimiser steps over one batch in a single compiled call (PPO-style epochs x
  minibatches): ``order`` is i32[U, R], the batch rows of each of the U updates (e.g.
  one permutation per epoch, cut into minibatches of R rows), and the U steps run as a
  ``lax.scan``, so there is no host round trip or transfer per minibatch. Each update
  is exactly ``make_train_step``'s step on ``batch`` rows ``order[u]`` (normalisers from
  that minibatch). Metrics are stacked: f32[U] per name.
  """
  step = step_function(objective, optimizer, microbatches=microbatches, schedule=schedule)

  def update(state: TrainState, batch, frozen: dict, order: jax.Array):
    def body(state, rows):
      return step(state, jax.tree.map(lambda x: x[rows], batch), frozen)

    return jax.lax.scan(body, state, order)

  return jax.jit(update, donate_argnums=(0,) if donate else ())


def split_model(model: nnx.Module, trainable=nnx.Param):
  """Splits a model into (graphdef, trainable state, the rest).

  Args:
    model: the module.
    trainable: an nnx filter of the variables that train (default: every ``nnx.Param``);
      see ``trainable_filter``. Everything else, frozen parameters included, goes to the
      rest, which the train step receives as ``frozen["rest"]`` and never updates, so
      it stays bit-identical and checkpoints hold only what trains.
  """
  graphdef, params, rest = nnx.split(model, trainable, ...)
  return graphdef, params, rest


def trainable_filter(pattern: str = ""):
  """nnx filter: the ``nnx.Param``s whose dotted path matches ``pattern`` (re.search).

  "" matches every parameter. Paths read like ``layers.0.attn.q_proj.kernel``.
  """
  if not pattern:
    return nnx.Param
  regex = re.compile(pattern)

  def match(path, value) -> bool:
    return isinstance(value, nnx.Param) and bool(regex.search(".".join(map(str, path))))

  return match


def param_paths(params) -> list[str]:
  """Dotted paths of the leaves of a state, as ``trainable_filter`` patterns see them."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return [path_name(path) for path, _ in flat]


def path_name(path) -> str:
  """``layers.0.attn.q_proj.kernel`` for a pytree key path (a Variable's ``value`` dropped)."""
  names = [checkpoint.key_name(k) for k in path]
  return ".".join(names[:-1] if names and names[-1] == "value" else names)


def objective_for(
  name: str, graphdef, hparams: dict | None = None, readers: dict | None = None, **scoring
) -> ObjectiveFn:
  """The objective of registered loss ``name`` on a model (scripts, tests, notebooks).

  Args:
    name: a loss registry key; its family picks the objective (``OBJECTIVES``).
    graphdef: the trained model's graph.
    hparams: the loss's hyperparameters (validated against its signature).
    readers: the family's further readers, e.g. ``{"teacher": scorer}`` for distill.
    **scoring: ``scoring.make_scorer`` options (lm_head, chunk_size, temperature, ...).
  """
  from jaxpost.losses import LOSSES
  from jaxpost.scoring import make_scorer

  loss_fn = LOSSES.bind(name, hparams or {})
  family = LOSSES.family(name)
  return make_objective(family, make_scorer(graphdef, **scoring), loss_fn, **(readers or {}))
