"""jaxpost.sweep.report on a hand-made sweep tree: every number against a hand computation."""

import csv
import json
import math

import matplotlib.image
import numpy as np
import pytest
from scipy import stats as sps

from jaxpost.sweep import report as rp
from jaxpost.sweep import stats

# eval/accuracy by (group, seed) and step; big/1 is done but never evaluated, big/2 failed.
ACC = {
  ("rl", 0): {20: 0.50, 40: 0.61},
  ("sft_more", 0): {20: 0.45, 40: 0.55},
  ("rl", 1): {20: 0.52, 40: 0.59},
  ("big", 0): {20: 0.40, 40: 0.70},
  ("sft_more", 1): {20: 0.47, 40: 0.56},
  ("rl", 2): {20: 0.48, 40: 0.66},
  ("sft_more", 2): {20: 0.44, 30: 0.50, 40: 0.58},
  ("big", 1): {},
  ("big", 2): None,
}
FINAL = {g: [ACC[g, s][40] for s in range(3)] for g in ("rl", "sft_more")}
ERROR = "step 12\nTraceback (most recent call last):\n  ...\nRuntimeError: out of memory\n"


def _loss(seed: int, step: int) -> float:
  return 2.0 - 0.03 * step + 0.01 * seed


def _records(acc: dict[int, float], seed: int) -> list[dict]:
  """Train lines every 10 steps, eval lines apart (step 40 on two lines), out of order once."""
  lines = [{"step": s, "train/loss": _loss(seed, s), "train/lr": 1e-5} for s in range(0, 50, 10)]
  lines += [{"step": s, "eval/accuracy": v} for s, v in sorted(acc.items(), reverse=True)]
  return lines


def _make_tree(root, report_block=None):
  cells = []
  for (group, seed), acc in ACC.items():
    cell = {
      "id": f"{group}/seed{seed}",
      "group": group,
      "seed": seed,
      "config": "configs/grpo.py:quickstart",
      "overrides": {"train.init_from": f"zoo:rl-start@{seed}"},
      "config_hash": "ab12cd34ef56",
      "workdir": f"runs/{group}/seed{seed}",
      "log": f"logs/{group}.seed{seed}.log",
      "status": "done" if acc is not None else "failed",
      "returncode": 0 if acc is not None else 1,
      "wall_s": 612.3,
      "attempts": 1,
      "commit": "dc2c9b2",
      "started": "2026-12-03T19:00:00",
      "finished": "2026-12-03T19:10:12",
      "error": "" if acc is not None else ERROR,
    }
    cells.append(cell)
    workdir = root / cell["workdir"]
    workdir.mkdir(parents=True)
    if acc is not None:
      text = "".join(json.dumps(r) + "\n" for r in _records(acc, seed))
      (workdir / "metrics.jsonl").write_text(text)
  block = {
    "metrics": ["eval/accuracy"],
    "baseline": "sft_more",
    "curves": ["eval/accuracy"],
    "scale": 100.0,
    "unit": "%",
  }
  manifest = {"name": "grpo_demo", "report": block if report_block is None else report_block}
  (root / "manifest.json").write_text(json.dumps({**manifest, "cells": cells}))
  return root


@pytest.fixture
def tree(tmp_path):
  return _make_tree(tmp_path / "sweep")


def _hand(xs, confidence=0.95):
  """mean, std (n-1), t interval, written out."""
  n = len(xs)
  mean = sum(xs) / n
  std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
  half = sps.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
  return mean, std, mean - half, mean + half


# ---- metric specs and reductions ------------------------------------------------------------


@pytest.mark.parametrize(
  "spec,want,label",
  [
    ("eval/accuracy", rp.MetricSpec("eval/accuracy"), "eval/accuracy"),
    ("eval/accuracy:final", rp.MetricSpec("eval/accuracy"), "eval/accuracy"),
    ("train/loss:min", rp.MetricSpec("train/loss", "min"), "train/loss:min"),
    ("a:b/c:step=40", rp.MetricSpec("a:b/c", "step", 40), "a:b/c:step=40"),
    ("train/loss:last=5", rp.MetricSpec("train/loss", "last", 5), "train/loss:last=5"),
  ],
)
def test_parse_spec(spec, want, label):
  assert rp.parse_spec(spec) == want and want.label == label


@pytest.mark.parametrize(
  "spec,match",
  [
    ("eval/accuracy:median", "expected NAME or NAME:REDUCTION"),
    (":max", "expected NAME"),
    ("eval/accuracy:max=3", "expected NAME"),
    ("eval/accuracy:step", "expected NAME"),
    ("eval/accuracy:step=x", "step= needs a whole number, got 'x'"),
    ("eval/accuracy:last=0", "last= needs a whole number"),
  ],
)
def test_parse_spec_errors(spec, match):
  with pytest.raises(ValueError, match=f"bad metric spec '{spec}'.*{match}"):
    rp.parse_spec(spec)


RECORDS = [
  {"step": 0, "train/loss": 2.0},
  {"step": 10, "train/loss": 1.5},
  {"step": 30, "train/loss": 1.2},
  {"step": 20, "train/loss": 1.7},  # out of order
  {"step": 10, "eval/accuracy": 0.3},
  {"step": 30, "eval/accuracy": 0.5},
  {"step": 40, "train/loss": 1.4},
  {"step": 40, "train/loss": 1.0, "eval/reward": "nan"},  # a later line for step 40 wins
]


@pytest.mark.parametrize(
  "spec,want",
  [
    ("train/loss", 1.0),
    ("train/loss:max", 2.0),
    ("train/loss:min", 1.0),
    ("train/loss:mean", (2.0 + 1.5 + 1.7 + 1.2 + 1.0) / 5),
    ("train/loss:step=20", 1.7),
    ("train/loss:last=2", (1.2 + 1.0) / 2),
    ("eval/accuracy", 0.5),  # the largest step holding it, not the largest step
    ("eval/accuracy:mean", 0.4),
    ("eval/accuracy:last=2", 0.4),
  ],
)
def test_reductions(spec, want):
  assert rp.reduce_metric(RECORDS, rp.parse_spec(spec), "rl/seed0") == pytest.approx(want)


def test_reductions_missing_name_the_cell():
  assert math.isnan(rp.reduce_metric(RECORDS, rp.parse_spec("eval/reward"), "c"))
  cases = [
    ("eval/accuracy:step=40", r"cell rl/seed0: 'eval/accuracy' not logged at step 40 \(.*10, 30"),
    ("eval/accuracy:last=3", "cell rl/seed0: eval/accuracy:last=3 needs 3 values.*has 2"),
    ("eval/bleu", "cell rl/seed0: no 'eval/bleu' in metrics.jsonl"),
  ]
  for spec, match in cases:
    with pytest.raises(rp.MissingMetric, match=match):
      rp.reduce_metric(RECORDS, rp.parse_spec(spec), "rl/seed0")


# ---- build ----------------------------------------------------------------------------------


def test_build_numbers(tree):
  r = rp.build(tree)
  assert (r.name, r.metrics, r.baseline, r.scale, r.unit) == (
    "grpo_demo",
    ["eval/accuracy"],
    "sft_more",
    100.0,
    "%",
  )
  assert r.groups == ["rl", "sft_more", "big"]  # order of first appearance
  rows = {g.group: g for g in r.results["eval/accuracy"]}
  assert list(rows) == r.groups

  assert rows["rl"].mean == pytest.approx(0.62) and rows["rl"].std == pytest.approx(0.0013**0.5)
  for g in ("rl", "sft_more"):
    mean, std, low, high = _hand(FINAL[g])
    row = rows[g]
    assert row.n == 3 and row.values == dict(enumerate(FINAL[g]))
    assert (row.mean, row.std, row.low, row.high) == pytest.approx((mean, std, low, high))

  diff = rows["rl"].diff  # 0.06, 0.03, 0.08
  assert diff["seeds"] == [0, 1, 2] and diff["n"] == 3
  mean, std, low, high = _hand([0.06, 0.03, 0.08])
  assert mean == pytest.approx(0.17 / 3) and std == pytest.approx((0.0019 / 3) ** 0.5)
  assert (diff["mean"], diff["std"], diff["low"], diff["high"]) == pytest.approx(
    (mean, std, low, high)
  )
  assert rows["sft_more"].diff is None

  big = rows["big"]  # seed 1 missing the metric, seed 2 failed: one value, no interval
  assert big.n == 1 and big.values == {0: 0.70} and big.mean == 0.70
  assert math.isnan(big.std) and math.isnan(big.low) and math.isnan(big.high)
  assert big.diff["seeds"] == [0] and big.diff["mean"] == pytest.approx(0.15)
  assert math.isnan(big.diff["low"])

  assert r.not_done == [
    {
      "id": "big/seed2",
      "group": "big",
      "seed": 2,
      "status": "failed",
      "error": "RuntimeError: out of memory",
      "log": "logs/big.seed2.log",
    }
  ]
  assert r.missing == [
    {
      "id": "big/seed1",
      "group": "big",
      "seed": 1,
      "metric": "eval/accuracy",
      "reason": "cell big/seed1: no 'eval/accuracy' in metrics.jsonl",
    }
  ]  # listed once, though the curve of eval/accuracy leaves it out too


def test_build_curves(tree):
  curves = rp.build(tree).curves["eval/accuracy"]
  assert list(curves) == ["rl", "sft_more", "big"]
  rl = curves["rl"]
  assert rl["seeds"] == [0, 1, 2] and rl["steps"] == [20, 40]
  assert rl["mean"] == pytest.approx([0.5, 0.62])
  _, _, low, high = _hand([0.50, 0.52, 0.48])
  assert (rl["low"][0], rl["high"][0]) == pytest.approx((low, high))
  assert curves["sft_more"]["steps"] == [20, 40]  # step 30 is logged by one seed only
  big = curves["big"]
  assert big["seeds"] == [0] and big["mean"] == pytest.approx([0.40, 0.70])
  assert all(math.isnan(x) for x in big["low"] + big["high"])


def test_build_arguments_override_manifest(tree):
  r = rp.build(
    tree, ["eval/accuracy:step=30", "train/loss:min"], baseline="", curves=["train/loss"]
  )
  assert r.baseline is None and r.metrics == ["eval/accuracy:step=30", "train/loss:min"]
  at30 = {g.group: g for g in r.results["eval/accuracy:step=30"]}
  assert at30["sft_more"].values == {2: 0.50} and at30["rl"].n == 0 and math.isnan(at30["rl"].mean)
  missing = [m for m in r.missing if m["metric"] == "eval/accuracy:step=30"]
  assert len(missing) == 7  # every done cell but sft_more/seed2: none dropped silently
  assert "cell rl/seed0: 'eval/accuracy' not logged at step 30" in missing[0]["reason"]
  loss = {g.group: g for g in r.results["train/loss:min"]}
  assert loss["big"].values == pytest.approx({0: _loss(0, 40), 1: _loss(1, 40)})
  assert all(g.diff is None for g in r.results["train/loss:min"])
  assert r.curves["train/loss"]["big"]["seeds"] == [0, 1]
  assert r.curves["train/loss"]["rl"]["steps"] == [0, 10, 20, 30, 40]


def test_build_defaults_without_report_block(tmp_path):
  r = rp.build(_make_tree(tmp_path / "s", report_block={}))
  assert r.metrics == ["eval/accuracy"] and r.baseline is None and r.curves == {}
  assert (r.scale, r.unit) == (1.0, "")


def test_build_bootstrap(tree):
  r = rp.build(tree, method="bootstrap", confidence=0.9)
  rl = r.results["eval/accuracy"][0]
  assert (rl.low, rl.high) == stats.bootstrap_interval(FINAL["rl"], 0.9)
  want = stats.bootstrap_interval([0.06, 0.03, 0.08], 0.9)
  assert (rl.diff["low"], rl.diff["high"]) == pytest.approx(want)


def test_build_errors(tree, tmp_path):
  with pytest.raises(
    ValueError, match=r"unknown baseline group 'nope'.*\['rl', 'sft_more', 'big'\]"
  ):
    rp.build(tree, baseline="nope")
  with pytest.raises(ValueError, match="bad metric spec 'eval/accuracy:median'"):
    rp.build(tree, metrics=["eval/accuracy:median"])
  with pytest.raises(ValueError, match="unknown interval method"):
    rp.build(tree, method="bca")
  with pytest.raises(FileNotFoundError, match="no manifest.json"):
    rp.build(tmp_path / "nowhere")
  manifest = json.loads((tree / "manifest.json").read_text())
  manifest["cells"][2]["seed"] = 0  # rl/seed1 now claims seed 0 as well
  (tree / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="rl/seed0 and rl/seed1 share group 'rl' seed 0"):
    rp.build(tree)


def test_unreadable_metrics_are_listed(tree):
  (tree / "runs/rl/seed1/metrics.jsonl").write_text('{"step": 1, "eval/acc')
  (tree / "runs/rl/seed2/metrics.jsonl").unlink()
  r = rp.build(tree)
  reasons = {m["id"]: m["reason"] for m in r.missing}
  assert "unreadable" in reasons["rl/seed1"] and "no metrics.jsonl at" in reasons["rl/seed2"]
  assert r.results["eval/accuracy"][0].values == {0: 0.61}


# ---- write / CLI ----------------------------------------------------------------------------


def _fmt(x):
  return f"{x * 100:.4g}"


def test_write_markdown(tree, tmp_path):
  r = rp.build(tree)
  paths = rp.write(r, tmp_path / "out")
  names = ["results.md", "results.csv", "results.json", "curve_eval_accuracy.png"]
  assert paths == [str(tmp_path / "out" / n) for n in names]
  md = (tmp_path / "out/results.md").read_text()
  assert md == rp.to_markdown(r)
  assert "Intervals: 95% Student t interval of the mean over seeds." in md
  assert "paired by seed: group − sft_more" in md
  assert "\n## eval/accuracy (%)\n" in md
  head = "| group | n | mean ± std | 95% interval | per-seed values "
  assert head + "| difference vs sft_more [95% interval] |" in md
  mean, std, low, high = _hand(FINAL["rl"])
  dmean, _, dlow, dhigh = _hand([0.06, 0.03, 0.08])
  rl_row = (
    f"| rl | 3 | {_fmt(mean)} ± {_fmt(std)} | [{_fmt(low)}, {_fmt(high)}] | 0: 61, 1: 59, 2: 66 "
    f"| {dmean * 100:+.4g} [{_fmt(dlow)}, {_fmt(dhigh)}] |"
  )
  assert rl_row in md
  mean, std, low, high = _hand(FINAL["sft_more"])
  assert f"| sft_more | 3 | {_fmt(mean)} ± {_fmt(std)} | [{_fmt(low)}, {_fmt(high)}]" in md
  assert "| 0: 55, 1: 56, 2: 58 | baseline |" in md
  assert "| big | 1 | 70 ± — | [—, —] | 0: 70 | +15 [—, —] |" in md
  assert (
    "| big/seed2 | failed | all | RuntimeError: out of memory (log: logs/big.seed2.log) |" in md
  )
  assert "| big/seed1 | done, missing | eval/accuracy | cell big/seed1: no 'eval/accuracy'" in md


def test_write_csv_json_png(tree, tmp_path):
  r = rp.build(tree)
  rp.write(r, tmp_path)
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(rp.CSV_COLUMNS)
  assert [(row["group"], row["metric"]) for row in rows] == [
    (g, "eval/accuracy") for g in ("rl", "sft_more", "big")
  ]
  rl, sft, big = rows
  mean, std, low, high = _hand(FINAL["rl"])
  got = [float(rl[k]) for k in ("mean", "std", "low", "high")]
  assert rl["n"] == "3" and got == pytest.approx([mean, std, low, high])  # unscaled
  assert float(rl["diff_mean"]) == pytest.approx(0.17 / 3)
  assert rl["values"] == "0:0.61;1:0.59;2:0.66"
  assert sft["diff_mean"] == sft["diff_low"] == sft["diff_high"] == ""
  assert big["std"] == "nan" and big["values"] == "0:0.7"

  data = json.loads((tmp_path / "results.json").read_text())
  assert data["baseline"] == "sft_more" and data["scale"] == 100.0
  jrl, _, jbig = data["results"]["eval/accuracy"]
  assert jrl["values"] == {"0": 0.61, "1": 0.59, "2": 0.66}
  assert jrl["diff"]["seeds"] == [0, 1, 2] and jrl["high"] == pytest.approx(high)
  assert jbig["std"] is None and jbig["low"] is None  # NaN -> null
  assert data["not_done"][0]["status"] == "failed" and data["missing"][0]["id"] == "big/seed1"
  assert data["curves"]["eval/accuracy"]["rl"]["steps"] == [20, 40]

  png = tmp_path / "curve_eval_accuracy.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  image = matplotlib.image.imread(png)
  assert image.ndim == 3 and image.shape[0] > 100 and np.ptp(image) > 0


def test_cli(tree, tmp_path, capsys):
  out = tmp_path / "out"
  argv = [str(tree), "--metric", "eval/accuracy:max", "--metric", "train/loss:last=2"]
  argv += ["--baseline", "rl", "--bootstrap", "--confidence", "0.9", "--curve", "train/loss"]
  assert rp.main(argv + ["--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "Intervals: 90% percentile bootstrap (10000 resamples) interval" in printed
  assert "## eval/accuracy:max" in printed and "## train/loss:last=2" in printed
  assert "difference vs rl [90% interval]" in printed
  assert f"wrote {out / 'curve_train_loss.png'}" in printed
  assert not (out / "curve_eval_accuracy.png").exists()  # --curve replaces the manifest's
  with open(out / "results.csv", newline="") as f:
    rows = {(row["group"], row["metric"]): row for row in csv.DictReader(f)}
  sft = rows["sft_more", "eval/accuracy:max"]
  assert (float(sft["low"]), float(sft["high"])) == stats.bootstrap_interval(FINAL["sft_more"], 0.9)
  loss = rows["rl", "train/loss:last=2"]
  assert float(loss["mean"]) == pytest.approx(
    np.mean([(_loss(s, 30) + _loss(s, 40)) / 2 for s in range(3)])
  )

  assert rp.main([str(tree)]) == 0  # defaults from the manifest, written into ROOT
  assert (tree / "results.md").exists() and (tree / "curve_eval_accuracy.png").exists()


def test_cli_errors(tree, capsys):
  with pytest.raises(SystemExit) as e:
    rp.main([str(tree), "--baseline", "nope"])
  assert e.value.code == 2
  assert "unknown baseline group 'nope'; known groups" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    rp.main([str(tree), "--metric", "eval/accuracy:p90"])
  assert "bad metric spec 'eval/accuracy:p90'" in capsys.readouterr().err


def test_many_groups_get_one_panel_each(tree, tmp_path, monkeypatch):
  """Past MAX_LINES_PER_PANEL groups the curve is a grid of panels (4 per row), each group
  alone with the baseline dashed, instead of one plot of overlapping bands."""
  r = rp.build(tree)
  single = matplotlib.image.imread(rp.plot_curve(r, "eval/accuracy", str(tmp_path / "a.png")))
  monkeypatch.setattr(rp, "MAX_LINES_PER_PANEL", 2)
  panels = matplotlib.image.imread(rp.plot_curve(r, "eval/accuracy", str(tmp_path / "b.png")))
  assert single.shape[:2] == (4 * 120, 6 * 120)  # figsize x dpi
  assert panels.shape[:2] == (int((2.4 + 0.6) * 120), int(4 * 3.2 * 120))  # 3 groups: 1 row


# ---- matrices: one metric per item (a detection run's detectors) ----------------------------

AUROC = {  # (group, seed) -> {detector: auroc}; the ppl row is missing from one cell
  ("in_dist", 0): {"flag": 0.74, "ppl": 0.71, "probe": 0.60},
  ("in_dist", 1): {"flag": 0.72, "ppl": 0.72, "probe": 0.58},
  ("in_dist", 2): {"flag": 0.75, "ppl": 0.70, "probe": 0.61},
  ("transfer", 0): {"flag": 0.60, "ppl": 0.66},
  ("transfer", 1): {"flag": 0.62, "ppl": 0.65},
  ("transfer", 2): {"flag": 0.58},
}


def _detect_tree(root, block):
  cells = []
  for (group, seed), row in AUROC.items():
    workdir = root / "runs" / group / f"seed{seed}"
    workdir.mkdir(parents=True)
    record = {"step": 0, **{f"detect/{k}/auroc": v for k, v in row.items()}, "other": 1.0}
    (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    cells.append({"id": f"{group}/seed{seed}", "group": group, "seed": seed, "status": "done",
                  "workdir": f"runs/{group}/seed{seed}"})  # fmt: skip
  (root / "manifest.json").write_text(json.dumps({"name": "det", "report": block, "cells": cells}))
  return root


def test_matrix_rows_groups_and_paired_differences_from_a_baseline_row(tmp_path):
  block = {"metrics": ["detect/flag/auroc"], "matrices": ["detect/{row}/auroc"],
           "matrix_baseline": "flag"}  # fmt: skip
  r = rp.build(_detect_tree(tmp_path, block))
  m = r.matrices["detect/{row}/auroc"]
  assert m.rows == ["flag", "ppl", "probe"] and m.baseline == "flag"
  flag_in, flag_tr = m.stats["flag"]
  mean, std, low, high = _hand([0.74, 0.72, 0.75])
  assert (flag_in.mean, flag_in.low, flag_in.high) == pytest.approx((mean, low, high))
  ppl_tr = m.stats["ppl"][1]
  assert ppl_tr.n == 2 and ppl_tr.values == {0: 0.66, 1: 0.65}  # seed 2 lacks it: absent
  assert m.stats["probe"][1].n == 0  # no transfer cell has a probe
  # ppl - flag, paired by seed: in_dist -0.03, 0.00, -0.05; transfer (seeds 0, 1) +0.06, +0.03
  d_in, d_tr = m.diffs["ppl"]
  mean, std, low, high = _hand([-0.03, 0.0, -0.05])
  assert (d_in["mean"], d_in["low"], d_in["high"]) == pytest.approx((mean, low, high))
  assert d_tr["seeds"] == [0, 1] and d_tr["mean"] == pytest.approx(0.045)
  assert m.diffs["probe"][1] is None  # nothing to pair
  md = rp.to_markdown(r)
  assert "## detect/{row}/auroc: mean [95% interval] over seeds" in md
  assert "| group | flag | ppl | probe |" in md and "| transfer | 0.6 [" in md
  assert "row − flag, paired by seed" in md and "| group | ppl | probe |" in md
  rows = list(csv.DictReader(rp.to_csv(r).splitlines()))
  assert {"detect/ppl/auroc", "detect/probe/auroc"} <= {x["metric"] for x in rows}
  assert not [x for x in rows if x["metric"] == "detect/probe/auroc" and x["group"] == "transfer"]
  assert json.loads(rp.to_json(r))["matrices"]["detect/{row}/auroc"]["rows"] == m.rows


def test_matrix_errors(tmp_path):
  root = _detect_tree(tmp_path, {"metrics": ["detect/flag/auroc"]})
  with pytest.raises(ValueError, match="exactly once"):
    rp._matrix("detect/auroc", None, [], [], {}, 0.95, "t")
  manifest = json.loads((root / "manifest.json").read_text())
  manifest["report"] = {"matrices": ["detect/{row}/auroc"], "matrix_baseline": "nope",
                        "metrics": ["detect/flag/auroc"]}  # fmt: skip
  (root / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="'nope' is not a row"):
    rp.build(root)


def test_matrix_heatmap_is_written(tmp_path):
  block = {"metrics": ["detect/flag/auroc"], "matrices": ["detect/{row}/auroc"]}
  r = rp.build(_detect_tree(tmp_path / "s", block))
  paths = rp.write(r, str(tmp_path / "out"))
  png = [p for p in paths if p.endswith("matrix_detect_row_auroc.png")]
  assert png and matplotlib.image.imread(png[0]).shape[0] > 100
