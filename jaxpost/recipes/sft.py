"""Supervised fine-tuning, top to bottom.

tokenizer -> example source -> model -> (resume?) -> loop { pack batch -> jitted
train step -> log -> evaluate -> checkpoint } -> final evaluation, plot, summary.

The loss is looked up by name in the registry (any loss of the "token" family), so
SFT's token-level variants are new loss functions, not new loops. A "distill" loss
(off-policy distillation) also reads a frozen teacher (``config.teacher``, its own graph
and scorer) on the same batch, passed to the train step as ``frozen["teacher"]``.

A run is resumable: re-running with the same workdir restores params, optimizer state,
RNG and the data position, and then produces exactly what the uninterrupted run would
have.
"""

from __future__ import annotations

import logging
import time

import jax
from ml_collections import config_dict
from tqdm import tqdm

from jaxpost import config_lib, fields, losses, scoring, selection, sharding, train
from jaxpost.data import (
  masked_thought,
  pipeline,
  privileged,
  streams,
  teacher_shards,
  token_selection,
)
from jaxpost.losses import LOSSES
from jaxpost.recipes import common, register
from jaxpost.types import Batch

LOSS_FAMILIES = ("token", "distill", "layers", "model", "stateful")
DEFAULT_LOSS = "cross_entropy"


def config_sections(c: config_dict.ConfigDict) -> None:
  """``select``: online batch selection (jaxpost/selection.py) and its selectors' sections."""
  c.select = config_dict.ConfigDict()
  c.select.name = ""  # "" = train on every row | uds | random | max_loss | fit
  c.select.pool = 4  # rows per group: data.batch_size candidate rows are drawn per step
  c.select.keep = 1  # rows of each group the gradient is computed on (the best scored)
  names = selection.SELECTORS.names()
  for name in names:
    c.select[name] = selection.SELECTORS.hparams_config(name)
  fields.declare(
    "select", name=fields.one_of(("", *names)), pool=fields.integer(ge=1), keep=fields.integer(ge=1)
  )


def _validate_select(c) -> None:
  """The groups divide the batch, the kept rows divide over the devices, the selector's
  hyperparameters fit its signature."""
  from jaxpost.registry import HparamError

  s = c.select
  if s.keep > s.pool:
    raise config_lib.ConfigError(f"select.keep={s.keep} > select.pool={s.pool}")
  if c.data.batch_size % s.pool:
    raise config_lib.ConfigError(
      f"data.batch_size={c.data.batch_size} (candidate rows) is not a multiple of "
      f"select.pool={s.pool}"
    )
  if c.train.microbatches > 1 and (c.data.batch_size // s.pool * s.keep) % c.train.microbatches:
    raise config_lib.ConfigError(
      f"the {c.data.batch_size // s.pool * s.keep} kept rows of a step do not split into "
      f"train.microbatches={c.train.microbatches}"
    )
  if LOSSES.family(c.loss.name) == "stateful":
    raise config_lib.ConfigError("select with a stateful loss: its rows must all be trained on")
  if c.teacher.privileged or c.teacher.offline:
    raise config_lib.ConfigError(
      "select keeps rows of the batch; teacher.privileged / offline bring rows of their own"
    )
  try:
    selection.SELECTORS.validate_hparams(s.name, s[s.name], where=f"select.{s.name}")
  except HparamError as e:
    raise config_lib.ConfigError(str(e)) from None


def validate(c) -> None:
  """A distill loss needs a teacher (config_lib.validate calls this once)."""
  if c.data.token_selection and jax.process_count() > 1:
    raise config_lib.ConfigError("data.token_selection masks are read by one process only")
  if c.data.token_selection == token_selection.ONLINE and not (c.eval.every and c.eval.levels):
    raise config_lib.ConfigError(
      "data.token_selection=online finds the bottleneck in the evaluation accuracy: set "
      "eval.every and eval.levels"
    )
  if LOSSES.family(c.loss.name) == "distill":
    common.check_teacher(c)
    if c.teacher.privileged and (c.data.pack or c.data.overlong != "error"):
      raise config_lib.ConfigError(
        "teacher.privileged aligns the two views row by row: set data.pack=False and keep "
        "data.overlong='error' (nothing dropped from one view only)"
      )
  elif LOSSES.family(c.loss.name) == "stateful":  # per-example state, maybe a reference
    _validate_stateful(c)
  elif c.teacher.follow:
    raise config_lib.ConfigError(
      f"teacher.follow={c.teacher.follow!r} is read by distill losses only; "
      f"loss.name={c.loss.name!r} is not one"
    )
  if c.teacher.offline and jax.process_count() > 1:
    raise config_lib.ConfigError("teacher.offline shards are read by one process only")
  if c.select.name:
    _validate_select(c)


def _validate_stateful(c) -> None:
  """A stateful loss needs rows that say their example; a reference iff it reads one."""
  name = c.loss.name
  if c.data.source not in pipeline.KEYED_SOURCES:
    raise config_lib.ConfigError(
      f"loss.name={name!r} keeps state per dataset example: data.source must say which "
      f"example each row is, one of {pipeline.KEYED_SOURCES} (not {c.data.source!r})"
    )
  t = c.teacher
  named = bool(t.init_from or t.hf_dir or t.gguf)
  if losses.needs_reference(name, c.loss[name]):
    common.check_teacher(c, model=True)
    if t.follow or t.offline or t.privileged:
      raise config_lib.ConfigError(
        f"loss.{name} reads a frozen reference model: set teacher.init_from / hf_dir / gguf "
        "only (not teacher.follow, offline or privileged)"
      )
  elif named or t.follow or t.offline or t.privileged:
    raise config_lib.ConfigError(
      f"loss.{name} with these hyperparameters reads no reference: leave config.teacher empty"
    )


@register("sft")
def run(config, workdir: str) -> dict:
  """Trains per ``config`` in ``workdir``; returns the final metrics."""
  mesh = common.validate_and_start(config, workdir, "sft")

  # Data: a tokenizer (trained once per workdir) and a stateless example source.
  name = config.loss.name
  family = LOSSES.family(name)
  distill = family == "distill"
  reference = family == "stateful" and losses.needs_reference(name, config.loss[name])
  tok = common.load_tokenizer(config, workdir, teacher=distill or reference)
  data_counts = {}  # e.g. data/skipped_malformed: recorded at step 0, never dropped silently
  source, dataset_size = pipeline.build_source(config, tok, data_counts)

  # Model, optimizer, checkpoint (resumed if there is one), metrics, evaluator.
  run_ = common.setup(
    config,
    workdir,
    mesh,
    tok,
    total_updates=config.train.steps,
    step_zero=data_counts,
    num_examples=dataset_size or 0,  # a stateful loss's state, one entry per example id
  )
  # Each host packs only the rows its devices need; the global batch does not depend on
  # the number of hosts (see jaxpost.data.streams).
  rows = sharding.process_rows(mesh, config.data.batch_size)
  packer = streams.StreamPacker.for_config(source, config.data, rows)
  if run_.data_state:
    packer.restore(run_.data_state)
    logging.info("resumed from step %d (example %d)", run_.first_step, packer.next_index)

  scorer = scoring.make_scorer(
    run_.graphdef, lm_head=config.kernels.lm_head, chunk_size=config.kernels.chunk_size
  )
  # Batch views, applied in this order to each packed batch (``view(step, batch)``): the
  # T3S selections take anchor tokens out of its loss mask, then an offline teacher's top
  # k or a privileged teacher's own rows come with it, and Masked Thought corrupts the
  # inputs last.
  t = config.teacher
  readers, views, online = {}, [], None
  if config.data.token_selection == token_selection.ONLINE:  # T3S, bottleneck found live
    _, start = common.frozen_model(
      config, tok.vocab_size, init_from=config.train.init_from or None
    )  # theta_0: the run's own start, rebuilt
    online = token_selection.Online(run_, scorer, run_.place(start), config.data.t3s_margin)
    views.append(online)
  elif config.data.token_selection:  # T3S offline: each step's anchors, computed once
    anchors = token_selection.Reader(config.data.token_selection)
    anchors.check(config, tok.vocab_size)
    views.append(anchors)
  if distill and t.offline:  # its top k come from disk with each batch
    shards = teacher_shards.Reader(t.offline)
    shards.check(config, tok.vocab_size)
    views.append(shards)
  elif distill and (t.init_from or t.hf_dir or t.gguf or t.follow):  # a model, or a copy
    readers = common.attach_teacher(run_, config, tok, scorer)
  if family == "stateful":  # its reference (if it reads one) and the schedule's length
    readers = {"total_steps": config.train.steps}
    if reference:
      readers["teacher"] = common.attach_teacher(run_, config, tok, scorer)["teacher"]
  if distill and t.privileged:  # the teacher's view: the same examples, longer prompts
    t_source = privileged.source(config, tok)
    t_len = config.data.seq_len + t.privileged_tokens
    t_packer = streams.StreamPacker.for_config(t_source, config.data, rows, seq_len=t_len)
    if run_.data_state:
      t_packer.restore(run_.data_state)
    views.append(privileged.TeacherView(t_packer))
  if config.data.mask_thought:  # last: the views above read the real tokens
    views.append(
      masked_thought.MaskedThought(
        p_max=config.data.mask_thought,
        warmup=config.data.mask_thought_warmup,
        max_steps=config.train.steps,
        mask_id=masked_thought.mask_token(tok),
        seed=config.seed,
        process=jax.process_index(),
      )
    )
  objective = train.make_objective(
    family,
    scorer,
    LOSSES.bind(name, config.loss[name], where=f"loss.{name}"),
    **readers,
  )
  select = None
  if config.select.name:  # online batch selection: the step keeps the rows it trains on
    s = config.select
    select = selection.make_select(
      s.name, s[s.name], pool=s.pool, keep=s.keep, scorer=scorer, where=f"select.{s.name}"
    )
  train_step = run_.compile_step(
    train.make_train_step(
      objective,
      run_.optimizer,
      microbatches=config.train.microbatches,
      schedule=run_.schedule,
      select=select,
    )
  )

  def data() -> dict:
    return {
      **packer.state(),
      "dataset_size": dataset_size,
      **(online.state() if online is not None else {}),
    }

  # The loop. Metrics stay on device until a log step, so steps dispatch back to back.
  first_step, total = run_.first_step, common.end_step(config)
  show_bar = config.train.progress and jax.process_index() == 0
  bar = tqdm(total=total, initial=first_step, disable=not show_bar, desc="sft")
  window_tokens, window_start = 0.0, time.time()
  pending, last = [], {}
  step = first_step
  for step in range(first_step + 1, total + 1):
    arrays, stats = packer.next_batch()
    batch = Batch(**arrays)
    for view in views:
      batch = view(step, batch)
    batch = run_.place_batch(batch, global_batch_size=config.data.batch_size)
    run_.state, step_metrics = train_step(run_.state, batch, run_.frozen)
    pending.append((step_metrics, stats.as_metrics(packer.capacity)))
    stop = common.should_stop(run_, step)
    if step % config.train.log_every == 0 or step == total or stop:
      fetched = jax.device_get([p[0] for p in pending])
      window_tokens += sum(float(m["train/tokens"]) for m in fetched)
      rate = window_tokens / max(time.time() - window_start, 1e-9)
      last = common.train_metrics(run_, fetched, step)  # stops a run stuck on NaN
      last.update(common.mean_metrics([p[1] for p in pending]))
      last["perf/target_tokens_per_s"] = rate
      run_.writer.write(step, last)
      bar.set_postfix(loss=f"{last['train/loss']:.4f}", tok_s=f"{rate:,.0f}")
      window_tokens, window_start, pending = 0.0, time.time(), []
    bar.update(1)
    on_eval = online.on_eval if online is not None else None
    stop = common.periodic(run_, step, data, stop, on_eval=on_eval)
    if stop:
      logging.warning("stopping at step %d (%s)", step, stop)
      break
  bar.close()
  return common.finish(run_, step, data(), last)
