"""Reinforcement learning with verifiable rewards (the GRPO family), top to bottom.

One RL step:

  1. sample   P prompts from the task mixture, G completions each (B = P * G rows), with
              the KV-cache sampler at ``rl.temperature`` (and top-k/p, min-p);
  2. reward   decode every completion and score it on the host with the weighted reward
              spec (``reward.terms``: exact answer, DAPO's overlong penalty, ...);
              DAPO dynamic sampling drops groups whose G rewards are all equal and
              samples more prompts until P informative groups are found
              (``rollout.groups``); Reinforce-Ada (``rl.ada``) samples each prompt
              in rounds until its exit rule holds, keeps G rows and a baseline over
              all its draws (``rollout.adaptive``);
  3. score    the current policy gives ``old_logp`` (pi_old of the PPO ratio) scored
              exactly as the sampler records it, log_softmax(f32 logits / temperature),
              or with ``rl.old_logp=sampler`` the sampler's records stand in for it (no
              forward); the frozen reference gives ``ref_logp`` and the teacher
              (``teacher``, its own graph) ``teacher_logp`` when the loss or a token
              reward reads them; with ``rl.shared_prompt`` (default) every forward pass,
              here and in the update, runs each group's prompt once (``scoring``);
  4. advantage token rewards (``reward.token_terms``: the KL in the reward, per-step
              rewards, ...) are scored, then the group estimator (``rl.advantage``: GRPO
              z-score, Dr. GRPO mean-only, RLOO) runs on the global batch
              (``advantages.combine``);
  5. update   ``rl.epochs`` passes over the rollout, each ``rl.minibatches`` optimiser
              steps on shuffled row slices (whole groups with ``rl.shared_prompt``), all
              in one jitted call (``train.make_update``: a scan over the permutation);
  6. log / evaluate / checkpoint.

The policy loss is looked up by name (``loss.name``: any loss of the "policy" family)
with its hyperparameters in ``loss.<name>`` (the preset, overridable field by field).
A run starts from another run (``train.init_from``: its tokenizer and latest params) and
is resumable: re-running in the same workdir restores params, optimizer state, the RL
step and the prompt position; sampling keys are a function of (seed, RL step), so the
resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time

import jax
import numpy as np
from ml_collections import config_dict
from tqdm import tqdm

from jaxpost import config_lib, fields, rewards, scoring, train
from jaxpost.data import privileged, tasks, template
from jaxpost.losses import LOSSES, advantages
from jaxpost.recipes import common, register
from jaxpost.rewards import registry as reward_registry
from jaxpost.rewards import token as token_rewards
from jaxpost.rollout import adaptive, prompt_filter, sampler
from jaxpost.rollout import groups as groups_lib
from jaxpost.tools import sandbox, tir
from jaxpost.types import Rollout

LOSS_FAMILIES = ("policy",)
DEFAULT_LOSS = "grpo"


def config_sections(c: config_dict.ConfigDict) -> None:
  """The ``rl`` and ``reward`` sections. train.steps, eval.every and
  train.checkpoint_every count RL steps (sample -> updates)."""
  c.rl = config_dict.ConfigDict()
  c.rl.prompts_per_step = 16  # P: prompts (groups) per RL step; tasks come from data.levels
  c.rl.samples_per_prompt = 8  # G: completions per prompt, so B = P * G rows per step
  c.rl.max_new_tokens = 64  # sampling budget per completion, in tokens
  c.rl.temperature = 1.0  # sampling temperature; the trainer scores log_softmax(logits / T)
  c.rl.top_k = 0  # sampling: keep the k most likely tokens; 0 = off
  c.rl.top_p = 1.0  # sampling: nucleus mass; 1 = off
  c.rl.min_p = 0.0  # sampling: keep p >= min_p * p_max; 0 = off
  c.rl.advantage = "grpo"  # outcome advantage: grpo (z-score) | dr_grpo (mean only) | rloo
  # "sampler": pi_old = the sampler's recorded log_softmax(logits / T), one forward fewer
  # per step (TRL's choice); the ratio then also carries the sampler/trainer numerics gap
  # and rl/logp_mismatch_* is not logged.
  c.rl.old_logp = "recompute"  # pi_old of the ratio: recompute (a forward pass) | sampler
  c.rl.shared_prompt = True  # score/update each group's prompt once, not G times (exact)
  c.rl.reference = ""  # workdir of the frozen reference; "" = the policy's starting point
  c.rl.epochs = 1  # passes of policy updates over each rollout batch
  c.rl.minibatches = 1  # optimiser updates per pass, each on B / minibatches shuffled rows
  c.rl.dynamic_sampling = False  # DAPO: drop groups with identical rewards and refill
  c.rl.max_sample_rounds = 4  # dynamic sampling: generation rounds per step at most
  c.rl.mask_truncated = False  # overlong filtering: completions that hit the cap carry no loss
  # Reinforce-Ada (jaxpost/rollout/adaptive.py): sample each prompt in rounds of
  # ada.round_samples until its exit rule holds (rl.max_sample_rounds at most), keep G rows.
  c.rl.ada = config_dict.ConfigDict()
  c.rl.ada.rule = ""  # "" = off | balanced (G/2 positives and negatives) | positive (one)
  c.rl.ada.round_samples = 8  # completions per still-active prompt per round
  c.rl.ada.positive_threshold = 0.7  # a reward above this is a positive
  c.rl.ada.global_baseline = True  # baseline = mean reward of all draws (else the estimator)
  c.rl.ada.normalize_std = False  # with the global baseline: divide by the draws' std
  # Tool-integrated rollouts (SimpleTIR; jaxpost/tools/tir.py): the model writes Python, a
  # sandbox runs it, the output comes back as a tool turn (never trained on), up to
  # max_turns model turns within rl.max_new_tokens.
  c.rl.tool = config_dict.ConfigDict()
  c.rl.tool.max_turns = 0  # model turns per trajectory; 0 = single-turn, no tools
  c.rl.tool.turn_tokens = 32  # tokens one model turn may generate
  c.rl.tool.mask_void = True  # SimpleTIR: trajectories with a void turn carry no loss
  c.rl.tool.void_in_group = True  # void ones still count in the group baseline (the code's)
  c.rl.tool.workers = 2  # sandbox processes at once
  c.rl.tool.wall_s = 5.0  # sandbox: wall-clock seconds per call
  c.rl.tool.cpu_s = 2  # sandbox: CPU seconds per call
  c.rl.tool.memory_mb = 512  # sandbox: address space per call
  c.rl.tool.output_bytes = 16384  # sandbox: stdout / stderr bytes kept
  # Offline prompt filtering (jaxpost/rollout/prompt_filter.py): before training, the
  # starting policy samples each candidate prompt, a reward scores it, and the prompts
  # whose mean score is in [low, high] become the training stream.
  c.rl.prompt_filter = config_dict.ConfigDict()
  c.rl.prompt_filter.reward = ""  # "" = off | a registered reward, e.g. rubric (reward.<name>)
  c.rl.prompt_filter.candidates = 256  # prompts screened (the stream's first ones)
  c.rl.prompt_filter.samples = 4  # completions per screened prompt
  c.rl.prompt_filter.low = 0.0  # keep prompts whose mean score is >= low ...
  c.rl.prompt_filter.high = 1.0  # ... and <= high
  fields.declare(
    "rl",
    prompts_per_step=fields.integer(ge=1),
    samples_per_prompt=fields.integer(ge=1),
    max_new_tokens=fields.integer(ge=1),
    temperature=fields.num(gt=0),
    top_k=fields.integer(ge=0),
    top_p=fields.num(gt=0, le=1),
    min_p=fields.num(ge=0, le=1),
    advantage=fields.one_of(advantages.ADVANTAGES.names),
    old_logp=fields.one_of(("recompute", "sampler")),
    shared_prompt=fields.FLAG,
    reference=fields.TEXT,
    epochs=fields.integer(ge=1),
    minibatches=fields.integer(ge=1),
    dynamic_sampling=fields.FLAG,
    max_sample_rounds=fields.integer(ge=1),
    mask_truncated=fields.FLAG,
  )
  fields.declare(
    "rl.ada",
    rule=fields.one_of(("", *adaptive.RULES)),
    round_samples=fields.integer(ge=1),
    positive_threshold=fields.num(),
    global_baseline=fields.FLAG,
    normalize_std=fields.FLAG,
  )
  fields.declare(
    "rl.tool",
    max_turns=fields.integer(ge=0),
    turn_tokens=fields.integer(ge=1),
    mask_void=fields.FLAG,
    void_in_group=fields.FLAG,
    workers=fields.integer(ge=1),
    wall_s=fields.num(gt=0),
    cpu_s=fields.integer(ge=1),
    memory_mb=fields.integer(ge=64),
    output_bytes=fields.integer(ge=1),
  )
  fields.declare(
    "rl.prompt_filter",
    reward=fields.TEXT,
    candidates=fields.integer(ge=1),
    samples=fields.integer(ge=1),
    low=fields.num(),
    high=fields.num(),
  )

  # Rewards: a weighted sum of registered sequence rewards (jaxpost/rewards), plus token
  # rewards (jaxpost/rewards/token.py) that enter the advantages per token.
  c.reward = config_dict.ConfigDict()
  c.reward.terms = (("exact_answer", 1.0),)  # (name, weight) pairs, summed
  c.reward.token_terms = ()  # (name, weight) token rewards, e.g. (("kl_penalty", 0.04),)
  c.reward.timeout_s = 1.0  # time limit of one reward call; a call past it scores 0
  c.reward.workers = 2  # worker processes for untrusted rewards (started only if one is used)
  c.reward.budget_s = 600.0  # seconds timed-out reward calls may cost a run; 0 = no budget
  fields.declare(
    "reward",
    terms=fields.Custom("(name, weight) pairs of registered rewards", _terms_check(rewards.names)),
    token_terms=fields.Custom(
      "(name, weight) pairs of token rewards", _terms_check(token_rewards.TOKEN_REWARDS.names)
    ),
    timeout_s=fields.num(ge=0),
    workers=fields.integer(ge=1),
    budget_s=fields.num(ge=0),
  )  # reward.<name>.*: each reward's own rules (its registration)
  c.reward.exact_answer = config_dict.ConfigDict()
  c.reward.exact_answer.correct = 1.0  # reward of a correct final answer
  c.reward.exact_answer.wrong = 0.0  # reward of a wrong, missing or malformed answer
  c.reward.exact_answer.truncated_is_wrong = True  # a completion that hit the cap is wrong
  c.reward.think_format = config_dict.ConfigDict()
  c.reward.think_format.ok = 1.0  # reward of a well-formed <think>...</think>answer
  c.reward.think_format.bad = 0.0  # reward otherwise
  c.reward.overlong = config_dict.ConfigDict()
  c.reward.overlong.max_len = 0  # DAPO L_max in tokens, where the penalty hits -1; 0 = the cap
  c.reward.overlong.cache_len = 16  # DAPO L_cache: tokens over which the penalty ramps to -1
  c.reward.overlong.penalty_factor = 1.0  # scale of the overlong penalty
  c.reward.length = config_dict.ConfigDict()
  c.reward.length.norm_tokens = 0  # tokens that cost 1 in the linear length penalty; 0 = the cap
  c.reward.length.free_tokens = 0  # tokens that cost nothing
  for name in token_rewards.TOKEN_REWARDS.names():  # token rewards' blocks: their defaults
    c.reward[name] = token_rewards.TOKEN_REWARDS.hparams_config(name)
  for name in rewards.names():  # other sequence rewards (a new file's): their defaults
    if name not in c.reward:
      c.reward[name] = reward_registry.REWARDS.hparams_config(name)


def _terms_check(names):
  """Checks a tuple of (name, weight[, hparams]) terms: registered names, finite weights."""

  def check(terms) -> None:
    if not isinstance(terms, tuple | list):
      raise TypeError(f"a tuple of terms, got {type(terms).__name__}")
    for term in terms:
      if not isinstance(term, tuple | list) or not 2 <= len(term) <= 3:
        raise ValueError(f"each term is (name, weight), got {term!r}")
      name, weight = term[0], term[1]
      known = names()
      if name not in known:
        hint = fields.suggest(str(name), known)
        raise ValueError(
          f"unknown name {name!r}"
          + (f" (did you mean {hint!r}?)" if hint else "")
          + f"; registered: {', '.join(known)}"
        )
      if fields.num().problem(weight):
        raise ValueError(f"the weight of {name!r} must be a finite number, got {weight!r}")

  return check


def validate(c: config_dict.ConfigDict) -> None:
  """The ``rl`` and ``reward`` sections and how they fit the rest (config_lib calls it)."""
  r = c.rl  # each field's own range is checked by its declared rule (config_sections)
  if r.max_new_tokens >= c.model.max_seq_len:
    raise config_lib.ConfigError(
      f"rl.max_new_tokens={r.max_new_tokens} leaves no room for a prompt in "
      f"model.max_seq_len={c.model.max_seq_len}"
    )
  rows = r.prompts_per_step * r.samples_per_prompt
  splits = r.minibatches * c.train.microbatches
  if rows % splits:
    raise config_lib.ConfigError(
      f"rl.prompts_per_step * rl.samples_per_prompt = {rows} rows do not split into "
      f"rl.minibatches={r.minibatches} x train.microbatches={c.train.microbatches}"
    )
  if r.shared_prompt and r.prompts_per_step % splits:
    raise config_lib.ConfigError(
      f"rl.shared_prompt needs whole groups in every update and micro-batch, but "
      f"rl.prompts_per_step={r.prompts_per_step} groups do not split into rl.minibatches="
      f"{r.minibatches} x train.microbatches={c.train.microbatches}; change them or set "
      "rl.shared_prompt=False"
    )
  if r.ada.rule and r.dynamic_sampling:
    raise config_lib.ConfigError(
      "rl.ada.rule (Reinforce-Ada) and rl.dynamic_sampling (DAPO) both choose the step's "
      "groups: set one"
    )
  if r.ada.rule and r.ada.round_samples * r.max_sample_rounds < r.samples_per_prompt:
    raise config_lib.ConfigError(
      f"rl.ada.round_samples={r.ada.round_samples} x rl.max_sample_rounds="
      f"{r.max_sample_rounds} draws cannot fill groups of rl.samples_per_prompt="
      f"{r.samples_per_prompt}"
    )
  if r.tool.max_turns and not r.tool.void_in_group and (r.advantage != "grpo" or r.ada.rule):
    raise config_lib.ConfigError(
      "rl.tool.void_in_group=False recomputes GRPO's group z-score without the void rows: "
      "it needs rl.advantage='grpo' and no rl.ada.rule"
    )
  pf = r.prompt_filter
  if pf.reward and pf.reward not in rewards.names():
    raise config_lib.ConfigError(
      f"rl.prompt_filter.reward={pf.reward!r}: one of {', '.join(rewards.names())}"
    )
  if pf.reward and pf.low > pf.high:
    raise config_lib.ConfigError(f"rl.prompt_filter: low={pf.low} > high={pf.high}")
  config_lib.run_dir(r.reference, "rl.reference")
  if c.data.source != "tasks":
    raise config_lib.ConfigError(
      "the rl recipe draws prompts from the tasks: data.source must be 'tasks'"
    )
  try:
    reward_spec(c)
    needs = token_rewards.needs(token_rewards.make_spec(c.reward.token_terms, c.reward))
    if "teacher_logp" in needs:  # privileged alone: the policy itself, seeing the text
      common.check_teacher(c, model=not c.teacher.privileged)
      if c.teacher.offline:
        raise config_lib.ConfigError("the rl recipe scores its own samples: no teacher.offline")
    elif c.teacher.follow or c.teacher.privileged:
      raise config_lib.ConfigError(
        "teacher.follow / teacher.privileged shape the teacher of a token reward that reads "
        "teacher_logp (e.g. reward.token_terms=(('teacher_log_ratio', 0.001),)); none does"
      )
    for name in token_rewards.TOKEN_REWARDS.names():  # used or not: a bad value fails now
      token_rewards.TOKEN_REWARDS.validate_hparams(name, c.reward[name], where=f"reward.{name}")
  except (KeyError, TypeError, ValueError) as e:
    raise config_lib.ConfigError(f"reward: {e}") from None
  config_lib.rows_split_over_mesh(c, rows // r.minibatches, "rows per update")


def reward_spec(c: config_dict.ConfigDict, terms=None) -> tuple:
  """``reward.terms`` (or ``terms``) with each term's hyperparameter block
  (``rewards.make_spec``).

  Length budgets left at 0 (``overlong.max_len``, any reward's ``norm_tokens``) mean
  the sampling cap ``rl.max_new_tokens``.
  """
  blocks = {
    k: dict(v)
    for k, v in c.reward.items()
    if isinstance(v, config_dict.ConfigDict) and k not in token_rewards.TOKEN_REWARDS
  }
  cap = c.rl.max_new_tokens
  if blocks.get("overlong", {}).get("max_len", 1) == 0:
    blocks["overlong"]["max_len"] = cap
    blocks["overlong"]["cache_len"] = min(blocks["overlong"]["cache_len"], cap)
  for block in blocks.values():  # the length rewards' token scale (length, tldr, ...)
    if block.get("norm_tokens", 1) == 0:
      block["norm_tokens"] = cap
  return rewards.make_spec([tuple(t) for t in (c.reward.terms if terms is None else terms)], blocks)


def loss_hparams(c: config_dict.ConfigDict, rows_per_update: int) -> dict:
  """``loss.<name>``, with Dr. GRPO's C = 0 resolved to the update's rows x max_new_tokens.

  That C is (1/G) sum_i sum_t / L_max per group over an update's global batch.
  """
  h = dict(c.loss[c.loss.name])
  if h.get("agg") == "seq_mean_token_sum_norm" and not h.get("agg_constant"):
    h["agg_constant"] = float(rows_per_update * c.rl.max_new_tokens)
  return h


def update_order(
  rng: np.random.Generator, p: int, g: int, epochs: int, minibatches: int, *, whole_groups: bool
) -> np.ndarray:
  """i32[epochs * minibatches, B / minibatches]: the rows of each update, a fresh
  permutation per epoch (of whole groups of G rows when ``whole_groups``)."""
  perms = []
  for _ in range(epochs):
    if whole_groups:
      perms.append((rng.permutation(p)[:, None] * g + np.arange(g)).reshape(p * g))
    else:
      perms.append(rng.permutation(p * g))
  return np.concatenate(perms).reshape(epochs * minibatches, -1).astype(np.int32)


def teacher_logp(run_, teacher_fn, groups, device_batch) -> np.ndarray:
  """f32[B, T] the teacher's log-prob of each sampled token (0 off the loss mask).

  The teacher is ``common.teacher_state``: a frozen model, the policy's following copy
  (``teacher.follow``: Skill-SD's teacher synced every ``teacher.sync_every`` steps) or,
  with only ``teacher.privileged``, the policy itself. With ``teacher.privileged`` it
  reads its own rows: each problem's prompt with the privileged text, then the same
  completion tokens (``privileged.rollout_view``); the policy's rows never hold that text.
  """
  config, tok = run_.config, run_.tok
  state = common.teacher_state(run_)
  if not config.teacher.privileged:
    return np.asarray(jax.device_get(teacher_fn(state, device_batch)[0]))
  g, window = groups.group_size, config.rl.max_new_tokens
  kind = config.teacher.privileged
  prompts = [
    template.encode_prompt(tok, privileged.problem_prompt(groups.problems[row // g], kind))
    for row in range(len(groups.completions))
  ]
  view, cols = privileged.rollout_view(groups.batch, prompts, window=window, pad_id=tok.pad_id)
  if config.rl.shared_prompt:
    groups_lib.check_prompt_groups(view, g, window)
  logp = np.asarray(jax.device_get(teacher_fn(state, run_.place_batch(view))[0]))
  on = np.asarray(groups.batch.loss_mask) > 0
  return np.where(on, np.take_along_axis(logp, cols, axis=1), 0.0).astype(np.float32)


def screened_prompts(run_, rollouts, prompts, workdir: str):
  """The prompt stream restricted to the prompts the starting policy's samples score in
  ``rl.prompt_filter``'s band (screened once per run; ``rollout.prompt_filter``).
  ``rollouts(problems, n, key, spec, model_state)`` samples and scores as the run does."""
  config, pf = run_.config, run_.config.rl.prompt_filter
  spec = reward_spec(config, ((pf.reward, 1.0),))
  keys = itertools.count()

  def score_prompts(problems):
    key = jax.random.fold_in(jax.random.key(config.seed + 1), next(keys))
    groups, _ = rollouts(problems, pf.samples, key, spec, run_.model_state())
    return groups.rewards.reshape(len(problems), pf.samples)

  settings = {k: pf[k] for k in ("reward", "candidates", "samples", "low", "high")}
  kept, means, fresh = prompt_filter.load_or_screen(
    workdir,
    lambda: prompt_filter.screen(
      score_prompts,
      prompts,
      candidates=pf.candidates,
      chunk=config.rl.prompts_per_step,
      low=pf.low,
      high=pf.high,
    ),
    settings,
  )
  if fresh:
    run_.writer.write(
      run_.first_step,
      {"filter/kept_frac": len(kept) / len(means), "filter/mean_score": float(means.mean())},
    )
  logging.info("prompt filter: %d of %d prompts kept", len(kept), len(means))
  return prompt_filter.filtered_stream(prompts, kept)


@register("rl")
def run(config, workdir: str) -> dict:
  """RL-trains per ``config`` in ``workdir``; returns the final metrics."""
  mesh = common.validate_and_start(config, workdir, "rl")
  if jax.process_count() > 1:
    raise config_lib.ConfigError("the rl recipe runs on one host (sampling is host-local)")
  r = config.rl
  P, G = r.prompts_per_step, r.samples_per_prompt  # noqa: N806 (axis letters)
  rows_per_update = P * G // r.minibatches
  updates_per_step = r.epochs * r.minibatches

  # Tokenizer, prompt stream, rewards; the policy (from train.init_from) and its state.
  tok = common.load_tokenizer(config, workdir)
  spec = reward_spec(config)
  prompts = reward_registry.conditioned(  # e.g. TLDR's length-level tags
    tasks.mixture(config_lib.parse_levels(config.data.levels), "train", config.seed), spec
  )
  reward_pool = rewards.RewardPool(  # one per run: its budget spans the run; closed at the end
    workers=config.reward.workers,
    timeout_s=config.reward.timeout_s or None,
    budget_s=config.reward.budget_s,
  )
  reward_pool.check(spec)  # an untrusted reward that cannot reach a worker fails now
  token_terms = token_rewards.make_spec(config.reward.token_terms, config.reward)
  token_needs = token_rewards.needs(token_terms)  # the scores the step must compute
  run_ = common.setup(
    config,
    workdir,
    mesh,
    tok,
    total_updates=config.train.steps * updates_per_step,
    updates_per_step=updates_per_step,
  )
  hparams = loss_hparams(config, rows_per_update)
  needs_ref = hparams.get("kl_coef", 0.0) > 0 or "ref_logp" in token_needs
  if needs_ref:  # a frozen model from its own source, not a copy of the policy
    _, ref_state = common.frozen_model(config, tok.vocab_size, init_from=r.reference or None)
    run_.frozen["reference"] = run_.place(ref_state)
  reads_teacher = "teacher_logp" in token_needs
  t_graph = run_.graphdef  # the policy's copy (teacher.follow) or itself (privileged only)
  if reads_teacher and (config.teacher.init_from or config.teacher.hf_dir or config.teacher.gguf):
    t_graph, t_state = common.load_teacher(config, tok)  # its own graph, its own scorer
    run_.frozen["teacher"] = run_.place(t_state)

  # Compiled pieces: sampler, scorer (completions only, shared prompts), policy update.
  def sampler_fn(max_new_tokens: int):
    return sampler.make_generate_fn(
      run_.graphdef,
      max_new_tokens=max_new_tokens,
      eos_id=tok.eos_id,
      pad_id=tok.pad_id,
      temperature=r.temperature,
      top_k=r.top_k,
      top_p=r.top_p,
      min_p=r.min_p,
    )

  generate_fn = sampler_fn(r.max_new_tokens)
  if r.tool.max_turns:  # one model turn at a time, between tool calls, within the budget
    turn_fn = sampler_fn(r.tool.turn_tokens)
    tool_options = dict(
      max_turns=r.tool.max_turns,
      max_new_tokens=r.max_new_tokens,
      limits=sandbox.Limits(
        wall_s=r.tool.wall_s,
        cpu_s=r.tool.cpu_s,
        memory_mb=r.tool.memory_mb,
        output_bytes=r.tool.output_bytes,
      ),
      workers=r.tool.workers,
    )

  def rollouts(problems, n, key, spec, model_state):
    """n rewarded completions of each problem (multi-turn tool rollouts with rl.tool)."""
    if r.tool.max_turns:
      return tir.sample_tool_groups(
        turn_fn, model_state, tok, problems, n, key, spec, pool=reward_pool, **tool_options
      )
    return groups_lib.sample_groups(
      generate_fn, model_state, tok, problems, n, key, spec, pool=reward_pool
    )

  scorer = scoring.make_scorer(
    run_.graphdef,
    temperature=r.temperature,
    lm_head=config.kernels.lm_head,
    chunk_size=config.kernels.chunk_size,
    window=r.max_new_tokens,  # completions only: no LM head over the prompts
    group_size=G if r.shared_prompt else 1,  # each group's prompt runs once
  )
  logp_fn = scoring.jit_logp(scorer)
  # Token rewards, with what the recipe binds: a reward's own forward pass under the
  # policy that sampled (any rows, prompts not shared) and its window.
  rows_logp_fn = scoring.jit_logp(dataclasses.replace(scorer, group_size=1))

  def policy_logp(batch):
    state = (run_.state.params, run_.frozen["rest"])
    return np.asarray(jax.device_get(rows_logp_fn(state, run_.place_batch(batch))[0]))

  token_spec = token_rewards.make_spec(
    config.reward.token_terms,
    config.reward,
    {"tokenizer": tok, "policy_logp": policy_logp, "window": r.max_new_tokens},
  )
  if reads_teacher:  # a frozen model's own distribution (T = 1) on the same window; the
    # policy's copy is read like the policy (at rl.temperature), so a copy equal to the
    # policy, seeing the same context, gives exactly its log-probs
    t_temp = 1.0 if "teacher" in run_.frozen else r.temperature
    teacher_fn = scoring.jit_logp(dataclasses.replace(scorer, graphdef=t_graph, temperature=t_temp))
  loss_fn = LOSSES.bind(config.loss.name, hparams, where=f"loss.{config.loss.name}")
  update = run_.compile_step(
    train.make_update(
      train.make_objective(LOSSES.family(config.loss.name), scorer, loss_fn),
      run_.optimizer,
      microbatches=config.train.microbatches,
      schedule=run_.schedule,
    )
  )
  if r.prompt_filter.reward:  # train on the screened prompts only
    prompts = screened_prompts(run_, rollouts, prompts, workdir)
  start_metrics = (
    run_.evaluate(run_.first_step) if run_.first_step == 0 and config.eval.every else {}
  )

  # The loop.
  base_key = jax.random.key(config.seed)
  next_prompt = int(run_.data_state.get("next_prompt", 0))
  end = common.end_step(config)
  bar = tqdm(total=end, initial=run_.first_step, disable=not config.train.progress, desc="rl")
  last: dict[str, float] = {}
  step = run_.first_step
  for step in range(run_.first_step + 1, end + 1):
    t0 = time.time()
    step_key = jax.random.fold_in(base_key, step)
    model_state = run_.model_state()

    # 1-2. Sample and reward (with dynamic sampling: until P informative groups; with
    # Reinforce-Ada: each prompt in rounds until it has the signal its exit rule asks).
    def sample_round(k: int, problems, n=G, model_state=model_state, step_key=step_key):
      return rollouts(problems, n, jax.random.fold_in(step_key, k), spec, model_state)

    baseline, extra_ms = None, {}
    if r.ada.rule:
      ada = adaptive.collect(
        lambda k, problems: sample_round(k, problems, r.ada.round_samples),
        [prompts(next_prompt + i) for i in range(P)],
        group_size=G,
        round_samples=r.ada.round_samples,
        max_rounds=r.max_sample_rounds,
        rule=r.ada.rule,
        positive_threshold=r.ada.positive_threshold,
        normalize_std=r.ada.normalize_std,
        rng=np.random.default_rng([config.seed, step, 1]),
      )
      groups, reward_ms, rounds, filled = ada.groups, ada.reward_metrics, ada.rounds, 0
      next_prompt += P
      baseline = (ada.baseline, ada.scale) if r.ada.global_baseline else None
      extra_ms = ada.metrics()
    else:
      groups, reward_ms, rounds, filled, next_prompt = groups_lib.collect_groups(
        sample_round,
        prompts,
        next_prompt,
        P,
        G,
        dynamic=r.dynamic_sampling,
        max_rounds=r.max_sample_rounds,
      )
    # Rows that carry no loss: DAPO's overlong filter (truncated rows) and SimpleTIR's
    # void-turn filter; they stay in their groups' baselines.
    dropped = np.zeros(len(groups.completions), bool)
    if r.mask_truncated:
      dropped |= groups.truncated
    if r.tool.max_turns:
      void = groups.info["void"]
      dropped |= void if r.tool.mask_void else False
      if not r.tool.void_in_group:  # ... unless void rows leave the baseline too
        baseline = tir.group_baseline(groups.rewards, void, G)
      extra_ms.update(tir.tool_metrics(groups))
    if dropped.any():
      batch = groups.batch
      groups = dataclasses.replace(
        groups, batch=batch.replace(loss_mask=batch.loss_mask * ~dropped[:, None])
      )
    t_sample = time.time() - t0

    # 3. Score under the policy that sampled (pi_old) and the reference.
    if r.shared_prompt:
      groups_lib.check_prompt_groups(groups.batch, G, r.max_new_tokens)
    device_batch = run_.place_batch(groups.batch)
    old_entropy = None
    if r.old_logp == "recompute" or "old_entropy" in token_needs:
      old_logp, old_entropy = map(
        np.asarray,
        jax.device_get(logp_fn((run_.state.params, run_.frozen["rest"]), device_batch)),
      )
    if r.old_logp == "sampler":  # what the sampler recorded: log_softmax(logits / T)
      old_logp = groups.raw_logp
    scores = {"old_logp": old_logp, "old_entropy": old_entropy, "ref_logp": None}
    if reads_teacher:
      scores["teacher_logp"] = teacher_logp(run_, teacher_fn, groups, device_batch)
    if needs_ref:
      scores["ref_logp"] = np.asarray(
        jax.device_get(logp_fn(run_.frozen["reference"], device_batch)[0])
      )

    # 4. Token rewards, then advantages on the global batch.
    mask = np.asarray(groups.batch.loss_mask)
    by_mode, token_ms = token_rewards.score(token_spec, groups, scores)
    token_adv, adv, final_rewards = jax.device_get(
      advantages.combine(
        groups.rewards, by_mode, mask, estimator=r.advantage, group_size=G, baseline=baseline
      )
    )
    rollout = Rollout(
      batch=groups.batch,
      advantages=np.asarray(token_adv, np.float32),
      old_logp=np.asarray(old_logp, np.float32),
      sampler_logp=groups.sampler_logp,
      ref_logp=np.zeros_like(old_logp) if scores["ref_logp"] is None else scores["ref_logp"],
      group_ids=np.repeat(np.arange(P, dtype=np.int32), G),
      # model turns (tool rollouts), else 1 on every completion token
      turn_ids=groups.info.get("turn_ids", (mask > 0).astype(np.int32)),
    )

    # 5. Policy updates: epochs x minibatches in one compiled call.
    t1 = time.time()
    order = update_order(
      np.random.default_rng([config.seed, step]),
      P,
      G,
      r.epochs,
      r.minibatches,
      whole_groups=r.shared_prompt,
    )
    run_.state, stacked = update(run_.state, run_.place_batch(rollout), run_.frozen, order)
    fetched = jax.device_get(stacked)
    t_update = time.time() - t1

    # 6. Log, evaluate, checkpoint.
    last = common.train_metrics(run_, fetched, step)  # stops a run stuck on NaN
    last.update(common.mean_metrics(reward_ms))
    last.update(token_ms)
    trainer_logp = old_logp if r.old_logp == "recompute" else None  # its ratio to the sampler
    last.update(
      groups_lib.rollout_metrics(
        groups, np.asarray(final_rewards), np.asarray(adv), trainer_logp, G
      )
    )
    last.update({"rl/sample_rounds": float(rounds), "rl/filled_groups": float(filled)})
    last.update(extra_ms)
    last.update(
      {"perf/sample_s": t_sample, "perf/update_s": t_update, "perf/step_s": time.time() - t0}
    )
    stop = common.should_stop(run_, step)
    if step % config.train.log_every == 0 or step == end or stop:
      run_.writer.write(step, last)
    bar.set_postfix(reward=f"{last['rl/reward_mean']:.3f}", acc=f"{last['rl/accuracy']:.2f}")
    bar.update(1)
    stop = common.periodic(
      run_, step, lambda step=step, n=next_prompt: {"step": step, "next_prompt": n}, stop
    )
    if stop:
      logging.warning("stopping at RL step %d (%s)", step, stop)
      break
  bar.close()
  reward_pool.close()

  extra = {}
  if start_metrics:
    extra["start/accuracy"] = start_metrics.get("eval/accuracy", float("nan"))
  return common.finish(
    run_,
    step,
    {"step": step, "next_prompt": next_prompt},
    last,
    panels=("rl/reward_mean", "rl/accuracy", "eval/accuracy/*"),
    extra=extra,
  )
