"""Merge-of-Thought: rounds of per-corpus SFT branches and their average."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_configs import sft_tiny  # tests/recipes

from jaxpost import checkpoint, config_lib, merging
from jaxpost.data import tasks
from jaxpost.recipes import common, mot
from jaxpost.workdir import flat_config

pytestmark = pytest.mark.usefixtures("subprocess_env")


def _corpus(path, level, n=64):
  """Gold traces of one level as a JSONL corpus (a stand-in for a teacher's outputs)."""
  mixture = tasks.mixture({level: 1.0}, "train", 0)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      p = mixture.problem_at(i)
      response = f"<think>{p.thinking}</think>{p.answer}"
      f.write(json.dumps({"prompt": p.prompt, "response": response}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """Two corpora and a tokenizer every branch shares (a 1-step SFT run's)."""
  root = tmp_path_factory.mktemp("mot")
  tok_run = str(root / "tok")
  common_run = sft_tiny(**{"train.steps": 1})
  from jaxpost.recipes import sft

  sft.run(common_run, tok_run)
  return {
    "add": _corpus(root / "add.jsonl", "add3"),
    "mul": _corpus(root / "mul.jsonl", "mul2x2"),
    "tokenizer": tok_run,
  }


def _mot_config(corpora, tokenizer, **overrides):
  flat = {k: v for k, v in flat_config(sft_tiny()).items() if k != "recipe"}
  c, _ = config_lib.from_flat("mot", flat, strict=False)  # sft also has distill losses
  config_lib.set_field(c, "tokenizer.path", tokenizer)
  config_lib.set_field(c, "mot.branch_data", tuple(corpora))
  config_lib.set_field(c, "mot.rounds", 2)
  config_lib.set_field(c, "mot.steps_per_round", 2)
  config_lib.set_field(c, "eval.levels", "add3")
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


def _params(run_dir, config):
  tok = common.load_tokenizer(config, run_dir)
  like = nnx.state(common.build_model(config, tok.vocab_size, init_from=""), nnx.Param)
  return checkpoint.load_params(run_dir, like)[0]


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_one_corpus_is_sequential_sft_segments(tmp_path, shared):
  """K = 1: each merge is its branch bit for bit, and round 2 starts from round 1's."""
  c = _mot_config([shared["add"]], shared["tokenizer"])
  result = mot.run(c, str(tmp_path))
  assert "eval/accuracy" in result
  r1, r2 = tmp_path / "round1", tmp_path / "round2"
  for r in (r1, r2):
    a, b = _params(str(r / "merged"), c), _params(str(r / "branch0"), c)
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))
  with open(r2 / "branch0" / "run.json") as f:
    assert json.load(f)["config"]["train.init_from"] == str(r1 / "merged")


def test_two_corpora_average_and_a_rerun_skips_finished_work(tmp_path, shared):
  corpora = [shared["add"], shared["mul"]]
  c = _mot_config(corpora, shared["tokenizer"], **{"mot.weights": (1.0, 3.0)})
  mot.run(c, str(tmp_path))
  merged = tmp_path / "round2" / "merged"
  with open(merged / merging.MERGED_FILE) as f:
    assert json.load(f)["weights"] == [0.25, 0.75]
  branches = [_params(str(tmp_path / "round2" / f"branch{k}"), c) for k in (0, 1)]
  want = merging.average(branches, [1.0, 3.0])
  for x, y in zip(_leaves(_params(str(merged), c)), _leaves(want), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  # The branches differ (different corpora), so the merge is not either of them.
  assert not np.allclose(_leaves(branches[0])[0], _leaves(branches[1])[0])
  stamp = os.path.getmtime(merged / merging.MERGED_FILE)
  mot.run(c, str(tmp_path))  # everything finished: nothing is retrained or re-merged
  assert os.path.getmtime(merged / merging.MERGED_FILE) == stamp


@pytest.mark.parametrize(
  "overrides,match",
  [
    ({"mot.branch_data": ()}, "one JSONL corpus per teacher"),
    ({"mot.branch_data": ("/no/such.jsonl",)}, "no file"),
    ({"mot.weights": (1.0, 1.0, 1.0)}, "3 entries for 1 branches"),
  ],
)
def test_bad_mot_sections_fail_before_any_work(tmp_path, shared, overrides, match):
  c = _mot_config([shared["add"]], shared["tokenizer"], **overrides)
  with pytest.raises(config_lib.ConfigError, match=match):
    mot.run(c, str(tmp_path))
  assert not os.path.exists(tmp_path / "round1")


def test_a_warm_start_carries_its_tokenizer_into_every_merge(tmp_path, shared):
  """From a run (train.init_from) with no tokenizer.path: the branches read the start's
  tokenizer, each merge holds a copy, and the final evaluation loads it from there."""
  c = _mot_config(
    [shared["add"]],
    "",
    **{"train.init_from": shared["tokenizer"], "mot.rounds": 1},
  )
  result = mot.run(c, str(tmp_path))
  assert "eval/accuracy" in result
  with open(os.path.join(shared["tokenizer"], "tokenizer.model"), "rb") as a:
    with open(tmp_path / "round1" / "merged" / "tokenizer.model", "rb") as b:
      assert a.read() == b.read()
