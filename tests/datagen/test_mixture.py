"""DMT's stage data (jaxpost/datagen/mixture.py): the card's three properties."""

import json
import math

import pytest

from jaxpost.datagen import core, mixture

SPEC = {"mul2x2": 1.0, "mul3x2": 1.0}
GENERAL = {"expr2": 1.0, "add5": 1.0}


def _read(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_allocate_is_proportional_with_largest_remainders():
  assert mixture.allocate([5, 3, 2], 5) == [3, 1, 1]  # 2.5, 1.5, 1.0: the tie to the first
  assert mixture.allocate([10, 0, 10], 3) == [2, 0, 1]
  assert mixture.allocate([4, 4], 8) == [4, 4] and mixture.allocate([4, 4], 0) == [0, 0]
  with pytest.raises(ValueError, match="cannot take"):
    mixture.allocate([2, 2], 5)


@pytest.mark.parametrize("k", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_stage_two_holds_exactly_ceil_k_of_the_specialised_data_stratified(tmp_path, k):
  n_spec, n_general = 101, 60
  mixture.build(SPEC, GENERAL, n_spec, n_general, k, str(tmp_path), seed=3)
  spec = _read(tmp_path / "stage1" / core.DATA_FILE)
  stage2 = _read(tmp_path / "stage2" / core.DATA_FILE)
  kept = [r for r in stage2 if r["provenance"]["source"] == "spec"]
  assert len(kept) == math.ceil(k * n_spec)
  assert len(stage2) - len(kept) == n_general  # every general example, once
  by_level = {lv: sum(r["provenance"]["level"] == lv for r in spec) for lv in SPEC}
  want = dict(zip(sorted(by_level), mixture.allocate([by_level[lv] for lv in sorted(by_level)],
                                                     len(kept)), strict=True))  # fmt: skip
  assert {lv: sum(r["provenance"]["level"] == lv for r in kept) for lv in SPEC} == want
  # the kept ones are specialised records as they were in stage 1, none twice
  stage1 = {json.dumps(r, sort_keys=True) for r in spec}
  assert all(json.dumps(r, sort_keys=True) in stage1 for r in kept)
  assert len({r["prompt"] for r in kept}) == len(kept)
  multitask = _read(tmp_path / "multitask" / core.DATA_FILE)
  assert len(multitask) == n_spec + n_general


def test_k_zero_is_sequential_training_and_the_sample_is_seeded(tmp_path):
  mixture.build(SPEC, GENERAL, 40, 30, 0.0, str(tmp_path / "seq"), seed=1)
  stage2 = _read(tmp_path / "seq" / "stage2" / core.DATA_FILE)
  general = mixture.task_records(GENERAL, 30, 2, "general")
  # k = 0: stage 2 is the general data alone (in a seeded order): sequential training
  assert sorted(r["prompt"] for r in stage2) == sorted(r["prompt"] for r in general)
  a = mixture.build(SPEC, GENERAL, 40, 30, 0.25, str(tmp_path / "a"), seed=1)
  b = mixture.build(SPEC, GENERAL, 40, 30, 0.25, str(tmp_path / "b"), seed=1)
  c = mixture.build(SPEC, GENERAL, 40, 30, 0.25, str(tmp_path / "c"), seed=2)
  assert a["stage2"]["sha256"] == b["stage2"]["sha256"] != c["stage2"]["sha256"]
  assert a["stage2"]["counts"] == {"spec": 10, "general": 30}
  with pytest.raises(ValueError, match="k must be"):
    mixture.stratified_sample(general, 1.5, 0)
