"""Evaluate every finished run of a sweep again, under evaluation options, and tabulate.

A sweep's own report reads what its runs logged. Questions asked after the runs ended
(how many traces hold a wrong step, pass@k at temperature 1, an early exit) need the
final models read again: this evaluates each done cell of ``ROOT/manifest.json`` with
``jaxpost.eval``'s ``evaluate_run`` (held-out levels, ``--set eval.*`` options, an
``--exit``, ``--heldout=FILE``: the loss of a JSONL file's responses), caches every
run's numbers in ``<out>/<name>.json`` (a rerun evaluates only new runs), and writes
``<out>/<name>.md``: per group and measure the mean and 95% t-interval over seeds and the
paired difference to a baseline group.

  python -m jaxpost.sweep.evaluate runs/sweeps/token_priority/noise --levels=mul2x2 \\
      --baseline=ce --out=experiments/token_priority --name=noise_process
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from jaxpost.sweep import stats

MEASURES = ("accuracy", "trace_error_rate", "repeat_rate", "mean_tokens", "pass_k", "distinct")
HELDOUT_MEASURES = ("loss", "perplexity")  # --heldout: teacher-forced, not percentages


def done_cells(root: str) -> list[dict]:
  """The manifest's cells with status done (others are listed on stderr)."""
  with open(os.path.join(root, "manifest.json")) as f:
    cells = json.load(f)["cells"]
  for c in cells:
    if c.get("status") != "done":
      print(f"  not evaluated: {c['id']} ({c.get('status')})", file=sys.stderr)
  return [c for c in cells if c.get("status") == "done"]


def collect(
  root: str, measure: Callable[[str], dict[str, float]], cache: dict
) -> dict[str, dict[int, dict[str, float]]]:
  """{group: {seed: measure(workdir)}} over the done cells; ``cache`` keyed by workdir."""
  out: dict[str, dict[int, dict]] = {}
  for cell in done_cells(root):
    workdir = os.path.join(root, "runs", cell["id"])
    if workdir not in cache:
      cache[workdir] = measure(workdir)
      print(f"  {cell['id']}: {cache[workdir]}", file=sys.stderr)
    out.setdefault(cell["group"], {})[cell["seed"]] = cache[workdir]
  return out


def table(
  groups: dict[str, dict[int, dict[str, float]]],
  measures: list[tuple[str, float, int]],
  baseline: str | None,
) -> list[str]:
  """Markdown rows: per group, each (measure, scale, decimals) as mean [interval] and
  the paired difference to ``baseline`` (by seed)."""
  head = ["group"]
  for name, _, _ in measures:
    head += [name, f"Δ vs {baseline}"] if baseline else [name]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  base = groups.get(baseline, {}) if baseline else {}
  for group, seeds in groups.items():
    row = [group]
    for name, scale, p in measures:
      values = {s: m[name] * scale for s, m in seeds.items() if m.get(name) is not None}
      if not values:
        row += ["—", "—"] if baseline else ["—"]
        continue
      s = stats.summarize(list(values.values()))
      row.append(f"{s['mean']:.{p}f} [{s['low']:.{p}f}, {s['high']:.{p}f}]")
      if not baseline:
        continue
      ref = {k: m[name] * scale for k, m in base.items() if m.get(name) is not None}
      if group != baseline and set(values) & set(ref):
        d = stats.paired_difference(values, ref)
        row.append(f"{d['mean']:+.{p}f} [{d['low']:+.{p}f}, {d['high']:+.{p}f}]")
      else:
        row.append("—")
    lines.append("| " + " | ".join(row) + " |")
  return lines


def main(argv=None) -> int:
  from jaxpost.eval.__main__ import SPANS, evaluate_run, parse_options

  parser = argparse.ArgumentParser(prog="python -m jaxpost.sweep.evaluate")
  parser.add_argument("root")
  parser.add_argument("--levels", default="")
  parser.add_argument("--heldout", default="", help="a JSONL file scored teacher-forced")
  parser.add_argument("--heldout_span", default="response", choices=tuple(SPANS))
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
  parser.add_argument("--exit", type=int, default=0)
  parser.add_argument("--baseline", default="")
  parser.add_argument("--out", required=True)
  parser.add_argument("--name", default="evaluation")
  args = parser.parse_args(argv)
  options = parse_options(args.set, parser.error)
  levels = [x for x in args.levels.split(",") if x]
  if not levels and not args.heldout:
    parser.error("give --levels, --heldout or both")
  path = os.path.join(args.out, args.name + ".json")
  setting = {"levels": levels, "options": options, "exit": args.exit}
  if args.heldout:
    setting["heldout"], setting["heldout_span"] = args.heldout, args.heldout_span
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous.get("setting") == setting:
      cache = previous["runs"]

  def measure(workdir: str) -> dict[str, float]:
    results = evaluate_run(
      workdir, levels, options, args.exit, args.heldout, heldout_span=args.heldout_span
    )
    return {f"{k}/{level}": v for level, r in results.items() for k, v in r.items()}

  groups = collect(args.root, measure, cache)
  os.makedirs(args.out, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"root": args.root, "setting": setting, "runs": cache}, f, indent=1)
  lines = [
    f"# {args.root}: finished runs evaluated again",
    "",
    f"Levels {', '.join(levels) or 'none'}; options {options or 'none'}"
    + (f"; exit {args.exit}" if args.exit else "")
    + ". Mean [95% t-interval] over seeds"
    + (f"; Δ paired by seed against {args.baseline}." if args.baseline else "."),
    "",
  ]
  for level in levels:
    measures = [
      (f"{m}/{level}", 100.0 if m != "mean_tokens" and m != "distinct" else 1.0, 1)
      for m in MEASURES
      if any(r.get(f"{m}/{level}") is not None for r in cache.values())
    ]
    lines += [f"## {level}", "", *table(groups, measures, args.baseline or None), ""]
  if args.heldout:
    measures = [(f"{m}/heldout", 1.0, 3) for m in HELDOUT_MEASURES]
    title = f"## {args.heldout}, teacher-forced (nats per {args.heldout_span} token)"
    lines += [title, "", *table(groups, measures, args.baseline or None), ""]
  with open(os.path.join(args.out, args.name + ".md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
