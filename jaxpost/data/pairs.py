"""Preference pairs: one prompt, a chosen and a rejected response, in adjacent batch rows.

Pair losses (``losses/pairs.py``: DPO for SODA, REDI's asymmetric objective) compare a
chosen response with a rejected one for the same prompt. ``data.source=pairs`` reads a
JSONL file of ``{"prompt": ..., "chosen": ..., "rejected": ...}`` records (responses in
the usual ``<think>...</think>answer`` form; ``jaxpost.data.generated`` writes the
responses a teacher or a student gives) and lays each pair out as two consecutive
examples: source index 2j is pair p(j)'s chosen response, 2j + 1 its rejected one, with
p a seeded permutation per epoch. With one example per row (``data.pack=False``, one
stream, an even batch) row 2i of every batch is a chosen response and row 2i + 1 the
rejected response of the same prompt, which is the layout the pair losses read.
``data.source=rationales`` uses the same layout for distilling step-by-step: row 2i is a
teacher record's label task, row 2i + 1 its rationale task (``read_rationales``).

``build_pairs`` (and ``python -m jaxpost.data.pairs``) makes such a file from the JSONL
that ``jaxpost.data.generated`` writes, joining records by prompt:

  SODA  chosen = a teacher's response, rejected = a one-time snapshot of the student's
        response to the same prompt (two files):
          --chosen=teacher.jsonl --rejected=student.jsonl --require=differ
  REDI  chosen = a correct sample, rejected = an incorrect sample of the same prompt
        (one file of several samples per prompt):
          --chosen=samples.jsonl --rejected=samples.jsonl \\
          --require=chosen_correct,rejected_incorrect
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np

from jaxpost.data import template
from jaxpost.data.jsonl import DataError, record_to_example
from jaxpost.data.packing import PlacedSource


def json_records(path: str, keys: tuple[str, ...]):
  """Yields (line number, the JSON object or None, why not) for each non-empty line: None
  when the line is not a JSON object holding every one of ``keys``."""
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        if not isinstance(record, dict) or not set(keys) <= set(record):
          raise ValueError("expected keys " + ", ".join(repr(k) for k in keys))
      except ValueError as e:
        yield number, None, str(e)
        continue
      yield number, record, ""


def _read_records(
  path: str,
  keys: tuple[str, ...],
  to_pair: Callable[[dict], list[template.Example]],
  names: tuple[str, str],
  what: str,
  skip_malformed: bool,
) -> tuple[list, Callable, int]:
  """Two examples per JSONL record (``to_pair``), adjacent: (examples, index -> place,
  skipped records).

  Raises:
    DataError: a malformed record (missing ``keys``, or ``to_pair`` refuses it; unless
      skipped, then counted) naming ``path:line``, or no record at all.
  """
  examples, lines, skipped = [], [], 0
  for number, record, problem in json_records(path, keys):
    try:
      if record is None:
        raise ValueError(problem)
      pair = to_pair(record)
    except ValueError as e:
      if not skip_malformed:
        raise DataError(f"{path}:{number}: {e}") from None
      skipped += 1
      continue
    examples += pair
    lines += [number, number]
  if not examples:
    raise DataError(f"{path} holds no {what}")

  def where(i: int) -> str:
    return f"{path}:{lines[i]} ({names[i % 2]})"

  return examples, where, skipped


def read_pairs(path: str, *, skip_malformed: bool = False) -> tuple[list, Callable, int]:
  """(examples [chosen_0, rejected_0, chosen_1, ...], index -> place, skipped records).

  Raises:
    DataError: a malformed record (unless skipped; then counted) naming ``path:line``, or
      no pairs at all.
  """

  def to_pair(record: dict) -> list[template.Example]:
    return [
      record_to_example({"prompt": record["prompt"], "response": record[key]})
      for key in ("chosen", "rejected")
    ]

  keys = ("prompt", "chosen", "rejected")
  names = ("chosen", "rejected")
  return _read_records(path, keys, to_pair, names, "preference pairs", skip_malformed)


EXPLAIN_PREFIX = "explain: "  # distilling step-by-step's rationale task (its label task: none)


def rationale_examples(prompt: str, response: str) -> list[template.Example]:
  """[label copy, rationale copy] of one teacher response (distilling step-by-step).

  The label copy is the plain prompt answered with the teacher's answer and an empty
  think block; the rationale copy is ``EXPLAIN_PREFIX + prompt`` answered with the
  teacher's rationale (its think block) and no answer. Evaluation asks the plain prompt,
  so inference never builds the rationale input (arXiv 2305.02301 uses "predict: " and
  "explain: " prefixes on T5; a decoder-only student needs only one to tell them apart).
  """
  thinking, answer = template.split_response(response)
  if not thinking.strip():
    raise ValueError("the response has no rationale (an empty <think> block)")
  if not answer.strip():
    raise ValueError("the response has no answer after </think>")
  return [
    template.Example(prompt=prompt, thinking="", answer=answer),
    template.Example(prompt=EXPLAIN_PREFIX + prompt, thinking=thinking, answer=""),
  ]


def read_rationales(path: str, *, skip_malformed: bool = False) -> tuple[list, Callable, int]:
  """(examples [label_0, rationale_0, label_1, ...], index -> place, skipped records) of
  a JSONL of ``{"prompt", "response"}`` teacher records (``jaxpost.data.generated``).

  Raises:
    DataError: a malformed record (unless skipped; then counted) naming ``path:line``, or
      no record at all.
  """

  def to_pair(record: dict) -> list[template.Example]:
    return rationale_examples(record["prompt"], record["response"])

  names = ("label task", "rationale task")
  return _read_records(
    path, ("prompt", "response"), to_pair, names, "teacher rationales", skip_malformed
  )


def pair_source(examples, tok, seed: int, where: Callable[[int], str] | None = None):
  """index -> encoded example, whole pairs in a seeded order per epoch (see module doc)."""
  n = len(examples) // 2
  perms: dict[int, np.ndarray] = {}

  def example_at(index: int) -> int:
    epoch, offset = divmod(index, 2 * n)
    if epoch not in perms:
      perms.clear()
      perms[epoch] = np.random.default_rng([seed, epoch, 0x9A12]).permutation(n)
    return 2 * int(perms[epoch][offset // 2]) + offset % 2

  def source(index: int):
    enc = template.encode_example(tok, examples[example_at(index)])
    return enc.tokens, enc.roles

  if where is None:
    return source
  return PlacedSource(source, lambda index: where(example_at(index)))


REQUIRE = ("chosen_correct", "rejected_incorrect", "differ")


def by_prompt(path: str) -> dict[str, list[dict]]:
  """{prompt: [records in file order]} of a generated JSONL file."""
  grouped: dict[str, list[dict]] = {}
  for number, record, problem in json_records(path, ("prompt", "response")):
    if record is None:
      raise DataError(f"{path}:{number}: {problem}")
    grouped.setdefault(record["prompt"], []).append(record)
  return grouped


def well_formed(record: dict) -> bool:
  """The response parses as ``<think>...</think>answer`` (or has no think block): a
  response that does not (an unclosed or repeated tag, e.g. cut off at the token budget)
  cannot be laid out by the template, so it never enters a pair."""
  try:
    template.split_response(record["response"])
  except ValueError:
    return False
  return True


def build_pairs(
  chosen: str, rejected: str, out: str, *, require: tuple[str, ...] = (), per_prompt: int = 1
) -> dict:
  """Joins two generated JSONL files by prompt into a pairs file (see module doc).

  For each prompt of ``chosen`` (file order) that ``rejected`` also answers, the chosen
  candidates and the rejected candidates are filtered by ``require`` and zipped in file
  order, up to ``per_prompt`` pairs.

  Args:
    chosen: JSONL whose responses are the chosen side.
    rejected: JSONL whose responses are the rejected side (may be ``chosen``).
    out: the pairs JSONL to write.
    require: any of ``REQUIRE``: the chosen record is correct, the rejected record is
      incorrect (both need the ``correct`` key), the two responses differ (a pair of
      equal responses has no gradient under DPO and cancels in REDI).
    per_prompt: most pairs per prompt.

  Returns:
    counts: pairs written, prompts joined, prompts with no admissible pair, malformed
    responses left out (``well_formed``).

  Raises:
    DataError: an unknown requirement, a record lacking ``correct`` when a
      requirement reads it, or no pair at all.
  """
  unknown = set(require) - set(REQUIRE)
  if unknown:
    raise DataError(f"unknown requirement(s) {sorted(unknown)}; expected any of {REQUIRE}")
  if per_prompt < 1:
    raise DataError(f"per_prompt must be >= 1, got {per_prompt}")

  def correct(record: dict, path: str) -> bool:
    if "correct" not in record:
      raise DataError(f"{path}: a record has no 'correct' key (prompt {record['prompt']!r})")
    return bool(record["correct"])

  good, bad = by_prompt(chosen), by_prompt(rejected)
  written = joined = empty = 0
  malformed = sum(not well_formed(r) for side in (good, bad) for rs in side.values() for r in rs)
  with open(out, "w", encoding="utf-8") as f:
    for prompt, candidates in good.items():
      if prompt not in bad:
        continue
      joined += 1
      ups = [
        r
        for r in candidates
        if well_formed(r) and ("chosen_correct" not in require or correct(r, chosen))
      ]
      downs = [
        r
        for r in bad[prompt]
        if well_formed(r) and ("rejected_incorrect" not in require or not correct(r, rejected))
      ]
      made = 0
      for up in ups:
        if made == per_prompt:
          break
        differ = "differ" in require
        at = next(
          (i for i, d in enumerate(downs) if not differ or d["response"] != up["response"]), None
        )
        if at is None:
          continue
        down = downs.pop(at)  # each rejected response is used once
        pair = {"prompt": prompt, "chosen": up["response"], "rejected": down["response"]}
        f.write(json.dumps(pair) + "\n")
        made += 1
      written += made
      empty += made == 0
  if written == 0:
    raise DataError(f"no pairs: {chosen} and {rejected} share {joined} prompts, none admissible")
  return dict(pairs=written, prompts=joined, without_pair=empty, malformed=malformed)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="Join generated JSONL files into preference pairs.")
  p.add_argument("--chosen", required=True, help="JSONL of the chosen side (data.generated)")
  p.add_argument("--rejected", required=True, help="JSONL of the rejected side")
  p.add_argument("--out", required=True, help="pairs JSONL to write")
  p.add_argument("--require", default="", help=f"comma-separated, of {REQUIRE}")
  p.add_argument("--per_prompt", type=int, default=1)
  a = p.parse_args(argv)
  require = tuple(r for r in a.require.split(",") if r)
  counts = build_pairs(a.chosen, a.rejected, a.out, require=require, per_prompt=a.per_prompt)
  print(json.dumps({"out": a.out, **counts}))


if __name__ == "__main__":
  main()
