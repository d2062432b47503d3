"""Reinforce-Ada's adaptive sampling (arXiv 2510.04996; methods card rl.md section 6).

A group whose rewards are all equal has no advantage; Reinforce-Ada treats that as
under-sampling. Each RL step samples its P prompts in rounds: every prompt still active
draws ``round_samples`` completions per round, and leaves (successive elimination) once
its samples so far satisfy the exit rule:

  balanced   at least n/2 positives and n - n/2 negatives
  positive   at least one positive

(a sample is positive when its reward exceeds ``positive_threshold``). After the last
round (``max_rounds``) every prompt is down-sampled to exactly n rows, the step's group
size: half positive, half negative where it can, the short side filled from the other
(``downsample``). The baseline of a prompt's advantages comes from every sample drawn for
it, not only the n kept (``global_baseline``), which is what the released code does
(``global_stat_est``, with ``norm_adv_by_std_in_grpo=False``: A = r - mean).

The released code's details followed here (``_generate_multi_round_adaptive_downsampling``):
a prompt that never exits keeps what it has, n at most; under ``positive`` it keeps the
positive ratio of its samples but at least one positive and one negative when it has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from jaxpost.data import tasks
from jaxpost.rollout.groups import Groups, concat_groups

RULES = ("balanced", "positive")


def exited(n_pos: int, n_neg: int, n: int, rule: str) -> bool:
  """Whether a prompt with these counts of drawn positives / negatives stops sampling."""
  if rule == "balanced":
    return n_pos >= n // 2 and n_neg >= n - n // 2
  if rule == "positive":
    return n_pos >= 1
  raise ValueError(f"Reinforce-Ada exit rule {rule!r}; expected one of {RULES}")


def downsample(
  positive: np.ndarray, n: int, rule: str, *, done: bool, rng: np.random.Generator
) -> np.ndarray:
  """Indices (into ``positive``) of the at most n samples a prompt keeps.

  Args:
    positive: bool[k] of every sample drawn for the prompt.
    n: the group size to keep.
    rule: the exit rule ("balanced" or "positive").
    done: the prompt met its exit rule (else it ran out of rounds: the fallback).
    rng: which samples of a side are kept.

  Returns:
    i64[min(n, k)] sorted indices: half positive and half negative, the short side filled
    from the other; a "positive" prompt that never exited keeps the positive ratio of
    its draws, with at least one of each side when it has them.
  """
  positive = np.asarray(positive, bool)
  pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
  keep = min(n, len(positive))
  if rule == "positive" and not done and len(positive):
    want_pos = int(round(keep * len(pos) / len(positive)))
    if len(pos) and len(neg):
      want_pos = min(max(want_pos, 1), keep - 1)
  else:
    want_pos = keep // 2
  n_pos = min(len(pos), want_pos)
  n_neg = min(len(neg), keep - n_pos)
  n_pos = min(len(pos), keep - n_neg)  # the short side filled from the other
  picked = np.concatenate(
    [rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
  )
  return np.sort(picked.astype(np.int64))


def global_baseline(rewards: np.ndarray, *, normalize_std: bool = False) -> tuple[float, float]:
  """(mean, scale) of a prompt's advantage A = (r - mean) / scale over all its draws.

  Mean and unbiased std of every reward drawn; one draw or none gives (0, 1). The
  scale is that std (clamped at 1e-6) with ``normalize_std``, else 1 (the code's default).
  """
  rewards = np.asarray(rewards, np.float64)
  if rewards.size <= 1:
    return 0.0, 1.0
  scale = max(float(rewards.std(ddof=1)), 1e-6) if normalize_std else 1.0
  return float(rewards.mean()), scale


@dataclasses.dataclass
class Adaptive:
  """One step's adaptive sampling: the kept groups and what it cost.

  Attributes:
    groups: P groups of n rows (``Groups``), prompt order kept.
    baseline: f32[P] mean reward over all draws of each prompt.
    scale: f32[P] the advantages' divisor (1 unless std-normalised).
    drawn: i32[P] samples drawn per prompt.
    exited: bool[P] the prompt met its exit rule.
    rounds: sampling rounds run.
    reward_metrics: the reward metrics of each round.
  """

  groups: Groups
  baseline: np.ndarray
  scale: np.ndarray
  drawn: np.ndarray
  exited: np.ndarray
  rounds: int
  reward_metrics: list[dict[str, float]]

  def metrics(self) -> dict[str, float]:
    return {
      "rl/ada_rounds": float(self.rounds),
      "rl/ada_drawn_mean": float(self.drawn.mean()),
      "rl/ada_exited_frac": float(self.exited.mean()),
    }


def collect(
  sample_round: Callable[[int, list[tasks.Problem]], tuple[Groups, dict[str, float]]],
  problems: Sequence[tasks.Problem],
  *,
  group_size: int,
  round_samples: int,
  max_rounds: int,
  rule: str,
  positive_threshold: float,
  normalize_std: bool,
  rng: np.random.Generator,
) -> Adaptive:
  """Samples ``problems`` in rounds until each exits or ``max_rounds`` pass (module doc).

  Args:
    sample_round: (round, problems) -> (groups of ``round_samples`` rows per problem,
      reward metrics). It always gets len(problems) problems (one compiled shape): the
      still-active ones, repeated to fill; the repeats' samples are not used.
    problems: the step's P prompts.
    group_size: n, rows kept per prompt.
    round_samples: completions per active prompt per round.
    max_rounds: rounds at most.
    rule: exit rule, one of ``RULES``.
    positive_threshold: a reward above it is a positive.
    normalize_std: divide advantages by the global std (``global_baseline``).
    rng: the down-sampling's draws.
  """
  if rule not in RULES:
    raise ValueError(f"Reinforce-Ada exit rule {rule!r}; expected one of {RULES}")
  p, k = len(problems), round_samples
  drawn: list[list[tuple[int, int]]] = [[] for _ in range(p)]  # (part, row) per prompt
  rewards: list[list[float]] = [[] for _ in range(p)]
  parts, reward_ms = [], []
  done = np.zeros(p, bool)
  for r in range(max_rounds):
    active = np.flatnonzero(~done)
    if not len(active):
      break
    fill = np.resize(active, p)  # the active prompts, repeated to P
    groups, m = sample_round(r, [problems[i] for i in fill])
    parts.append(groups)
    reward_ms.append(m)
    for slot, prompt in enumerate(active):  # the first len(active) slots are the real ones
      for j in range(k):
        drawn[prompt].append((len(parts) - 1, slot * k + j))
        rewards[prompt].append(float(groups.rewards[slot * k + j]))
    for prompt in active:
      pos = int(np.sum(np.asarray(rewards[prompt]) > positive_threshold))
      done[prompt] = exited(pos, len(rewards[prompt]) - pos, group_size, rule)
  rows, baseline, scale = [], np.zeros(p, np.float32), np.ones(p, np.float32)
  for prompt in range(p):
    r_all = np.asarray(rewards[prompt])
    kept = downsample(r_all > positive_threshold, group_size, rule, done=done[prompt], rng=rng)
    if len(kept) < group_size:  # fewer draws than n (round_samples * rounds < n)
      raise ValueError(
        f"Reinforce-Ada drew {len(r_all)} samples of a prompt, fewer than the group size "
        f"{group_size}: raise rl.ada.round_samples or rl.max_sample_rounds"
      )
    rows += [drawn[prompt][i] for i in kept]
    baseline[prompt], scale[prompt] = global_baseline(r_all, normalize_std=normalize_std)
  flat = concat_groups(parts)
  offsets = np.cumsum([0] + [len(g.completions) for g in parts])
  index = [int(offsets[part] + row) for part, row in rows]
  kept_groups = flat.take_rows(index, list(problems))
  return Adaptive(
    groups=kept_groups,
    baseline=baseline,
    scale=scale,
    drawn=np.asarray([len(x) for x in rewards], np.int32),
    exited=done,
    rounds=len(parts),
    reward_metrics=reward_ms,
  )
