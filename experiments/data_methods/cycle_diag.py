"""What the cycle's models wrote, per seed: how often the start's answers are right in the
task's format and in any wording (the last number), how often the answer -> question
adapter gives an answer's true question back, and the most common kinds of question it
wrote instead. Reads a Cycle-Instruct sweep's cells (their datagen records).

  python experiments/data_methods/cycle_diag.py runs/sweeps/cycle_smollm2 > \\
      experiments/data_methods/cycle_smollm2/diagnostic.md
"""

import collections
import json
import os
import re
import sys

from jaxpost import config_lib
from jaxpost.data import tasks
from jaxpost.datagen import core, cycle


def _records(path):
  with open(os.path.join(path, "data.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _kind(question: str, truth: str) -> str:
  """A pseudo question, described by what is left once think tags are removed (the
  adapter learned the targets' empty ``<think></think>`` and often writes it wrongly)."""
  rest = re.sub(r"</?think>", "", question).strip()
  if rest == truth:
    return "the true question"
  if re.fullmatch(r"what is \d+\+\d+\?", rest, re.IGNORECASE):
    return "another sum (What is A+B?)"
  if re.fullmatch(r"what is -?\d+\?", rest, re.IGNORECASE):
    return "the answer itself (What is N?)"
  if not rest:
    return "nothing but think tags"
  return "other"


def main(root: str) -> None:
  runs = os.path.join(root, "runs", "cycle")
  print(f"Cells `cycle/seed*` of `{root}`; first cycle; % of 64 paragraphs.\n")
  print("| seed | start's answers right, exact | right, last number | questions exact "
        "| questions with think tags |")  # fmt: skip
  print("|---|---|---|---|---|")
  kinds = collections.Counter()
  examples = []
  for seed_dir in sorted(os.listdir(runs)):
    inputs = core.read_manifest(os.path.join(runs, seed_dir, "cycle1", "aq_data"))["inputs"]
    spec, _, size = inputs["corpus"].removeprefix("task:").rpartition(":")  # LEVELS:N
    seed = inputs["seed"]
    truth = cycle.task_problems(config_lib.parse_levels(spec), int(size), seed=seed)
    aq = _records(os.path.join(runs, seed_dir, "cycle1", "aq_data"))
    qa = _records(os.path.join(runs, seed_dir, "cycle1", "qa_data"))
    exact = [tasks.check_answer(truth[r["response"]], r["provenance"]["generated"]) for r in aq]
    lenient = [
      tasks.check_last_number(truth[r["response"]], r["provenance"]["generated"]) for r in aq
    ]
    true_q = [cycle.question_paragraph(truth[r["response"]]) for r in qa]
    wrote = [r["provenance"]["generated"] for r in qa]
    same = [w.strip() == t for w, t in zip(wrote, true_q, strict=True)]
    kinds.update(_kind(w, t) for w, t in zip(wrote, true_q, strict=True))
    examples += [(t, w) for w, t in zip(wrote[:2], true_q[:2], strict=True)]
    pct = lambda xs: f"{100 * sum(xs) / len(xs):.1f}"  # noqa: E731
    tagged = ["<think>" in w or "</think>" in w for w in wrote]
    print(f"| {seed} | {pct(exact)} | {pct(lenient)} | {pct(same)} | {pct(tagged)} |")
  total = sum(kinds.values())
  print("\nWhat the answer -> question adapter wrote, think tags removed (all seeds):\n")
  print("| kind | % |")
  print("|---|---|")
  for kind, n in kinds.most_common():
    print(f"| {kind} | {100 * n / total:.1f} |")
  print("\nFirst two per seed (true question -> written):\n")
  for t, w in examples:
    print(f"- `{t}` -> `{w[:120]}`")


if __name__ == "__main__":
  main(sys.argv[1])
