"""GKD: on-policy (the student's samples) and off-policy (data) distillation steps."""

import os

import numpy as np
import pytest
from tiny_configs import sft_tiny  # tests/recipes

from jaxpost import config_lib, metrics
from jaxpost.recipes import gkd, sft
from jaxpost.rollout import sampler
from jaxpost.workdir import flat_config

pytestmark = pytest.mark.usefixtures("subprocess_env")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher"))
  sft.run(sft_tiny(**{"train.steps": 6, "optim.lr": 5e-3}), workdir)
  return workdir


def _gkd(teacher_dir, **overrides):
  flat = {k: v for k, v in flat_config(sft_tiny()).items() if k != "recipe"}
  c, _ = config_lib.from_flat("gkd", flat, strict=False)  # sft's token losses are not gkd's
  for field, value in {
    "loss.name": "kd",
    "teacher.init_from": teacher_dir,
    "gkd.prompts_per_step": 8,
    "gkd.max_new_tokens": 24,
    "model.max_seq_len": 96,
    **overrides,
  }.items():
    config_lib.set_field(c, field, value)
  return c


def _train_records(workdir):
  records = metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  return [r for r in records if "train/loss" in r]


def test_lambda_zero_never_builds_or_calls_the_sampler(tmp_path, teacher_dir, monkeypatch):
  """No training sample is drawn (the held-out evaluation still decodes greedily)."""

  def refuse(*args, **kwargs):
    raise AssertionError("the sampler was used with gkd.lmbda=0")

  make = sampler.make_generate_fn

  def greedy_only(*args, temperature=0.0, **kwargs):
    if temperature:
      refuse()
    return make(*args, temperature=temperature, **kwargs)

  monkeypatch.setattr(sampler, "make_generate_fn", greedy_only)
  monkeypatch.setattr(sampler, "generate_groups", refuse)
  result = gkd.run(_gkd(teacher_dir, **{"gkd.lmbda": 0.0, "train.steps": 3}), str(tmp_path))
  assert result["gkd/on_policy_steps"] == 0.0 and np.isfinite(result["train/loss"])


def test_the_coins_say_which_steps_sample_and_a_resume_flips_the_same(tmp_path, teacher_dir):
  steps = 6
  want = gkd.on_policy_steps(0, 0.5, range(1, steps + 1))
  assert 0 < len(want) < steps  # this seed mixes both kinds of step
  assert gkd.on_policy_steps(0, 1.0, range(1, 5)) == [1, 2, 3, 4]
  assert gkd.on_policy_steps(0, 0.0, range(1, 5)) == []
  c = _gkd(teacher_dir, **{"gkd.lmbda": 0.5, "train.steps": steps})
  whole = gkd.run(c, str(tmp_path / "whole"))
  assert whole["gkd/on_policy_steps"] == len(want)
  # On-policy rows are [8, prompt bucket + 24]; data rows [8, 64]: both shapes train.
  assert all(np.isfinite(r["train/loss"]) for r in _train_records(str(tmp_path / "whole")))
  # Killed after 3 steps and resumed: the same coins, samples and final state.
  parts = str(tmp_path / "parts")
  first = {"gkd.lmbda": 0.5, "train.steps": steps, "train.stop_after": 3}
  gkd.run(_gkd(teacher_dir, **first), parts)
  resumed = gkd.run(c, parts)
  for key in ("train/loss", "train/divergence", "gkd/on_policy_steps"):
    assert resumed[key] == whole[key], key


def test_sampled_rkl_trains_on_the_students_own_samples(tmp_path, teacher_dir):
  c = _gkd(teacher_dir, **{"gkd.lmbda": 1.0, "train.steps": 3, "loss.name": "sampled_rkl"})
  result = gkd.run(c, str(tmp_path))
  assert result["gkd/on_policy_steps"] == 3.0
  assert np.isfinite(result["train/loss"]) and result["train/grad_norm"] > 0


@pytest.mark.parametrize(
  "overrides,match",
  [
    ({"teacher.init_from": ""}, "teacher.init_from"),
    ({"gkd.max_new_tokens": 96}, "no room for a prompt"),
    ({"gkd.prompts_per_step": 3, "train.microbatches": 2}, "do not split"),
  ],
)
def test_bad_gkd_configs_fail_before_any_work(tmp_path, teacher_dir, overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    gkd.run(_gkd(teacher_dir, **overrides), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_motab_without_a_crossing_is_plain_on_policy_gkd(tmp_path, teacher_dir):
  """A boundary never crossed leaves the student's rollouts as they are: the run is
  on-policy GKD's, loss for loss; a low boundary splices teacher tokens in."""
  plain = str(tmp_path / "plain")
  gkd.run(_gkd(teacher_dir, **{"gkd.lmbda": 1.0, "train.steps": 3}), plain)
  never = str(tmp_path / "never")
  over = {"gkd.lmbda": 1.0, "train.steps": 3, "gkd.rollout": "motab"}
  gkd.run(_gkd(teacher_dir, **over, **{"gkd.motab_threshold": 1e9}), never)
  a = {r["step"]: r for r in _train_records(plain)}
  b = {r["step"]: r for r in _train_records(never)}
  assert sorted(a) == sorted(b) and len(a) >= 2
  for s in a:
    assert a[s]["train/loss"] == pytest.approx(b[s]["train/loss"], rel=1e-6), s
    assert b[s]["motab/crossed_frac"] == 0.0 and b[s]["motab/teacher_token_frac"] == 0.0
  low = str(tmp_path / "low")
  gkd.run(_gkd(teacher_dir, **over, **{"gkd.motab_threshold": 1e-6}), low)
  c = _train_records(low)
  assert all(r["motab/crossed_frac"] > 0 and r["motab/teacher_token_frac"] > 0 for r in c)
  with pytest.raises(config_lib.ConfigError, match="gkd.lmbda=0"):
    config_lib.validate(_gkd(teacher_dir, **{"gkd.rollout": "motab", "gkd.lmbda": 0.0}))
