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
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxpost import checkpoint, config_lib, metrics, models, optim, sharding, train
from jaxpost.data import pipeline, streams, tasks
from jaxpost.data.tokenizer import HFTokenizer
from jaxpost.eval import accuracy
from jaxpost.models import hf
from jaxpost.types import Batch


def build_model(config, vocab_size: int) -> models.Decoder:
  """The named size, or the Hugging Face checkpoint of ``model.hf_dir``."""
  if config.model.hf_dir:
    model = hf.load_model(
      config.model.hf_dir, dtype=config.model.dtype, param_dtype=config.model.param_dtype
    )
    if vocab_size > model.config.vocab_size:
      raise config_lib.ConfigError(
        f"the tokenizer has {vocab_size} ids but {config.model.hf_dir} embeds only "
        f"{model.config.vocab_size}"
      )
    return model
  model_config = models.named_config(
    config.model.size,
    vocab_size=vocab_size,
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    max_seq_len=config.model.max_seq_len,
  )
  return models.create_model(model_config, config.seed)


def export_hf(graphdef, params, rest, tok, out_dir: str) -> str:
  """Writes the trained model (and an HF tokenizer, if that is what we have) for transformers."""
  if jax.process_count() > 1:
    # Every host must join the gather; only process 0 writes.
    params = multihost_utils.process_allgather(params, tiled=True)
  if jax.process_index() == 0:
    hf_tok = tok if isinstance(tok, HFTokenizer) else None
    hf.save_model(nnx.merge(graphdef, params, rest), out_dir, tokenizer=hf_tok)
  return out_dir


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
  sharding.initialize_distributed(config)  # multi-host: before anything else touches devices
  mesh = sharding.make_mesh(config)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()

  # Data: a tokenizer (trained once per workdir) and a stateless example source.
  tok = sharding.primary_first(lambda: pipeline.prepare_tokenizer(config, workdir))
  data_counts = {}  # e.g. data/skipped_malformed: recorded at step 0, never dropped silently
  source, dataset_size = pipeline.build_source(config, tok, data_counts)

  # Model and optimizer, split into a static graph and pytrees for the jitted step.
  model = build_model(config, tok.vocab_size)
  optimizer, schedule = optim.make_optimizer(config.optim, config.train.steps)
  graphdef, params, rest = train.split_model(model)
  state = train.init_train_state(params, optimizer, config.seed)
  # Sharded by the parameters' logical axis names; a restore lands on the same layout.
  # One device needs none of it, and skipping it keeps the small-model step ~25% faster
  # on CPU (committed single-device shardings cost host-side dispatch time).
  sharded = mesh.devices.size > 1 or jax.process_count() > 1
  if sharded:
    state = sharding.shard_train_state(state, mesh, sharding.DEFAULT_RULES)
    rest = sharding.shard_tree(rest, mesh, sharding.DEFAULT_RULES)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  logging.info("model %s: %d parameters", config.model.size, n_params)
  del model, params  # unsharded copies

  # Resume from the latest checkpoint in the workdir, if any.
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=config.train.keep_checkpoints,
    async_save=config.train.async_checkpoint,
  )
  # Each host packs only the rows its devices need; the global batch does not depend on
  # the number of hosts (see jaxpost.data.streams).
  packer = streams.StreamPacker(
    source,
    batch_size=config.data.batch_size,
    seq_len=config.data.seq_len,
    streams=config.data.streams,
    rows=sharding.process_rows(mesh, config.data.batch_size),
    pack=config.data.pack,
    overlong=config.data.overlong,
  )
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(None, like=state)
    packer.restore(data_state)
    logging.info("resumed from step %d (example %d)", int(state.step), packer.next_index)

  objective = train.lm_objective(
    graphdef,
    train.bind_loss(config.loss.name, loss_hparams(config)),
    lm_head=config.kernels.lm_head,
    chunk_size=config.kernels.chunk_size,
  )
  train_step = train.make_train_step(
    objective, optimizer, microbatches=config.train.microbatches, schedule=schedule
  )
  if sharded:
    train_step = sharding.keep_state_sharding(
      train_step, sharding.tree_shardings(state, mesh, sharding.DEFAULT_RULES)
    )
  evaluator = accuracy.Evaluator.from_config(graphdef, tok, config)
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
    ckpt.save(step, state, {**packer.state(), "dataset_size": dataset_size}, force=force)

  # The loop. Metrics stay on device until a log step, so steps dispatch back to back.
  first_step, total = int(state.step), config.train.steps
  capacity = packer.capacity
  show_bar = config.train.progress and jax.process_index() == 0
  bar = tqdm(total=total, initial=first_step, disable=not show_bar, desc="sft")
  window_tokens, window_start = 0.0, time.time()
  pending, last = [], {}
  for step in range(first_step + 1, total + 1):
    arrays, stats = packer.next_batch()
    batch = Batch(**arrays)
    if sharded:
      batch = sharding.shard_batch(batch, mesh, global_batch_size=config.data.batch_size)
    state, step_metrics = train_step(state, batch, rest)
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
  if config.train.export_hf:
    result["hf_dir"] = export_hf(graphdef, state.params, rest, tok, os.path.join(workdir, "hf"))
  ckpt.close()
  writer.close()
  if jax.process_index() == 0:
    result["plot"] = metrics.plot_metrics(writer.path, os.path.join(workdir, "metrics.png"))
  result["metrics_path"] = writer.path
  result["tensorboard_dir"] = os.path.join(workdir, "tensorboard")
  result["headline_levels"] = eval_levels(config, final=False)
  result["wall_minutes"] = (time.time() - t_start) / 60
  return result
