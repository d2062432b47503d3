"""Critique fine-tuning (CFT, Wang et al. 2025): train on critiques of noisy solutions.

Instead of imitating the gold answer, the model learns to write a critique c of a
candidate solution ỹ: the input is the question with ỹ, the target the critique, plain
NLL on the critique tokens only (the input is the prompt). At test time the model is an
ordinary solver. ``build`` writes such a dataset (``jaxpost.datagen`` format):

  ỹ   a model's sampled answer to each training problem (temperature ``temperature``:
      noisy, right or wrong)
  c   a teacher's critique of it; here ``task_critique``, a programmatic teacher for the
      embedded tasks that checks every ``lhs=value`` step of the trace and the final
      answer and ends, as the authors' GPT-4o prompt asks, with "Conclusion: right
      [END]" or "Conclusion: wrong [END]" (the paper's teacher is an LLM; this one is
      exact on these tasks, and ``teacher=`` takes any function of (problem, response));
      ``number_critique`` for free-text answers (an instruct model's own wording): each
      written equation "a+b=c" checked, then the last number (``--teacher=number``)

``PROMPT`` is the authors' input layout, ``"Question:\\n{q}\\n\\nSolution:\\n{ỹ}"``. With no
noisy responses (``records(problems, None, ...)``) the same code writes the gold SFT
records, (q, y): the baseline through the same path.

``ask`` is how each problem is asked ("What is {prompt}?" for a chat model), in the
model's prompt and in the record's question.

  python -m jaxpost.datagen.critique --model=smollm2 --levels=add3 --n=128 \\
      --teacher=number --ask='What is {prompt}?' --out=runs/data/cft-smollm2
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from jaxpost.data import tasks, template
from jaxpost.datagen import core

PROMPT = "Question:\n{question}\n\nSolution:\n{solution}"
END = " [END]"


def prompt(question: str, solution: str) -> str:
  """The critique input: the question and the candidate solution (byte for byte)."""
  return PROMPT.format(question=question, solution=solution)


def task_critique(problem, response: str) -> str:
  """A critique of ``response`` to a task ``problem``: its form, each wrong step (with
  the right value), the final answer, and the conclusion."""
  parsed = template.parse_response(response)
  if not parsed.format_ok:
    return (
      "The solution has no well-formed think block before its answer, so its reasoning "
      f"cannot be checked; the answer should be {problem.answer}.\nConclusion: wrong{END}"
    )
  lines, errors = [], tasks.trace_errors(parsed.thinking)
  for err in errors:
    _, _, rest = err.partition(" ")  # "step i 'lhs=v': why" -> "i 'lhs=v': why"
    number, _, detail = rest.partition(" ")
    lines.append(f"Step {int(number) + 1} is wrong: {detail}.")
  answer = parsed.answer.strip()
  right = answer == problem.answer
  if right:
    lines.append(f"The final answer {answer} is correct.")
  else:
    lines.append(f"The final answer {answer or '(empty)'} is wrong; it should be {problem.answer}.")
  if not errors:
    lines.insert(0, "Every step of the reasoning is correct.")
  verdict = "right" if right and not errors else "wrong"
  return "\n".join(lines) + f"\nConclusion: {verdict}{END}"


# A written step: integers joined by + - * x (or ×), in parentheses or not, then "=",
# "is" or "equals" and an integer ("12 + 34 = 46", "(3*4)+1 is 13", "= 1,213"; thousands
# commas as in tasks.last_number, so "04,4+7" is 04 then 4+7; "is 1.42" is no integer).
_EQUATION = re.compile(
  r"(?<![\d.])(\(?\d+(?:\s*[-+*x×]\s*\(?\d+\)?)+\)?)\s*(?:=|\bis\b|\bequals\b)\s*"
  r"(-?\d{1,3}(?:,\d{3})+(?![\d,])|-?\d+)(?!\d|\.\d)"
)


def _written_value(lhs: str) -> int | None:
  try:
    return tasks.evaluate(lhs.replace("×", "*").replace("x", "*"))
  except ValueError:
    return None


def number_critique(problem, response: str) -> str:
  """A critique of a free-text ``response`` (any wording): every equation it writes
  ("a+b=c") checked, then its last number as the final answer, and the conclusion
  (right when the equations hold and the last number is the answer)."""
  lines, wrong_steps = [], 0
  for match in _EQUATION.finditer(response):
    lhs, rhs = match.group(1), match.group(2).replace(",", "")
    value = _written_value(lhs)
    if value is not None and value != int(rhs):
      wrong_steps += 1
      lines.append(f"The step '{match.group(0)}' is wrong: {' '.join(lhs.split())} is {value}.")
  answer = tasks.last_number(response)
  right = answer == problem.answer
  if answer is None:
    lines.append(f"The solution gives no final number; the answer is {problem.answer}.")
  elif right:
    lines.append(f"The final answer {answer} is correct.")
  else:
    lines.append(f"The final answer {answer} is wrong; it should be {problem.answer}.")
  if not wrong_steps and right:
    lines.insert(0, "Every written step is correct.")
  verdict = "right" if right and not wrong_steps else "wrong"
  return "\n".join(lines) + f"\nConclusion: {verdict}{END}"


# name -> (the critique, the answer check behind each record's ``solution_correct``)
TEACHERS = {
  "task": (task_critique, tasks.check_answer),
  "number": (number_critique, tasks.check_last_number),
}


def records(
  problems: Sequence,
  noisy: Sequence[str] | None,
  teacher: Callable[[object, str], str] = task_critique,
  *,
  check: Callable[[object, str], bool] = tasks.check_answer,
  model: str | None = None,
  ask: str = "{prompt}",
) -> list[dict]:
  """CFT records (question with ``noisy[i]`` -> critique), or with ``noisy=None`` the
  gold SFT records (question -> gold response); each question is ``ask`` around the
  problem's prompt; ``solution_correct`` is ``check`` of the noisy answer."""
  out = []
  for i, p in enumerate(problems):
    question = ask.format(prompt=p.prompt)
    if noisy is None:
      out.append(core.record(question, template.render_response(p.example), kind="sft",
                             level=p.level, index=i))  # fmt: skip
      continue
    y = noisy[i]
    ok = check(p, y)
    out.append(core.record(prompt(question, y), teacher(p, y), kind="critique", model=model,
                           solution_correct=ok, level=p.level, index=i))  # fmt: skip
  return out


def build(
  author: core.Author,
  levels: dict[str, float],
  n: int,
  out_dir: str,
  *,
  temperature: float = 0.7,
  seed: int = 0,
  max_new_tokens: int = 96,
  batch_size: int = 64,
  teacher: str = "task",
  ask: str = "{prompt}",
) -> dict:
  """Writes the CFT dataset of training problems 0 .. n - 1 of ``levels``: one sampled
  solution per problem, critiqued by ``TEACHERS[teacher]``. Returns the manifest."""
  if teacher not in TEACHERS:
    raise ValueError(f"teacher must be one of {tuple(TEACHERS)}, got {teacher!r}")
  if "{prompt}" not in ask:
    raise ValueError(f"ask must contain {{prompt}}, got {ask!r}")
  mixture = tasks.mixture(levels, "train", seed)
  problems = [mixture.problem_at(i) for i in range(n)]
  writer = core.Writer(author, max_new_tokens=max_new_tokens, temperature=temperature,
                       batch_size=batch_size, seed=seed)  # fmt: skip
  noisy = writer([ask.format(prompt=p.prompt) for p in problems])
  critic, check = TEACHERS[teacher]
  recs = records(problems, noisy, critic, check=check, model=author.name, ask=ask)
  right = sum(r["provenance"]["solution_correct"] for r in recs)
  inputs = dict(model=author.name, step=author.step, levels=levels, n=n, seed=seed,
                temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                teacher=f"{teacher}_critique", prompt=PROMPT,
                **({"ask": ask} if ask != "{prompt}" else {}))  # fmt: skip
  return core.write_dataset(out_dir, recs, method="critique", inputs=inputs,
                            counts={"solutions_correct": right, "records": n},
                            cost=writer.cost)  # fmt: skip


def main(argv=None) -> None:
  core.run_cli(
    __doc__.split("\n")[0], build, argv, temperature=(float, 0.7, None),
    teacher=(str, "task", tuple(TEACHERS)), ask=(str, "{prompt}", None),
  )  # fmt: skip


if __name__ == "__main__":
  main()
