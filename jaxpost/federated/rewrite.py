"""FedSD's one-time rewrite: every client's responses written again by the global model.

Before any round, each client asks the global model (the start) to rewrite its
examples, y~_i ~ f_teacher(. | c_i, x_i, y_i), and then trains on the rewrites (D_dist)
instead of (FedSD) or beside (FedSDR's smoothing stream) its raw responses. The
rewrite is conditioned on the raw response through the prompt, in the privileged
formats of ``jaxpost.data.privileged`` (``context``):

  answer  the prompt gains the reference answer (the card's y: what the tiny task
          tokenizers can spell; the default)
  trace   the prompt gains the whole reference response (think block and answer)
  none    the plain prompt: the global model's own answer (self-distillation without y)

Rewrites are not filtered: the card's "Rewrite Paradox" is that many rewrites do not
entail the ground truth, and FedSD trains on them all; ``stats`` counts how many are
right (checked like held-out answers). A rewrite whose think block is malformed has no
(thinking, answer) split to train on; its raw example is kept and counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxpost.data import privileged, tasks, template
from jaxpost.rollout import sampler

CONTEXTS = ("answer", "trace", "none")


def rewrite(
  model,
  tok,
  problems: Sequence[tasks.Problem],
  *,
  context: str = "answer",
  temperature: float = 0.0,
  max_new_tokens: int = 96,
  batch_size: int = 64,
  seed: int = 0,
  progress: bool = True,
) -> tuple[list[template.Example], dict[str, float]]:
  """The rewritten examples (one per problem, in order) and their stats:
  ``rewrite/correct`` (fraction whose answer is right), ``rewrite/kept_raw`` (fraction
  malformed or empty, kept as the raw example), ``rewrite/changed`` (fraction whose
  response differs from the raw one)."""
  if context not in CONTEXTS:
    raise ValueError(f"rewrite context {context!r}; expected one of {CONTEXTS}")
  graphdef, state = nnx.split(model)
  generate = sampler.make_generate_fn(graphdef, max_new_tokens=max_new_tokens, eos_id=tok.eos_id,
                                      pad_id=tok.pad_id, temperature=temperature)  # fmt: skip
  key = jax.random.key(seed)
  out, correct, kept_raw, changed = [], 0, 0, 0
  starts = range(0, len(problems), batch_size)
  for start in tqdm(starts, desc="rewrite", unit="batch", disable=not progress):
    chunk = problems[start : start + batch_size]
    ids = [template.encode_prompt(tok, _prompt(p, context)) for p in chunk]
    ids += [ids[-1]] * (batch_size - len(ids))  # one compiled shape for every call
    tokens, mask = sampler.left_pad(ids, tok.pad_id)
    gen = generate(state, tokens, mask, jax.random.fold_in(key, start))
    new, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
    for row, problem in enumerate(chunk):
      text = tok.decode([t for t in new[row, : lengths[row]] if t != tok.eos_id])
      parsed = template.parse_response(text)
      raw = problem.example
      if not (parsed.format_ok and parsed.answer.strip()):
        out.append(raw)
        kept_raw += 1
        continue
      ex = template.Example(problem.prompt, parsed.thinking, parsed.answer)
      correct += tasks.check_answer(problem, parsed.answer)
      changed += (ex.thinking, ex.answer) != (raw.thinking, raw.answer)
      out.append(ex)
  n = max(len(problems), 1)
  stats = {"rewrite/correct": correct / n, "rewrite/kept_raw": kept_raw / n,
           "rewrite/changed": changed / n}  # fmt: skip
  return out, stats


def _prompt(problem: tasks.Problem, context: str) -> str:
  return problem.prompt if context == "none" else privileged.problem_prompt(problem, context)
