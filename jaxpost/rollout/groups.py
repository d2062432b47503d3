"""Sampled groups on the host: G completions per prompt, rewards, DAPO dynamic sampling.

Every on-policy method (GRPO family, on-policy distillation, ...) runs the same host
side: draw P prompts, sample G completions of each with the KV-cache sampler
(``sampler.generate_groups``, each prompt prefilled once), lay them out for the trainer
(``batching.rollout_batch``), decode and score them with the weighted reward spec, and,
with dynamic sampling, keep drawing until P groups with differing rewards are found.
``Groups`` holds the result as host NumPy arrays, G adjacent rows per prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from jaxpost import rewards
from jaxpost.data import tasks, template
from jaxpost.losses import advantages
from jaxpost.rollout import batching, sampler
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK, Batch

# Prompts are left-padded to a multiple of this many columns, so the sampler and the
# train step compile once per bucket rather than once per prompt length.
PROMPT_BUCKET = 16


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
    info: other per-row arrays ([R] or [R, T]) of a rollout kind, e.g. the tool
      rollouts' void flags and turn ids (``tools/tir.py``); taken and padded with the rows.
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
  info: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def group_size(self) -> int:
    """G: rows per prompt."""
    return len(self.completions) // max(len(self.problems), 1)

  def take(self, groups: list[int], g: int) -> Groups:
    """The rows of the given groups, in that order."""
    rows = [p * g + i for p in groups for i in range(g)]
    return self.take_rows(rows, [self.problems[p] for p in groups])

  def take_rows(self, rows: list[int], problems: list[tasks.Problem]) -> Groups:
    """The given rows, in that order, as groups of ``problems`` (adjacent rows each)."""
    rows = np.asarray(rows, np.int64)
    return Groups(
      batch=jax.tree.map(lambda x: x[rows], self.batch),
      sampler_logp=self.sampler_logp[rows],
      raw_logp=self.raw_logp[rows],
      rewards=self.rewards[rows],
      correct=self.correct[rows],
      truncated=self.truncated[rows],
      lengths=self.lengths[rows],
      completions=[self.completions[r] for r in rows],
      problems=list(problems),
      info={k: v[rows] for k, v in self.info.items()},
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
      info={k: pad(v) if v.ndim == 2 else v for k, v in self.info.items()},
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
    info={k: np.concatenate([p.info[k] for p in parts]) for k in parts[0].info},
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
  timeout_s: float | None = 1.0,
  pool: rewards.RewardPool | None = None,
) -> tuple[Groups, dict[str, float]]:
  """Samples G completions per problem and scores them; returns the groups and reward metrics.

  Rewards are scored by ``pool``, the run's `rewards.RewardPool` (its workers and its
  budget span the run); without one, by a pool for this batch with ``timeout_s``.
  """
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
  reward, reward_metrics, correct = score_samples(samples, problems, spec, pool, timeout_s)
  groups = Groups(
    batch=laid.batch,
    sampler_logp=laid.filtered_logp,
    raw_logp=laid.sampler_logp,
    rewards=reward,
    correct=correct,
    truncated=np.asarray(laid.truncated, bool),
    lengths=np.asarray(lengths, np.int32),
    completions=completions,
    problems=list(problems),
  )
  return groups, reward_metrics


def score_samples(samples, problems, spec, pool=None, timeout_s: float | None = 1.0):
  """(f32[R] rewards, reward metrics, bool[R] exact-match correct) of R samples, G per
  problem, scored by ``pool`` (or a pool for this batch with ``timeout_s``)."""
  if pool is not None:
    reward, metrics = pool.score(samples, spec)
  else:
    reward, metrics = rewards.score(samples, spec, timeout_s=timeout_s)
  g = len(samples) // max(len(problems), 1)
  correct = np.asarray(
    [
      (not s.truncated) and tasks.check_answer(problems[i // g], s.completion)
      for i, s in enumerate(samples)
    ]  # fmt: skip
  )
  return np.asarray(reward, np.float32), metrics, correct


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
  m = {
    "rl/reward_mean": float(final_rewards.mean()),
    "rl/reward_std": float(final_rewards.std()),
    "rl/accuracy": float(groups.correct.mean()),
    # Groups that give no gradient: every advantage 0 (equal rewards under a group
    # estimator; under a global baseline, equal to the baseline).
    "rl/zero_adv_group_frac": float(np.mean(np.all(adv.reshape(-1, g) == 0, axis=1))),
    # Before token rewards: groups whose task rewards alone are all equal.
    "rl/zero_outcome_group_frac": float(
      np.mean(np.ptp(groups.rewards.reshape(-1, g), axis=1) == 0)
    ),
    "rl/zero_adv_frac": float(np.mean(adv == 0)),
    # Groups whose G completions are one and the same text: no signal can tell them apart.
    "rl/identical_group_frac": float(
      np.mean([len(set(groups.completions[i : i + g])) == 1 for i in range(0, len(adv), g)])
    ),
    "rl/len_mean": float(groups.lengths.mean()),
    # Completion tokens in the <think> block (tags included), per row.
    "rl/think_len_mean": float(np.sum(groups.batch.roles == ROLE_THINK) / len(groups.lengths)),
    "rl/truncated_frac": float(groups.truncated.mean()),
  }
  # Confidence: each row's mean probability of its answer tokens (after the think
  # block) under the sampling policy; rising on wrong rows is hallucinated certainty.
  answer = (groups.batch.loss_mask > 0) & (groups.batch.roles == ROLE_ANSWER)
  n_answer = answer.sum(axis=1)
  conf = np.where(answer, np.exp(groups.raw_logp), 0.0).sum(axis=1) / np.maximum(n_answer, 1)
  for name, sel in (("correct", groups.correct), ("wrong", ~groups.correct)):
    if sel.any():
      m[f"rl/len_{name}"] = float(groups.lengths[sel].mean())
    if (sel & (n_answer > 0)).any():
      m[f"rl/answer_conf_{name}"] = float(conf[sel & (n_answer > 0)].mean())
  if trainer_logp is None:
    return m
  on = groups.batch.loss_mask > 0
  gap = np.abs(trainer_logp[on] - groups.raw_logp[on])
  if gap.size:
    for q in (50, 90, 99):
      m[f"rl/logp_mismatch_p{q}"] = float(np.percentile(gap, q))
    m["rl/logp_mismatch_max"] = float(gap.max())
  return m
