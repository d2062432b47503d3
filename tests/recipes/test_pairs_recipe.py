"""Pair losses through the SFT recipe: REDI, and DPO against a frozen reference (SODA)."""

import json
import os

import numpy as np
import pytest
from tiny_configs import sft_tiny  # tests/recipes

from jaxpost import config_lib, metrics
from jaxpost.data import tasks
from jaxpost.recipes import sft

pytestmark = pytest.mark.usefixtures("subprocess_env")


@pytest.fixture(scope="module")
def start(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("start"))
  sft.run(sft_tiny(**{"train.steps": 4, "optim.lr": 5e-3}), workdir)
  return workdir


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory):
  """Reference traces (chosen) against the same traces with a wrong answer (rejected)."""
  path = str(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")
  mix = tasks.mixture({"mul2x2": 1.0}, "train", 0)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(32):
      p = mix(i)
      wrong = str(int(p.answer) + 1)
      f.write(json.dumps({
        "prompt": p.prompt,
        "chosen": f"<think>{p.thinking}</think>{p.answer}",
        "rejected": f"<think>{p.thinking}</think>{wrong}",
      }) + "\n")  # fmt: skip
  return path


def _pairs(start, path, **overrides):
  return sft_tiny(
    **{
      "data.source": "pairs",
      "data.path": path,
      "data.pack": False,
      "train.init_from": start,
      "train.steps": 4,
      **overrides,
    }
  )


def _first(workdir, key):
  records = metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  return [r[key] for r in records if key in r]


def test_dpo_starts_at_log_2_and_learns_to_prefer_the_chosen_answers(tmp_path, start, pairs_path):
  c = _pairs(start, pairs_path, **{"loss.name": "dpo", "teacher.init_from": start,
                                   "optim.lr": 3e-3, "train.steps": 10,
                                   "data.batch_size": 16})  # fmt: skip
  sft.run(c, str(tmp_path))
  losses = _first(str(tmp_path), "train/loss")
  assert losses[0] == pytest.approx(np.log(2.0), abs=1e-5)  # policy == its reference
  # Each logged value is that step's batch before its update: later batches are
  # preferred correctly more often (a margin > 0), below log 2 on average.
  margins = _first(str(tmp_path), "train/reward_margin")
  assert np.mean(margins[-4:]) > 0.02 and np.mean(losses[-4:]) < np.log(2.0) - 0.01


def test_redi_runs_on_pairs_and_pushes_the_rejected_down(tmp_path, start, pairs_path):
  c = _pairs(start, pairs_path, **{"loss.name": "redi", "optim.lr": 3e-3, "train.steps": 10,
                                   "data.batch_size": 16})  # fmt: skip
  sft.run(c, str(tmp_path))
  chosen = _first(str(tmp_path), "train/chosen_logp")
  assert np.mean(chosen[-4:]) > np.mean(chosen[:2])  # the chosen answers become likelier


def test_pairs_need_one_example_per_row(tmp_path, start, pairs_path):
  with pytest.raises(config_lib.ConfigError, match="data.pack=False"):
    sft.run(_pairs(start, pairs_path, **{"data.pack": True, "loss.name": "redi"}), str(tmp_path))
