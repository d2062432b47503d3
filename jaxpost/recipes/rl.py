"""Reinforcement learning with verifiable rewards (the GRPO family), top to bottom.

One RL step:

  1. sample   P prompts from the task mixture, G completions each (B = P * G rows), with
              the KV-cache sampler at ``rl.temperature`` (and top-k/p, min-p);
  2. reward   decode every completion and score it on the host with the weighted reward
              spec (``reward.terms``: exact answer, DAPO's overlong penalty, ...);
              DAPO dynamic sampling drops groups whose G rewards are all equal and
              samples more prompts until P informative groups are found;
  3. score    one forward pass of the current policy over the B rows gives ``old_logp``
              (pi_old of the PPO ratio) scored exactly as the sampler records it,
              log_softmax(f32 logits / temperature), or with ``rl.old_logp=sampler``
              the sampler's recorded log-probs stand in for it (no forward); the
              frozen initial policy gives ``ref_logp`` when a KL coefficient is set
              (in the loss or in the reward); with ``rl.shared_prompt`` (default)
              every forward pass, here and in the update, runs each group's prompt
              once and its G completions on copies of its keys and values (exact:
              the copies' gradients sum back into the one prompt pass);
  4. advantage group z-score (GRPO), mean-only (Dr. GRPO) or leave-one-out (RLOO), on
              the global batch, broadcast to tokens, plus optional token-level
              returns of per-step trace rewards;
  5. update   ``rl.epochs`` passes over the rollout, each ``rl.minibatches`` optimiser
              steps on shuffled row slices (whole groups with ``rl.shared_prompt``);
              every step is the shared jitted ``train.make_train_step`` over a
              ``Rollout`` (gradient accumulation over ``train.microbatches``,
              normalisers from each update's global batch);
  6. log / evaluate / checkpoint.

The policy loss is looked up by name (``loss.name``: ppo | grpo | dr_grpo | dapo | gspo
| gspo_token) and its preset hyperparameters are overridden by the ``rl.*`` fields
that are set. A run starts from an SFT workdir (``rl.init_from``: its tokenizer and
latest checkpoint) and is resumable: re-running in the same workdir restores params,
optimizer state, the RL step and the prompt position; sampling keys are a function of
(seed, RL step), so the resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxpost import checkpoint, config_lib, metrics, optim, rewards, sharding, train
from jaxpost.data import pipeline, tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.eval import accuracy
from jaxpost.losses import advantages, kl, policy
from jaxpost.losses.head import TargetStats, target_stats
from jaxpost.models import decoder
from jaxpost.recipes import sft
from jaxpost.rollout import batching, sampler
from jaxpost.types import ROLE_PROMPT, ROLE_THINK, Batch, Rollout

# loss.name -> the preset that the rl.* fields override ("" / -1 keep the preset value).
PRESETS = policy.PRESETS

# Prompts are left-padded to a multiple of this many columns, so the sampler and the
# train step compile once per bucket rather than once per prompt length.
PROMPT_BUCKET = 16


# ----------------------------------------------------------------------------------------
# Config -> policy-loss hyperparameters.


def kl_coef(config) -> float:
  """beta of the KL to the reference: ``rl.kl_coef``, or the loss's preset if it is -1."""
  if config.rl.kl_coef >= 0:
    return float(config.rl.kl_coef)
  return float(PRESETS[config.loss.name].get("kl_coef", 0.0))


def loss_hparams(config, rows_per_update: int) -> dict:
  """Keyword hyperparameters of the policy loss: the rl.* fields that override its preset.

  Args:
    config: the run config.
    rows_per_update: rows of one optimiser update's global batch; Dr. GRPO's constant
      C defaults to rows * max_new_tokens, i.e. (1/G) sum_i sum_t / L_max per group.
  """
  r = config.rl
  h = {
    "dual_clip": r.dual_clip,
    "clip_ratio_c": r.clip_ratio_c,
    "entropy_coef": r.entropy_coef,
    "kl_estimator": r.kl_estimator,
    # With the KL in the reward, the loss must not count it a second time.
    "kl_coef": 0.0 if r.kl_in_reward else kl_coef(config),
    "is_mode": r.is_mode,
    "is_cap": r.is_cap,
    "prefix_behavior": r.prefix_behavior,
  }
  for key in ("ratio", "agg", "is_level", "prefix"):
    if r[key]:
      h[key] = r[key]
  for key in ("clip_eps_low", "clip_eps_high"):
    if r[key] >= 0:
      h[key] = r[key]
  if r.is_floor > 0:
    h["is_floor"] = r.is_floor
  if h.get("agg", PRESETS[config.loss.name]["agg"]) == "seq_mean_token_sum_norm":
    h["agg_constant"] = float(r.agg_constant or rows_per_update * r.max_new_tokens)
  return h


# ----------------------------------------------------------------------------------------
# The model's view of a rollout: per-token log-probs at the sampling temperature.


def completion_columns(roles: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
  """The ``window`` target columns from each row's first completion target on.

  In a rollout batch (``rollout.batching``) row b's completion targets are the columns
  [L_p - 1, L_p - 1 + L_c), L_c <= max_new_tokens, after the L_p - 1 prompt targets
  (ROLE_PROMPT) at [0, L_p - 1); counting those finds the start even for a row whose
  completion is empty.

  Args:
    roles: i32[B, T] target roles.
    window: W, at least the longest completion (``rl.max_new_tokens``).

  Returns:
    (columns i32[B, W] clipped to [0, T), valid f32[B, W]: 0 on clipped repeats).
  """
  t = roles.shape[1]
  start = jnp.sum(roles == ROLE_PROMPT, axis=1)  # L_p - 1
  columns = start[:, None] + jnp.arange(window)[None, :]
  return jnp.minimum(columns, t - 1), (columns < t).astype(jnp.float32)


def shared_prompt_hidden(model, batch: Batch, window: int, group_size: int) -> jax.Array:
  """Final hidden states at the ``completion_columns`` of a batch of prompt groups.

  Rows come in groups of G = ``group_size`` adjacent rows with the same prompt (as the
  sampler's ``generate_groups`` and ``rollout.batching`` lay them out). Each group's
  prompt runs once, left-padded to P = T - ``window`` columns into a KV cache, exactly
  as the sampler prefilled it; the cache is copied to the G rows
  (``decoder.repeat_cache``) and the rows' first ``window - 1`` completion tokens run on
  top of it. Target column L_p - 1 + w is predicted from the prompt's last token (w = 0)
  or from completion token w - 1, so the result equals gathering ``final_hidden`` of a
  full forward pass at those columns, with 1/G of the prompt work in the forward and in
  the backward pass (the copies' gradients sum into the one prompt pass).

  Args:
    model: the merged decoder.
    batch: [B, T] rows in the ``rollout.batching`` layout, B divisible by G; every
      prompt must fit in T - ``window`` columns (``check_prompt_groups``).
    window: W, the completion window (``rl.max_new_tokens``).
    group_size: G.

  Returns:
    [B, W, D] hidden states (rows whose window passes column T - 1 hold filler there).
  """
  b, t = batch.tokens.shape
  p = t - window
  if group_size < 1 or b % group_size or p < 1:
    raise ValueError(
      f"[{b}, {t}] rows do not fit groups of {group_size} rows and a {window}-token window"
    )

  def take(x, cols):
    return jnp.take_along_axis(x, cols, axis=1)

  # Each group's prompt, left-padded to P columns, read off its first row. Its first
  # completion target sits at column L_p - 1 (< T, so never clipped).
  columns, valid = completion_columns(batch.roles, window)
  first = slice(None, None, group_size)
  n_prompt = columns[first, 0] + 1  # L_p
  src = jnp.arange(p)[None, :] - (p - n_prompt)[:, None]  # [B / G, P]
  real = src >= 0
  src = jnp.maximum(src, 0)
  prompt = model.forward(
    jnp.where(real, take(batch.tokens[first], src), 0),
    positions=jnp.where(real, take(batch.positions[first], src), 0),
    segment_ids=jnp.where(real, take(batch.segment_ids[first], src), 0),
    cache=decoder.init_cache(model.config, b // group_size, t - 1),
    compute_logits=False,
  )
  # Completion tokens 0 .. W - 2 of every row, at slots P .. T - 2 of its group's cache.
  tokens_at = columns[:, 1:]  # target column c is predicted at token c
  completion = model.forward(
    take(batch.tokens, tokens_at),
    positions=take(batch.positions, tokens_at),
    segment_ids=take(batch.segment_ids, tokens_at) * valid[:, 1:].astype(jnp.int32),
    cache=decoder.repeat_cache(prompt.cache, group_size),
    compute_logits=False,
  )
  last_prompt = jnp.repeat(prompt.final_hidden[:, -1:], group_size, axis=0)
  return jnp.concatenate([last_prompt, completion.final_hidden], axis=1)


def score_targets(
  graphdef,
  params,
  rest,
  batch: Batch,
  *,
  temperature: float,
  lm_head: str = "logits",
  chunk_size: int = 0,
  window: int = 0,
  group_size: int = 1,
) -> TargetStats:
  """Log-prob and entropy of ``batch.targets`` under log_softmax(f32 logits / temperature).

  The sampler records log_softmax(logits / temperature) of what it drew, so scoring the
  same way makes the PPO ratio start at 1 up to float noise. On a fused LM head the
  temperature goes into the weight: logits / T = hidden @ (W / T).

  Args:
    graphdef: the model's static graph.
    params: trainable state.
    rest: the model's other state.
    batch: [B, T] prompt + completion rows.
    temperature: the sampling temperature (> 0).
    lm_head: key of ``losses.head.LM_HEADS``.
    chunk_size: token rows per chunk of the fused op.
    window: if > 0, the LM head runs only on the ``window`` columns from each row's
      first completion target on (``completion_columns``), not on the prompt: it must
      cover every completion (``rl.max_new_tokens``); stats elsewhere are 0. Same values
      and gradients on the loss mask, about a third less LM-head work for 32-token
      prompts and 64-token completions.
    group_size: G > 1 (needs ``window``): rows are groups of G sharing a prompt, which
      runs once per group (``shared_prompt_hidden``); same values and gradients.

  Returns:
    ``TargetStats`` with f32[B, T] ``logp`` and ``entropy`` (zeros off the loss mask on
    the fused path, and outside the window).
  """
  model = nnx.merge(graphdef, params, rest)
  kw = dict(lm_head=lm_head, chunk_size=chunk_size, temperature=temperature)
  if group_size > 1 and not window:
    raise ValueError("a shared-prompt forward (group_size > 1) needs the completion window")
  if not window:
    outputs = train.model_outputs(model, batch, **kw)
    return target_stats(outputs, batch.targets, batch.loss_mask)
  columns, valid = completion_columns(batch.roles, window)
  if group_size > 1:
    outputs = train.head_outputs(
      model, shared_prompt_hidden(model, batch, window, group_size), **kw
    )
  else:
    outputs = train.model_outputs(model, batch, columns=columns, **kw)

  def take(x):
    return jnp.take_along_axis(x, columns, axis=1)

  stats = target_stats(outputs, take(batch.targets), take(batch.loss_mask) * valid)
  rows = jnp.arange(columns.shape[0])[:, None]
  # Add (not set): clipped repeats of column T - 1 carry 0 and must not overwrite it.
  return jax.tree.map(
    lambda x: jnp.zeros(batch.targets.shape, x.dtype).at[rows, columns].add(x * valid), stats
  )


def policy_objective(graphdef, loss_fn, **scoring) -> train.ObjectiveFn:
  """``(params, rest, rollout, norm) -> (loss, metrics)`` for ``train.make_train_step``.

  Args:
    graphdef: the model's static graph.
    loss_fn: registered policy loss with its hyperparameters bound.
    **scoring: ``score_targets``'s keyword options (``temperature``, ``lm_head``,
      ``chunk_size``, ``window``, ``group_size``).
  """

  def objective(params, rest, rollout: Rollout, norm):
    stats = score_targets(graphdef, params, rest, rollout.batch, **scoring)
    return loss_fn(stats.logp, rollout, norm=norm, entropy=stats.entropy)

  return objective


def make_score_fn(graphdef, **scoring):
  """Jitted ``(params, rest, batch) -> (logp f32[B, T], entropy f32[B, T])``, no gradient.

  ``scoring``: ``score_targets``'s keyword options.
  """

  def score(params, rest, batch):
    stats = score_targets(graphdef, params, rest, batch, **scoring)
    return stats.logp, stats.entropy

  return jax.jit(score)


def check_prompt_groups(batch: Batch, group_size: int, window: int) -> None:
  """Raises unless ``batch`` fits ``shared_prompt_hidden``: groups of G rows, one prompt each.

  Host-side (NumPy) check run before a shared-prompt forward, which would otherwise
  silently score every row against its group's first prompt.
  """
  roles, tokens = np.asarray(batch.roles), np.asarray(batch.tokens)
  b, t = tokens.shape
  if b % group_size:
    raise ValueError(f"{b} rows do not split into groups of {group_size}")
  n_prompt = (roles == ROLE_PROMPT).sum(axis=1) + 1
  if n_prompt.max() > t - window:
    raise ValueError(f"a {n_prompt.max()}-token prompt does not fit before a {window} window")
  prompt = np.where(np.arange(t)[None] < n_prompt[:, None], tokens, -1).reshape(
    b // group_size, group_size, t
  )
  same = np.all(prompt == prompt[:, :1], axis=(1, 2))
  if not same.all():
    raise ValueError(f"rows of groups {np.flatnonzero(~same).tolist()} do not share one prompt")


# ----------------------------------------------------------------------------------------
# Host side: sampled groups, rewards, dynamic sampling.


@dataclasses.dataclass
class Groups:
  """Completions of some prompts, G adjacent rows per prompt (host NumPy arrays).

  Attributes:
    batch: [R, T] prompt + completion rows (``rollout.batching`` layout).
    sampler_logp: f32[R, T] log-prob of each completion token under the distribution
      actually sampled from (after top-k/p, min-p): mu of the IS corrections.
    raw_logp: f32[R, T] the sampler's untruncated log_softmax(logits / temperature),
      what ``old_logp`` should equal: their gap is sampler/trainer numerics.
    rewards: f32[R] the summed task reward of each row.
    correct: bool[R] exact-match answer (for length-by-outcome metrics).
    truncated: bool[R] hit ``rl.max_new_tokens`` without EOS.
    lengths: i32[R] completion tokens (EOS included).
    completions: R decoded completions.
    problems: one task problem per group.
  """

  batch: Batch
  sampler_logp: np.ndarray
  raw_logp: np.ndarray
  rewards: np.ndarray
  correct: np.ndarray
  truncated: np.ndarray
  lengths: np.ndarray
  completions: list[str]
  problems: list[tasks.Problem]

  def take(self, groups: list[int], g: int) -> Groups:
    """The rows of the given groups, in that order."""
    rows = np.asarray([p * g + i for p in groups for i in range(g)], np.int64)
    return Groups(
      batch=jax.tree.map(lambda x: x[rows], self.batch),
      sampler_logp=self.sampler_logp[rows],
      raw_logp=self.raw_logp[rows],
      rewards=self.rewards[rows],
      correct=self.correct[rows],
      truncated=self.truncated[rows],
      lengths=self.lengths[rows],
      completions=[self.completions[r] for r in rows],
      problems=[self.problems[p] for p in groups],
    )

  def pad_to(self, width: int) -> Groups:
    """Right-pads every [R, T] array to ``width`` columns (padding never counts)."""

    def pad(x):
      return np.pad(np.asarray(x), ((0, 0), (0, width - x.shape[1])))

    return dataclasses.replace(
      self,
      batch=jax.tree.map(pad, self.batch),
      sampler_logp=pad(self.sampler_logp),
      raw_logp=pad(self.raw_logp),
    )


def concat_groups(parts: list[Groups]) -> Groups:
  """Concatenates groups (rows) of several sampling rounds, padding to one width."""
  width = max(p.batch.tokens.shape[1] for p in parts)
  parts = [p.pad_to(width) for p in parts]
  return Groups(
    batch=jax.tree.map(lambda *xs: np.concatenate(xs), *[p.batch for p in parts]),
    **{
      f: np.concatenate([getattr(p, f) for p in parts])
      for f in ("sampler_logp", "raw_logp", "rewards", "correct", "truncated", "lengths")
    },
    completions=[c for p in parts for c in p.completions],
    problems=[q for p in parts for q in p.problems],
  )


def decode_completion(tok, ids: np.ndarray) -> str:
  """Text of generated ids up to (not including) EOS."""
  ids = [int(i) for i in ids]
  if tok.eos_id in ids:
    ids = ids[: ids.index(tok.eos_id)]
  return tok.decode(ids)


def sample_groups(
  generate_fn,
  model_state,
  tok,
  problems: list[tasks.Problem],
  num_samples: int,
  key: jax.Array,
  spec,
  *,
  timeout_s: float | None,
) -> tuple[Groups, dict[str, float]]:
  """Samples G completions per problem and scores them; returns the groups and reward metrics."""
  prompts = [template.encode_prompt(tok, p.prompt) for p in problems]
  width = -(-max(map(len, prompts)) // PROMPT_BUCKET) * PROMPT_BUCKET
  prompt_tokens, prompt_mask, out = sampler.generate_groups(
    generate_fn, model_state, prompts, num_samples, key, pad_id=tok.pad_id, width=width
  )
  out = jax.device_get(out)
  think_tags = (tok.encode(template.THINK_OPEN), tok.encode(template.THINK_CLOSE))
  laid = batching.rollout_batch(
    prompt_tokens, prompt_mask, out, pad_id=tok.pad_id, think_tags=think_tags
  )
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  completions, samples = [], []
  for row in range(tokens.shape[0]):
    text = decode_completion(tok, tokens[row, : lengths[row]])
    problem = problems[row // num_samples]
    truncated = bool(laid.truncated[row])
    completions.append(text)
    samples.append(
      rewards.Sample.from_problem(problem, text, num_tokens=int(lengths[row]), truncated=truncated)
    )
  reward, reward_metrics = rewards.score(samples, spec, timeout_s=timeout_s)
  correct = np.asarray(
    [
      (not s.truncated) and tasks.check_answer(problems[i // num_samples], s.completion)
      for i, s in enumerate(samples)
    ]
  )
  groups = Groups(
    batch=laid.batch,
    sampler_logp=laid.filtered_logp,
    raw_logp=laid.sampler_logp,
    rewards=np.asarray(reward, np.float32),
    correct=correct,
    truncated=np.asarray(laid.truncated, bool),
    lengths=np.asarray(lengths, np.int32),
    completions=completions,
    problems=list(problems),
  )
  return groups, reward_metrics


def collect_groups(
  sample_round: Callable[[int, list[tasks.Problem]], tuple[Groups, dict[str, float]]],
  problem_at: Callable[[int], tasks.Problem],
  next_prompt: int,
  num_prompts: int,
  num_samples: int,
  *,
  dynamic: bool,
  max_rounds: int,
) -> tuple[Groups, list[dict[str, float]], int, int, int]:
  """P groups for one RL step, with DAPO dynamic sampling if ``dynamic``.

  DAPO (arXiv 2503.14476) over-samples and keeps only groups whose rewards are not all
  equal (they have zero advantage, so zero gradient), until P are found. Shapes must
  stay fixed under jit, so if ``max_rounds`` rounds do not find P informative groups
  the step is filled up with uninformative ones (they add nothing to the gradient but
  count in the normalisers); ``filled`` reports how many.

  Args:
    sample_round: (round, problems) -> (groups, reward metrics) for P problems.
    problem_at: prompt index -> problem.
    next_prompt: index of the next unused prompt.
    num_prompts: P.
    num_samples: G.
    dynamic: drop uninformative groups and sample more.
    max_rounds: sampling rounds at most (1 without dynamic sampling).

  Returns:
    (groups with exactly P groups, reward metrics per round, rounds, filled,
    next_prompt after the prompts used).
  """
  p, g = num_prompts, num_samples
  kept, spare, reward_ms, n_kept = [], [], [], 0
  rounds = max_rounds if dynamic else 1
  for k in range(rounds):
    problems = [problem_at(next_prompt + i) for i in range(p)]
    next_prompt += p
    groups, reward_m = sample_round(k, problems)
    reward_ms.append(reward_m)
    good = np.ones(p, bool)
    if dynamic:
      good = np.asarray(advantages.informative_groups(groups.rewards.reshape(p, g)))
      spare.append(groups.take(np.flatnonzero(~good).tolist(), g))
    kept.append(groups.take(np.flatnonzero(good).tolist(), g))
    n_kept += int(good.sum())
    if n_kept >= p:
      break
  groups = concat_groups(kept)
  filled = max(p - n_kept, 0)
  if filled:
    groups = concat_groups([groups, concat_groups(spare).take(list(range(filled)), g)])
  return groups.take(list(range(p)), g), reward_ms, len(reward_ms), filled, next_prompt


def kl_shaped_rewards(
  rewards_: np.ndarray,
  old_logp: np.ndarray,
  ref_logp: np.ndarray,
  mask: np.ndarray,
  *,
  beta: float,
  estimator: str,
) -> np.ndarray:
  """KL in the reward: r_i - beta * sum_t KL_t(pi_old || pi_ref) over completion tokens.

  The alternative to GRPO's KL in the loss (as in PPO-style RLHF); the KL is of the
  policy that sampled (``old_logp``), a constant of the update, so it carries no
  gradient of its own and reaches the policy through the advantages.

  Args:
    rewards_: f32[B] task rewards.
    old_logp: f32[B, T] log-probs under the sampling policy.
    ref_logp: f32[B, T] log-probs under the reference.
    mask: f32[B, T] 1 on completion tokens.
    beta: KL coefficient.
    estimator: k1 | k2 | k3.

  Returns:
    f32[B] shaped rewards.
  """
  per_token = np.asarray(kl.kl_penalty(jnp.asarray(old_logp), jnp.asarray(ref_logp), estimator))
  penalty = np.sum(np.where(mask > 0, per_token, 0.0), axis=1)
  return (np.asarray(rewards_, np.float32) - beta * penalty).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Token-level advantages from per-step trace rewards (process supervision).


def step_token_rewards(tok, groups: Groups, g: int) -> np.ndarray:
  """Per-step correctness rewards placed on each step's last token, z-scored per group.

  DeepSeekMath's process supervision (arXiv 2402.03300): each reasoning step gets a
  reward, normalised over all steps of the group, placed on the step's last token;
  the token advantage is then the sum of the normalised rewards of the steps ending at
  or after it (``advantages.token_advantages``). Our step reward is 1 if the step's
  arithmetic is right (``tasks.trace_errors``) else 0.

  Args:
    tok: the tokenizer (to find the token where each step's text ends).
    groups: the sampled groups.
    g: samples per prompt.

  Returns:
    f32[R, T] normalised step rewards on step-end tokens, 0 elsewhere.
  """
  batch = groups.batch
  out = np.zeros(batch.targets.shape, np.float32)
  placed = []  # (row, column, raw reward)
  for row, text in enumerate(groups.completions):
    if not text.startswith(template.THINK_OPEN):
      continue
    body = text[len(template.THINK_OPEN) :].split(template.THINK_CLOSE, 1)[0]
    cols = np.nonzero(batch.loss_mask[row] > 0)[0]  # completion targets, in order
    ids = batch.targets[row, cols]
    # Character end of each completion token's text.
    ends = [len(tok.decode([int(i) for i in ids[: k + 1]])) for k in range(len(ids))]
    offset = len(template.THINK_OPEN)
    for step in body.split(","):
      offset += len(step)
      k = next((k for k, e in enumerate(ends) if e >= offset), None)
      if k is not None and step:
        placed.append((row, int(cols[k]), float(not tasks.trace_errors(step))))
      offset += 1  # the comma
  if not placed:
    return out
  rows, cols, vals = map(np.asarray, zip(*placed, strict=True))
  for p in range(len(groups.problems)):
    sel = (rows >= p * g) & (rows < (p + 1) * g)
    if sel.sum() < 2:
      continue
    v = vals[sel]
    out[rows[sel], cols[sel]] = (v - v.mean()) / (v.std() + 1e-6)
  return out


# ----------------------------------------------------------------------------------------
# Metrics of one rollout batch.


def rollout_metrics(
  groups: Groups,
  final_rewards: np.ndarray,
  adv: np.ndarray,
  trainer_logp: np.ndarray | None,
  g: int,
) -> dict[str, float]:
  """Reward, advantage, length and sampler/trainer mismatch statistics (host side).

  The mismatch quantiles compare the sampler's log-probs with ``trainer_logp``, the
  trainer's forward at the same parameters; None (``rl.old_logp=sampler``) skips them.
  """
  r = final_rewards.reshape(-1, g)  # [P, G]
  m = {
    "rl/reward_mean": float(final_rewards.mean()),
    "rl/reward_std": float(final_rewards.std()),
    "rl/accuracy": float(groups.correct.mean()),
    "rl/zero_adv_group_frac": float(np.mean(r.max(axis=1) == r.min(axis=1))),
    "rl/zero_adv_frac": float(np.mean(adv == 0)),
    "rl/len_mean": float(groups.lengths.mean()),
    # Completion tokens in the <think> block (tags included), per row.
    "rl/think_len_mean": float(np.sum(groups.batch.roles == ROLE_THINK) / len(groups.lengths)),
    "rl/truncated_frac": float(groups.truncated.mean()),
  }
  for name, sel in (("correct", groups.correct), ("wrong", ~groups.correct)):
    if sel.any():
      m[f"rl/len_{name}"] = float(groups.lengths[sel].mean())
  if trainer_logp is None:
    return m
  on = groups.batch.loss_mask > 0
  gap = np.abs(trainer_logp[on] - groups.raw_logp[on])
  if gap.size:
    for q in (50, 90, 99):
      m[f"rl/logp_mismatch_p{q}"] = float(np.percentile(gap, q))
    m["rl/logp_mismatch_max"] = float(gap.max())
  return m


# ----------------------------------------------------------------------------------------
# Starting point: an SFT run's tokenizer and parameters.


def load_tokenizer(config, workdir: str):
  """The SFT run's tokenizer when starting from one, else as the SFT recipe prepares it."""
  init = config.rl.init_from
  if init and not config.tokenizer.path and not config.model.hf_dir:
    path = os.path.join(init, pipeline.TOKENIZER_PREFIX + ".model")
    if not os.path.exists(path):
      raise config_lib.ConfigError(f"rl.init_from={init!r} has no {os.path.basename(path)}")
    return SentencePieceTokenizer.load(path)
  return pipeline.prepare_tokenizer(config, workdir)


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def load_init_params(init_from: str, like):
  """Parameters of the latest checkpoint of the SFT workdir ``init_from``, shaped like ``like``.

  Only the params are read (raw, without a target), so the SFT run's optimizer may
  differ from this one's.
  """
  import orbax.checkpoint as ocp

  directory = os.path.abspath(os.path.join(init_from, "checkpoints"))
  manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
  step = manager.latest_step()
  if step is None:
    raise config_lib.ConfigError(f"rl.init_from={init_from!r} has no checkpoint")
  saved = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  tree = saved.state["params"]
  flat, treedef = jax.tree_util.tree_flatten_with_path(like)
  leaves = []
  for path, x in flat:
    node = tree
    for k in path:
      node = node[_key_name(k)]
    if node.shape != x.shape:
      raise config_lib.ConfigError(
        f"rl.init_from: parameter {jax.tree_util.keystr(path)} has shape {node.shape} in "
        f"the checkpoint but {x.shape} in model.size={x!r:.0}; use the SFT run's model size"
      )
    leaves.append(jnp.asarray(node, x.dtype))
  logging.info("initialised from %s (step %d)", directory, step)
  return jax.tree.unflatten(treedef, leaves)


# ----------------------------------------------------------------------------------------
# The recipe.


def run(config, workdir: str) -> dict:
  """RL-trains per ``config`` in ``workdir``; returns the final metrics."""
  config_lib.validate(config)
  if config.recipe != "rl":
    raise config_lib.ConfigError(f"recipe={config.recipe!r}; this is the rl recipe")
  if jax.process_count() > 1:
    raise config_lib.ConfigError("the rl recipe runs on one host (sampling is host-local)")
  mesh = sharding.make_mesh(config)
  os.makedirs(workdir, exist_ok=True)
  t_start = time.time()
  r = config.rl
  P, G = r.prompts_per_step, r.samples_per_prompt  # noqa: N806 (axis letters)
  B = P * G  # noqa: N806
  rows_per_update = B // r.minibatches
  updates_per_step = r.epochs * r.minibatches

  # Tokenizer, prompt stream and reward spec.
  tok = load_tokenizer(config, workdir)
  prompts = tasks.mixture(config_lib.parse_levels(config.data.levels), "train", config.seed)
  spec = config_lib.reward_spec(config)
  timeout_s = config.reward.timeout_s or None

  # Model: the SFT run's parameters; the reference is a frozen copy of them.
  model = sft.build_model(config, tok.vocab_size)
  optimizer, schedule = optim.make_optimizer(config.optim, config.train.steps * updates_per_step)
  graphdef, params, rest = train.split_model(model)
  del model
  if r.init_from:
    params = load_init_params(r.init_from, params)
  beta = kl_coef(config)
  ref_params = jax.tree.map(jnp.copy, params) if beta > 0 else None
  state = train.init_train_state(params, optimizer, config.seed)
  sharded = mesh.devices.size > 1
  if sharded:
    state = sharding.shard_train_state(state, mesh, sharding.DEFAULT_RULES)
    rest = sharding.shard_tree(rest, mesh, sharding.DEFAULT_RULES)
    if ref_params is not None:
      ref_params = sharding.shard_tree(ref_params, mesh, sharding.DEFAULT_RULES)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  del params

  # Resume.
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=config.train.keep_checkpoints,
    async_save=config.train.async_checkpoint,
  )
  first_step, next_prompt = 0, 0
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(None, like=state)
    first_step, next_prompt = int(data_state["rl_step"]), int(data_state["next_prompt"])
    logging.info("resumed at RL step %d (prompt %d)", first_step, next_prompt)

  # Compiled pieces: sampler, scorer, policy update.
  generate_fn = sampler.make_generate_fn(
    graphdef,
    max_new_tokens=r.max_new_tokens,
    eos_id=tok.eos_id,
    pad_id=tok.pad_id,
    temperature=r.temperature,
    top_k=r.top_k,
    top_p=r.top_p,
    min_p=r.min_p,
  )
  head = dict(
    temperature=r.temperature,
    lm_head=config.kernels.lm_head,
    chunk_size=config.kernels.chunk_size,
    window=r.max_new_tokens,  # completions only: no LM head over the prompts
    group_size=G if r.shared_prompt else 1,  # each group's prompt runs once
  )
  score_fn = make_score_fn(graphdef, **head)
  loss_fn = train.bind_loss(config.loss.name, loss_hparams(config, rows_per_update))
  train_step = train.make_train_step(
    policy_objective(graphdef, loss_fn, **head),
    optimizer,
    microbatches=config.train.microbatches,
    schedule=schedule,
  )
  if sharded:
    train_step = sharding.keep_state_sharding(
      train_step, sharding.tree_shardings(state, mesh, sharding.DEFAULT_RULES)
    )

  def to_device(tree):
    return sharding.shard_batch(tree, mesh) if sharded else jax.tree.map(jnp.asarray, tree)

  evaluator = accuracy.Evaluator.from_config(graphdef, tok, config)
  writer = metrics.MetricWriter(workdir)
  if first_step == 0:
    writer.write(0, {"model/params": n_params, "data/vocab_size": tok.vocab_size})

  def evaluate(step: int, final: bool = False) -> dict:
    levels = sft.eval_levels(config, final)
    if not levels:
      return {}
    results = evaluator.evaluate(nnx.merge_state(state.params, rest), levels)
    m = accuracy.as_metrics(results, headline=tuple(sft.eval_levels(config, final=False)))
    writer.write(step, m)
    return m

  def save(step: int, force: bool = False) -> None:
    ckpt.save(step, state, {"rl_step": step, "next_prompt": next_prompt}, force=force)

  start_metrics = evaluate(first_step) if first_step == 0 and config.eval.every else {}

  # The loop.
  base_key = jax.random.key(config.seed)
  bar = tqdm(
    total=config.train.steps, initial=first_step, disable=not config.train.progress, desc="rl"
  )
  last: dict[str, float] = {}
  step = first_step
  for step in range(first_step + 1, config.train.steps + 1):
    t0 = time.time()
    step_key = jax.random.fold_in(base_key, step)
    model_state = nnx.merge_state(state.params, rest)

    # 1-2. Sample and reward; with dynamic sampling keep only informative groups and
    # sample more prompts until P are found (or the rounds run out: then the step is
    # filled with uninformative groups, which add nothing to the gradient).
    def sample_round(k: int, problems, model_state=model_state, step_key=step_key):
      return sample_groups(
        generate_fn,
        model_state,
        tok,
        problems,
        G,
        jax.random.fold_in(step_key, k),
        spec,
        timeout_s=timeout_s,
      )

    groups, reward_ms, rounds, filled, next_prompt = collect_groups(
      sample_round,
      prompts,
      next_prompt,
      P,
      G,
      dynamic=r.dynamic_sampling,
      max_rounds=r.max_sample_rounds,
    )
    t_sample = time.time() - t0

    # 3. Score under the current (old) and reference policies.
    batch = groups.batch
    if r.mask_truncated:  # DAPO overlong filtering: truncated rows carry no loss
      batch = batch.replace(loss_mask=batch.loss_mask * ~groups.truncated[:, None])
    if r.shared_prompt:
      check_prompt_groups(batch, G, r.max_new_tokens)
    device_batch = to_device(batch)
    if r.old_logp == "sampler":  # what the sampler recorded: log_softmax(logits / T)
      old_logp = groups.raw_logp
    else:
      old_logp, _ = jax.device_get(score_fn(state.params, rest, device_batch))
    if ref_params is not None:
      ref_logp = np.asarray(jax.device_get(score_fn(ref_params, rest, device_batch)[0]))
    else:
      ref_logp = np.zeros_like(old_logp)
    mask = np.asarray(batch.loss_mask)

    # 4. Advantages on the global batch (KL in the reward, if so configured, first).
    final_rewards = groups.rewards.astype(np.float32)
    if beta > 0 and r.kl_in_reward:
      final_rewards = kl_shaped_rewards(
        final_rewards, old_logp, ref_logp, mask, beta=beta, estimator=r.kl_estimator
      )
    adv = np.asarray(advantages.get(r.advantage)(final_rewards.reshape(P, G))).reshape(B)
    token_adv = np.asarray(advantages.broadcast_to_tokens(adv, mask))
    if r.step_reward > 0:
      step_r = step_token_rewards(tok, groups, G)
      token_adv = token_adv + r.step_reward * np.asarray(advantages.token_advantages(step_r, mask))
    rollout = Rollout(
      batch=batch,
      advantages=token_adv.astype(np.float32),
      old_logp=np.asarray(old_logp, np.float32),
      sampler_logp=groups.sampler_logp,
      ref_logp=ref_logp.astype(np.float32),
      group_ids=np.repeat(np.arange(P, dtype=np.int32), G),
      turn_ids=(mask > 0).astype(np.int32),  # single turn: 1 on every completion token
    )

    # 5. Policy updates: epochs x minibatches of shuffled rows (of whole groups when
    # the prompt forward is shared).
    t1 = time.time()
    order = np.random.default_rng([config.seed, step])
    step_metrics = []
    for _ in range(r.epochs):
      if r.shared_prompt:
        perm = (order.permutation(P)[:, None] * G + np.arange(G)).reshape(B)
      else:
        perm = order.permutation(B)
      for k in range(r.minibatches):
        rows = perm[k * rows_per_update : (k + 1) * rows_per_update]
        piece = jax.tree.map(lambda x, rows=rows: np.asarray(x)[rows], rollout)
        state, m = train_step(state, to_device(piece), rest)
        step_metrics.append(m)
    fetched = jax.device_get(step_metrics)
    t_update = time.time() - t1

    # 6. Log, evaluate, checkpoint.
    last = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
    last.update({k: float(np.mean([m[k] for m in reward_ms])) for k in reward_ms[-1]})
    trainer_logp = np.asarray(old_logp) if r.old_logp == "recompute" else None
    last.update(rollout_metrics(groups, final_rewards, adv, trainer_logp, G))
    last["rl/sample_rounds"] = float(rounds)
    last["rl/filled_groups"] = float(filled)
    last["perf/sample_s"] = t_sample
    last["perf/update_s"] = t_update
    last["perf/step_s"] = time.time() - t0
    if step % config.train.log_every == 0 or step == config.train.steps:
      writer.write(step, last)
    bar.set_postfix(reward=f"{last['rl/reward_mean']:.3f}", acc=f"{last['rl/accuracy']:.2f}")
    bar.update(1)
    out_of_time = (
      config.train.max_minutes and (time.time() - t_start) / 60 > config.train.max_minutes
    )
    stop_now = config.train.stop_after and step - first_step >= config.train.stop_after
    if config.eval.every and step % config.eval.every == 0 and step != config.train.steps:
      evaluate(step)
    if step % config.train.checkpoint_every == 0 and step != config.train.steps:
      save(step)
    if out_of_time or stop_now:
      logging.warning("stopping at RL step %d (%s)", step, "time" if out_of_time else "steps")
      break
  bar.close()

  final_step = step
  if ckpt.latest_step() != final_step:
    save(final_step, force=True)
  result = {"step": final_step, **last, **evaluate(final_step, final=True)}
  if start_metrics:
    result["start/accuracy"] = start_metrics.get("eval/accuracy", float("nan"))
  ckpt.close()
  writer.close()
  result["plot"] = metrics.plot_metrics(
    writer.path,
    os.path.join(workdir, "metrics.png"),
    panels=("rl/reward_mean", "rl/accuracy", "eval/accuracy/*"),
    log_scale=(),
  )
  result["metrics_path"] = writer.path
  result["tensorboard_dir"] = os.path.join(workdir, "tensorboard")
  result["headline_levels"] = sft.eval_levels(config, final=False)
  result["wall_minutes"] = (time.time() - t_start) / 60
  return result
