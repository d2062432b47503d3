"""Gold responses with negatives from a model, for discriminative fine-tuning (DiscFT).

``data.source=negatives`` reads a JSONL file of records

  {"prompt": ..., "response": <the gold response>, "negatives": [M responses]}

and lays each out as 1 + m adjacent rows: the gold response, then m of the record's M
negatives (``data.negatives``; epoch e takes negatives (e*m + j) mod M, so every epoch
sees fresh ones while the pool lasts, as the authors pre-generate m x epochs). Each
row's ``Batch.example_ids`` is its record number, which keys the loss's per-example
state (``losses/discft.py``). With ``data.pack=False`` and a batch a multiple of 1 + m,
row ``g*(1+m)`` of every batch is a gold response and the next m rows its negatives.

``build_negatives`` (and ``python -m jaxpost.data.negatives``) makes such a file from a
model's samples (``jaxpost.data.generated``, whose records carry the task's ``gold``
response), joined by prompt: the paper samples the negatives once, offline, from the
base model at temperature 0.7, whatever their correctness (``require`` can keep only
wrong ones instead):

  python -m jaxpost.data.negatives --model=zoo:rl-start --levels=mul2x2 --n=2400 \\
      --pool=4 --temperature=0.7 --out=runs/negatives.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable

import numpy as np

from jaxpost.data import pairs, template
from jaxpost.data.jsonl import DataError, record_to_example
from jaxpost.data.packing import PlacedSource

REQUIRE = ("incorrect", "differ")


def read_negatives(path: str, *, skip_malformed: bool = False) -> tuple[list, Callable, int, int]:
  """(examples, index -> place, skipped records, pool size M) of a JSONL of
  ``{"prompt", "response", "negatives": [...]}`` records (``build_negatives`` writes them).

  Each record becomes 1 + M adjacent examples, the gold response first and then its M
  negatives; every record must have the same M >= 1 (the pool ``negative_source`` draws
  from).

  Raises:
    DataError: a malformed record (unless skipped; then counted) or a record whose pool
      size differs from the first one's, naming ``path:line``; no record at all.
  """
  examples, lines, skipped, pool = [], [], 0, None
  for number, record, problem in pairs.json_records(path, ("prompt", "response", "negatives")):
    try:
      if record is None:
        raise ValueError(problem)
      negs = record["negatives"]
      if not isinstance(negs, list) or not negs or not all(isinstance(x, str) for x in negs):
        raise ValueError("'negatives' must be a non-empty list of strings")
      if pool is not None and len(negs) != pool:
        raise ValueError(f"{len(negs)} negatives; the first record has {pool}")
      group = [
        record_to_example({"prompt": record["prompt"], "response": r})
        for r in (record["response"], *negs)
      ]
    except ValueError as e:
      if not skip_malformed:
        raise DataError(f"{path}:{number}: {e}") from None
      skipped += 1
      continue
    pool = len(negs)
    examples += group
    lines += [number] * len(group)
  if not examples:
    raise DataError(f"{path} holds no records with negatives")
  size = 1 + pool

  def where(i: int) -> str:
    pos = i % size
    return f"{path}:{lines[i]} ({'gold' if pos == 0 else f'negative {pos}'})"

  return examples, where, skipped, pool


def negative_source(
  examples, tok, seed: int, pool: int, negatives: int, where: Callable[[int], str] | None = None
) -> PlacedSource:
  """index -> encoded example: records in a seeded order per epoch, each as 1 + m rows
  (gold, then m negatives), with its record number as the example id.

  Epoch e takes negatives ``(e*m + j) mod M``, j < m, of each record's pool of M: fresh
  negatives every epoch while the pool lasts (the authors' ``sample=True``: m x epochs
  generated), then around again.

  Args:
    examples: ``read_negatives`` output ([gold, M negatives] per record).
    tok: the tokenizer.
    seed: the order's seed.
    pool: M, negatives per record in ``examples``.
    negatives: m, negatives per row group (``data.negatives``), 1 <= m <= M.
    where: the list's place function (errors name the record's line).
  """
  if not 1 <= negatives <= pool:
    raise DataError(f"data.negatives={negatives}: the data has {pool} negatives per record")
  stride, size = 1 + pool, 1 + negatives
  records = len(examples) // stride
  perms: dict[int, np.ndarray] = {}

  def locate(index: int) -> tuple[int, int]:
    """(record, its example index) of source index ``index``."""
    epoch, offset = divmod(index, records * size)
    if epoch not in perms:
      perms.clear()
      perms[epoch] = np.random.default_rng([seed, epoch, 0x4E67]).permutation(records)
    record, pos = int(perms[epoch][offset // size]), offset % size
    pick = 0 if pos == 0 else 1 + (epoch * negatives + pos - 1) % pool
    return record, record * stride + pick

  def source(index: int):
    enc = template.encode_example(tok, examples[locate(index)[1]])
    return enc.tokens, enc.roles

  place = (lambda i: where(locate(i)[1])) if where is not None else (lambda i: f"example {i}")
  return PlacedSource(source, place, lambda index: locate(index)[0])


def build_negatives(samples: str, out: str, *, pool: int, require: tuple[str, ...] = ()) -> dict:
  """Joins a generated JSONL file (``jaxpost.data.generated``) into negatives records.

  For each prompt (file order), the gold response is the records' ``gold`` and the
  negatives are its first ``pool`` well-formed samples that pass ``require``.

  Args:
    samples: JSONL with ``prompt``, ``response`` and ``gold`` (and ``correct`` when a
      requirement reads it).
    out: the negatives JSONL to write.
    pool: M, negatives per record; a prompt with fewer admissible samples is left out.
    require: any of ``REQUIRE``: the sample is incorrect; it differs from the gold.

  Returns:
    counts: records written, prompts, prompts left out (too few negatives), malformed
    samples left out, negatives equal to their gold (kept unless ``differ``).

  Raises:
    DataError: an unknown requirement, a record without ``gold`` (or ``correct`` when
      required), or no record written.
  """
  unknown = set(require) - set(REQUIRE)
  if unknown:
    raise DataError(f"unknown requirement(s) {sorted(unknown)}; expected any of {REQUIRE}")
  if pool < 1:
    raise DataError(f"pool must be >= 1, got {pool}")
  written = short = malformed = same = 0
  grouped = pairs.by_prompt(samples)
  with open(out, "w", encoding="utf-8") as f:
    for prompt, records in grouped.items():
      if "gold" not in records[0]:
        raise DataError(f"{samples}: a record has no 'gold' key (prompt {prompt!r})")
      gold = records[0]["gold"]
      kept = []
      for r in records:
        if not pairs.well_formed(r):
          malformed += 1
          continue
        if "incorrect" in require:
          if "correct" not in r:
            raise DataError(f"{samples}: a record has no 'correct' key (prompt {prompt!r})")
          if r["correct"]:
            continue
        if r["response"] == gold and "differ" in require:
          continue
        kept.append(r["response"])
      if len(kept) < pool:
        short += 1
        continue
      same += sum(k == gold for k in kept[:pool])
      record = {"prompt": prompt, "response": gold, "negatives": kept[:pool]}
      f.write(json.dumps(record) + "\n")
      written += 1
  if not written:
    raise DataError(f"no prompt of {samples} has {pool} admissible negatives")
  return dict(records=written, prompts=len(grouped), too_few=short, malformed=malformed,
              equal_to_gold=same)  # fmt: skip


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="negatives JSONL to write")
  p.add_argument("--pool", type=int, required=True, help="M: negatives per record")
  p.add_argument("--samples", default="", help="a generated JSONL (else --model generates)")
  p.add_argument("--model", default="", help="a run's workdir or zoo:NAME[@SEED]")
  p.add_argument("--levels", default="", help="data.levels of the prompts, e.g. mul2x2:1.0")
  p.add_argument("--n", type=int, default=0, help="prompts (training problems 0 .. n-1)")
  p.add_argument("--per_prompt", type=int, default=0, help="samples per prompt (default: pool)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--temperature", type=float, default=0.7)
  p.add_argument("--max_new_tokens", type=int, default=96)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--require", default="", help=f"comma-separated, of {REQUIRE}")
  a = p.parse_args(argv)
  require = tuple(r for r in a.require.split(",") if r)
  if bool(a.samples) == bool(a.model):
    p.error("give --samples (a generated file) or --model with --levels and --n")
  counts = {}
  samples = a.samples
  with tempfile.TemporaryDirectory() as tmp:
    if a.model:
      from jaxpost import config_lib
      from jaxpost.data import generated

      if not (a.levels and a.n > 0):
        p.error("--model needs --levels and --n")
      model, tok, _ = generated.load_run(a.model)
      samples = os.path.join(tmp, "samples.jsonl")
      made = generated.generate_dataset(
        model, tok, config_lib.parse_levels(a.levels), a.n, samples, seed=a.seed,
        samples=max(a.per_prompt, a.pool), temperature=a.temperature,
        max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
      )  # fmt: skip
      counts = {"generated": made["written"], "correct": made["correct"]}
    counts.update(build_negatives(samples, a.out, pool=a.pool, require=require))
  print(json.dumps({"out": a.out, **counts}))


if __name__ == "__main__":
  main()
