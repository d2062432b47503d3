"""Supervised fine-tuning, top to bottom.

tokenizer -> example source -> model -> (resume?) -> loop { pack batch -> jitted
train step -> log -> evaluate -> checkpoint } -> final evaluation, plot, summary.

The loss is looked up by name in the registry, so SFT's token-level variants are
new loss functions, not new loops. A run is resumable: re-running with the same
workdir restores params, optimizer state, RNG and the data position, and then
produces exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxpost import checkpoint, config_lib, metrics, models, optim, train
from jaxpost.data import packing, pipeline, tasks
from jaxpost.eval import accuracy
from jaxpost.types import Batch


def build_model(config, vocab_size: int) -> models.Decoder:
  model_config = models.named_config(
    config.model.size,
    vocab_size=vocab_size,
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    max_seq_len=config.model.max_seq_len,
  )
  return models.create_model(model_config, config.seed)


def loss_hparams(config) -> dict:
  """The loss section minus its name: the keyword hyperparameters of the loss."""
  return {k: v for k, v in config.loss.items() if k != "name"}


def eval_levels(config, final: bool) -> list[str]:
  """Levels evaluated periodically, plus ``eval.final_levels`` at the end."""
  if config.eval.levels:
    levels = list(config_lib.parse_levels(config.eval.levels))
  elif config.data.source == "tasks":
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


def run(config, workdir: str) -> dict:
  """Trains per ``config`` in ``workdir``; returns the final metrics."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()

  # Data: a tokenizer (trained once per workdir) and a stateless example source.
  tok = pipeline.prepare_tokenizer(config, workdir)
  data_counts = {}  # e.g. data/skipped_malformed: recorded at step 0, never dropped silently
  source, dataset_size = pipeline.build_source(config, tok, data_counts)

  # Model and optimizer, split into a static graph and pytrees for the jitted step.
  model = build_model(config, tok.vocab_size)
  optimizer, schedule = optim.make_optimizer(config.optim, config.train.steps)
  graphdef, params, rest = train.split_model(model)
  state = train.init_train_state(params, optimizer, config.seed)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  logging.info("model %s: %d parameters", config.model.size, n_params)

  # Resume from the latest checkpoint in the workdir, if any.
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=config.train.keep_checkpoints,
    async_save=config.train.async_checkpoint,
  )
  next_index = 0
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(None, like=state)
    next_index = int(data_state["next_index"])
    logging.info("resumed from step %d (example %d)", int(state.step), next_index)

  objective = train.lm_objective(graphdef, train.bind_loss(config.loss.name, loss_hparams(config)))
  train_step = train.make_train_step(
    objective, optimizer, microbatches=config.train.microbatches, schedule=schedule
  )
  evaluator = accuracy.Evaluator(
    graphdef,
    tok,
    num_examples=config.eval.num_examples,
    batch_size=config.eval.batch_size,
    max_new_tokens=config.eval.max_new_tokens,
    seed=config.seed,
  )
  writer = metrics.MetricWriter(workdir)
  if jax.process_index() == 0 and int(state.step) == 0:
    writer.write(0, {"model/params": n_params, "data/vocab_size": tok.vocab_size, **data_counts})

  def evaluate(step: int, final: bool = False) -> dict:
    levels = eval_levels(config, final)
    if not levels:
      return {}
    results = evaluator.evaluate(nnx.merge_state(state.params, rest), levels)
    m = accuracy.as_metrics(results, headline=tuple(eval_levels(config, final=False)))
    writer.write(step, m)
    for r in results.values():
      for prompt, response, answer in r.samples[:1]:
        logging.info("[%s] %s -> %r (expected %s)", r.level, prompt, response, answer)
    return m

  def save(step: int, force: bool = False) -> None:
    ckpt.save(step, state, {"next_index": next_index, "dataset_size": dataset_size}, force=force)

  # The loop. Metrics stay on device until a log step, so steps dispatch back to back.
  first_step, total = int(state.step), config.train.steps
  capacity = config.data.batch_size * config.data.seq_len
  bar = tqdm(total=total, initial=first_step, disable=not config.train.progress, desc="sft")
  window_tokens, window_start = 0.0, time.time()
  pending, last = [], {}
  for step in range(first_step + 1, total + 1):
    arrays, next_index, stats = packing.pack_batch(
      source,
      next_index,
      batch_size=config.data.batch_size,
      seq_len=config.data.seq_len,
      pack=config.data.pack,
      overlong=config.data.overlong,
    )
    state, step_metrics = train_step(state, Batch(**arrays), rest)
    pending.append((step_metrics, stats.as_metrics(capacity)))
    out_of_time = (
      config.train.max_minutes and (time.time() - t_start) / 60 > config.train.max_minutes
    )
    stop_now = config.train.stop_after and step - first_step >= config.train.stop_after
    if step % config.train.log_every == 0 or step == total or out_of_time or stop_now:
      fetched = jax.device_get([p[0] for p in pending])
      window_tokens += sum(float(m["train/tokens"]) for m in fetched)
      rate = window_tokens / max(time.time() - window_start, 1e-9)
      last = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
      for k in pending[-1][1]:
        last[k] = float(np.mean([p[1][k] for p in pending]))
      last["perf/target_tokens_per_s"] = rate
      writer.write(step, last)
      bar.set_postfix(loss=f"{last['train/loss']:.4f}", tok_s=f"{rate:,.0f}")
      window_tokens, window_start, pending = 0.0, time.time(), []
    bar.update(1)
    if config.eval.every and step % config.eval.every == 0 and step != total:
      evaluate(step)
    if step % config.train.checkpoint_every == 0 and step != total:
      save(step)
    if out_of_time:
      logging.warning("train.max_minutes reached at step %d; stopping", step)
      break
    if stop_now:
      logging.warning("train.stop_after reached at step %d; stopping", step)
      break
  bar.close()

  final_step = int(state.step)
  if ckpt.latest_step() != final_step:
    save(final_step, force=True)
  result = {"step": final_step, **last, **evaluate(final_step, final=True)}
  ckpt.close()
  writer.close()
  if jax.process_index() == 0:
    result["plot"] = metrics.plot_metrics(writer.path, os.path.join(workdir, "metrics.png"))
  result["metrics_path"] = writer.path
  result["tensorboard_dir"] = os.path.join(workdir, "tensorboard")
  result["headline_levels"] = eval_levels(config, final=False)
  result["wall_minutes"] = (time.time() - t_start) / 60
  return result
