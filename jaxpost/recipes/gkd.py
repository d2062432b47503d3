"""Generalised knowledge distillation (GKD, arXiv 2306.13649): on- and off-policy, top to bottom.

    for each step:
      on-policy with probability lambda (gkd.lmbda):  the student samples completions of
          gkd.prompts_per_step task prompts (the RL sampler at gkd.temperature); the
          batch is those rows, prompts masked, completion tokens counted
      otherwise: the next SFT batch of the data (the tasks' reference traces; or a
          teacher's outputs with data.source=jsonl from ``jaxpost.data.generated``: SeqKD)
      one update of a distill loss against the frozen teacher on that batch

The coin of step s is a pure function of (seed, s), so a resumed run flips the same coins;
lambda = 0 never builds or calls the sampler (tested). ``loss.name`` is the switch the
method cards ask for: ``kd`` compares the full next-token distributions at every
counted position (JSD(beta) / forward / reverse KL through the fused kernel: GKD), and
``sampled_rkl`` uses the sampled token's reverse-KL log-ratio as a per-token advantage
(the policy-gradient form of on-policy distillation; meant for lambda = 1). TRL's
defaults are lambda 0.5, beta 0.5 (``loss.kd.divergence=jsd``), temperature 0.9.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from ml_collections import config_dict
from tqdm import tqdm

from jaxpost import config_lib, fields, scoring, sharding, train
from jaxpost.data import pipeline, streams, tasks, template
from jaxpost.losses import LOSSES
from jaxpost.recipes import common, register
from jaxpost.rollout import batching, motab, sampler
from jaxpost.types import Batch

LOSS_FAMILIES = ("distill",)
DEFAULT_LOSS = "kd"


def config_sections(c: config_dict.ConfigDict) -> None:
  """The ``gkd`` section (and the ``kd`` loss at GKD's divergence, JSD(0.5))."""
  c.gkd = config_dict.ConfigDict()
  c.gkd.lmbda = 0.5  # probability that a step trains on the student's own samples
  c.gkd.prompts_per_step = 16  # task prompts sampled on an on-policy step (one sample each)
  c.gkd.max_new_tokens = 64  # sampling budget per completion
  c.gkd.temperature = 0.9  # sampling temperature of on-policy steps (TRL's default)
  # MOTAB (jaxpost/rollout/motab.py): on-policy rollouts monitored against the teacher;
  # past the boundary they backtrack to the last safe prefix and the teacher continues.
  c.gkd.rollout = "student"  # student (plain on-policy) | motab
  c.gkd.motab_monitor = "teacher_nll"  # teacher_nll (-log p_T(y_t)) | log_ratio (log p_S/p_T)
  c.gkd.motab_k = 3.0  # adaptive boundary: mean + k * std of recent monitored values
  c.gkd.motab_decay = 0.9  # weight of past steps in that moving mean / std
  c.gkd.motab_threshold = 0.0  # > 0: a fixed boundary instead of the adaptive one
  c.gkd.motab_granularity = "step"  # backtrack to the crossing token | its reasoning step
  c.gkd.motab_teacher_temperature = 0.0  # the teacher's continuation: 0 = greedy
  c.gkd.motab_teacher_weight = 1.0  # loss weight of teacher-written tokens (student's: 1)
  fields.declare(
    "gkd",
    lmbda=fields.num(ge=0, le=1),
    prompts_per_step=fields.integer(ge=1),
    max_new_tokens=fields.integer(ge=1),
    temperature=fields.num(gt=0),
    rollout=fields.one_of(("student", "motab")),
    motab_monitor=fields.one_of(motab.MONITORS),
    motab_k=fields.num(),
    motab_decay=fields.num(ge=0, lt=1),
    motab_threshold=fields.num(ge=0),
    motab_granularity=fields.one_of(motab.GRANULARITIES),
    motab_teacher_temperature=fields.num(ge=0),
    motab_teacher_weight=fields.num(ge=0),
  )


def validate(c: config_dict.ConfigDict) -> None:
  if "gkd" not in c:  # a config built for another recipe, with recipe=gkd set on it
    raise config_lib.ConfigError(
      "recipe=gkd needs its own sections: start from configs/gkd.py or base.get_config('gkd')"
    )
  common.check_teacher(c, model=True)  # it scores the student's own samples: a live model
  if c.teacher.offline or c.teacher.privileged:
    raise config_lib.ConfigError("gkd reads a teacher model on the student's rows only")
  if c.gkd.rollout == "motab" and c.gkd.lmbda == 0:
    raise config_lib.ConfigError("gkd.rollout=motab shapes on-policy steps: gkd.lmbda=0 has none")
  if c.gkd.lmbda > 0 and c.data.levels == "":
    raise config_lib.ConfigError("on-policy steps sample task prompts: set data.levels")
  if c.gkd.max_new_tokens >= c.model.max_seq_len:
    raise config_lib.ConfigError("gkd.max_new_tokens leaves no room for a prompt")
  if c.gkd.lmbda > 0 and c.gkd.prompts_per_step % c.train.microbatches:
    raise config_lib.ConfigError(
      f"gkd.prompts_per_step={c.gkd.prompts_per_step} rows do not split into "
      f"train.microbatches={c.train.microbatches}"
    )
  if jax.process_count() > 1:
    raise config_lib.ConfigError("the gkd recipe runs on one host (sampling is host-local)")


def on_policy_steps(seed: int, lmbda: float, steps) -> list[int]:
  """The steps (of ``steps``) whose coin says on-policy: u(seed, step) < lambda."""
  return [s for s in steps if lmbda > 0 and _coin(seed, s) < lmbda]


def _coin(seed: int, step: int) -> float:
  return float(np.random.default_rng([seed, step, 0x6B64]).random())


@register("gkd")
def run(config, workdir: str) -> dict:
  """Distils per ``config`` in ``workdir``; returns the final metrics."""
  mesh = common.validate_and_start(config, workdir, "gkd")
  g = config.gkd

  # Data (for off-policy steps), task prompts (for on-policy steps), student and teacher.
  tok = common.load_tokenizer(config, workdir, teacher=True)
  counts: dict = {}
  source, dataset_size = pipeline.build_source(config, tok, counts)
  run_ = common.setup(
    config, workdir, mesh, tok, total_updates=config.train.steps, step_zero=counts
  )
  rows = sharding.process_rows(mesh, config.data.batch_size)
  packer = streams.StreamPacker.for_config(source, config.data, rows)
  if run_.data_state:
    packer.restore(run_.data_state)
  next_prompt = int(run_.data_state.get("next_prompt", 0))
  on_policy = int(run_.data_state.get("on_policy_steps", 0))

  name = config.loss.name
  scorer = scoring.make_scorer(
    run_.graphdef, lm_head=config.kernels.lm_head, chunk_size=config.kernels.chunk_size
  )
  readers = common.attach_teacher(run_, config, tok, scorer)
  train_step = run_.compile_step(
    train.make_train_step(
      train.make_objective(
        LOSSES.family(name),
        scorer,
        LOSSES.bind(name, config.loss[name], where=f"loss.{name}"),
        **readers,
      ),
      run_.optimizer,
      microbatches=config.train.microbatches,
      schedule=run_.schedule,
    )
  )
  sample = splicer = None
  if g.lmbda > 0:  # lambda = 0: no sampler is ever built or called
    prompts = tasks.mixture(config_lib.parse_levels(config.data.levels), "train", config.seed)
    generate_fn = sampler.make_generate_fn(
      run_.graphdef,
      max_new_tokens=g.max_new_tokens,
      eos_id=tok.eos_id,
      pad_id=tok.pad_id,
      temperature=g.temperature,
    )
    think_tags = (tok.encode(template.THINK_OPEN), tok.encode(template.THINK_CLOSE))
    room = config.model.max_seq_len - g.max_new_tokens  # prompt columns at most

    if g.rollout == "motab":  # the teacher takes over where the student strays
      splicer = motab.Splicer(
        motab.Settings.from_section(g),
        tok,
        readers["teacher"],
        teacher_state=lambda: common.teacher_state(run_),
        place_batch=run_.place_batch,
        max_seq_len=config.model.max_seq_len,
      )
      splicer.boundary.restore(run_.data_state.get("motab", {}))

    def sample(step: int, first: int) -> tuple[Batch, dict]:
      """The student's completions of prompts [first, first + P) as a train batch (with
      MOTAB: spliced with the teacher's where they strayed) and rollout metrics."""
      problems = [prompts(first + i) for i in range(g.prompts_per_step)]
      ids = [template.encode_prompt(tok, p.prompt) for p in problems]
      # Prompts padded to a bucket of 32 columns: a few compilations, not one per length.
      width = -(-max(map(len, ids)) // 32) * 32
      if width > room:
        raise ValueError(f"a task prompt is longer than the {room} columns left for prompts")
      key = jax.random.fold_in(jax.random.key(config.seed), step)
      tokens, mask, out = sampler.generate_groups(
        generate_fn, run_.model_state(), ids, 1, key, pad_id=tok.pad_id, width=width
      )
      out = jax.device_get(out)
      laid = batching.rollout_batch(tokens, mask, out, pad_id=tok.pad_id, think_tags=think_tags)
      if splicer is None:
        return laid.batch, {}
      return splicer(ids, tokens, mask, out, laid, jax.random.fold_in(key, 1))

  def data() -> dict:
    return {
      **packer.state(),
      "next_prompt": next_prompt,
      "on_policy_steps": on_policy,
      "dataset_size": dataset_size,
      **({"motab": splicer.boundary.state()} if splicer is not None else {}),
    }

  first_step, total = run_.first_step, common.end_step(config)
  bar = tqdm(total=total, initial=first_step, disable=not config.train.progress, desc="gkd")
  pending, last, rollout_ms = [], {}, {}
  step = first_step
  for step in range(first_step + 1, total + 1):
    if sample is not None and _coin(config.seed, step) < g.lmbda:
      batch, rollout_ms = sample(step, next_prompt)
      next_prompt += g.prompts_per_step
      on_policy += 1
    else:
      arrays, _ = packer.next_batch()
      batch = Batch(**arrays)
    run_.state, step_metrics = train_step(run_.state, run_.place_batch(batch), run_.frozen)
    pending.append(step_metrics)
    stop = common.should_stop(run_, step)
    if step % config.train.log_every == 0 or step == total or stop:
      last = common.train_metrics(run_, jax.device_get(pending), step)
      last["gkd/on_policy_steps"] = float(on_policy)
      last.update(rollout_ms)  # the latest on-policy step's (MOTAB)
      run_.writer.write(step, last)
      bar.set_postfix(loss=f"{last['train/loss']:.4f}")
      pending = []
    bar.update(1)
    stop = common.periodic(run_, step, data, stop)
    if stop:
      logging.warning("stopping at step %d (%s)", step, stop)
      break
  bar.close()
  return common.finish(run_, step, data(), last)
