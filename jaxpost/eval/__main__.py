"""Evaluates a finished run (or zoo model) on held-out task levels, with evaluation options.

The training-free inference controls are options of the evaluator, so one trained model
can be compared under each: TLDR's temperature-scaled stopping (``eval.stop_bias``), s1
budget forcing (``eval.force_after``), a prompt prefix such as a length-level tag
(``eval.prompt_prefix``, and ``eval.prompt_suffix``); also ``eval.max_new_tokens`` and
``eval.num_examples``.
``--exit=N`` decodes with the model's first N blocks only, through its own final norm and
head: the early exits of sorted fine-tuning (configs/sorted_ft.py). ``--heldout=FILE``
also scores a JSONL file of prompt / response records teacher-forced: ``loss`` (nats per
response token) and ``perplexity`` as level ``heldout`` (e.g. a base model's own answers
to general prompts, ``jaxpost.datagen.responses``: the drift of a tuned model);
``--heldout_span=answer`` counts the answer and EOS only, not the think tags jaxpost's
template writes before an answer with no reasoning (which the base never wrote).

  python -m jaxpost.eval runs/tldr --levels=mul2x2 --set eval.stop_bias=2 --out=ts2.json

Prints accuracy, format rate and mean generated tokens per level; ``--out`` writes them
as JSON with the options used.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys

from flax import nnx

from jaxpost import config_lib, models
from jaxpost.data import generated
from jaxpost.eval import accuracy, heldout
from jaxpost.types import RESPONSE_ROLES, ROLE_ANSWER

EVAL_OPTIONS = (
  "eval.stop_bias",
  "eval.force_after",
  "eval.prompt_prefix",
  "eval.prompt_suffix",
  "eval.max_new_tokens",
  "eval.num_examples",
  "eval.batch_size",
  "eval.pass_k",
  "eval.sample_temperature",
)


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string, e.g. a prefix


def parse_options(items: list[str], error) -> dict:
  """``--set FIELD=VALUE`` items as {field: value} (literals parsed); ``error(msg)``
  reports a malformed one (an argparse parser's ``error``)."""
  options = {}
  for item in items:
    field, sep, value = item.partition("=")
    if not sep:
      error(f"--set {item!r}: expected FIELD=VALUE")
    options[field] = _value(value)
  return options


SPANS = {"response": RESPONSE_ROLES, "answer": (ROLE_ANSWER,)}  # --heldout_span


def evaluate_run(
  run: str,
  levels: list[str],
  options: dict,
  exit_layer: int = 0,
  heldout_path: str = "",
  heldout_span: str = "response",
) -> dict:
  """{level: {accuracy, format_rate, mean_tokens, n}} of ``run`` under ``options``, read
  at ``exit_layer`` (its first that many blocks; 0 = all); with ``heldout_path`` also
  ``{"heldout": {loss, perplexity, n}}`` of that JSONL file's responses (the tokens of
  ``SPANS[heldout_span]``)."""
  if heldout_span not in SPANS:
    raise ValueError(f"heldout_span must be one of {tuple(SPANS)}, got {heldout_span!r}")
  model, tok, config = generated.load_run(run)
  if exit_layer:
    n = model.config.n_layers
    if not 1 <= exit_layer <= n:
      raise ValueError(f"--exit={exit_layer}: the model has blocks 1..{n}")
    model = models.keep_layers(model, range(exit_layer))
  for field, value in options.items():
    if field not in EVAL_OPTIONS:
      raise ValueError(f"--set {field}: one of {', '.join(EVAL_OPTIONS)}")
    config_lib.set_field(config, field, value)
  config_lib.validate(config)
  graphdef, state = nnx.split(model)
  evaluator = accuracy.Evaluator.from_config(graphdef, tok, config)
  scored = {}
  if heldout_path:
    scored[heldout.LEVEL] = heldout_loss(
      graphdef, state, evaluator, config, heldout_path, SPANS[heldout_span]
    )
  return scored | {
    level: {
      "accuracy": r.accuracy,
      "format_rate": r.format_rate,
      "mean_tokens": r.mean_tokens,
      "repeat_rate": r.repeat_rate,
      "trace_error_rate": r.trace_error_rate,
      "pass_k": r.pass_k,
      "distinct": r.distinct,
      "n": r.n,
    }  # fmt: skip
    for level, r in evaluator.evaluate(state, levels).items()
  }


def heldout_loss(graphdef, state, evaluator, config, path: str, roles=RESPONSE_ROLES) -> dict:
  """Teacher-forced NLL of ``path``'s responses, the target tokens of ``roles`` (every
  record, rows as long as its longest): ``{loss, perplexity, n}``."""
  from jaxpost import scoring
  from jaxpost.data import jsonl, template

  examples = jsonl.read_jsonl(path).examples
  longest = max(len(template.encode_example(evaluator.tok, ex).tokens) for ex in examples)
  scorer = scoring.make_scorer(
    graphdef, lm_head=config.kernels.lm_head, chunk_size=config.kernels.chunk_size
  )
  held = heldout.HeldOutEvaluator(
    scorer, evaluator, examples, batch_size=config.eval.batch_size, overlong="error",
    seq_len=max(config.data.seq_len, longest), checker=config.eval.checker, roles=roles,
  )  # fmt: skip
  r = held.loss(state)
  return {"loss": r["eval/loss"], "perplexity": r["eval/perplexity"], "n": len(examples)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m jaxpost.eval", description=__doc__.split("\n")[0]
  )
  parser.add_argument("run", help="a run directory or zoo:NAME[@SEED]")
  parser.add_argument("--levels", default="", help="comma-separated task levels")
  parser.add_argument("--heldout", default="", help="a JSONL file scored teacher-forced")
  parser.add_argument("--heldout_span", default="response", choices=tuple(SPANS))
  parser.add_argument(
    "--set", action="append", default=[], metavar="FIELD=VALUE", help="an evaluation option"
  )
  parser.add_argument("--out", default="", help="write the results as JSON here")
  parser.add_argument(
    "--exit", type=int, default=0, help="decode with the first N blocks only (0 = all)"
  )
  args = parser.parse_args(argv)
  options = parse_options(args.set, parser.error)
  logging.basicConfig(level=logging.WARNING)
  levels = [x for x in args.levels.split(",") if x]
  if not levels and not args.heldout:
    parser.error("give --levels, --heldout or both")
  results = evaluate_run(
    args.run, levels, options, args.exit, heldout_path=args.heldout, heldout_span=args.heldout_span
  )
  for level, r in results.items():
    if level == heldout.LEVEL:
      print(f"{level:10s} loss {r['loss']:.4f}  perplexity {r['perplexity']:.3f}  (n={r['n']})")
      continue
    sampled = ""
    if r["pass_k"] is not None:
      sampled = f"  pass@k {100 * r['pass_k']:5.1f}%  distinct {r['distinct']:4.2f}"
    print(
      f"{level:10s} accuracy {100 * r['accuracy']:5.1f}%  format {100 * r['format_rate']:5.1f}%"
      f"  tokens {r['mean_tokens']:6.1f}{sampled}  (n={r['n']})"
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(
        {
          "run": args.run,
          "options": options,
          "exit": args.exit,
          "heldout": args.heldout,
          "levels": results,
        },
        f,
        indent=1,  # fmt: skip
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
