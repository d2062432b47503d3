"""CFT, Critical Token Fine-tuning: find the tokens a solution's correctness hinges on.

arXiv 2510.10974 (sft_distill_detect.md, 9e; abstract and notes only). For a correct
solution, replace its token y_t by the model's 2nd (and 3rd) most likely token, let the
model greedily continue, and check the final answer: y_t is *critical* when every such
counterfactual continuation fails. Fine-tuning then supervises the critical tokens only
(fewer than 12% of the tokens in the paper). All counterfactuals of a batch of solutions
decode together (the paper's parallel counterfactual decoding).

Ours, stated: the alternatives are the most likely tokens other than y_t (the 2nd and 3rd
when y_t is the model's first choice); positions are the reasoning tokens (inside the
think block): a changed answer token fails the check by construction, so every answer
token is critical and stays supervised (``answer_weight = 1`` in configs/cft.py). The
critical tokens are written as character spans of the thinking (``"marks"`` of a JSONL
record, ``Example.marks``), so training reads them as ``ROLE_MARKED`` tokens and the
``token_priority`` loss trains on them alone (``think_weight = 0``, ``marked_weight =
1``). The spans are re-tokenised on their own when the record is encoded; the tool
counts the critical tokens whose re-encoding differs (``retokenised``).

  python -m jaxpost.data.critical_tokens --model=zoo:rl-start@0 --levels=mul2x2 \\
      --n=256 --out=runs/cft/seed0.jsonl             # self-generated correct solutions
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from jaxpost import scoring
from jaxpost.data import tasks, template
from jaxpost.data.tokenizer import Tokenizer
from jaxpost.rollout import sampler
from jaxpost.types import ROLE_MARKED, ROLE_THINK, Batch

# prefixes (token lists) -> their greedy continuations as text
ContinueFn = Callable[[list[list[int]]], list[str]]


def thinking_positions(tok: Tokenizer, ex: template.Example) -> tuple[np.ndarray, np.ndarray]:
  """(tokens of the encoded example, indices of its reasoning tokens: the thinking
  text's, not the think tags')."""
  enc = template.encode_example(tok, ex, add_eos=False)
  open_len = len(tok.encode(template.THINK_OPEN))
  think = np.flatnonzero(enc.roles == ROLE_THINK)
  n_text = len(tok.encode(ex.thinking)) if ex.thinking else 0
  return enc.tokens, think[open_len : open_len + n_text]


def alternatives(logits: np.ndarray, gold: int, k: int) -> list[int]:
  """The k most likely tokens other than ``gold`` (logits [V])."""
  order = np.argsort(-logits, kind="stable")
  return [int(t) for t in order if t != gold][:k]


def critical_masks(
  examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
  continue_fn: ContinueFn,
  verify: Sequence[Callable[[str], bool]],
  tok: Tokenizer,
  n_alternatives: int = 2,
) -> list[np.ndarray]:
  """Per example, a bool mask over its reasoning positions: True = critical.

  Args:
    examples: per solution (tokens, reasoning positions, logits at those positions'
      predictions [R, V], i.e. the model's scores of the token at each position).
    continue_fn: greedy continuations of token prefixes, as response text after them.
    verify: per solution, response text -> whether its final answer is right.
    tok: decodes the prefix's response part.
    n_alternatives: how many counterfactual tokens per position (all must fail).
  """
  prefixes, owners = [], []
  for i, (tokens, positions, logits) in enumerate(examples):
    for j, (pos, row) in enumerate(zip(positions, logits, strict=True)):
      for alt in alternatives(row, int(tokens[pos]), n_alternatives):
        prefixes.append([*tokens[:pos].tolist(), alt])
        owners.append((i, j))
  texts = continue_fn(prefixes) if prefixes else []
  masks = [np.ones(len(p), bool) for _, p, _ in examples]
  for (i, j), prefix, cont in zip(owners, prefixes, texts, strict=True):
    if not masks[i][j]:
      continue
    start = examples[i][1][0]  # the response text restarts at the first reasoning token
    think_open = template.THINK_OPEN
    response = think_open + tok.decode(prefix[start:]) + cont
    if verify[i](response):
      masks[i][j] = False  # a counterfactual still succeeds: not critical
  return masks


def char_spans(tok: Tokenizer, thinking: str, critical: np.ndarray) -> tuple[tuple[int, int], ...]:
  """The critical reasoning tokens as merged character spans of ``thinking``."""
  ids = tok.encode(thinking)
  if len(ids) != len(critical):
    raise ValueError(f"{len(ids)} reasoning tokens, {len(critical)} mask entries")
  spans, ends = [], [len(tok.decode(ids[: i + 1])) for i in range(len(ids))]
  starts = [0, *ends[:-1]]
  for i in np.flatnonzero(critical):
    s, e = starts[i], ends[i]
    if spans and spans[-1][1] == s:
      spans[-1] = (spans[-1][0], e)
    elif e > s:
      spans.append((s, e))
  return tuple(spans)


class Model:
  """A frozen model's greedy continuations and teacher-forced logits."""

  def __init__(self, run: str, max_new_tokens: int, batch_size: int):
    from jaxpost.data import generated

    model, self.tok, self.config = generated.load_run(run)
    self.graphdef, self.state = nnx.split(model)
    self.batch_size = batch_size
    self.generate = sampler.make_generate_fn(
      self.graphdef, max_new_tokens=max_new_tokens, eos_id=self.tok.eos_id, pad_id=self.tok.pad_id
    )
    self.score = jax.jit(scoring.make_scorer(self.graphdef).outputs)

  def continue_(self, prefixes: list[list[int]]) -> list[str]:
    out = []
    for i in range(0, len(prefixes), self.batch_size):
      chunk = prefixes[i : i + self.batch_size]
      rows = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
      tokens, mask = sampler.left_pad(rows, self.tok.pad_id)
      width = -(-tokens.shape[1] // 16) * 16  # few compiled widths
      tokens = np.pad(
        tokens, ((0, 0), (width - tokens.shape[1], 0)), constant_values=self.tok.pad_id
      )
      mask = np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))
      gen = self.generate(self.state, tokens, mask, jax.random.key(0))
      new, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
      for r in range(len(chunk)):
        ids = new[r, : lengths[r]].tolist()
        ids = ids[: ids.index(self.tok.eos_id)] if self.tok.eos_id in ids else ids
        out.append(self.tok.decode(ids))
    return out

  def logits_at(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """f32 [R, V]: the model's scores of the token at each position (teacher forced)."""
    width = -(-len(tokens) // 16) * 16  # few compiled widths
    padded = np.full((1, width), self.tok.pad_id, np.int32)
    padded[0, : len(tokens)] = tokens
    mask = (np.arange(width) < len(tokens))[None].astype(np.int32)
    logits = np.asarray(self.score(self.state, Batch.from_tokens(padded, mask)))[0]
    return logits[positions - 1]

  def greedy(self, prompts: list[str]) -> list[str]:
    return self.continue_([template.encode_prompt(self.tok, p) for p in prompts])


def build(
  run: str,
  levels: dict[str, float],
  n: int,
  seed: int,
  *,
  solutions: str = "self",
  n_alternatives: int = 2,
  max_new_tokens: int = 96,
  batch_size: int = 256,
) -> tuple[list[dict], dict]:
  """JSONL records (prompt, response, marks) of correct solutions and their statistics."""
  model = Model(run, max_new_tokens, batch_size)
  tok = model.tok
  mix = tasks.mixture(levels, "train", seed)
  problems = [mix(i) for i in range(n)]
  if solutions == "self":
    responses = model.greedy([p.prompt for p in problems])
    kept = [
      (p, template.parse_response(r))
      for p, r in zip(problems, responses, strict=True)
      if tasks.check_answer(p, r)
    ]
    solved = [
      (p, template.Example(p.prompt, r.thinking, r.answer.strip())) for p, r in kept if r.thinking
    ]
  elif solutions == "gold":
    solved = [(p, p.example) for p in problems]
  else:
    raise ValueError(f"solutions={solutions!r}: self | gold")
  examples = []
  for _, ex in solved:
    tokens, positions = thinking_positions(tok, ex)
    examples.append((tokens, positions, model.logits_at(tokens, positions)))
  verify = [lambda text, p=p: tasks.check_answer(p, text) for p, _ in solved]
  masks = critical_masks(examples, model.continue_, verify, tok, n_alternatives)
  records, retokenised, critical = [], 0, 0
  for (_, ex), mask in zip(solved, masks, strict=True):
    marks = char_spans(tok, ex.thinking, mask)
    marked = template.Example(ex.prompt, ex.thinking, ex.answer, marks=marks)
    enc = template.encode_example(tok, marked, add_eos=False)
    retokenised += abs(int(np.sum(enc.roles == ROLE_MARKED)) - int(mask.sum()))
    critical += int(mask.sum())
    records.append(
      {
        "prompt": ex.prompt,
        "response": template.render_response(ex),
        "marks": [list(s) for s in marks],
      }
    )
  total = sum(len(m) for m in masks)
  stats = {
    "model": run,
    "levels": levels,
    "problems": n,
    "solutions": solutions,
    "kept": len(records),
    "reasoning_tokens": total,
    "critical_tokens": critical,
    "critical_frac": critical / max(total, 1),
    "retokenised": retokenised,
    "alternatives": n_alternatives,
  }
  return records, stats


def main(argv=None) -> int:
  from jaxpost.config_lib import parse_levels

  parser = argparse.ArgumentParser(prog="python -m jaxpost.data.critical_tokens")
  parser.add_argument("--model", required=True, help="a run or zoo:NAME[@SEED]")
  parser.add_argument("--levels", default="mul2x2:1.0")
  parser.add_argument("--n", type=int, default=256, help="training problems to solve")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--solutions", default="self", help="self (greedy, kept if right) | gold")
  parser.add_argument("--alternatives", type=int, default=2)
  parser.add_argument("--max_new_tokens", type=int, default=96)
  parser.add_argument("--out", required=True, help="the .jsonl to write (+ .stats.json)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  records, stats = build(
    args.model,
    parse_levels(args.levels),
    args.n,
    args.seed,
    solutions=args.solutions,
    n_alternatives=args.alternatives,
    max_new_tokens=args.max_new_tokens,
  )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(args.out.removesuffix(".jsonl") + ".stats.json", "w") as f:
    json.dump(stats, f, indent=1)
  print(json.dumps(stats))
  return 0


if __name__ == "__main__":
  sys.exit(main())
