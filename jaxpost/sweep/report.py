"""A sweep's results: every cell's metrics.jsonl -> results.md / .csv / .json and curve PNGs.

Reads ``<root>/manifest.json`` (written by the launcher) and, for each done cell,
``<root>/<workdir>/metrics.jsonl``. Each metric becomes one number per cell (a reduction
over its steps), then per group a mean over seeds with an interval and, against a baseline
group, a paired difference by seed. Nothing is dropped quietly: cells that did not finish,
and done cells that lack a metric, are listed with the reason.

A run that logs one metric per item (``detect/{detector}/auroc``: every detector of a
detection run) is reported as a matrix: the report block's ``"matrices"`` names such
patterns with ``{row}`` where the item goes; each gets a table of rows (items found in
the runs) x groups, and with ``"matrix_baseline"`` (a row) a table of each row's paired
difference from it, seed by seed within a group.

  python -m jaxpost.sweep.report ROOT [--metric eval/accuracy:max ...] [--baseline G]
      [--bootstrap] [--confidence 0.95] [--curve eval/accuracy ...] [--out DIR]

From a notebook: ``report = build(root); write(report, out_dir)``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
from functools import reduce

import numpy as np

from jaxpost.metrics import read_jsonl_metrics
from jaxpost.sweep import stats

DEFAULT_METRICS = ("eval/accuracy",)
CSV_COLUMNS = ("group", "metric", "n", "mean", "std", "low", "high")
CSV_COLUMNS += ("diff_mean", "diff_low", "diff_high", "values")
_PLAIN = ("final", "max", "min", "mean")
_WITH_ARG = ("step", "last")
_SPEC_HELP = "NAME or NAME:REDUCTION, REDUCTION one of final, max, min, mean, step=N, last=K"


class MissingMetric(ValueError):
  """A done cell lacks what a metric spec asks for; ``build`` lists the cell as missing."""


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """One number per cell: ``reduction`` (with ``arg`` for step=N / last=K) of ``name``."""

  name: str
  reduction: str = "final"
  arg: int | None = None

  @property
  def label(self) -> str:
    if self.reduction == "final":
      return self.name
    suffix = self.reduction if self.arg is None else f"{self.reduction}={self.arg}"
    return f"{self.name}:{suffix}"


def parse_spec(spec: str) -> MetricSpec:
  """``eval/accuracy``, ``eval/accuracy:max``, ``train/loss:last=5``, ... -> MetricSpec."""
  name, sep, reduction = spec.rpartition(":")
  if not sep:
    name, reduction = spec, "final"
  kind, eq, arg = reduction.partition("=")
  if name and kind in _PLAIN and not eq:
    return MetricSpec(name, kind)
  if name and kind in _WITH_ARG and eq:
    try:
      n = int(arg)
    except ValueError:
      n = -1
    if n >= (1 if kind == "last" else 0):
      return MetricSpec(name, kind, n)
    raise ValueError(f"bad metric spec {spec!r}: {kind}= needs a whole number, got {arg!r}")
  raise ValueError(f"bad metric spec {spec!r}: expected {_SPEC_HELP}")


def series(records: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
  """Ascending steps and the values of ``name`` there.

  A step may be spread over several lines (train and eval logged apart); they are merged
  and a later line wins. Non-finite values, which the writer stores as strings, are floats.
  """
  by_step = {int(r["step"]): float(r[name]) for r in records if name in r and "step" in r}
  steps = np.array(sorted(by_step), dtype=np.int64)
  return steps, np.array([by_step[s] for s in steps.tolist()], dtype=np.float64)


def reduce_metric(records: list[dict], spec: MetricSpec, cell: str = "?") -> float:
  """The cell's number for ``spec``; MissingMetric (naming ``cell``) when it is not there."""
  steps, values = series(records, spec.name)
  if steps.size == 0:
    raise MissingMetric(f"cell {cell}: no {spec.name!r} in metrics.jsonl")
  if spec.reduction == "step":
    hit = np.flatnonzero(steps == spec.arg)
    if hit.size == 0:
      raise MissingMetric(
        f"cell {cell}: {spec.name!r} not logged at step {spec.arg} (logged at {steps.tolist()})"
      )
    return float(values[hit[0]])
  if spec.reduction == "last":
    if values.size < spec.arg:
      raise MissingMetric(
        f"cell {cell}: {spec.label} needs {spec.arg} values of {spec.name!r}, has {values.size}"
      )
    return float(values[-spec.arg :].mean())
  reducers = {"final": lambda v: v[-1], "max": np.max, "min": np.min, "mean": np.mean}
  return float(reducers[spec.reduction](values))


@dataclasses.dataclass
class GroupStats:
  """One group x metric: summary over seeds, per-seed values, paired difference vs baseline."""

  group: str
  metric: str
  n: int
  mean: float
  std: float
  low: float
  high: float
  values: dict[int, float]
  diff: dict | None = None  # stats.paired_difference(group, baseline); None if not computed


@dataclasses.dataclass
class Report:
  name: str
  root: str
  metrics: list[str]
  groups: list[str]
  baseline: str | None
  method: str
  confidence: float
  scale: float
  unit: str
  results: dict[str, list[GroupStats]]  # metric label -> one entry per group, in order
  not_done: list[dict]  # id, group, seed, status, error (its last line), log
  missing: list[dict]  # id, group, seed, metric, reason
  curves: dict[str, dict[str, dict]]  # metric -> group -> seeds, steps, mean, low, high
  matrices: dict[str, Matrix] = dataclasses.field(default_factory=dict)  # pattern -> matrix


@dataclasses.dataclass
class Matrix:
  """A ``{row}`` pattern's metrics: per row, per group (in ``Report.groups`` order)."""

  pattern: str
  rows: list[str]  # the items found, in order of first appearance
  stats: dict[str, list[GroupStats]]  # row -> one entry per group
  baseline: str | None = None  # a row; diffs: row - baseline, paired by seed in a group
  diffs: dict[str, list[dict | None]] = dataclasses.field(default_factory=dict)


def load_manifest(root: str) -> dict:
  path = os.path.join(root, "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no manifest.json in {root!r}: not a sweep root?")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _load_cell(root: str, cell: dict) -> list[dict] | str:
  """A done cell's records, or why there are none (kept as a reason, not raised)."""
  path = os.path.join(root, cell["workdir"], "metrics.jsonl")
  if not os.path.exists(path):
    return f"cell {cell['id']}: no metrics.jsonl at {path}"
  try:
    return read_jsonl_metrics(path)
  except json.JSONDecodeError as e:
    return f"cell {cell['id']}: unreadable {path}: {e}"


def _last_line(text: str) -> str:
  # A log tail ends with the exception (a traceback's last line says what went wrong).
  return next((line.strip() for line in reversed((text or "").splitlines()) if line.strip()), "")


def _check_seeds(cells: list[dict]) -> None:
  """Values are keyed by seed within a group, so a repeated seed would overwrite silently."""
  seen = {}
  for c in cells:
    key = (c["group"], c["seed"])
    if key in seen:
      raise ValueError(f"cells {seen[key]} and {c['id']} share group {key[0]!r} seed {key[1]}")
    seen[key] = c["id"]


def _group_stats(label, groups, values, baseline, confidence, method) -> list[GroupStats]:
  out = []
  nan = math.nan
  for g in groups:
    v = values[g]
    s = stats.summarize(list(v.values()), confidence, method) if v else {}
    diff = None
    if baseline and g != baseline and set(v) & set(values[baseline]):
      diff = stats.paired_difference(v, values[baseline], confidence, method)
    s = {"n": 0, "mean": nan, "std": nan, "low": nan, "high": nan, **s}
    out.append(GroupStats(g, label, **s, values=v, diff=diff))
  return out


def _curves(names, groups, done, loaded, confidence, listed) -> tuple[dict, list[dict]]:
  """Per group, the mean over seeds (and a t band) at each step every such seed logged.

  Also returns the cells left out of a curve, except those ``listed`` (id, metric) already.
  """
  out, missing = {}, []
  for name in names:
    out[name] = {}
    for g in groups:
      seeds, per_seed = [], []
      for c in (c for c in done if c["group"] == g):
        records = loaded[c["id"]]
        steps, values = series(records if isinstance(records, list) else [], name)
        if steps.size:
          seeds.append(c["seed"])
          per_seed.append((steps, values))
        elif (c["id"], name) not in listed:
          why = records if isinstance(records, str) else f"no {name!r} in metrics.jsonl"
          missing.append({**_cell_key(c), "metric": name, "reason": f"{why} (curve)"})
      if not per_seed:
        continue
      common = reduce(np.intersect1d, [s for s, _ in per_seed])
      matrix = np.stack([v[np.isin(s, common)] for s, v in per_seed])
      band = [stats.t_interval(col, confidence) for col in matrix.T]
      out[name][g] = {
        "seeds": seeds,
        "steps": common.tolist(),
        "mean": matrix.mean(axis=0).tolist(),
        "low": [lo for lo, _ in band],
        "high": [hi for _, hi in band],
      }
  return out, missing


def _cell_key(c: dict) -> dict:
  return {"id": c["id"], "group": c["group"], "seed": c["seed"]}


def build(
  root: str,
  metrics: list[str] | None = None,
  baseline: str | None = None,
  method: str = "t",
  confidence: float = 0.95,
  curves: list[str] | None = None,
) -> Report:
  """Reads the sweep at ``root``. None arguments take the manifest's ``report`` block;
  ``baseline=""`` turns a manifest baseline off."""
  manifest = load_manifest(root)
  defaults = manifest.get("report") or {}
  specs = [parse_spec(s) for s in (metrics or defaults.get("metrics") or DEFAULT_METRICS)]
  curves = list(defaults.get("curves") or []) if curves is None else list(curves)
  cells = manifest["cells"]
  groups = list(dict.fromkeys(c["group"] for c in cells))
  baseline = defaults.get("baseline") if baseline is None else baseline or None
  if baseline is not None and baseline not in groups:
    raise ValueError(f"unknown baseline group {baseline!r}; known groups: {groups}")
  if method not in stats.METHODS:
    raise ValueError(f"unknown interval method {method!r}; expected one of {stats.METHODS}")
  _check_seeds(cells)

  done = [c for c in cells if c.get("status") == "done"]
  not_done = [
    {
      **_cell_key(c),
      "status": c.get("status", "pending"),
      "error": _last_line(c.get("error", "")),
      "log": c.get("log", ""),
    }
    for c in cells
    if c.get("status") != "done"
  ]
  loaded = {c["id"]: _load_cell(root, c) for c in done}
  missing, results = [], {}
  for spec in specs:
    values = {g: {} for g in groups}
    for c in done:
      records = loaded[c["id"]]
      try:
        if isinstance(records, str):
          raise MissingMetric(records)
        values[c["group"]][c["seed"]] = reduce_metric(records, spec, c["id"])
      except MissingMetric as e:
        missing.append({**_cell_key(c), "metric": spec.label, "reason": str(e)})
    results[spec.label] = _group_stats(spec.label, groups, values, baseline, confidence, method)
  listed = {(m["id"], m["metric"]) for m in missing}
  curve_data, curve_missing = _curves(curves, groups, done, loaded, confidence, listed)
  matrices = {
    pattern: _matrix(pattern, defaults.get("matrix_baseline"), groups, done, loaded, confidence,
                     method)
    for pattern in defaults.get("matrices") or []
  }  # fmt: skip
  return Report(
    name=manifest.get("name", os.path.basename(os.path.abspath(root))),
    root=os.fspath(root),
    metrics=[s.label for s in specs],
    groups=groups,
    baseline=baseline,
    method=method,
    confidence=confidence,
    scale=float(defaults.get("scale", 1.0)),
    unit=str(defaults.get("unit", "")),
    results=results,
    not_done=not_done,
    missing=missing + curve_missing,
    curves=curve_data,
    matrices=matrices,
  )


ROW_TOKEN = "{row}"


def _matrix(pattern, baseline, groups, done, loaded, confidence, method) -> Matrix:
  """The rows ``pattern`` matches in the done cells' metrics, each reduced per cell as
  a metric spec (``detect/{row}/auroc:max`` works). A row a cell lacks is absent from
  that cell, not an error: runs may score different items."""
  spec = parse_spec(pattern)
  if spec.name.count(ROW_TOKEN) != 1:
    raise ValueError(f"matrix pattern {pattern!r} needs {ROW_TOKEN} exactly once")
  head, tail = spec.name.split(ROW_TOKEN)
  found = re.compile(re.escape(head) + "(.+?)" + re.escape(tail) + "$")
  rows: dict[str, None] = {}
  for c in done:
    records = loaded[c["id"]]
    for record in records if isinstance(records, list) else []:
      for key in record:
        if m := found.match(key):
          rows.setdefault(m.group(1))
  values = {row: {g: {} for g in groups} for row in rows}
  for row in rows:
    row_spec = dataclasses.replace(spec, name=head + row + tail)
    for c in done:
      records = loaded[c["id"]]
      try:
        values[row][c["group"]][c["seed"]] = reduce_metric(records, row_spec, c["id"])
      except (MissingMetric, TypeError):  # TypeError: an unloadable cell (a reason string)
        continue
  stats_by_row = {
    row: _group_stats(head + row + tail, groups, values[row], None, confidence, method)
    for row in rows
  }
  if baseline is not None and baseline not in rows:
    raise ValueError(f"matrix_baseline {baseline!r} is not a row of {pattern!r}: {list(rows)}")
  diffs = {}
  if baseline is not None:
    for row in rows:
      if row == baseline:
        continue
      diffs[row] = [
        stats.paired_difference(values[row][g], values[baseline][g], confidence, method)
        if set(values[row][g]) & set(values[baseline][g])
        else None
        for g in groups
      ]
  return Matrix(pattern, list(rows), stats_by_row, baseline, diffs)


def _fmt(x: float | None, scale: float = 1.0, sign: str = "", digits: int = 4) -> str:
  return "—" if x is None or math.isnan(x) else f"{x * scale:{sign}.{digits}g}"


def _diff_text(r: GroupStats, report: Report) -> str:
  if r.group == report.baseline:
    return "baseline"
  if r.diff is None:
    return "— (no common seed)"
  d, s = r.diff, report.scale
  return f"{_fmt(d['mean'], s, '+')} [{_fmt(d['low'], s)}, {_fmt(d['high'], s)}]"


def _md_row(cells) -> str:
  return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _md_table(head: list[str]) -> list[str]:
  return [_md_row(head), "|---" * len(head) + "|"]


def to_markdown(report: Report) -> str:
  """results.md: the method line, one table per metric, then what is not in the tables."""
  pct = f"{report.confidence * 100:g}%"
  boot = f"percentile bootstrap ({stats.N_RESAMPLES} resamples)"
  how = "Student t" if report.method == "t" else boot
  lines = [f"# {report.name}", "", f"Intervals: {pct} {how} interval of the mean over seeds."]
  if report.baseline:
    lines[-1] += f" Differences are paired by seed: group − {report.baseline}."
  head = ["group", "n", "mean ± std", f"{pct} interval", "per-seed values"]
  if report.baseline:
    head.append(f"difference vs {report.baseline} [{pct} interval]")
  for metric, rows in report.results.items():
    lines += ["", f"## {metric}" + (f" ({report.unit})" if report.unit else ""), ""]
    lines += _md_table(head)
    for r in rows:
      s = report.scale
      seeds = ", ".join(f"{k}: {_fmt(v, s)}" for k, v in r.values.items()) or "—"
      row = [r.group, str(r.n), f"{_fmt(r.mean, s)} ± {_fmt(r.std, s)}"]
      row += [f"[{_fmt(r.low, s)}, {_fmt(r.high, s)}]", seeds]
      if report.baseline:
        row.append(_diff_text(r, report))
      lines.append(_md_row(row))
  for matrix in report.matrices.values():
    lines += _matrix_markdown(matrix, report, pct)
  if report.not_done or report.missing:
    lines += ["", "## Not in the tables", "", *_md_table(["cell", "status", "metric", "detail"])]
    for c in report.not_done:
      detail = c["error"] + (f" (log: {c['log']})" if c["log"] else "")
      lines.append(_md_row([c["id"], c["status"], "all", detail or "—"]))
    for m in report.missing:
      lines.append(_md_row([m["id"], "done, missing", m["metric"], m["reason"]]))
  return "\n".join(lines) + "\n"


def _matrix_markdown(matrix: Matrix, report: Report, pct: str) -> list[str]:
  """Groups down, rows across: mean [interval]; then each row minus the baseline row."""
  s = report.scale
  lines = ["", f"## {matrix.pattern}: mean [{pct} interval] over seeds", ""]
  lines += _md_table(["group", *matrix.rows])
  for i, g in enumerate(report.groups):
    cells = []
    for row in matrix.rows:
      r = matrix.stats[row][i]
      lo, hi = _fmt(r.low, s, digits=3), _fmt(r.high, s, digits=3)
      cells.append("—" if r.n == 0 else f"{_fmt(r.mean, s, digits=3)} [{lo}, {hi}]")
    lines.append(_md_row([g, *cells]))
  if matrix.baseline is None:
    return lines
  others = [row for row in matrix.rows if row != matrix.baseline]
  lines += ["", f"### {matrix.pattern}: row − {matrix.baseline}, paired by seed [{pct} interval]",
            ""]  # fmt: skip
  lines += _md_table(["group", *others])
  for i, g in enumerate(report.groups):
    cells = []
    for row in others:
      d = matrix.diffs[row][i]
      text = "—"
      if d is not None:
        lo, hi = _fmt(d["low"], s, digits=3), _fmt(d["high"], s, digits=3)
        text = f"{_fmt(d['mean'], s, '+', digits=3)} [{lo}, {hi}]"
      cells.append(text)
    lines.append(_md_row([g, *cells]))
  return lines


def to_csv(report: Report) -> str:
  """results.csv: one row per group x metric, unscaled; diff_* empty without a difference."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(CSV_COLUMNS)
  matrix_rows = [[r for r in rows if r.n] for m in report.matrices.values()
                 for rows in m.stats.values()]  # fmt: skip
  for rows in [*report.results.values(), *matrix_rows]:
    for r in rows:
      d = [r.diff[k] for k in ("mean", "low", "high")] if r.diff else ["", "", ""]
      seeds = ";".join(f"{k}:{v!r}" for k, v in r.values.items())
      w.writerow([r.group, r.metric, r.n, r.mean, r.std, r.low, r.high, *d, seeds])
  return buf.getvalue()


def _jsonable(x):
  """NaN/inf become null: JSON has no such numbers, and null is what strict readers accept."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_jsonable(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def to_json(report: Report) -> str:
  return json.dumps(_jsonable(dataclasses.asdict(report)), indent=1) + "\n"


MAX_LINES_PER_PANEL = 6  # more groups than this: one small panel per group


def plot_curve(report: Report, name: str, path: str) -> str:
  """Mean over seeds against step with a shaded t band where a group has >= 2 seeds.

  Up to ``MAX_LINES_PER_PANEL`` groups share one plot; more get one panel each (same
  axes), with the baseline group's mean dashed in every panel for reference.
  """
  from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

  curves = report.curves.get(name, {})
  ylabel = name + (f" ({report.unit})" if report.unit else "")
  title = f"{report.name}: mean over seeds, {report.confidence * 100:g}% t band"
  if len(curves) <= MAX_LINES_PER_PANEL:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for g, c in curves.items():
      _draw(ax, g, c, report.scale)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if ax.lines:
      ax.legend()
  else:
    cols = 4
    rows = -(-len(curves) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows + 0.6))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    base = curves.get(report.baseline) if report.baseline else None
    for ax, (g, c) in zip(axes, curves.items(), strict=False):
      if base is not None and g != report.baseline:
        means = np.asarray(base["mean"]) * report.scale
        ax.plot(base["steps"], means, "--", color="0.5", lw=1, label=report.baseline)
      _draw(ax, g, c, report.scale, color="C0")
      ax.set_title(f"{g} (n={len(c['seeds'])})", fontsize=9)
    for ax in axes[len(curves) :]:
      ax.set_visible(False)
    for ax in axes[::cols]:
      ax.set_ylabel(ylabel, fontsize=8)
    for ax in axes[max(0, len(curves) - cols) : len(curves)]:  # the lowest panel of each column
      ax.xaxis.set_tick_params(labelbottom=True)
      ax.set_xlabel("step", fontsize=8)
    dashed = f"; dashed: {report.baseline}" if base is not None else ""
    fig.suptitle(title + dashed)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def _draw(ax, group: str, c: dict, scale: float, color=None) -> None:
  steps = c["steps"]
  (line,) = ax.plot(
    steps,
    np.asarray(c["mean"]) * scale,
    marker="o",
    ms=3,
    color=color,
    label=f"{group} (n={len(c['seeds'])})",
  )
  if len(c["seeds"]) >= 2:
    low, high = np.asarray(c["low"]) * scale, np.asarray(c["high"]) * scale
    ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)


def plot_matrix(report: Report, pattern: str, path: str) -> str:
  """A heatmap of a matrix's means (groups down, rows across), each cell annotated."""
  from matplotlib.figure import Figure

  matrix = report.matrices[pattern]
  values = (
    np.array(
      [[matrix.stats[row][i].mean for row in matrix.rows] for i in range(len(report.groups))],
      dtype=np.float64,
    )
    * report.scale
  )
  fig = Figure(figsize=(1.0 + 0.85 * len(matrix.rows), 1.2 + 0.42 * len(report.groups)))
  ax = fig.add_subplot()
  image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
  finite = values[np.isfinite(values)]
  middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
  for (i, j), v in np.ndenumerate(values):
    if np.isfinite(v):
      ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
              color="black" if v > middle else "white")  # fmt: skip
  ax.set_xticks(range(len(matrix.rows)), matrix.rows, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(len(report.groups)), report.groups, fontsize=8)
  n = {len(r.values) for rows in matrix.stats.values() for r in rows if r.n}
  ax.set_title(f"{report.name}: {pattern}, mean over seeds (n={'/'.join(map(str, sorted(n)))})",
               fontsize=9)  # fmt: skip
  fig.colorbar(image, ax=ax, shrink=0.8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def write(report: Report, out_dir: str) -> list[str]:
  """Writes results.md/.csv/.json and curve_<metric>.png into ``out_dir``; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for fname, text in (
    ("results.md", to_markdown(report)),
    ("results.csv", to_csv(report)),
    ("results.json", to_json(report)),
  ):
    paths.append(os.path.join(out_dir, fname))
    with open(paths[-1], "w", encoding="utf-8") as f:
      f.write(text)
  for name in report.curves:
    png = os.path.join(out_dir, f"curve_{name.replace('/', '_')}.png")
    paths.append(plot_curve(report, name, png))
  for pattern in report.matrices:
    png = os.path.join(out_dir, f"matrix_{_slug(pattern)}.png")
    paths.append(plot_matrix(report, pattern, png))
  return paths


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m jaxpost.sweep.report", description=__doc__.split("\n")[0]
  )
  p.add_argument("root", help="the sweep root (holds manifest.json)")
  p.add_argument("--metric", action="append", dest="metrics", metavar="SPEC", help=_SPEC_HELP)
  p.add_argument("--baseline", help="group to pair the others against ('' for none)")
  p.add_argument("--bootstrap", action="store_true", help="percentile bootstrap, not t")
  p.add_argument("--confidence", type=float, default=0.95)
  p.add_argument("--curve", action="append", dest="curves", metavar="METRIC")
  p.add_argument("--out", help="output folder (default: ROOT)")
  args = p.parse_args(argv)
  method = "bootstrap" if args.bootstrap else "t"
  try:
    report = build(args.root, args.metrics, args.baseline, method, args.confidence, args.curves)
  except (ValueError, FileNotFoundError) as e:
    p.error(str(e))
  print(to_markdown(report))
  for path in write(report, args.out or args.root):
    print("wrote", path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
