"""Aggregation fine-tuning (AFT, Li et al. 2025): from several drafts to one answer.

The model learns to map a query and K draft answers ("proposals") to one refined answer
("aggregation"); the proposals sit in the prompt, so the loss is on the aggregation
only. At inference the same model proposes and aggregates in layers
(``propose_and_aggregate``, the authors' loop):

  P_0    = n samples for x
  P_l    = n samples from AGG(x, P_{l-1}),   l = 1 .. num_aggregation - 1
  answer = 1 sample from AGG(x, P_last)

so a query costs n x num_aggregation + 1 samples.

``aggregation_prompt`` numbers the proposals 1..K in order, in one of two layouts
(``STYLES``): ``chat``, the authors' aggregator instruction followed by the query, for
chat models; ``compact``, the query and the numbered proposals alone, which the tiny
task tokenizers can spell. ``build`` writes an AFT dataset (``jaxpost.datagen``
format): the proposals are the model's own samples (the on-policy variant) and the
aggregation target is the gold response (the authors have a stronger model write it;
the gold is what such a model would be checked against here).

  python -m jaxpost.datagen.aggregate --model=zoo:rl-start --levels=mul2x2 --n=1024 \\
      --proposals=4 --out=runs/data/aft [--style=compact]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jaxpost.data import tasks, template
from jaxpost.datagen import core

STYLES = ("chat", "compact")
INSTRUCTION = (
  "You are a helpful aggregator. You have been given several responses to the user's "
  "query. Critically evaluate them, then synthesize them into a single, high-quality "
  "response that is accurate and complete.\n\nResponses from models:"
)


def aggregation_prompt(query: str, proposals: Sequence[str], style: str = "chat") -> str:
  """The aggregator's prompt: the proposals numbered 1..K in their order, and the query."""
  if style not in STYLES:
    raise ValueError(f"style {style!r}; expected one of {STYLES}")
  if style == "compact":  # "1:..." (the tiny tokenizers have ':' but no '.')
    return query + "".join(f"\n{i}:{p}" for i, p in enumerate(proposals, 1))
  numbered = "\n".join(f"{i}. {p}" for i, p in enumerate(proposals, 1))
  return f"{INSTRUCTION}\n{numbered}\n\nQuery: {query}"


def propose_and_aggregate(
  sample: Callable[[list[str]], list[str]],
  queries: Sequence[str],
  *,
  n: int = 5,
  num_aggregation: int = 2,
  style: str = "chat",
) -> tuple[list[str], list[list[list[str]]]]:
  """The answer to each query and every layer's proposals (``layers[l][q]``: query q's n
  proposals of layer l); one ``sample`` call per layer over all queries.

  Args:
    sample: prompts -> one sampled response each (e.g. a ``core.Writer`` at T > 0).
    queries: the questions.
    n: proposals per layer.
    num_aggregation: layers before the final aggregation, the proposers' included (1:
      propose once, then aggregate).
    style: the aggregation prompt's layout (``STYLES``).
  """
  if n < 1 or num_aggregation < 1:
    raise ValueError(f"n and num_aggregation must be >= 1, got {n}, {num_aggregation}")

  def layer(prompts):  # each prompt n times, the answers grouped back per query
    flat = sample([p for p in prompts for _ in range(n)])
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

  layers = [layer(list(queries))]
  for _ in range(num_aggregation - 1):
    layers.append(layer([aggregation_prompt(q, props, style)
                         for q, props in zip(queries, layers[-1], strict=True)]))  # fmt: skip
  final = [
    aggregation_prompt(q, props, style) for q, props in zip(queries, layers[-1], strict=True)
  ]
  return sample(final), layers


def records(problems: Sequence, proposals: Sequence[Sequence[str]], style: str) -> list[dict]:
  """AFT records: each problem's proposals in the prompt, its gold response the target."""
  out = []
  for i, (p, props) in enumerate(zip(problems, proposals, strict=True)):
    correct = [tasks.check_answer(p, x) for x in props]
    out.append(
      core.record(
        aggregation_prompt(p.prompt, props, style), template.render_response(p.example),
        query=p.prompt, proposals_correct=correct, level=p.level, index=i,
      )
    )  # fmt: skip
  return out


def build(
  author: core.Author,
  levels: dict[str, float],
  n: int,
  out_dir: str,
  *,
  proposals: int = 4,
  style: str = "compact",
  temperature: float = 0.7,
  seed: int = 0,
  max_new_tokens: int = 96,
  batch_size: int = 64,
) -> dict:
  """Writes the AFT dataset of training problems 0 .. n - 1 of ``levels``: ``proposals``
  samples per problem at ``temperature`` in the prompt, the gold response as the target."""
  mixture = tasks.mixture(levels, "train", seed)
  problems = [mixture.problem_at(i) for i in range(n)]
  writer = core.Writer(author, max_new_tokens=max_new_tokens, temperature=temperature,
                       batch_size=batch_size, seed=seed)  # fmt: skip
  flat = writer([p.prompt for p in problems for _ in range(proposals)])
  grouped = [flat[i * proposals : (i + 1) * proposals] for i in range(n)]
  recs = records(problems, grouped, style)
  right = sum(sum(r["provenance"]["proposals_correct"]) for r in recs)
  inputs = dict(model=author.name, step=author.step, levels=levels, n=n, seed=seed,
                proposals=proposals, style=style, temperature=temperature,
                max_new_tokens=max_new_tokens, batch_size=batch_size)  # fmt: skip
  return core.write_dataset(out_dir, recs, method="aggregate", inputs=inputs,
                            counts={"proposals_correct_frac": right / (n * proposals)},
                            cost=writer.cost)  # fmt: skip


def main(argv=None) -> None:
  core.run_cli(
    __doc__.split("\n")[0], build, argv, proposals=(int, 4, None),
    style=(str, "compact", STYLES), temperature=(float, 0.7, None),
  )  # fmt: skip


if __name__ == "__main__":
  main()
