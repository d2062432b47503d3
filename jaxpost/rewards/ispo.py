"""ISPO's intrinsic signals (arXiv 2606.08815; methods card rl.md section 2) as token rewards.

A binary outcome reward leaves a group whose G rollouts all succeed (or all fail) with
advantage 0, and it never notices a rollout that is wrong *and* sure of itself. ISPO
adds two signals read off the policy's own conditional probabilities (no other model):

``ispo_signal`` (mode "outcome": added to the sequence reward before the group baseline)
  how informative the thinking is for the final answer, the mean per-token log-ratio

      I_i = mean_{t in answer} [ log pi(a_t | q, thinking, a_<t) - log pi(a_t | q, c, a_<t) ]

  where c is a counterfactual thinking: the empty block ``<think></think>``, or the first
  ``keep_thinking`` fraction of the real one. That takes one extra forward pass of the
  policy over the counterfactual rows (the recipe's ``policy_logp``). With ``directional``
  the signal is +I on a correct rollout and -I on a wrong one (thinking that makes a
  wrong answer likely is not rewarded), clipped to [-clip, clip]. Rollouts of one outcome
  now differ by their signal, so such a group has a non-zero advantage.

``ispo_certainty`` (mode "direct": added to the token advantages as it is)
  a directional reward at critical decision tokens. On a wrong rollout, the
  hallucinated-certainty hinge -max(0, p_t - tau) / (1 - tau) penalises each critical
  token the policy was surer of than tau; on a correct rollout, +bonus * (1 - p_t)
  raises confidence where it was low. Critical tokens are ``critical``: "answer" (the
  final answer's tokens, the stop token excluded), "entropy" (completion tokens whose
  entropy under the sampling policy is at least ``entropy_threshold`` nats) or "both".

The paper's exact formulas, the definition of a critical token, the threshold and how
the signals combine with the outcome advantage are not published (card: NOT FOUND);
these forms are our reading of the abstract, every choice a hyperparameter. The signals
are constants of the update: computed under the policy that sampled, before it.
"""

from __future__ import annotations

import numpy as np

from jaxpost import fields
from jaxpost.data import template
from jaxpost.rewards.token import register
from jaxpost.rollout import batching, sampler
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK, Batch

CRITICAL = ("answer", "entropy", "both")


def counterfactual_rows(
  batch: Batch,
  *,
  open_ids,
  close_ids,
  keep_thinking: float,
  window: int,
  pad_id: int = 0,
  bucket: int = 16,
) -> tuple[Batch, np.ndarray]:
  """Each rollout row with its thinking replaced: prompt + counterfactual think block as
  the new prompt, the row's answer tokens as the new completion.

  Args:
    batch: rollout rows (``rollout.batching`` layout, think tokens tagged ROLE_THINK).
    open_ids, close_ids: the think tags' token ids.
    keep_thinking: fraction of the thinking (between the tags) kept, 0 = empty block.
    window: the scorer's completion window (answers always fit: they fit the rollout).
    pad_id: padding id.
    bucket: prompt columns are a multiple of this (one compiled shape per bucket).

  Returns:
    (the rows, ``Batch`` with completion targets = answer tokens; bool[B] rows that have
    a closed think block and an answer, the only ones whose signal is defined).
  """
  tokens, targets = np.asarray(batch.tokens), np.asarray(batch.targets)
  roles, on = np.asarray(batch.roles), np.asarray(batch.loss_mask) > 0
  open_ids, close_ids = list(open_ids), list(close_ids)
  prompts, answers, valid = [], [], []
  for b in range(tokens.shape[0]):
    prompt = tokens[b, : int((roles[b] == ROLE_PROMPT).sum()) + 1].tolist()
    think = targets[b][on[b] & (roles[b] == ROLE_THINK)].tolist()
    answer = targets[b][on[b] & (roles[b] == ROLE_ANSWER)].tolist()
    closed = len(think) >= len(open_ids) + len(close_ids) and think[-len(close_ids) :] == close_ids
    ok = closed and bool(answer)
    if ok:
      body = think[len(open_ids) : -len(close_ids)]
      kept = body[: int(np.floor(keep_thinking * len(body)))]
      prompts.append(prompt + open_ids + kept + close_ids)
      answers.append(answer)
    else:  # a placeholder row, never read
      prompts.append(prompt)
      answers.append([pad_id])
    valid.append(ok)
  prompt_tokens, prompt_mask = sampler.left_pad(prompts, pad_id)
  gen = np.full((len(answers), window), pad_id, np.int32)
  for b, a in enumerate(answers):
    gen[b, : len(a)] = a
  lengths = np.asarray([len(a) for a in answers], np.int32)
  zeros = np.zeros(gen.shape, np.float32)
  out = sampler.GenerateOutput(gen, lengths, zeros, zeros, np.ones(len(answers), bool))
  width = -(-prompt_tokens.shape[1] // bucket) * bucket + window
  laid = batching.rollout_batch(prompt_tokens, prompt_mask, out, pad_id=pad_id, width=width)
  return laid.batch, np.asarray(valid)


def information_gain(
  old_logp: np.ndarray, batch: Batch, cf_logp: np.ndarray, cf_batch: Batch, valid: np.ndarray
) -> np.ndarray:
  """f32[B] I_i: mean answer-token log-prob with the thinking minus with the
  counterfactual (0 on rows without a closed think block and an answer)."""
  on = np.asarray(batch.loss_mask) > 0
  answer = on & (np.asarray(batch.roles) == ROLE_ANSWER)
  cf_on = np.asarray(cf_batch.loss_mask) > 0
  out = np.zeros(len(valid), np.float32)
  for b in np.flatnonzero(valid):
    with_thinking = np.asarray(old_logp)[b][answer[b]]
    without = np.asarray(cf_logp)[b][cf_on[b]]
    assert len(with_thinking) == len(without), (b, len(with_thinking), len(without))
    out[b] = with_thinking.mean() - without.mean()
  return out


def _last_answer_token(batch: Batch) -> np.ndarray:
  """bool[B, T]: each row's last completion target (where an outcome signal sits)."""
  on = np.asarray(batch.loss_mask) > 0
  last = np.zeros_like(on)
  rows = np.flatnonzero(on.any(axis=1))
  last[rows, on.shape[1] - 1 - np.argmax(on[rows, ::-1], axis=1)] = True
  return last


@register(
  "ispo_signal",
  mode="outcome",
  needs=("old_logp",),
  rules={
    "keep_thinking": fields.num(ge=0, le=1),
    "clip": fields.num(gt=0),
    "directional": fields.FLAG,
  },
)
def ispo_signal(
  rollout,
  scores,
  *,
  tokenizer,
  policy_logp,
  window,
  keep_thinking: float = 0.0,
  clip: float = 5.0,
  directional: bool = True,
) -> np.ndarray:
  """ISPO's sequence-level signal, on each row's last completion token (module doc).

  Args:
    rollout: the sampled groups (batch, correct).
    scores: uses "old_logp", the policy's log-prob of each sampled token.
    tokenizer: the think tags' ids (bound by the recipe).
    policy_logp: Batch -> f32[B, T] log-probs under the policy that sampled (bound by
      the recipe): the counterfactual forward.
    window: the completion window of ``policy_logp`` (the sampling budget; bound by the
      recipe).
    keep_thinking: fraction of the thinking the counterfactual keeps (0: empty block).
    clip: |signal| at most this (nats per answer token).
    directional: +I on correct rollouts, -I on wrong ones; False: +I on every rollout.
  """
  batch = rollout.batch
  cf_batch, valid = counterfactual_rows(
    batch,
    open_ids=tokenizer.encode(template.THINK_OPEN),
    close_ids=tokenizer.encode(template.THINK_CLOSE),
    keep_thinking=keep_thinking,
    window=window,
    pad_id=tokenizer.pad_id,
  )
  gain = information_gain(scores["old_logp"], batch, policy_logp(cf_batch), cf_batch, valid)
  sign = np.where(np.asarray(rollout.correct), 1.0, -1.0) if directional else 1.0
  signal = np.clip(sign * gain, -clip, clip).astype(np.float32)
  return np.where(_last_answer_token(batch), signal[:, None], 0.0).astype(np.float32)


def critical_tokens(
  batch: Batch, entropy: np.ndarray | None, *, critical: str, entropy_threshold: float, eos_id: int
) -> np.ndarray:
  """bool[B, T]: the critical decision tokens among the completion targets."""
  on = np.asarray(batch.loss_mask) > 0
  answer = on & (np.asarray(batch.roles) == ROLE_ANSWER) & (np.asarray(batch.targets) != eos_id)
  if critical == "answer":
    return answer
  if entropy is None:
    raise ValueError(f"critical={critical!r} needs the sampling policy's entropy")
  uncertain = on & (np.asarray(entropy) >= entropy_threshold)
  return uncertain if critical == "entropy" else uncertain | answer


def certainty_hinge(p: np.ndarray, threshold: float) -> np.ndarray:
  """-max(0, p - tau) / (1 - tau): 0 up to the threshold, down to -1 at certainty."""
  return -np.maximum(np.asarray(p) - threshold, 0.0) / (1.0 - threshold)


@register(
  "ispo_certainty",
  mode="direct",
  needs=("old_logp", "old_entropy"),
  rules={
    "critical": fields.one_of(CRITICAL),
    "entropy_threshold": fields.num(ge=0),
    "threshold": fields.num(ge=0, lt=1),
    "bonus": fields.num(ge=0),
  },
)
def ispo_certainty(
  rollout,
  scores,
  *,
  tokenizer,
  critical: str = "answer",
  entropy_threshold: float = 1.0,
  threshold: float = 0.5,
  bonus: float = 0.5,
) -> np.ndarray:
  """ISPO's token-level directional reward with the hallucinated-certainty hinge.

  Args:
    rollout: the sampled groups (batch, correct).
    scores: "old_logp" (p_t = its exp) and "old_entropy" (for ``critical`` "entropy").
    tokenizer: the stop id, excluded from answer tokens (bound by the recipe).
    critical: which tokens are critical decisions: answer | entropy | both.
    entropy_threshold: nats at or above which a token is critical ("entropy", "both").
    threshold: tau of the hinge on wrong rollouts.
    bonus: weight of +(1 - p_t) on correct rollouts' critical tokens (0: the hinge alone).
  """
  batch = rollout.batch
  crit = critical_tokens(
    batch,
    scores.get("old_entropy"),
    critical=critical,
    entropy_threshold=entropy_threshold,
    eos_id=tokenizer.eos_id,
  )
  p = np.exp(np.asarray(scores["old_logp"], np.float64))
  correct = np.asarray(rollout.correct)[:, None]
  out = np.where(correct, bonus * (1.0 - p), certainty_hinge(p, threshold))
  return np.where(crit, out, 0.0).astype(np.float32)
