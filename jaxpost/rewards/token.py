"""Token-level rewards: per-token signals beside the sequence rewards, looked up by name.

Contract for every registered token reward (host side, once per RL step, outside jit)::

    reward(rollout: Groups, scores: Mapping[str, f32[B, T]], **hparams) -> f32[B, T]

``rollout`` is the step's sampled groups (``rollout.groups.Groups``: token batch,
decoded completions, problems, correctness); ``scores`` holds the per-token arrays the
recipe computed for the step, by name: "old_logp" (the policy that sampled),
"old_entropy" (its entropy at each position), "ref_logp" (the frozen reference, when
one is loaded) and, for on-policy distillation, "teacher_logp". A reward lists the
scores it reads in ``needs`` so the recipe loads the frozen model behind them.
Keyword-only hyperparameters with defaults form the ``reward.<name>`` config block;
parameters named in ``CONTEXT`` are bound by the recipe, not the config: ``tokenizer``;
``policy_logp`` (Batch -> f32[B, T], the log-probs of any rows under the policy that
sampled: a reward's own extra forward pass, e.g. on counterfactual rows) and ``window``
(its completion window, the sampling budget). The result is 0 off the loss mask.

Each entry also says how its reward enters the advantages (``mode``):

  outcome  summed over the row's tokens and added to the sequence reward before the
           group estimator (KL in the reward, as in PPO-style RLHF);
  return   turned into returns-to-go (``advantages.token_advantages``) and added to the
           token advantages after it (process supervision: per-step rewards);
  direct   added to the token advantages as it is (a teacher's per-token log-ratio in
           on-policy distillation).

``advantages.combine`` does both. A spec is a tuple of (name, weight) pairs
(``reward.token_terms``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxpost import fields
from jaxpost.data import tasks, template
from jaxpost.losses import kl
from jaxpost.registry import Registry

MODES = ("outcome", "return", "direct")
# Run-time objects a token reward may take by name; the recipe binds them.
CONTEXT = ("tokenizer", "policy_logp", "window")

TOKEN_REWARDS = Registry(
  "token reward",
  families=("token",),
  builtins=("jaxpost.rewards.*",),  # a token reward in a new file registers too
  contract={"token": CONTEXT},
)


def register(name: str, *, mode: str, needs: Sequence[str] = (), check=None, rules=None):
  """Decorator adding a token reward; ``mode`` is one of ``MODES``, ``needs`` its scores,
  ``rules`` what each hyperparameter accepts (``jaxpost.fields``)."""
  if mode not in MODES:
    raise ValueError(f"token reward mode {mode!r}; expected one of {MODES}")
  return TOKEN_REWARDS.register(name, check=check, rules=rules, mode=mode, needs=tuple(needs))


@dataclasses.dataclass(frozen=True)
class TokenTerm:
  name: str
  weight: float
  mode: str
  needs: tuple[str, ...]
  fn: Callable[..., Any]


def make_spec(
  terms: Sequence[Sequence[Any]],
  blocks: Mapping[str, Mapping[str, Any]],
  context: Mapping[str, Any] | None = None,
) -> tuple[TokenTerm, ...]:
  """Binds each (name, weight) term to its validated hyperparameters and the context.

  Raises:
    KeyError / ValueError: an unknown name, a repeated name, a bad hyperparameter.
  """
  out, seen = [], set()
  for term in terms:
    name, weight = term
    if name in seen:
      raise ValueError(f"token reward {name!r} appears twice")
    seen.add(name)
    entry = TOKEN_REWARDS.entry(name)
    hp = TOKEN_REWARDS.validate_hparams(name, blocks.get(name, {}), where=f"reward.{name}")
    params = inspect.signature(entry.fn).parameters
    ctx = {k: v for k, v in (context or {}).items() if k in params}
    fn = functools.partial(entry.fn, **ctx, **hp)
    out.append(TokenTerm(name, float(weight), entry.meta["mode"], entry.meta["needs"], fn))
  return tuple(out)


def needs(spec: Sequence[TokenTerm]) -> set[str]:
  """The scores a spec reads (e.g. {"ref_logp"}: the recipe must load a reference)."""
  return {n for t in spec for n in t.needs}


def score(spec: Sequence[TokenTerm], rollout, scores: Mapping[str, np.ndarray]):
  """Weighted token rewards of a spec, by mode.

  Returns:
    ({mode: f32[B, T]} weighted sum of the terms of each mode present, 0 off the loss
    mask; per-term metrics {reward/<name>: mean over rows of the row sum}).
  """
  mask = np.asarray(rollout.batch.loss_mask) > 0
  out, metrics = {}, {}
  for term in spec:
    missing = [n for n in term.needs if scores.get(n) is None]
    if missing:
      raise ValueError(f"token reward {term.name!r} needs scores {missing}")
    r = np.where(mask, np.asarray(term.fn(rollout, scores), np.float32), 0.0)
    out[term.mode] = out.get(term.mode, 0.0) + term.weight * r
    metrics[f"reward/{term.name}"] = float(r.sum(axis=1).mean())
  return out, metrics


# ----------------------------------------------------------------------------------------
# Built-in token rewards.


@register(
  "kl_penalty",
  mode="outcome",
  needs=("old_logp", "ref_logp"),
  rules={"estimator": fields.one_of(tuple(kl.ESTIMATORS))},
)
def kl_penalty(rollout, scores, *, estimator: str = "k3") -> np.ndarray:
  """-KL_t(pi_old || pi_ref) per completion token: the KL in the reward.

  With weight beta and mode "outcome" the sequence reward becomes
  r_i - beta * sum_t KL_t, the alternative to GRPO's KL in the loss (PPO-style RLHF).
  The KL is of the policy that sampled, a constant of the update, so it reaches the
  policy only through the advantages.

  Args:
    rollout: uses batch.loss_mask.
    scores: uses "old_logp" and "ref_logp".
    estimator: k1 | k2 | k3 (``losses.kl``).
  """
  per_token = kl.kl_penalty(
    jnp.asarray(scores["old_logp"]), jnp.asarray(scores["ref_logp"]), estimator
  )
  return -np.where(np.asarray(rollout.batch.loss_mask) > 0, np.asarray(per_token), 0.0)


@register("step_correctness", mode="return")
def step_correctness(rollout, scores, *, tokenizer) -> np.ndarray:
  """Per-step correctness rewards on each step's last token, z-scored per group.

  DeepSeekMath's process supervision (arXiv 2402.03300): each reasoning step gets a
  reward, normalised over all steps of the group, placed on the step's last token;
  with mode "return" the token advantage is then the sum of the normalised rewards of
  the steps ending at or after it (``advantages.token_advantages``). Our step reward is
  1 if the step's arithmetic is right (``tasks.trace_errors``) else 0.

  Args:
    rollout: the sampled groups (batch, completions, problems).
    scores: unused.
    tokenizer: finds the token where each step's text ends (bound by the recipe).
  """
  del scores
  batch, g = rollout.batch, rollout.group_size
  out = np.zeros(batch.targets.shape, np.float32)
  placed = []  # (row, column, raw reward)
  for row, text in enumerate(rollout.completions):
    if not text.startswith(template.THINK_OPEN):
      continue
    body = text[len(template.THINK_OPEN) :].split(template.THINK_CLOSE, 1)[0]
    cols = np.nonzero(np.asarray(batch.loss_mask[row]) > 0)[0]  # completion targets
    ids = np.asarray(batch.targets[row])[cols]
    # Character end of each completion token's text.
    ends = [len(tokenizer.decode([int(i) for i in ids[: k + 1]])) for k in range(len(ids))]
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
  for p in range(len(rollout.problems)):
    sel = (rows >= p * g) & (rows < (p + 1) * g)
    if sel.sum() < 2:
      continue
    v = vals[sel]
    out[rows[sel], cols[sel]] = (v - v.mean()) / (v.std() + 1e-6)
  return out


@register("teacher_log_ratio", mode="direct", needs=("old_logp", "teacher_logp"))
def teacher_log_ratio(rollout, scores) -> np.ndarray:
  """log p_teacher(y_t) - log pi_old(y_t) per sampled token: on-policy distillation.

  With mode "direct" this is each token's advantage (no return): minimising the
  per-token reverse KL(pi || p_teacher) on the student's own samples, as in GKD's
  on-policy setting (arXiv 2306.13649) and "On-Policy Distillation" (Thinking
  Machines, 2025), whose reward is this negative reverse-KL estimate. The teacher is
  ``teacher`` (the config section; the recipe loads it when a term needs "teacher_logp").

  Args:
    rollout: uses batch.loss_mask.
    scores: uses "old_logp" and "teacher_logp".
  """
  on = np.asarray(rollout.batch.loss_mask) > 0
  return np.where(on, np.asarray(scores["teacher_logp"]) - np.asarray(scores["old_logp"]), 0.0)
