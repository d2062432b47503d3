"""What every recipe does before, around and after its loop: functions, not a base class.

  validate_and_start   checks the config once, multi-host start, the mesh, the workdir
                       (locked for this run; a resume must match its config and data);
  load_tokenizer       the run's tokenizer (``train.init_from``'s, a given one, or trained);
  build_model          a named size or a Hugging Face checkpoint, then ``train.init_from``'s
                       parameters on top;
  setup                model -> (graphdef, TrainState, frozen states) with the trainable
                       subset, placement on the mesh (a no-op on one device), the
                       checkpointer (resumed if it has a step), metric writer, evaluator;
  frozen_model         another model as a frozen state (a reference, a teacher);
  load_teacher         ``config.teacher`` as a frozen state with its own graph;
  should_stop          the stop rule (``train.max_minutes``, ``train.stop_after``);
  finish               the last checkpoint, final evaluation, export, plot and summary.

A recipe reads top to bottom as: ``validate_and_start`` -> ``setup`` -> its loop
(sample / batch -> jitted update -> ``run.log`` / ``run.evaluate`` / ``run.save``) ->
``finish``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxpost import (
  checkpoint,
  config_lib,
  losses,
  metrics,
  models,
  optim,
  peft,
  selection,
  sharding,
  train,
  zoo,
)
from jaxpost import workdir as jaxpost_workdir
from jaxpost.data import pipeline, tasks
from jaxpost.data.tokenizer import HFTokenizer, SentencePieceTokenizer
from jaxpost.eval import accuracy, heldout
from jaxpost.eval import choices as eval_choices
from jaxpost.models import gguf, hf
from jaxpost.peft import heads


def validate_and_start(config, workdir: str, recipe: str):
  """Validates ``config`` (once), starts multi-host JAX if asked, makes the mesh and workdir.

  Returns:
    the device mesh.
  """
  config_lib.validate(config)
  if config.recipe != recipe:
    raise config_lib.ConfigError(f"recipe={config.recipe!r}; this is the {recipe} recipe")
  sharding.initialize_distributed(config)  # multi-host: before anything else touches devices
  mesh = sharding.make_mesh(config)
  # One run per workdir (a lock), and a resume continues the run recorded there.
  jaxpost_workdir.claim(config, workdir, primary=jax.process_index() == 0)
  return mesh


def load_tokenizer(config, workdir: str, *, teacher: bool = False):
  """``train.init_from``'s tokenizer when starting from a run, else ``pipeline``'s.

  With ``teacher`` (the run reads ``config.teacher``), a run with no tokenizer of its
  own (no init_from, tokenizer.path or model file) takes ``teacher.init_from``'s: a
  student must use its teacher's token ids.
  """
  init = zoo.resolve(config.train.init_from)
  if not init and teacher:
    init = zoo.resolve(config.teacher.init_from)
  if init and not (config.tokenizer.path or config.model.hf_dir or config.model.gguf):
    return SentencePieceTokenizer.load(run_tokenizer(init))
  return sharding.primary_first(lambda: pipeline.prepare_tokenizer(config, workdir))


def run_tokenizer(run: str) -> str:
  """The tokenizer file a run used: its own, or (a run started from another, which
  writes none) that of the run it started from, and so on."""
  name = pipeline.TOKENIZER_PREFIX + ".model"
  seen, here = set(), run
  while here and here not in seen:
    if os.path.exists(os.path.join(here, name)):
      return os.path.join(here, name)
    seen.add(here)
    here = zoo.resolve(jaxpost_workdir.recorded_config(here).get("train.init_from", ""))
  raise config_lib.ConfigError(
    f"train.init_from={run!r} has no {name} (nor the run it started from)"
  )


def build_model(
  config,
  vocab_size: int,
  *,
  init_from: str | None = None,
  size: str | None = None,
  hf_dir: str | None = None,
  gguf_path: str | None = None,
  adapters: bool = False,
) -> models.Decoder:
  """The named size, ``model.hf_dir``'s checkpoint or ``model.gguf``'s file, cut to
  ``model.keep_layers`` (the run's own model only), with ``config.lora``'s adapters
  when ``adapters`` (the trained model, not a reference or teacher) and
  ``init_from``'s parameters loaded (a run that trained a subset, e.g. adapters, over
  its own start: that start's parameters first, then the run's).

  Args:
    config: the run config (``model`` section, seed).
    vocab_size: the tokenizer's.
    init_from: a run's workdir whose latest parameters replace the built ones (None:
      ``train.init_from``; "" = none). Leaves that run did not save (it trained a
      subset) keep the built values, and are logged.
    size, hf_dir, gguf_path: another model than ``config.model``'s (a teacher); None =
      the config's.
  """
  own = hf_dir is None and gguf_path is None and size is None
  if own:
    hf_dir, gguf_path = config.model.hf_dir, config.model.gguf
  dtypes = {"dtype": config.model.dtype, "param_dtype": config.model.param_dtype}
  if hf_dir or gguf_path:
    if hf_dir:
      model = hf.load_model(hf_dir, **dtypes)
    else:
      model = gguf.load_model(gguf_path, **dtypes)
    if vocab_size > model.config.vocab_size:
      source = hf_dir or gguf_path
      raise config_lib.ConfigError(
        f"the tokenizer has {vocab_size} ids but {source} embeds only {model.config.vocab_size}"
      )
    model.config = dataclasses.replace(model.config, remat=config.model.remat)
  else:
    model_config = models.named_config(
      size or config.model.size,
      vocab_size=vocab_size,
      dtype=config.model.dtype,
      param_dtype=config.model.param_dtype,
      max_seq_len=config.model.max_seq_len,
      remat=config.model.remat,
    )
    model = models.create_model(model_config, config.seed)
  if own and config.model.keep_layers:  # the run's own model, not a teacher's
    try:
      indices = models.parse_layers(config.model.keep_layers, model.config.n_layers)
    except ValueError as e:
      raise config_lib.ConfigError(f"model.keep_layers: {e}") from None
    model = models.keep_layers(model, indices)
  if adapters and config.lora.rank:
    try:
      peft.add_lora(model, lora_settings(config), seed=config.seed)
    except ValueError as e:
      raise config_lib.ConfigError(f"lora: {e}") from None
  init_from = zoo.resolve(config.train.init_from if init_from is None else init_from)
  if init_from:
    params = nnx.state(model, nnx.Param)
    try:
      loaded, kept = _load_chain(init_from, params)
    except ValueError as e:
      raise config_lib.ConfigError(str(e)) from None
    if kept:
      logging.warning(
        "train.init_from: %d leaves not in %s keep their built values: %s",
        len(kept),
        init_from,
        ", ".join(kept[:8]),
      )
    nnx.update(model, loaded)
  return model


def _head_selection(config, model_config):
  try:
    return heads.parse_heads(config.train.heads, model_config.n_layers, model_config.n_heads)
  except (ValueError, OSError) as e:
    raise config_lib.ConfigError(f"train.heads: {e}") from None


def head_masks(config, model_config):
  """``train.heads``' per-entry optimiser masks (``peft.heads``), or None."""
  if not config.train.heads:
    return None
  selection = _head_selection(config, model_config)
  m = model_config
  return heads.head_masks(selection, m.n_heads, m.n_kv_heads, config.train.heads_kv)


def trainable_filter(config, model_config=None):
  """What trains: the adapters with ``lora.rank`` (and ``train.trainable``'s parameters
  besides, if set); the projections holding ``train.heads``' heads (their other
  entries masked in the optimiser); else ``train.trainable``'s parameters (all when
  empty)."""
  if config.train.heads:
    selection = _head_selection(config, model_config)
    return train.trainable_filter(heads.head_filter(selection, config.train.heads_kv))
  if not config.lora.rank:
    return train.trainable_filter(config.train.trainable)
  if not config.train.trainable:
    return peft.adapter_filter()
  return nnx.Any(peft.adapter_filter(), train.trainable_filter(config.train.trainable))


def _load_chain(run: str, params, seen: frozenset = frozenset()):
  """``checkpoint.load_params`` of ``run``; the leaves it lacks (it trained a subset:
  adapters, ``train.trainable``) come from the run it started from, recursively (a
  chain as long as the runs make it: Cycle-Instruct's phases start from each other;
  a run met twice ends it)."""
  loaded, kept = checkpoint.load_params(run, params)
  start = zoo.resolve(jaxpost_workdir.recorded_config(run).get("train.init_from", ""))
  seen = seen | {os.path.abspath(run)}
  if kept and start and os.path.abspath(start) not in seen and os.path.isdir(start):
    below, kept_below = _load_chain(start, params, seen)
    loaded, _ = checkpoint.load_params(run, below)
    kept = [k for k in kept if k in set(kept_below)]
  return loaded, kept


def lora_settings(config):
  """``config.lora`` as ``peft.LoRASettings``."""
  c = config.lora
  return peft.LoRASettings(targets=c.targets, rank=c.rank, alpha=c.alpha, rslora=c.rslora,
                           init=c.init, name=c.name, dropout=c.dropout)  # fmt: skip


def frozen_model(config, vocab_size: int, **source):
  """Another model as a frozen ``(graphdef, (params, rest))``: a reference or a teacher.

  Built like the trained model (``build_model``; ``source``: its ``init_from``, ``size``,
  ``hf_dir``), from its own source, so it is never a copy of the trained parameters
  (those are donated to the train step). A teacher of another size or architecture
  has its own graph: read it with its own scorer.
  """
  graphdef, params, rest = train.split_model(build_model(config, vocab_size, **source))
  return graphdef, (params, rest)


def check_teacher(config, *, model: bool = False) -> None:
  """Fails early unless ``config.teacher`` says what teacher a method reads; with
  ``model``, a model to read (a frozen one or the student's following copy; not shards,
  not the student's current parameters)."""
  t = config.teacher
  named = bool(t.hf_dir or t.gguf or t.init_from)
  if t.follow and (named or t.offline):
    raise config_lib.ConfigError(
      f"teacher.follow={t.follow!r} makes a copy of the student the teacher: leave "
      "teacher.init_from, teacher.hf_dir, teacher.gguf and teacher.offline empty"
    )
  if model and not (named or t.follow):
    raise config_lib.ConfigError(
      "this run reads a teacher model: set teacher.init_from (a run or zoo:NAME), "
      "teacher.hf_dir, teacher.gguf, or teacher.follow (a copy of the student)"
      + (
        " (teacher.offline / teacher.privileged alone cannot serve here)"
        if t.offline or t.privileged
        else ""
      )
    )
  if not (named or t.follow or t.offline or t.privileged):
    raise config_lib.ConfigError(
      "this run reads a teacher: set teacher.init_from (a run or zoo:NAME), teacher.hf_dir, "
      "teacher.gguf, teacher.offline (precomputed top-k shards), teacher.follow (a lagged "
      "or EMA copy of the student) or teacher.privileged (the student itself, seeing "
      "privileged text)"
    )
  if t.privileged and t.offline:
    raise config_lib.ConfigError("teacher.privileged and teacher.offline do not combine")
  if t.init_from:
    config_lib.run_dir(t.init_from, "teacher.init_from")


def load_teacher(config, tok):
  """The frozen teacher of ``config.teacher`` as ``(graphdef, (params, rest))``.

  Its own graph (any size or architecture); its token ids must be the tokenizer's: a
  teacher embedding fewer ids than the tokenizer has is an error, and one padded to
  another size than the student needs ``teacher.shared_vocab`` (checked when traced).
  """
  check_teacher(config, model=True)
  t = config.teacher
  init = zoo.resolve(t.init_from)
  own = os.path.join(init, pipeline.TOKENIZER_PREFIX + ".model") if init else ""
  if own and os.path.exists(own) and not (t.hf_dir or t.gguf):
    theirs = SentencePieceTokenizer.load(own)
    same = theirs.vocab_size == tok.vocab_size and all(
      theirs.id_to_piece(i) == tok.id_to_piece(i) for i in range(tok.vocab_size)
    )
    if not same:
      raise config_lib.ConfigError(
        f"teacher.init_from={t.init_from!r} was trained with another tokenizer "
        f"({theirs.vocab_size} ids vs this run's {tok.vocab_size}, or other pieces): a "
        "teacher must share the student's token ids (train the student with its tokenizer)"
      )
  return frozen_model(
    config,
    tok.vocab_size,
    size=t.size or None,  # none of size / hf_dir / gguf: built like the trained model
    hf_dir=t.hf_dir or None,
    gguf_path=t.gguf or None,
    init_from=t.init_from,
  )


def attach_teacher(run, config, tok, scorer) -> dict:
  """Makes ``config.teacher`` readable by the train step; returns the distill objective's
  readers (its scorer: the student's options on the teacher's graph).

  A frozen model goes into ``run.frozen["teacher"]``; a following copy of the student
  (``teacher.follow``) lives in the optimizer state, and the train step passes it as
  ``frozen["teacher"]`` itself (``train.with_followed_teacher``).
  """
  if config.teacher.follow:
    return dict(teacher=scorer, shared_vocab=config.teacher.shared_vocab)
  t_graph, t_state = load_teacher(config, tok)
  run.frozen["teacher"] = run.place(t_state)
  return dict(
    teacher=dataclasses.replace(scorer, graphdef=t_graph),
    shared_vocab=config.teacher.shared_vocab,
  )


def teacher_state(run):
  """The teacher's ``(params, rest)`` now: the frozen model, else the student's following
  copy (``teacher.follow``), else the student's current parameters (self-distillation)."""
  if "teacher" in run.frozen:
    return run.frozen["teacher"]
  copy = optim.followed_params(run.state.opt_state)
  return (run.state.params if copy is None else copy), run.frozen["rest"]


@dataclasses.dataclass
class Run:
  """The set-up of a run: what a recipe's loop reads and updates.

  Attributes:
    config, workdir, mesh, tok: as given.
    graphdef: the trained model's static graph.
    state: ``train.TrainState`` (trainable params only), placed on the mesh.
    frozen: dict of frozen states passed to the train step ("rest": the trained model's
      non-trainable part; a recipe adds "reference", "teacher", ...).
    optimizer, schedule: from ``config.optim``.
    ckpt: the checkpointer; ``data_state`` is what the restored checkpoint's host side
      saved ({} on a fresh run).
    writer: metrics (JSONL + TensorBoard); evaluator: held-out accuracy on task levels;
      heldout_evaluator: held-out user data (None without it); choice_evaluator:
      multiple choice across prompt formats (``data.source=choices``; else None).
    sharded: more than one device or process (placement is a no-op otherwise).
    n_params: trainable + frozen parameter count of the trained model.
    t_start: wall-clock start (``should_stop``).
  """

  config: Any
  workdir: str
  mesh: Any
  tok: Any
  graphdef: Any
  state: train.TrainState
  frozen: dict
  optimizer: Any
  schedule: Any
  ckpt: checkpoint.Checkpointer
  data_state: dict
  writer: metrics.MetricWriter
  evaluator: accuracy.Evaluator
  heldout_evaluator: heldout.HeldOutEvaluator | None
  sharded: bool
  n_params: int
  t_start: float
  choice_evaluator: eval_choices.ChoiceEvaluator | None = None  # data.source=choices
  skipped_streak: int = 0  # consecutive train steps skipped as non-finite (``count_skipped``)

  @property
  def first_step(self) -> int:
    return int(self.data_state.get("step", 0))

  def place(self, tree):
    """A pytree of parameters on the mesh by logical axes (a no-op on one device)."""
    return sharding.shard_tree(tree, self.mesh, sharding.DEFAULT_RULES) if self.sharded else tree

  def place_batch(self, batch, global_batch_size: int | None = None):
    """A host batch container on the mesh, rows over (data, fsdp); on one device, as is."""
    if self.sharded:
      return sharding.shard_batch(batch, self.mesh, global_batch_size=global_batch_size)
    return jax.tree.map(jax.numpy.asarray, batch)

  def compile_step(self, step_fn):
    """Keeps the state's sharding across a jitted ``state -> state`` step (sharded runs)."""
    if not self.sharded:
      return step_fn
    shardings = sharding.tree_shardings(self.state, self.mesh, sharding.DEFAULT_RULES)
    return sharding.keep_state_sharding(step_fn, shardings)

  def model_state(self):
    """The trained model's full state (trainable + rest), e.g. for the sampler."""
    return nnx.merge_state(self.state.params, self.frozen["rest"])

  def save(self, step: int, data: dict, force: bool = False) -> None:
    """Checkpoints the state; refuses non-finite parameters, so that a good checkpoint
    is never rotated away by a poisoned one (keep-N deletes the oldest)."""
    if not all_finite(self.state.params):
      raise NonFiniteError(
        f"refusing to checkpoint step {step}: the parameters hold NaN or inf; the last "
        f"checkpoint (step {self.ckpt.latest_step()}) is kept"
      )
    self.ckpt.save(step, self.state, {**data, "step": step}, force=force)

  def evaluate(self, step: int, final: bool = False, write: bool = True) -> dict:
    """Held-out accuracy on the eval levels (plus ``eval.final_levels`` when final), and
    on held-out user data its loss, perplexity and checked generations (level
    "heldout")."""
    levels = eval_levels(self.config, final)
    if not levels and self.heldout_evaluator is None:
      return {}
    state = self.model_state()
    results = self.evaluator.evaluate(state, levels)
    headline = tuple(eval_levels(self.config, final=False))
    m = {}
    if self.heldout_evaluator is not None:
      m.update(self.heldout_evaluator.loss(state))
      results[heldout.LEVEL] = self.heldout_evaluator.generate(state)
      headline += (heldout.LEVEL,)
    m.update(accuracy.as_metrics(results, headline=headline))
    if self.choice_evaluator is not None:
      m.update(self.choice_evaluator.evaluate(state, levels))
    if write:
      self.writer.write(step, m)
    for r in results.values():
      for prompt, response, answer in r.samples[:1]:
        logging.info("[%s] %s -> %r (expected %s)", r.level, prompt, response, answer)
    return m


class NonFiniteError(RuntimeError):
  """Training produced NaN or inf for longer than ``train.max_nonfinite_steps``."""


def all_finite(tree) -> bool:
  """Whether every floating-point leaf of ``tree`` is finite (one device reduction)."""
  jnp = jax.numpy
  checks = [
    jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return bool(jax.device_get(jnp.all(jnp.stack(checks)))) if checks else True


def train_metrics(run: Run, fetched, step: int) -> dict[str, float]:
  """The logged means of fetched train-step metrics, minding skipped steps.

  Args:
    run: the run.
    fetched: per-step metric dicts (a list) or stacked metrics (a dict of f32[U]), of
      the steps since the last call, in order.
    step: the last of those steps.

  Returns:
    each metric's mean over the steps that were applied (all of them, when every one
    was skipped: the NaN then shows), and ``train/skipped_nonfinite``, the number skipped.
  """
  if isinstance(fetched, dict):
    stacked = {k: np.atleast_1d(np.asarray(v, np.float64)) for k, v in fetched.items()}
  else:
    stacked = {k: np.asarray([m[k] for m in fetched], np.float64) for k in fetched[-1]}
  skipped = stacked.pop("train/skipped_nonfinite")
  n_skipped = float(skipped.sum())
  applied = skipped == 0 if n_skipped < len(skipped) else np.ones_like(skipped, bool)
  out = {k: float(np.mean(v[applied])) for k, v in stacked.items()}
  out["train/skipped_nonfinite"] = n_skipped
  try:
    count_skipped(run, skipped, step)
  except NonFiniteError:
    run.writer.write(step, out)  # the window that ended the run is in the log too
    raise
  return out


def count_skipped(run: Run, skipped, step: int) -> float:
  """Counts the steps the train step skipped as non-finite; stops a run stuck on them.

  Args:
    run: the run (its ``skipped_streak`` carries over from the previous call).
    skipped: the fetched ``train/skipped_nonfinite`` flags of the steps since the last
      call, in order (1 = skipped: the state was left unchanged).
    step: the last of those steps (for the message).

  Returns:
    how many of them were skipped (logged as ``train/skipped_nonfinite``).

  Raises:
    NonFiniteError: ``train.max_nonfinite_steps`` consecutive steps were skipped. The
      flags are fetched when metrics are (every ``train.log_every`` steps in SFT), so
      the stop may come up to that many steps late; the state never changed meanwhile.
  """
  flags = [float(x) for x in np.ravel(np.asarray(skipped, np.float32))]
  for flag in flags:
    run.skipped_streak = run.skipped_streak + 1 if flag else 0
  limit = run.config.train.max_nonfinite_steps
  if run.skipped_streak >= limit:
    latest = run.ckpt.latest_step()
    kept = (
      "no checkpoint was written yet"
      if latest is None
      else f"the last checkpoint (step {latest}) is finite"
    )
    raise NonFiniteError(
      f"{run.skipped_streak} consecutive train steps up to step {step} had a non-finite loss "
      f"or gradient and were skipped (train.max_nonfinite_steps={limit}); the parameters are "
      f"those of the last finite step and {kept}. Lower optim.lr or lengthen optim.warmup_steps, "
      "or check the data"
    )
  return float(sum(flags))


def setup(
  config,
  workdir: str,
  mesh,
  tok,
  *,
  total_updates: int,
  updates_per_step: int = 1,
  step_zero: dict | None = None,
  optimizer=None,
  num_examples: int = 0,
):
  """Builds the trained model, its train state and frozen rest, and resumes if it can.

  Args:
    config: the validated config.
    workdir: the run directory.
    mesh: from ``validate_and_start``.
    tok: the tokenizer.
    total_updates: optimiser updates of the whole run (the lr schedule's length).
    updates_per_step: optimiser updates per recipe step (``teacher.sync_every`` counts
      recipe steps).
    step_zero: extra metrics written once at step 0 of a fresh run.
    optimizer: the state's optimizer instead of ``config.optim``'s (a federated run's
      server optimizer: its state is checkpointed with the global parameters).
    num_examples: the training data's example ids (``Batch.example_ids`` < this): a
      stateful loss (``losses.init_state``) keeps its state for that many examples.

  Returns:
    a ``Run``; ``run.first_step`` is the restored step (0 on a fresh run).
  """
  model = build_model(config, tok.vocab_size, adapters=True)
  t = config.teacher
  follow = None
  if t.follow:  # a copy of the student in the optimizer state (checkpointed with it)
    follow = optim.follow_params(t.follow, every=t.sync_every * updates_per_step, decay=t.ema_decay)
  masks = head_masks(config, model.config)
  own, schedule = optim.make_optimizer(config.optim, total_updates, follow=follow, trainable=masks)
  optimizer = own if optimizer is None else optimizer
  graphdef, params, rest = train.split_model(model, trainable_filter(config, model.config))
  if not jax.tree.leaves(params):
    raise config_lib.ConfigError(f"train.trainable={config.train.trainable!r} matches no parameter")
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  n_trainable = sum(x.size for x in jax.tree.leaves(params))
  logging.info("model: %d parameters, %d trainable", n_params, n_trainable)
  vocab = model.config.vocab_size
  del model
  loss_state = None  # a stateful loss's own state, e.g. DiscFT's u per example
  if "loss" in config:
    name = config.loss.name
    loss_state = losses.init_state(name, config.loss.get(name, {}), num_examples)
  select_state = None  # the online batch selector's, e.g. UDS's queue
  if "select" in config and config.select.name:
    s = config.select
    select_state = selection.init_state(
      s.name, s.get(s.name, {}), seq_len=config.data.seq_len, vocab=vocab
    )
  state = train.init_train_state(params, optimizer, config.seed, loss_state, select_state)
  # Sharded by the parameters' logical axis names; a restore lands on the same layout.
  # One device needs none of it, and skipping it keeps the small-model step ~25% faster
  # on CPU (committed single-device shardings cost host-side dispatch time).
  sharded = mesh.devices.size > 1 or jax.process_count() > 1
  if sharded:
    state = sharding.shard_train_state(state, mesh, sharding.DEFAULT_RULES)
    rest = sharding.shard_tree(rest, mesh, sharding.DEFAULT_RULES)
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=config.train.keep_checkpoints,
    async_save=config.train.async_checkpoint,
  )
  data_state = {}
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(None, like=state)
    data_state.setdefault("step", int(state.step))
    logging.info("resumed at step %d", data_state["step"])
  elif config.train.init_mode == "fork":
    state, data_state = fork_state(config, state)
  # Records past the restored step (-1: no checkpoint) are from an interrupted run and
  # will be written again: drop them, so each step is logged exactly once.
  writer = metrics.MetricWriter(workdir, resume_step=int(data_state.get("step", -1)))
  evaluator = accuracy.Evaluator.from_config(graphdef, tok, config)
  run = Run(
    config=config,
    workdir=workdir,
    mesh=mesh,
    tok=tok,
    graphdef=graphdef,
    state=state,
    frozen={"rest": rest},
    optimizer=optimizer,
    schedule=schedule,
    ckpt=ckpt,
    data_state=data_state,
    writer=writer,
    evaluator=evaluator,
    heldout_evaluator=heldout.from_config(graphdef, evaluator, config),
    choice_evaluator=eval_choices.from_config(graphdef, tok, config),
    sharded=sharded,
    n_params=n_params,
    t_start=time.time(),
  )
  if run.first_step == 0:
    writer.write(
      0,
      {
        "model/params": n_params,
        "model/trainable_params": n_trainable,
        "data/vocab_size": tok.vocab_size,
        **(step_zero or {}),
      },
    )
  return run


def fork_state(config, like):
  """``train.init_from``'s latest train state and data position (``train.init_mode=fork``).

  The new run continues that one: same recipe, same shapes (model, optimizer, trainable
  subset), its schedule position and data stream; only the workdir is new.
  """
  source = zoo.resolve(config.train.init_from)
  recorded = jaxpost_workdir.recorded_config(source)
  if recorded.get("recipe", config.recipe) != config.recipe:
    raise config_lib.ConfigError(
      f"train.init_mode='fork': {config.train.init_from!r} is a {recorded['recipe']} run, "
      f"this is the {config.recipe} recipe; fork a run of the same recipe (or use 'params')"
    )
  try:
    state, data_state = checkpoint.load_state(source, like)
  except ValueError as e:
    raise config_lib.ConfigError(f"train.init_mode='fork': {e}") from None
  data_state.setdefault("step", int(state.step))
  logging.info("forked %s at step %d", source, data_state["step"])
  return state, data_state


def end_step(config) -> int:
  """The last step of the run: ``train.stop_at`` if set, else ``train.steps``."""
  return config.train.stop_at or config.train.steps


def eval_levels(config, final: bool) -> list[str]:
  """Levels evaluated periodically, plus ``eval.final_levels`` at the end."""
  if config.eval.levels:
    levels = list(config_lib.parse_levels(config.eval.levels))
  elif config.data.source in pipeline.TASK_SOURCES:
    levels = list(config_lib.parse_levels(config.data.levels))
  else:
    levels = []
  if final and config.eval.final_levels:
    extra = (
      list(tasks.LEVELS)
      if config.eval.final_levels == "all"
      else list(config_lib.parse_levels(config.eval.final_levels))
    )
    levels += [lv for lv in extra if lv not in levels]
  return levels


def should_stop(run: Run, step: int) -> str:
  """Which rule stops the loop after ``step`` (``train.max_minutes``, ``train.stop_after``;
  ``train.stop_at`` ends the loop itself), or "" to go on."""
  c = run.config.train
  if c.max_minutes and (time.time() - run.t_start) / 60 > c.max_minutes:
    return "train.max_minutes"
  if c.stop_after and step - run.first_step >= c.stop_after:
    return "train.stop_after"
  return ""


def periodic(run: Run, step: int, data, stop: str = "", on_eval=None) -> str:
  """The loop's evaluation and checkpoint every ``eval.every`` / ``train.checkpoint_every``.

  Neither runs at the last step or when the loop stops after this one (``stop``):
  ``finish`` evaluates and saves then. ``data`` returns the host-side state to
  checkpoint (called only when saving); ``on_eval(step, metrics)``, if given, sees each
  evaluation's metrics before the checkpoint is written.

  Returns:
    ``stop``, or "train.stop_when" when this step's evaluation meets that condition
    (the run then ends at this step).
  """
  c = run.config
  if step == end_step(c) or stop:
    return stop
  if c.eval.every and step % c.eval.every == 0:
    m = run.evaluate(step)
    if on_eval is not None:
      on_eval(step, m)
    if c.train.stop_when:
      metric, compare, threshold = config_lib.parse_condition(c.train.stop_when)
      if metric not in m:
        raise config_lib.ConfigError(
          f"train.stop_when={c.train.stop_when!r}: the evaluation logs no {metric!r}; it "
          f"logs {', '.join(sorted(m))}"
        )
      if compare(m[metric], threshold):
        logging.warning("%s = %.4f meets train.stop_when at step %d", metric, m[metric], step)
        return "train.stop_when"
  if step % c.train.checkpoint_every == 0:
    run.save(step, data())
  return stop


def mean_metrics(fetched: list[dict]) -> dict[str, float]:
  """Mean of each metric over a list of fetched metric dicts (keys of the last)."""
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}


def export_hf(run: Run, out_dir: str) -> str:
  """Writes the trained model (and an HF tokenizer, if that is what we have) for
  transformers. With LoRA adapters: the adapters merged into the weights there, and
  the adapter alone in the PEFT format beside it (``<out_dir>_adapter``)."""
  params = run.state.params
  if jax.process_count() > 1:
    # Every host must join the gather; only process 0 writes.
    params = multihost_utils.process_allgather(params, tiled=True)
  if jax.process_index() == 0:
    hf_tok = run.tok if isinstance(run.tok, HFTokenizer) else None
    model = nnx.merge(run.graphdef, params, run.frozen["rest"])
    if run.config.lora.rank:
      from jaxpost.peft import export as peft_export

      adapter_dir, base = out_dir.rstrip("/") + "_adapter", run.config.model.hf_dir
      peft_export.save_adapter(model, adapter_dir, name=run.config.lora.name, base_model=base)
      model = peft.merge_lora(nnx.clone(model))
    hf.save_model(model, out_dir, tokenizer=hf_tok)
  return out_dir


def finish(run: Run, step: int, data: dict, last: dict, *, panels=None, extra=None) -> dict:
  """Last checkpoint, final evaluation, export, plot; returns the run's summary dict.

  Args:
    run: the run.
    step: the final step.
    data: the host-side state to checkpoint with it.
    last: the last logged metrics.
    panels / extra: plot panels (``metrics.plot_metrics``) and extra summary entries.
  """
  # Evaluate, then save: a kill during the final evaluation resumes from an earlier
  # checkpoint, which drops the partial evaluation's records (``MetricWriter``).
  # A finished run started again has its final evaluation logged already: report only.
  done_before = run.first_step == step and run.ckpt.latest_step() == step
  final = run.evaluate(step, final=True, write=not done_before)
  result = {"step": step, **last, **final, **(extra or {})}
  if run.ckpt.latest_step() != step:
    run.save(step, data, force=True)
  if run.config.train.export_hf:
    result["hf_dir"] = export_hf(run, os.path.join(run.workdir, "hf"))
  run.ckpt.close()
  run.writer.close()
  if jax.process_index() == 0:
    plot_kw = {} if panels is None else dict(panels=panels, log_scale=())
    result["plot"] = metrics.plot_metrics(
      run.writer.path, os.path.join(run.workdir, "metrics.png"), **plot_kw
    )
  result["metrics_path"] = run.writer.path
  result["tensorboard_dir"] = os.path.join(run.workdir, "tensorboard")
  result["headline_levels"] = eval_levels(run.config, final=False)
  result["wall_minutes"] = (time.time() - run.t_start) / 60
  jaxpost_workdir.release(run.workdir)
  return result


def as_sft_config(config, **overrides):
  """``config`` as an SFT run's: every field the SFT recipe shares with it (the
  orchestrating recipe's own sections dropped), then ``overrides`` (dotted fields).

  Recipes that run SFT phases (MoT branches, Cycle-Instruct's models) build them here.
  """
  from jaxpost.workdir import flat_config

  flat = {k: v for k, v in flat_config(config).items() if k != "recipe"}
  c, _ = config_lib.from_flat("sft", flat, strict=False)  # the others: its own sections
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


def phase_config(config, corpus: str, start: str, tokens: str, steps: int):
  """``config`` as one SFT phase of a recipe that chains them (MoT's branches,
  Cycle-Instruct's adapters): ``steps`` steps on the JSONL ``corpus`` from ``start``'s
  parameters with a fresh optimizer, one checkpoint at the end, no evaluation."""
  return as_sft_config(
    config,
    **{
      "data.source": "jsonl",
      "data.path": corpus,
      "train.init_from": start,
      "train.init_mode": "params",
      "train.steps": steps,
      "train.checkpoint_every": steps,
      "train.stop_when": "",
      "eval.every": 0,
      "eval.levels": "",
      "eval.final_levels": "",
      "tokenizer.path": tokens,
    },
  )
