"""jaxpost.sweep.evaluate: finished runs evaluated again, tabulated with paired differences."""

from __future__ import annotations

import json

import pytest

from jaxpost.sweep import evaluate


def _root(tmp_path):
  cells = [
    {"id": f"{g}/seed{s}", "group": g, "seed": s, "status": "done"}
    for g in ("ce", "drop")
    for s in (0, 1, 2)
  ]
  cells.append({"id": "drop/seed3", "group": "drop", "seed": 3, "status": "failed"})
  (tmp_path / "manifest.json").write_text(json.dumps({"cells": cells}))
  return str(tmp_path)


def test_collect_reads_done_cells_only_and_caches(tmp_path):
  root = _root(tmp_path)
  calls = []

  def measure(workdir):
    calls.append(workdir)
    group, seed = workdir.split("/")[-2:]
    return {"accuracy/l": (0.5 if group == "ce" else 0.6) + 0.01 * int(seed[-1])}

  cache = {}
  groups = evaluate.collect(root, measure, cache)
  assert sorted(groups) == ["ce", "drop"] and sorted(groups["drop"]) == [0, 1, 2]
  assert len(calls) == 6
  evaluate.collect(root, measure, cache)
  assert len(calls) == 6  # cached


def test_table_reports_means_and_paired_differences():
  groups = {
    "ce": {s: {"accuracy/l": 0.5 + 0.01 * s} for s in range(3)},
    "drop": {s: {"accuracy/l": 0.6 + 0.01 * s} for s in range(3)},
  }
  lines = evaluate.table(groups, [("accuracy/l", 100.0, 1)], "ce")
  assert lines[0] == "| group | accuracy/l | Δ vs ce |"
  ce, drop = lines[2], lines[3]
  assert ce.startswith("| ce | 51.0 [") and ce.endswith("| — |")
  assert "| +10.0 [+10.0, +10.0] |" in drop  # the same +10 on every seed: no spread
  assert float(drop.split("|")[2].split()[0]) == pytest.approx(61.0)


def test_main_tabulates_a_heldout_files_loss_without_levels(tmp_path, monkeypatch):
  from jaxpost.eval import __main__ as cli

  (tmp_path / "sweep").mkdir()
  root, seen = _root(tmp_path / "sweep"), []

  def fake(workdir, levels, options, exit_layer=0, heldout_path="", heldout_span="response"):
    seen.append((levels, heldout_path, heldout_span))
    group, seed = workdir.split("/")[-2:]
    loss = (1.0 if group == "ce" else 1.5) + 0.1 * int(seed[-1])
    return {"heldout": {"loss": loss, "perplexity": 2.718**loss, "n": 64}}

  monkeypatch.setattr(cli, "evaluate_run", fake)
  out = tmp_path / "out"
  argv = [root, "--heldout=general.jsonl", "--heldout_span=answer", "--baseline=ce",
          f"--out={out}", "--name=drift"]  # fmt: skip
  assert evaluate.main(argv) == 0
  assert seen == [([], "general.jsonl", "answer")] * 6
  text = (out / "drift.md").read_text()
  assert "## general.jsonl, teacher-forced (nats per answer token)" in text
  row = next(line for line in text.splitlines() if line.startswith("| drop |"))
  assert "| +0.500 [+0.500, +0.500] |" in row  # loss/heldout, paired by seed
  with pytest.raises(SystemExit):
    evaluate.main([root, f"--out={out}"])  # neither levels nor a held-out file
