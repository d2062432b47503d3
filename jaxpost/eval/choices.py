"""Multi-format multiple-choice evaluation (F²C's measures, ``data.source=choices``).

Held-out problems of each evaluated level are asked in every format of
``eval.choice_formats`` ("" = the training formats; name others to test held-out formats)
with the training's number and kind of choices (`jaxpost.data.choices`). Each (format,
choice) row is scored teacher-forced by its mean-token log-likelihood over the answer
tokens (a worked solution: the whole response), as the F²C loss scores it, and each
format predicts its best choice. Reported per level:

  eval/choice_accuracy/<level>    predictions right, over every (problem, format)
  eval/choice_agreement/<level>   problems whose formats all predict the same choice
  eval/choice_format_std/<level>  standard deviation over formats of their accuracy
                                  (the paper's cross-format variance, as a std)

The choice sets are drawn with a fixed seed (``pipeline.HELDOUT_SEED``), so every run of a
sweep scores the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost import scoring
from jaxpost.data import choices, tasks, template
from jaxpost.types import RESPONSE_ROLES, ROLE_ANSWER, Batch

SEED = 0  # = data.pipeline.HELDOUT_SEED: every run scores the same choice sets


def row_batch(
  encoded: Sequence[template.Encoded], seq_len: int, rows: int, span: str = "answer"
) -> Batch:
  """One example per row, right-padded to ``seq_len`` (``rows`` rows; missing ones
  empty); the loss mask is 1 on the answer tokens (the choice and EOS), or with
  ``span="response"`` on the whole response (think block, answer, EOS)."""
  scored = (ROLE_ANSWER,) if span == "answer" else RESPONSE_ROLES
  tokens = np.zeros((rows, seq_len), np.int32)
  roles = np.zeros((rows, seq_len), np.int32)
  real = np.zeros((rows, seq_len), np.int32)
  for i, enc in enumerate(encoded):
    n = len(enc.tokens)
    if n > seq_len:
      raise ValueError(f"a choice row has {n} tokens > data.seq_len={seq_len}")
    tokens[i, :n], roles[i, : n - 1], real[i, :n] = enc.tokens, enc.roles[1:], 1
  targets = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], axis=1)
  return Batch(
    tokens=jnp.asarray(tokens),
    targets=jnp.asarray(targets),
    loss_mask=jnp.asarray(np.isin(roles, scored).astype(np.float32)),
    segment_ids=jnp.asarray(real),
    positions=jnp.asarray(np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape)),
    roles=jnp.asarray(roles),
  )


def summarize(scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
  """Accuracy, agreement and format std of scores f32[N, K, C] with gold i32[N]."""
  preds = np.argmax(scores, axis=-1)  # [N, K]
  right = preds == gold[:, None]
  return {
    "choice_accuracy": float(np.mean(right)),
    "choice_agreement": float(np.mean(np.all(preds == preds[:, :1], axis=-1))),
    "choice_format_std": float(np.std(np.mean(right, axis=0))),
  }


class ChoiceEvaluator:
  """Scores the held-out choice sets of each level; one compiled forward per batch shape."""

  def __init__(
    self,
    scorer: scoring.Scorer,
    tok,
    *,
    formats: Sequence[str],
    count: int,
    response: str = "answer",
    num_examples: int,
    batch_size: int,
    seq_len: int,
  ):
    self.tok, self.formats, self.count = tok, tuple(formats), count
    self.response = response
    self.num_examples, self.batch_size, self.seq_len = num_examples, batch_size, seq_len
    self._cache: dict[str, tuple[list[Batch], np.ndarray]] = {}

    @jax.jit
    def mean_logp(state, batch):
      logp = scorer.target_stats(state, batch).logp
      n = jnp.sum(batch.loss_mask, axis=1)
      return jnp.sum(logp * batch.loss_mask, axis=1) / jnp.maximum(n, 1.0)

    self._mean_logp = mean_logp

  def _rows(self, level: str) -> tuple[list[Batch], np.ndarray]:
    if level not in self._cache:
      choices.check_level(level, self.formats, self.response)
      sets = [
        choices.choice_set(p, self.formats, self.count, SEED, self.response)
        for p in tasks.heldout_set(level, self.num_examples)
      ]
      span = "response" if self.response == "solution" else "answer"
      encoded = [template.encode_example(self.tok, ex) for s in sets for ex in s.rows()]
      batches = [
        row_batch(encoded[i : i + self.batch_size], self.seq_len, self.batch_size, span)
        for i in range(0, len(encoded), self.batch_size)
      ]
      self._cache[level] = batches, np.asarray([s.gold for s in sets])
    return self._cache[level]

  def scores(self, state, level: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean answer log-likelihood f32[N, K, C], gold i32[N]) of a level's choice sets."""
    batches, gold = self._rows(level)
    flat = np.concatenate([np.asarray(jax.device_get(self._mean_logp(state, b))) for b in batches])
    n, k, c = len(gold), len(self.formats), self.count
    return flat[: n * k * c].reshape(n, k, c), gold

  def evaluate(self, state, levels: Sequence[str]) -> dict[str, float]:
    """``eval/choice_*/<level>`` for each level (see the module docstring)."""
    out = {}
    for level in levels:
      for name, value in summarize(*self.scores(state, level)).items():
        out[f"eval/{name}/{level}"] = value
    return out


def from_config(graphdef, tok, config) -> ChoiceEvaluator | None:
  """The evaluator of a ``data.source=choices`` run (None for any other source)."""
  if config.data.source != "choices":
    return None
  return ChoiceEvaluator(
    scoring.make_scorer(
      graphdef, lm_head=config.kernels.lm_head, chunk_size=config.kernels.chunk_size
    ),
    tok,
    formats=choices.parse_formats(config.eval.choice_formats or config.data.choice_formats),
    count=config.data.choices,
    response=config.data.choice_response,
    num_examples=config.eval.num_examples,
    batch_size=config.eval.batch_size,
    seq_len=config.data.seq_len,
  )
