"""How much arithmetic SmolLM2-135M-Instruct does zero-shot, format aside.

The sweep's zero-shot row scores exact match of the task format (the answer after a
``<think>...</think>`` block, or the whole response): the instruct model never answers
with a bare number, so it scores 0 there whatever it knows. This diagnostic asks the
same held-out problems greedily through the chat template, as the tasks send them
(the bare expression) and as a question ("What is 663+550?"), and scores three ways:
  exact     the tasks' checker (what the sweep reports);
  contains  the answer appears as a whole number anywhere in the response;
  last      the response's last number is the answer.
Mean and 95% t-interval over the seeds (each seed draws its own held-out problems).

  python experiments/smollm2/zero_shot.py > experiments/smollm2/zero_shot.md
"""

from __future__ import annotations

import argparse
import re

from flax import nnx

from jaxpost.data import tasks
from jaxpost.eval import accuracy
from jaxpost.models import gguf
from jaxpost.sweep import stats

LEVELS = ("add3", "mul2x2", "expr2")
PHRASINGS = {"bare": "{}", "question": "What is {}?"}
NUMBER = re.compile(r"-?\d+")


def scores(response: str, problem: tasks.Problem) -> dict[str, bool]:
  numbers = NUMBER.findall(response.replace(",", ""))
  return {
    "exact": tasks.check_answer(problem, response),
    "contains": problem.answer in numbers,
    "last": bool(numbers) and numbers[-1] == problem.answer,
  }


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--n", type=int, default=64)
  p.add_argument("--max_new_tokens", type=int, default=64)
  args = p.parse_args()

  model, tok = gguf.load_model_and_tokenizer(gguf.find_packaged("smollm2"))
  graphdef, state = nnx.split(model)
  rows, examples = {}, {}
  for seed in args.seeds:
    ev = accuracy.Evaluator(
      graphdef, tok, num_examples=args.n, batch_size=32, max_new_tokens=args.max_new_tokens
    )
    for level in LEVELS:
      problems = tasks.heldout_set(level, args.n, seed=seed)
      for name, phrasing in PHRASINGS.items():
        responses = ev.responses(state, [phrasing.format(q.prompt) for q in problems])
        per = [scores(r, q) for r, q in zip(responses, problems, strict=True)]
        for metric in ("exact", "contains", "last"):
          value = 100 * sum(s[metric] for s in per) / len(per)
          rows.setdefault((level, name, metric), []).append(value)
        if seed == args.seeds[0]:
          examples[(level, name)] = (phrasing.format(problems[0].prompt), responses[0])

  print(f"Greedy, {args.n} held-out problems per level and seed, seeds {args.seeds}; % correct.\n")
  print("| level | prompt | exact (task format) | answer anywhere | last number |")
  print("|---|---|---|---|---|")
  for level in LEVELS:
    for name in PHRASINGS:
      cells = []
      for metric in ("exact", "contains", "last"):
        s = stats.summarize(rows[(level, name, metric)])
        cells.append(f"{s['mean']:.1f} [{s['low']:.1f}, {s['high']:.1f}]")
      print(f"| {level} | {name} | " + " | ".join(cells) + " |")
  print("\nFirst problem of the first seed, each phrasing:\n")
  for (level, name), (prompt, response) in examples.items():
    print(f"- {level}, {name}: `{prompt}` -> {response!r}")


if __name__ == "__main__":
  main()
