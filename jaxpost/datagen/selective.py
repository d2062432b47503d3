"""Training targets a model chose itself: S3FT, SSR and self-data distillation.

All three are data construction followed by plain SFT. For each training problem x with
gold answer y, a model M writes its own answer and / or a rewrite of the gold, and a
judge decides which becomes the target (``METHODS``: the branches tried, in order):

  S3FT (Gupta et al. 2025)       ŷ = M(x) if Judge(ŷ ≡ y); else ỹ = M(rewrite prompt [x; y]),
                                 the gold in the model's words, if Judge(ỹ correct); else y
  SSR  (same group, 2024)        ŷ if Judge(ŷ ≡ y); else y (no rewrite branch)
  self_distill (Thangarasa et     ỹ if it is correct and leaks nothing, else y: M is the
  al. 2024, after SDFT)          unpruned model and the target trains a pruned copy of it
                                 (``model.keep_layers``); M itself is only read

``choose_target`` is the whole decision, a truth table; ``build`` runs it over a task
mixture's training problems and writes a ``jaxpost.datagen`` dataset (``data.jsonl``,
``data.source=jsonl`` reads it) whose records say which target each is and what the
judge said. With a judge that never accepts (``never``) every target is the gold
answer: the data of plain SFT on the same problems, the baseline through the same path.

The rewrite prompt (``REWRITES``): ``instruction`` asks to rewrite the shown solution in
the model's own words keeping its final answer (a chat model's prompt; the papers'
prompts, S3FT Figs. 6-7 and the Cerebras template, were not retrieved); ``answer`` and
``trace`` append the gold answer / response to the prompt in the privileged formats the
tiny task tokenizers can spell (``jaxpost.data.privileged``); ``none`` is the plain
prompt (the model's own answer, not conditioned on y). A rewrite containing a leak
phrase (``LEAKS``: SDFT's filter, e.g. "reference answer") is rejected. The task judge
checks only the final answer (answer match, as the cards read GSM8K), so a rewrite must
keep the task's response format (think block, then the answer) to pass; the ``number``
judge accepts any wording whose last number is the answer (a chat model's own phrasing,
as the papers' answer-match judges do on GSM8K).

  python -m jaxpost.datagen.selective --method=s3ft --model=zoo:rl-start --levels=mul2x2 \\
      --n=1024 --out=runs/data/s3ft-mul2x2 [--judge=task|trace|number|never|model:smollm2]
      [--rewrite=trace]
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxpost.data import template
from jaxpost.datagen import core

METHODS = {  # the branches tried before the gold answer, in order
  "s3ft": ("model", "paraphrase"),
  "ssr": ("model",),
  "self_distill": ("paraphrase",),
}
TARGETS = ("model", "paraphrase", "gold")
PARAPHRASE = (
  "{problem}\n\nHere is a correct solution:\n{gold}\n\n"
  "Rewrite this solution in your own words, in the same format. Keep its final answer."
)
REWRITES = ("instruction", "answer", "trace", "none")
LEAKS = ("reference answer", "reference solution", "your response", "correct solution")


def rewrite_prompt(problem, kind: str, ask: str = "{prompt}") -> str:
  """The prompt that asks for problem's gold rewritten (``REWRITES``); ``ask`` is how
  the problem itself is asked (``{prompt}``: as the task writes it)."""
  from jaxpost.data import privileged

  question = ask.format(prompt=problem.prompt)
  if kind == "instruction":
    return PARAPHRASE.format(problem=question, gold=template.render_response(problem.example))
  if kind == "none":
    return question
  if kind in ("answer", "trace"):
    return privileged.problem_prompt(problem, kind)
  raise ValueError(f"rewrite {kind!r}: expected one of {REWRITES}")


def leaks(text: str) -> bool:
  """The rewrite talks about the prompt it saw instead of solving the problem."""
  low = text.lower()
  return any(phrase in low for phrase in LEAKS)


def choose_target(own_ok: bool, paraphrase_ok: bool | None) -> str:
  """``model`` if the judge accepted the model's own answer, else ``paraphrase`` if it
  accepted the paraphrase (None: no paraphrase was written, SSR), else ``gold``."""
  if own_ok:
    return "model"
  if paraphrase_ok:
    return "paraphrase"
  return "gold"


def never_judge(problems: Sequence, responses: Sequence[str]) -> list[core.Verdict]:
  """Rejects everything: the targets become the gold answers (plain SFT's data)."""
  return [core.Verdict(False, 0.0) for _ in responses]


def make_judge(spec: str):
  """``task`` (the answer checker), ``trace`` (the answer and every step), ``number``
  (the last number only, any wording: a chat model's own phrasing), ``never``, or
  ``model:SOURCE`` (a frozen model's p(yes) that the answer matches the reference,
  ``core.ModelJudge``)."""
  if spec == "task":
    return core.task_judge
  if spec == "trace":
    return core.trace_judge
  if spec == "number":
    return core.number_judge
  if spec == "never":
    return never_judge
  if spec.startswith("model:"):
    return core.ModelJudge(spec.split(":", 1)[1])
  raise ValueError(f"judge {spec!r}: expected task | trace | number | never | model:SOURCE")


def select_targets(
  problems: Sequence,
  writer,
  judge,
  *,
  branches: Sequence[str] = METHODS["s3ft"],
  rewrite: str = "instruction",
  judge_name: str = "",
  ask: str = "{prompt}",
) -> tuple[list[dict], dict]:
  """The records of a method of ``METHODS`` over ``problems`` (task ``Problem``s).

  Args:
    problems: what to answer; each has ``prompt``, ``level`` and a gold ``example``.
    writer: prompts -> responses (``core.Writer``; ``salt=`` separates the calls).
    judge: ``core.JudgeFn``.
    branches: ``model`` (the own answer) and / or ``paraphrase`` (the rewrite, for
      the problems the branches before it did not settle), in order.
    rewrite: the rewrite prompt (``REWRITES``).
    judge_name: how records name the judge.
    ask: each problem's prompt, in the model's answer and in the record (``{prompt}``:
      as the task writes it; "What is {prompt}?" asks a chat model a question).

  Returns:
    (records, counts): one record per problem, in order; counts of each target, and
    ``model_differs``: model targets that are not the gold response verbatim (where
    the data differs from SFT's).
  """
  unknown = set(branches) - {"model", "paraphrase"}
  if unknown or not branches:
    raise ValueError(f"branches {tuple(branches)}: expected model and / or paraphrase")
  golds = [template.render_response(p.example) for p in problems]
  own, own_verdicts = [None] * len(problems), [None] * len(problems)
  if "model" in branches:
    own = writer([ask.format(prompt=p.prompt) for p in problems], salt=0)
    own_verdicts = judge(problems, own)
  para, para_verdicts, leaked = {}, {}, 0
  rejected = [i for i, v in enumerate(own_verdicts) if v is None or not v.ok]
  if "paraphrase" in branches and rejected:
    texts = writer([rewrite_prompt(problems[i], rewrite, ask) for i in rejected], salt=1)
    verdicts = judge([problems[i] for i in rejected], texts)
    for i, text, v in zip(rejected, texts, verdicts, strict=True):
      if leaks(text):
        v, leaked = core.Verdict(False, v.score), leaked + 1
      para[i], para_verdicts[i] = text, v
  author = getattr(writer, "author", None)
  records = []
  counts = {**dict.fromkeys(TARGETS, 0), "model_differs": 0, "leaked": leaked}
  for i, p in enumerate(problems):
    pv, ov = para_verdicts.get(i), own_verdicts[i]
    target = choose_target(ov is not None and ov.ok, None if pv is None else pv.ok)
    response = {"model": own[i], "paraphrase": para.get(i), "gold": golds[i]}[target]
    counts[target] += 1
    counts["model_differs"] += target == "model" and response != golds[i]
    provenance = dict(
      target=target,
      model=getattr(author, "name", None),
      step=getattr(author, "step", None),
      judge=judge_name,
      level=p.level,
      index=i,
    )
    if ov is not None:
      provenance.update(own_verdict=ov.ok, own_score=ov.score)
    if pv is not None:
      provenance.update(paraphrase_verdict=pv.ok, paraphrase_score=pv.score)
    records.append(core.record(ask.format(prompt=p.prompt), response, **provenance))
  return records, counts


def build(
  author: core.Author,
  levels: dict[str, float],
  n: int,
  out_dir: str,
  *,
  method: str = "s3ft",
  judge: str = "task",
  rewrite: str = "instruction",
  seed: int = 0,
  max_new_tokens: int = 96,
  batch_size: int = 64,
  ask: str = "{prompt}",
) -> dict:
  """Writes the S3FT / SSR dataset of training problems ``0 .. n - 1`` of the mixture
  ``levels`` (seed ``seed``: a run with these ``data.levels`` and seed draws the same
  problems) to ``out_dir``; the model answers greedily. Returns the manifest."""
  from jaxpost.data import tasks

  if method not in METHODS:
    raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
  if rewrite not in REWRITES:
    raise ValueError(f"rewrite must be one of {REWRITES}, got {rewrite!r}")
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  if "{prompt}" not in ask:
    raise ValueError(f"ask must contain {{prompt}}, got {ask!r}")
  judge_fn = make_judge(judge)
  mixture = tasks.mixture(levels, "train", seed)
  problems = [mixture.problem_at(i) for i in range(n)]
  writer = core.Writer(author, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
  branches = METHODS[method]
  records, counts = select_targets(
    problems, writer, judge_fn, branches=branches, rewrite=rewrite, judge_name=judge, ask=ask
  )
  cost = writer.cost
  cost.judged = cost.prompts  # every response written was judged once
  rewrites = "paraphrase" in branches
  inputs = dict(
    model=author.name, step=author.step, levels=levels, n=n, seed=seed, judge=judge,
    max_new_tokens=max_new_tokens, batch_size=batch_size, rewrite=rewrite if rewrites else None,
    rewrite_prompt=PARAPHRASE if rewrites and rewrite == "instruction" else None,
    **({"ask": ask} if ask != "{prompt}" else {}),  # (the shipped manifests predate it)
  )  # fmt: skip
  fractions = {f"{k}_frac": counts[k] / n for k in TARGETS}
  return core.write_dataset(
    out_dir, records, method=method, inputs=inputs, counts={**counts, **fractions}, cost=cost
  )


def main(argv=None) -> None:
  core.run_cli(
    __doc__.split("\n")[0], build, argv,
    method=(str, "s3ft", tuple(METHODS)), judge=(str, "task", None),
    rewrite=(str, "instruction", REWRITES), ask=(str, "{prompt}", None),
  )  # fmt: skip


if __name__ == "__main__":
  main()
