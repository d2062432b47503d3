"""MOTAB: on-policy rollouts that backtrack when they stray, and the teacher takes over.

"Backtracking When It Strays" (arXiv 2605.19433; ``../shared/methods/rl.md`` section 13)
lets the student generate on-policy while a monitor compares each of its tokens with
the teacher; when the monitored quantity crosses an adaptive boundary the rollout goes
back to the last safe state and the teacher continues from there, so the teacher never
has to guide the student from a prefix it has already spoiled (reversed exposure bias),
and small slips below the boundary stay the student's (on-policy). Only the abstract
is public: the monitored quantity, the boundary rule, the backtrack granularity, the
teacher's intervention and the loss on the mixed sequence are NOT FOUND. Our reading,
each choice a config field of the ``gkd`` recipe (``gkd.rollout=motab``):

  monitor      per generated token y_t: ``teacher_nll`` = -log p_T(y_t | prefix) (how
               surprised the teacher is) or ``log_ratio`` = log p_S(y_t) - log p_T(y_t)
               (the sampled reverse-KL term);
  boundary     adaptive: mean + k * std of the monitored values of recent rollouts (an
               exponential moving average over steps, ``Boundary``), or a fixed value;
  crossing     the first token whose value exceeds the boundary;
  backtrack    ``token``: keep the student's tokens before the crossing; ``step``: also
               drop the partial reasoning step it is in (keep through the last step
               separator, "," or the think tag, before it);
  intervene    the teacher writes the rest from prompt + kept prefix (greedy by
               default), within the same token budget;
  loss         the distillation loss on every completion token of the spliced sequence,
               teacher-written tokens weighted by ``gkd.motab_teacher_weight``.

The pieces are pure NumPy on host arrays; ``Splicer`` puts them together around the
models (the teacher's scores of a sampled batch, its continuations) for a recipe.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from jaxpost import scoring
from jaxpost.data import template
from jaxpost.rollout import batching, sampler

MONITORS = ("teacher_nll", "log_ratio")
GRANULARITIES = ("token", "step")


@dataclasses.dataclass
class Boundary:
  """An adaptive threshold: mean + k * std of the monitored values, averaged over steps.

  Attributes:
    k: standard deviations above the mean.
    decay: weight of the past in the moving averages (0 = this step's values only).
    fixed: > 0 replaces the adaptive rule by this constant threshold.
    mean, sq: the moving first and second moments (None before the first update).
  """

  k: float = 2.0
  decay: float = 0.9
  fixed: float = 0.0
  mean: float | None = None
  sq: float | None = None

  def update(self, values: np.ndarray) -> float:
    """Folds this step's monitored values in; returns the threshold to apply to them."""
    if self.fixed > 0:
      return self.fixed
    values = np.asarray(values, np.float64)
    if values.size:
      m, q = float(values.mean()), float(np.mean(values**2))
      if self.mean is None:
        self.mean, self.sq = m, q
      else:
        self.mean = self.decay * self.mean + (1 - self.decay) * m
        self.sq = self.decay * self.sq + (1 - self.decay) * q
    if self.mean is None:
      return float("inf")
    std = float(np.sqrt(max(self.sq - self.mean**2, 0.0)))
    return self.mean + self.k * std

  def state(self) -> dict:
    return {"mean": self.mean, "sq": self.sq}

  def restore(self, state: dict) -> None:
    self.mean, self.sq = state.get("mean"), state.get("sq")


def monitor(kind: str, student_logp: np.ndarray, teacher_logp: np.ndarray) -> np.ndarray:
  """f32[B, N] the monitored quantity of each generated token (``MONITORS``)."""
  if kind == "teacher_nll":
    return -np.asarray(teacher_logp, np.float32)
  if kind == "log_ratio":
    return np.asarray(student_logp, np.float32) - np.asarray(teacher_logp, np.float32)
  raise ValueError(f"unknown monitor {kind!r}; expected one of {MONITORS}")


def first_crossing(values: np.ndarray, lengths: np.ndarray, threshold: float) -> np.ndarray:
  """i32[B]: index of each row's first generated token above ``threshold``; -1 if none.

  Only a row's first ``lengths[b]`` tokens count.
  """
  values = np.asarray(values)
  n = values.shape[1]
  real = np.arange(n)[None, :] < np.asarray(lengths)[:, None]
  over = real & (values > threshold)
  return np.where(over.any(axis=1), over.argmax(axis=1), -1).astype(np.int32)


def safe_length(
  crossing: np.ndarray, tokens: np.ndarray, granularity: str, separators: set[int]
) -> np.ndarray:
  """i32[B]: student tokens kept before each crossing (rows without one keep -1).

  ``token`` keeps every token before the crossing; ``step`` keeps through the last
  token in ``separators`` (step separators) before it, or none when there is none.
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
  keep = np.where(crossing >= 0, crossing, -1).astype(np.int32)
  if granularity == "step":
    for row, t in enumerate(crossing):
      if t < 0:
        continue
      ends = [i for i in range(t) if int(tokens[row, i]) in separators]
      keep[row] = ends[-1] + 1 if ends else 0
  return keep


@dataclasses.dataclass
class Spliced:
  """Spliced completions (host arrays).

  Attributes:
    tokens: i32[B, N] the student's kept prefix, then the teacher's continuation.
    lengths: i32[B] completion tokens.
    from_teacher: bool[B, N] the teacher wrote this token.
    stopped: bool[B] the completion ended on the stop token.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  from_teacher: np.ndarray
  stopped: np.ndarray


def splice(
  student: np.ndarray,
  student_lengths: np.ndarray,
  student_stopped: np.ndarray,
  keep: np.ndarray,
  teacher: np.ndarray,
  teacher_lengths: np.ndarray,
  teacher_stopped: np.ndarray,
  *,
  pad_id: int = 0,
) -> Spliced:
  """Student tokens [0, keep) then teacher tokens, within the student's N columns.

  A row with ``keep < 0`` (no crossing) is the student's rollout unchanged. The teacher
  row b is its continuation of prompt + student[b, :keep[b]]; what passes column N is
  cut (the completion then did not stop). There is no gap and no overlap: token
  keep[b] is the teacher's first (tested).
  """
  b, n = student.shape
  tokens = np.full((b, n), pad_id, np.int32)
  from_teacher = np.zeros((b, n), bool)
  lengths = np.zeros(b, np.int32)
  stopped = np.zeros(b, bool)
  for row in range(b):
    k = int(keep[row])
    if k < 0:
      m = int(student_lengths[row])
      tokens[row, :m] = student[row, :m]
      lengths[row], stopped[row] = m, bool(student_stopped[row])
      continue
    take = min(int(teacher_lengths[row]), n - k)
    tokens[row, :k] = student[row, :k]
    tokens[row, k : k + take] = teacher[row, :take]
    from_teacher[row, k : k + take] = True
    lengths[row] = k + take
    stopped[row] = bool(teacher_stopped[row]) and take == int(teacher_lengths[row])
  return Spliced(tokens, lengths, from_teacher, stopped)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The choices of the module doc (the ``gkd`` section's ``motab_*`` fields)."""

  monitor: str = "teacher_nll"
  k: float = 3.0
  decay: float = 0.9
  threshold: float = 0.0  # > 0: a fixed boundary
  granularity: str = "step"
  teacher_temperature: float = 0.0
  teacher_weight: float = 1.0
  max_new_tokens: int = 64  # the rollouts' token budget, the teacher's included

  @classmethod
  def from_section(cls, g) -> Settings:
    """From a config section with ``motab_*`` fields and ``max_new_tokens``."""
    return cls(
      monitor=g.motab_monitor,
      k=g.motab_k,
      decay=g.motab_decay,
      threshold=g.motab_threshold,
      granularity=g.motab_granularity,
      teacher_temperature=g.motab_teacher_temperature,
      teacher_weight=g.motab_teacher_weight,
      max_new_tokens=g.max_new_tokens,
    )


class Splicer:
  """MOTAB's splice of one on-policy batch: the teacher scores the student's tokens,
  rows past the boundary keep their safe prefix and the teacher writes the rest.

  Args:
    settings: the module doc's choices.
    tok: the shared tokenizer (step separators, think tags, eos / pad).
    teacher_scorer: how to read the teacher (``scoring.Scorer``).
    teacher_state: () -> the teacher's ``(params, rest)`` now (frozen, or following
      the student).
    place_batch: host ``Batch`` -> device batch, as the run places its batches.
    max_seq_len: the models' longest sequence (prompt + kept prefix + teacher tokens).
  """

  def __init__(self, settings, tok, teacher_scorer, *, teacher_state, place_batch, max_seq_len):
    self.settings, self.tok = settings, tok
    self.teacher_state, self.place_batch = teacher_state, place_batch
    self.max_seq_len = max_seq_len
    self.boundary = Boundary(k=settings.k, decay=settings.decay, fixed=settings.threshold)
    self.teacher_logp = scoring.jit_logp(dataclasses.replace(teacher_scorer, temperature=1.0))
    self.teacher_generate = sampler.make_generate_fn(
      teacher_scorer.graphdef,
      max_new_tokens=settings.max_new_tokens,
      eos_id=tok.eos_id,
      pad_id=tok.pad_id,
      temperature=settings.teacher_temperature,
    )
    # Step separators: every token whose text ends a reasoning step ("," or "<think>").
    self.separators = {
      i for i in range(tok.vocab_size) if tok.decode([i]).endswith((",", template.THINK_OPEN))
    }
    self.think_tags = (tok.encode(template.THINK_OPEN), tok.encode(template.THINK_CLOSE))

  def __call__(self, ids, tokens, mask, out, laid, key):
    """(the spliced train ``Batch``, metrics) of one sampled batch: prompt ids, the
    sampler's ``tokens`` / ``mask`` / output ``out`` and its ``batching.rollout_batch``
    ``laid``; ``key`` draws the teacher's continuations when it samples."""
    g, tok = self.settings, self.tok
    t_state = self.teacher_state()
    t_logp = np.asarray(jax.device_get(self.teacher_logp(t_state, self.place_batch(laid.batch))[0]))
    n = out.tokens.shape[1]
    cols = np.clip((laid.prompt_lengths - 1)[:, None] + np.arange(n)[None, :], 0, None)
    cols = np.minimum(cols, t_logp.shape[1] - 1)
    teacher_gen = np.take_along_axis(t_logp, cols, axis=1)  # per generated token
    values = monitor(g.monitor, out.logp, teacher_gen)
    real = np.arange(n)[None, :] < out.lengths[:, None]
    threshold = self.boundary.update(values[real])
    crossing = first_crossing(values, out.lengths, threshold)
    keep = safe_length(crossing, out.tokens, g.granularity, self.separators)
    crossed = keep >= 0
    t_out = None
    if crossed.any():  # the teacher continues every crossed row from its safe prefix
      prefixes = [
        list(ids[b]) + [int(t) for t in out.tokens[b, : max(int(keep[b]), 0)]]
        for b in range(len(ids))
      ]
      width = -(-max(map(len, prefixes)) // 32) * 32
      if width + g.max_new_tokens > self.max_seq_len:
        raise ValueError(
          f"MOTAB: a prompt + kept prefix of {width} columns leaves no room for the "
          f"teacher's {g.max_new_tokens} tokens in model.max_seq_len={self.max_seq_len}"
        )
      _, _, t_out = sampler.generate_groups(
        self.teacher_generate,
        nnx.merge_state(*t_state),
        prefixes,
        1,
        key,
        pad_id=tok.pad_id,
        width=width,
      )
      t_out = jax.device_get(t_out)
    spliced = splice(
      np.asarray(out.tokens),
      np.asarray(out.lengths),
      np.asarray(out.stopped),
      keep,
      np.asarray(t_out.tokens) if t_out is not None else np.zeros_like(out.tokens),
      np.asarray(t_out.lengths) if t_out is not None else np.zeros_like(out.lengths),
      np.asarray(t_out.stopped) if t_out is not None else np.zeros_like(out.stopped),
      pad_id=tok.pad_id,
    )
    zeros = np.zeros(spliced.tokens.shape, np.float32)
    mixed = sampler.GenerateOutput(
      tokens=spliced.tokens,
      lengths=spliced.lengths,
      logp=zeros,
      filtered_logp=zeros,
      stopped=spliced.stopped,
    )
    batch = batching.rollout_batch(
      tokens, mask, mixed, pad_id=tok.pad_id, think_tags=self.think_tags
    ).batch
    # Teacher-written tokens at their target columns (generated token j: column L_p-1+j).
    lp = laid.prompt_lengths
    width = batch.tokens.shape[1]
    by_teacher = np.zeros(batch.tokens.shape, bool)
    rows, js = np.nonzero(spliced.from_teacher)
    by_teacher[rows, np.minimum(lp[rows] - 1 + js, width - 1)] = True
    weights = np.where(by_teacher, g.teacher_weight, 1.0) * batch.loss_mask
    batch = batch.replace(weights=weights.astype(np.float32))
    counted = max(float(batch.loss_mask.sum()), 1.0)
    metrics = {
      "motab/crossed_frac": float(crossed.mean()),
      "motab/teacher_token_frac": float((by_teacher & (batch.loss_mask > 0)).sum() / counted),
      "motab/threshold": float(threshold),
      "motab/kept_mean": float(np.where(crossed, keep, 0).sum() / max(crossed.sum(), 1)),
    }
    return batch, metrics
