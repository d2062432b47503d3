"""S3FT and SSR: train on the model's own answer where a judge accepts it.

Both are data construction followed by plain SFT (``../shared/methods`` sft card 8a/8b).
For each training problem x with gold answer y, the start model M writes ŷ = M(x):

  S3FT (Gupta et al. 2025)   ŷ if Judge(ŷ ≡ y); else ỹ = M(paraphrase prompt [x; y]), the
                             gold rewritten in the model's words, if Judge(ỹ correct);
                             else y
  SSR  (same group, 2024)    ŷ if Judge(ŷ ≡ y); else y (no paraphrase branch)

``choose_target`` is the whole decision, a truth table; ``build`` runs it over a task
mixture's training problems and writes a ``jaxpost.datagen`` dataset (``data.jsonl``,
``data.source=jsonl`` reads it) whose records say which target each is and what the
judge said. With a judge that never accepts (``never``) every target is the gold
answer: the data of plain SFT on the same problems, the baseline through the same path.

Readings (the paper's paraphrase prompts, Figs. 6-7, were not retrieved): ``PARAPHRASE``
asks the model to rewrite the shown solution keeping its final answer; the task judge
checks only the final answer (the card: answer match for GSM8K-like tasks), so a
paraphrase must keep the task's response format (think block, then the answer) to pass.

  python -m jaxpost.datagen.selective --method=s3ft --model=zoo:rl-start --levels=mul2x2 \\
      --n=1024 --out=runs/data/s3ft-mul2x2 [--judge=task|never|model:smollm2]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from jaxpost.data import template
from jaxpost.datagen import core

METHODS = ("s3ft", "ssr")
TARGETS = ("model", "paraphrase", "gold")
PARAPHRASE = (
  "{problem}\n\nHere is a correct solution:\n{gold}\n\n"
  "Rewrite this solution in your own words, in the same format. Keep its final answer."
)


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
  """``task`` (the answer checker), ``never``, or ``model:SOURCE`` (a frozen model's
  p(yes) that the answer matches the reference, ``core.ModelJudge``)."""
  if spec == "task":
    return core.task_judge
  if spec == "never":
    return never_judge
  if spec.startswith("model:"):
    return core.ModelJudge(spec.split(":", 1)[1])
  raise ValueError(f"judge {spec!r}: expected task | never | model:SOURCE")


def select_targets(
  problems: Sequence, writer, judge, *, paraphrase: bool, judge_name: str = ""
) -> tuple[list[dict], dict]:
  """The records of S3FT (``paraphrase``) or SSR over ``problems`` (task ``Problem``s).

  Args:
    problems: what to answer; each has ``prompt``, ``level`` and a gold ``example``.
    writer: prompts -> responses (``core.Writer``; ``salt=`` separates the calls).
    judge: ``core.JudgeFn``.
    paraphrase: S3FT's paraphrase branch for the answers the judge rejected.
    judge_name: how records name the judge.

  Returns:
    (records, counts): one record per problem, in order; counts of each target, and
    ``model_differs``: model targets that are not the gold response verbatim (where
    the data differs from SFT's).
  """
  golds = [template.render_response(p.example) for p in problems]
  own = writer([p.prompt for p in problems], salt=0)
  own_verdicts = judge(problems, own)
  para, para_verdicts = {}, {}
  rejected = [i for i, v in enumerate(own_verdicts) if not v.ok]
  if paraphrase and rejected:
    prompts = [PARAPHRASE.format(problem=problems[i].prompt, gold=golds[i]) for i in rejected]
    texts = writer(prompts, salt=1)
    verdicts = judge([problems[i] for i in rejected], texts)
    para = dict(zip(rejected, texts, strict=True))
    para_verdicts = dict(zip(rejected, verdicts, strict=True))
  author = getattr(writer, "author", None)
  records, counts = [], {**dict.fromkeys(TARGETS, 0), "model_differs": 0}
  for i, p in enumerate(problems):
    pv = para_verdicts.get(i)
    target = choose_target(own_verdicts[i].ok, None if pv is None else pv.ok)
    response = {"model": own[i], "paraphrase": para.get(i), "gold": golds[i]}[target]
    counts[target] += 1
    counts["model_differs"] += target == "model" and response != golds[i]
    provenance = dict(
      target=target,
      model=getattr(author, "name", None),
      step=getattr(author, "step", None),
      judge=judge_name,
      own_verdict=own_verdicts[i].ok,
      own_score=own_verdicts[i].score,
      level=p.level,
      index=i,
    )
    if pv is not None:
      provenance.update(paraphrase_verdict=pv.ok, paraphrase_score=pv.score)
    records.append(core.record(p.prompt, response, **provenance))
  return records, counts


def build(
  author: core.Author,
  levels: dict[str, float],
  n: int,
  out_dir: str,
  *,
  method: str = "s3ft",
  judge: str = "task",
  seed: int = 0,
  max_new_tokens: int = 96,
  batch_size: int = 64,
) -> dict:
  """Writes the S3FT / SSR dataset of training problems ``0 .. n - 1`` of the mixture
  ``levels`` (seed ``seed``: a run with these ``data.levels`` and seed draws the same
  problems) to ``out_dir``; the model answers greedily. Returns the manifest."""
  from jaxpost.data import tasks

  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  judge_fn = make_judge(judge)
  mixture = tasks.mixture(levels, "train", seed)
  problems = [mixture.problem_at(i) for i in range(n)]
  writer = core.Writer(author, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
  records, counts = select_targets(
    problems, writer, judge_fn, paraphrase=method == "s3ft", judge_name=judge
  )
  cost = writer.cost
  cost.judged = n + (counts["paraphrase"] + counts["gold"] if method == "s3ft" else 0)
  inputs = dict(
    model=author.name, step=author.step, levels=levels, n=n, seed=seed, judge=judge,
    max_new_tokens=max_new_tokens, batch_size=batch_size,
    paraphrase_prompt=PARAPHRASE if method == "s3ft" else None,
  )  # fmt: skip
  fractions = {f"{k}_frac": counts[k] / n for k in TARGETS}
  return core.write_dataset(
    out_dir, records, method=method, inputs=inputs, counts={**counts, **fractions}, cost=cost
  )


def main(argv=None) -> None:
  from jaxpost import config_lib

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--method", choices=METHODS, default="s3ft")
  p.add_argument("--model", required=True, help="a run, zoo:NAME, smollm2 or a .gguf file")
  p.add_argument("--levels", required=True, help="data.levels, e.g. 'mul2x2:1.0'")
  p.add_argument("--n", type=int, required=True, help="training problems")
  p.add_argument("--out", required=True, help="the dataset's directory")
  p.add_argument("--judge", default="task", help="task | never | model:SOURCE")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_new_tokens", type=int, default=96)
  p.add_argument("--batch_size", type=int, default=64)
  a = p.parse_args(argv)
  manifest = build(
    core.load_author(a.model),
    config_lib.parse_levels(a.levels),
    a.n,
    a.out,
    method=a.method,
    judge=a.judge,
    seed=a.seed,
    max_new_tokens=a.max_new_tokens,
    batch_size=a.batch_size,
  )
  print(json.dumps({"out": a.out, **manifest["counts"], "cost": manifest["cost"]}))


if __name__ == "__main__":
  main()
