"""Held-out exact-match accuracy of a model on the embedded task levels.

Prompts are left-padded and decoded greedily in lockstep with the KV-cache
sampler; each response is scored by the task's own checker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from jaxpost.data import corrupt, tasks, template
from jaxpost.data.tokenizer import Tokenizer
from jaxpost.rollout import sampler


@dataclasses.dataclass
class LevelResult:
  level: str
  accuracy: float  # exact-match answers / problems
  format_rate: float  # responses with a well-formed think block / problems
  n: int
  samples: list[tuple[str, str, str]]  # a few (prompt, response, expected answer) for logs
  mean_tokens: float | None = None  # generated tokens per response (EOS included)
  repeat_rate: float | None = None  # responses whose reasoning writes a step twice (looping)
  trace_error_rate: float | None = None  # responses with a wrong lhs=value step in the trace
  pass_k: float | None = None  # problems with a right answer among k samples (eval.pass_k)
  distinct: float | None = None  # mean number of different answers among the k samples
  last_number: float | None = None  # responses whose last integer is the answer (any format)


class Evaluator:
  """Greedy-decodes held-out problems and scores them; one compiled decode per prompt width."""

  def __init__(
    self,
    graphdef,
    tok: Tokenizer,
    *,
    num_examples: int,
    batch_size: int,
    max_new_tokens: int,
    seed: int = 0,
    stop_bias: float = 0.0,
    force_after: int = 0,
    prompt_prefix: str = "",
    prompt_suffix: str = "",
    tool_turns: int = 0,
    pass_k: int = 0,
    sample_temperature: float = 1.0,
  ):
    self.tok = tok
    self.pass_k = pass_k  # > 0: also k samples per problem -> pass@k and distinct answers
    self.max_new_tokens = max_new_tokens
    self.tool_turns = tool_turns  # > 0: each answer is a greedy tool rollout
    self.prompt_prefix = prompt_prefix  # before every task prompt (a level tag, ...)
    self.prompt_suffix = prompt_suffix  # after it ("What is " X "?" for a chat model)
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    close = tok.encode(template.THINK_CLOSE)
    self._generate = sampler.make_generate_fn(
      graphdef, max_new_tokens=max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
      stop_bias=stop_bias, stop_bias_ids=(tok.eos_id, *close) if len(close) == 1 else (),
      force_after=force_after, force_ids=close if force_after else (),
    )  # fmt: skip
    if pass_k:
      self._sample = sampler.make_generate_fn(
        graphdef, max_new_tokens=max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
        temperature=sample_temperature,
      )  # fmt: skip
    self._lengths: list[int] = []  # generated tokens of the last ``responses`` call
    self._problems: dict[str, list[tasks.Problem]] = {}

  @classmethod
  def from_config(cls, graphdef, tok: Tokenizer, config) -> Evaluator:
    """The evaluator a recipe's ``eval`` section (and seed) describes."""
    e = config.eval
    return cls(
      graphdef,
      tok,
      num_examples=e.num_examples,
      batch_size=e.batch_size,
      max_new_tokens=e.max_new_tokens,
      seed=config.seed,
      stop_bias=e.get("stop_bias", 0.0),
      force_after=e.get("force_after", 0),
      prompt_prefix=e.get("prompt_prefix", ""),
      prompt_suffix=e.get("prompt_suffix", ""),
      tool_turns=e.get("tool_turns", 0),
      pass_k=e.get("pass_k", 0),
      sample_temperature=e.get("sample_temperature", 1.0),
    )

  def problems(self, level: str) -> list[tasks.Problem]:
    if level not in self._problems:
      self._problems[level] = tasks.heldout_set(level, self.num_examples, seed=self.seed)
    return self._problems[level]

  def responses(self, state, prompts: Sequence[str | template.Example]) -> list[str]:
    """Greedy responses (text up to EOS) for raw prompts or examples' prompts (with
    their chat context)."""
    out, self._lengths = [], []
    for i in range(0, len(prompts), self.batch_size):
      chunk = prompts[i : i + self.batch_size]
      ids = [self._prompt_ids(p) for p in chunk]
      if self.tool_turns:  # greedy tool rollouts: turns of at most max_new_tokens each
        out += self._tool_responses(state, ids)
        continue
      # Pad the batch to a fixed row count so every call reuses one compilation.
      ids += [ids[-1]] * (self.batch_size - len(ids))
      tokens, mask = _pad_to_bucket(*sampler.left_pad(ids, self.tok.pad_id), self.tok.pad_id)
      gen = self._generate(state, tokens, mask, jax.random.key(0))
      new, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
      for row in range(len(chunk)):
        out.append(self.tok.decode(_strip_eos(new[row, : lengths[row]], self.tok.eos_id)))
        self._lengths.append(int(lengths[row]))
    return out

  def samples(self, state, prompts: Sequence[str], k: int) -> list[list[str]]:
    """``k`` sampled responses per prompt (rows of k copies share the prompt's prefill);
    the key is fixed, so an evaluation is repeatable."""
    rows = max(k, self.batch_size // k * k)  # whole groups per call, one row count
    per_call = rows // k
    out = []
    for i in range(0, len(prompts), per_call):
      chunk = prompts[i : i + per_call]
      ids = [self._prompt_ids(p) for p in chunk for _ in range(k)]
      ids += [ids[-1]] * (rows - len(ids))
      tokens, mask = _pad_to_bucket(*sampler.left_pad(ids, self.tok.pad_id), self.tok.pad_id)
      gen = self._sample(state, tokens, mask, jax.random.key(i + 1), group_size=k)
      new, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
      texts = [
        self.tok.decode(_strip_eos(new[r, : lengths[r]], self.tok.eos_id))
        for r in range(len(chunk) * k)
      ]
      out += [texts[j * k : (j + 1) * k] for j in range(len(chunk))]
    return out

  def _tool_responses(self, state, ids: list[list[int]]) -> list[str]:
    from jaxpost.tools import sandbox, tir

    m = len(ids)
    padded = ids + [ids[-1]] * (self.batch_size - m)  # one row count: one compilation
    turns = tir.sampler_turns(self._generate, state, self.tok, jax.random.key(0), group_size=1)
    rows = tir.rollout(
      turns, self.tok, padded, max_turns=self.tool_turns, max_new_tokens=self.max_new_tokens,
      limits=sandbox.Limits(),
    )[:m]  # fmt: skip
    self._lengths += [len(r.ids) for r in rows]
    return [self.tok.decode([t for t in r.ids if t != self.tok.eos_id]) for r in rows]

  def _prompt_ids(self, prompt: str | template.Example) -> list[int]:
    if isinstance(prompt, str):
      return template.encode_prompt(self.tok, prompt)
    return template.encode_prompt(self.tok, prompt.prompt, context=prompt.context)

  def evaluate_level(self, state, level: str) -> LevelResult:
    problems = self.problems(level)
    prompts = [self.prompt_prefix + p.prompt + self.prompt_suffix for p in problems]
    responses = self.responses(state, prompts)
    scores = [tasks.score_response(p, r) for p, r in zip(problems, responses, strict=True)]
    n = len(problems)
    thinking = [template.parse_response(r).thinking for r in responses]
    pass_k = distinct = None
    if self.pass_k:
      drawn = self.samples(state, prompts, self.pass_k)
      pass_k = float(
        np.mean(
          [any(tasks.check_answer(p, r) for r in rs) for p, rs in zip(problems, drawn, strict=True)]
        )
      )
      distinct = float(
        np.mean([len({template.parse_response(r).answer.strip() for r in rs}) for rs in drawn])
      )
    return LevelResult(
      level=level,
      accuracy=sum(s["correct"] for s in scores) / n,
      format_rate=sum(s["format_ok"] for s in scores) / n,
      n=n,
      samples=[(p.prompt, r, p.answer) for p, r in zip(problems[:3], responses[:3], strict=True)],
      mean_tokens=float(np.mean(self._lengths)),
      repeat_rate=float(np.mean([corrupt.repeated_step(t) for t in thinking])),
      trace_error_rate=float(np.mean([bool(tasks.trace_errors(t)) for t in thinking])),
      pass_k=pass_k,
      distinct=distinct,
      last_number=float(
        np.mean([tasks.check_last_number(p, r) for p, r in zip(problems, responses, strict=True)])
      ),
    )

  def evaluate(self, state, levels) -> dict[str, LevelResult]:
    return {level: self.evaluate_level(state, level) for level in levels}


PROMPT_BUCKET = 32


def _pad_to_bucket(tokens: np.ndarray, mask: np.ndarray, pad_id: int):
  """More left padding, up to a multiple of PROMPT_BUCKET columns.

  Levels differ in prompt length; bucketing lets them share one compiled decode.
  """
  width = -(-tokens.shape[1] // PROMPT_BUCKET) * PROMPT_BUCKET
  extra = width - tokens.shape[1]
  return (
    np.pad(tokens, ((0, 0), (extra, 0)), constant_values=pad_id),
    np.pad(mask, ((0, 0), (extra, 0))),
  )


def _strip_eos(ids: np.ndarray, eos_id: int) -> list[int]:
  ids = ids.tolist()
  return ids[: ids.index(eos_id)] if eos_id in ids else ids


def as_metrics(
  results: dict[str, LevelResult], prefix: str = "eval", headline: tuple[str, ...] | None = None
) -> dict[str, float]:
  """Slash-named metrics, per level and ``eval/accuracy``.

  ``eval/accuracy`` is the mean over the ``headline`` levels (default: all reported),
  so adding extra diagnostic levels at the end does not change the headline number.
  """
  m = {}
  for level, r in results.items():
    m[f"{prefix}/accuracy/{level}"] = r.accuracy
    m[f"{prefix}/format/{level}"] = r.format_rate
    if r.mean_tokens is not None:
      m[f"{prefix}/tokens/{level}"] = r.mean_tokens
    if r.repeat_rate is not None:
      m[f"{prefix}/repeats/{level}"] = r.repeat_rate
    if r.trace_error_rate is not None:
      m[f"{prefix}/trace_errors/{level}"] = r.trace_error_rate
    if r.last_number is not None:
      m[f"{prefix}/last_number/{level}"] = r.last_number
    if r.pass_k is not None:
      m[f"{prefix}/pass_k/{level}"] = r.pass_k
      m[f"{prefix}/distinct/{level}"] = r.distinct
  headline = tuple(results) if headline is None else headline
  scores = [results[level].accuracy for level in headline if level in results]
  if scores:
    m[f"{prefix}/accuracy"] = float(np.mean(scores))
  return m
