"""The RL-family configs (ISPO, rubric, TLDR, Reinforce-Ada, SimpleTIR) run end to end."""

import numpy as np
from tiny_configs import shipped, train_records  # tests/recipes

from jaxpost.recipes import rl


def test_the_ispo_config_runs_and_logs_its_diagnostics(tmp_path):
  c = shipped(
    "ispo.py:tiny",
    **{"train.init_from": "zoo:tiny-sft", "train.steps": 2, "rl.max_new_tokens": 24},
  )
  c.reward.ispo_certainty.critical = "both"
  rl.run(c, str(tmp_path))
  for r in train_records(str(tmp_path)).values():
    for key in ("reward/ispo_signal", "reward/ispo_certainty", "rl/zero_outcome_group_frac"):
      assert np.isfinite(r[key]), key
    assert r["rl/zero_adv_group_frac"] <= r["rl/zero_outcome_group_frac"]


def test_the_reinforce_ada_config_runs_and_keeps_groups_of_g(tmp_path):
  c = shipped("reinforce_ada.py:tiny", **{"train.steps": 2, "rl.ada.rule": "positive"})
  rl.run(c, str(tmp_path))
  for r in train_records(str(tmp_path)).values():
    # A random model earns nothing: no prompt exits, every prompt draws all its rounds.
    assert r["rl/ada_rounds"] == 4 and r["rl/ada_exited_frac"] == 0.0
    assert r["rl/ada_drawn_mean"] == 16.0
    assert r["train/tokens"] > 0


def test_the_tldr_config_runs_with_tagged_prompts(tmp_path, monkeypatch):
  from jaxpost.rollout import groups as groups_lib

  seen = []
  real = groups_lib.sample_groups
  monkeypatch.setattr(
    groups_lib,
    "sample_groups",
    lambda *a, **k: seen.extend(p.prompt for p in a[3]) or real(*a, **k),
  )
  c = shipped("tldr.py:tiny", **{"train.steps": 2})
  rl.run(c, str(tmp_path))
  tags = [tag for _, tag, _ in c.reward.tldr.levels]
  assert [p[:4] for p in seen] == [tags[i % 3] for i in range(len(seen))]
  for r in train_records(str(tmp_path)).values():
    assert r["reward/tldr"] <= 0.0


def test_the_rubric_config_screens_prompts_then_trains_on_them(tmp_path, monkeypatch):
  from jaxpost.rollout import prompt_filter

  c = shipped(
    "rubric.py:tiny",
    **{"train.init_from": "zoo:tiny-sft", "train.steps": 2, "rl.max_new_tokens": 24},
  )
  c.rl.prompt_filter.low, c.rl.prompt_filter.high = 0.0, 0.5
  # A model-graded criterion too (a small zoo model as the judge, for speed).
  c.reward.rubric.criteria = (("format", 1.0, True), ("judge:Is it right?", 1.0, False, (0, 1)))
  c.reward.rubric.judge = "zoo:tiny-sft"
  rl.run(c, str(tmp_path))
  import json

  record = json.loads((tmp_path / prompt_filter.FILE).read_text())
  assert len(record["means"]) == 4
  assert record["kept"] == [i for i, m in enumerate(record["means"]) if m <= 0.5]
  records = train_records(str(tmp_path))
  assert sorted(records) == [1, 2]
  assert all(np.isfinite(r["reward/rubric"]) and r["reward/errors"] == 0 for r in records.values())


def test_the_simpletir_config_runs_tool_rollouts(tmp_path):
  c = shipped("simpletir.py:tiny", **{"train.steps": 2})
  rl.run(c, str(tmp_path))
  for r in train_records(str(tmp_path)).values():
    assert 0.0 <= r["tool/void_frac"] <= 1.0 and r["tool/calls_mean"] >= 0.0
    assert np.isfinite(r["train/loss"])
