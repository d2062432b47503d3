"""Held-out evaluation of user data: loss and perplexity, and checked generations.

The held-out examples (``data.eval_path`` / ``data.eval_split`` / ``data.eval_fraction``,
see `jaxpost.data.pipeline.heldout_dataset`) are scored two ways:
  - teacher-forced: the token-mean negative log-likelihood of the response tokens (the
    SFT loss span: think block, answer and EOS) and its exponential, the perplexity;
  - generated: greedy responses to the prompts, each judged by ``eval.checker``
    (`jaxpost.eval.checkers`), reported as held-out level ``"heldout"`` beside the task
    levels (``eval/accuracy/heldout``, ``eval/format/heldout``).
Both read the first ``eval.num_examples`` held-out examples, in file order, so every
evaluation of a run scores the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxpost import scoring
from jaxpost.data import packing, template
from jaxpost.eval import accuracy, checkers
from jaxpost.types import RESPONSE_ROLES, Batch

LEVEL = "heldout"


class HeldOutEvaluator:
  """Scores a fixed list of held-out examples; one compiled forward, one decode per width."""

  def __init__(
    self,
    scorer: scoring.Scorer,
    generator: accuracy.Evaluator,
    examples: Sequence[template.Example],
    *,
    batch_size: int,
    seq_len: int,
    overlong: str,
    checker: str,
    where=None,
    roles: tuple[int, ...] = RESPONSE_ROLES,
  ):
    """Args:
    scorer: reads the model (its LM head option); ``generator`` decodes.
    examples: the held-out examples to score (already capped).
    batch_size, seq_len: rows and tokens of each teacher-forced batch.
    overlong: ``data.overlong`` for an example longer than ``seq_len``.
    checker: an ``eval.checker`` spec.
    where: index -> place of an example, for errors.
    roles: the target tokens the loss averages over (``(ROLE_ANSWER,)``: the answer and
      EOS only, not the think tags the template puts around an empty reasoning).
    """
    if not examples:
      raise ValueError("no held-out examples to evaluate")
    self.examples = list(examples)
    self.generator = generator
    self.checker = checkers.get(checker)
    tok = generator.tok
    encoded = [template.encode_example(tok, ex) for ex in self.examples]
    source = packing.PlacedSource(
      lambda i: (encoded[i].tokens, encoded[i].roles),
      where or (lambda i: f"held-out example {i}"),
    )
    self.batches, start = [], 0
    while start < len(encoded):
      arrays, start, _ = packing.pack_batch(
        source, start, batch_size=batch_size, seq_len=seq_len, overlong=overlong, stop=len(encoded)
      )
      self.batches.append(Batch(**arrays))

    counted = jnp.asarray(roles, jnp.int32)

    @jax.jit
    def nll_sum(state, batch):
      logp = scorer.target_stats(state, batch).logp
      mask = batch.loss_mask * jnp.isin(batch.roles, counted)
      return -jnp.sum(logp * mask), jnp.sum(mask)

    self._nll_sum = nll_sum

  def loss(self, state) -> dict[str, float]:
    """``eval/loss`` (nats per response token) and ``eval/perplexity``."""
    total, count = 0.0, 0.0
    for batch in self.batches:
      s, n = jax.device_get(self._nll_sum(state, jax.tree.map(jnp.asarray, batch)))
      total, count = total + float(s), count + float(n)
    loss = total / max(count, 1.0)
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 700.0))}

  def generate(self, state) -> accuracy.LevelResult:
    """Greedy responses judged by the checker, as the held-out "level"."""
    responses = self.generator.responses(state, self.examples)
    correct = [bool(self.checker(r, ex)) for r, ex in zip(responses, self.examples, strict=True)]
    formatted = [template.parse_response(r).format_ok for r in responses]
    n = len(self.examples)
    return accuracy.LevelResult(
      level=LEVEL,
      accuracy=sum(correct) / n,
      format_rate=sum(formatted) / n,
      n=n,
      samples=[
        (ex.prompt, r, ex.answer) for ex, r in zip(self.examples[:3], responses[:3], strict=True)
      ],
    )


def from_config(graphdef, generator: accuracy.Evaluator, config) -> HeldOutEvaluator | None:
  """The held-out evaluator ``config.data`` asks for (None: no held-out user data)."""
  from jaxpost.data import pipeline

  dataset = pipeline.heldout_dataset(config)
  if dataset is None:
    return None
  n = min(len(dataset), config.eval.num_examples)
  return HeldOutEvaluator(
    scoring.make_scorer(
      graphdef, lm_head=config.kernels.lm_head, chunk_size=config.kernels.chunk_size
    ),
    generator,
    dataset.examples[:n],
    batch_size=config.eval.batch_size,
    seq_len=config.data.seq_len,
    overlong=config.data.overlong,
    checker=config.eval.checker,
    where=dataset.where,
  )
