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
      exact on these tasks, and ``teacher=`` takes any function of (problem, response))

``PROMPT`` is the authors' input layout, ``"Question:\\n{q}\\n\\nSolution:\\n{ỹ}"``. With no
noisy responses (``records(problems, None, ...)``) the same code writes the gold SFT
records, (q, y): the baseline through the same path.

  python -m jaxpost.datagen.critique --model=smollm2 --levels=add3 --n=512 \\
      --out=runs/data/cft-add3 [--temperature=0.7]
"""

from __future__ import annotations

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


def records(
  problems: Sequence,
  noisy: Sequence[str] | None,
  teacher: Callable[[object, str], str] = task_critique,
  *,
  model: str | None = None,
) -> list[dict]:
  """CFT records (question with ``noisy[i]`` -> critique), or with ``noisy=None`` the
  gold SFT records (question -> gold response)."""
  out = []
  for i, p in enumerate(problems):
    if noisy is None:
      out.append(core.record(p.prompt, template.render_response(p.example), kind="sft",
                             level=p.level, index=i))  # fmt: skip
      continue
    y = noisy[i]
    ok = tasks.check_answer(p, y)
    out.append(core.record(prompt(p.prompt, y), teacher(p, y), kind="critique", model=model,
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
) -> dict:
  """Writes the CFT dataset of training problems 0 .. n - 1 of ``levels``: one sampled
  solution per problem, critiqued by ``task_critique``. Returns the manifest."""
  mixture = tasks.mixture(levels, "train", seed)
  problems = [mixture.problem_at(i) for i in range(n)]
  writer = core.Writer(author, max_new_tokens=max_new_tokens, temperature=temperature,
                       batch_size=batch_size, seed=seed)  # fmt: skip
  noisy = writer([p.prompt for p in problems])
  recs = records(problems, noisy, model=author.name)
  right = sum(r["provenance"]["solution_correct"] for r in recs)
  inputs = dict(model=author.name, step=author.step, levels=levels, n=n, seed=seed,
                temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                teacher="task_critique", prompt=PROMPT)  # fmt: skip
  return core.write_dataset(out_dir, recs, method="critique", inputs=inputs,
                            counts={"solutions_correct": right, "records": n},
                            cost=writer.cost)  # fmt: skip


def main(argv=None) -> None:
  core.run_cli(__doc__.split("\n")[0], build, argv, temperature=(float, 0.7, None))


if __name__ == "__main__":
  main()
