"""Skill-SD: GRPO + lambda x the importance-weighted sampled-token reverse KL to the policy's
synced copy reading privileged text (configs/skill_sd.py), and its pieces.

The card's checks (../shared/methods/rl.md section 9): lambda = 0 is exactly GRPO; a
teacher with the student's weights and context adds nothing; the student's inputs never
hold the privileged text; the importance weight is 1 while pi = pi_old.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_configs import train_records  # tests/recipes

from jaxpost import config_lib
from jaxpost.data import generated, privileged, tasks, template
from jaxpost.recipes import rl
from jaxpost.rollout import batching, sampler
from jaxpost.types import ROLE_PROMPT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.usefixtures("subprocess_env")


def _config(name="skill_sd.py:tiny", **overrides):
  c = config_lib.load_config(os.path.join(REPO, "configs", name))
  c.train.progress = False
  base = {
    "reward.terms": (("length", 1.0),),  # a reward that varies on a random model
    "rl.max_new_tokens": 12,
    "rl.temperature": 2.0,
    "eval.num_examples": 4,
    "eval.batch_size": 4,
    "eval.max_new_tokens": 4,
  }
  for field, value in {**base, **overrides}.items():
    config_lib.set_field(c, field, value)
  return c


def _params(workdir):
  model, _, _ = generated.load_run(workdir)
  return nnx.state(model, nnx.Param)


def _same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_lambda_zero_and_a_teacher_equal_to_the_student_are_exactly_grpo(tmp_path):
  grpo = str(tmp_path / "grpo")
  rl.run(_config("grpo.py:tiny"), grpo)
  zero = str(tmp_path / "zero")
  rl.run(_config(**{"reward.token_terms": (("teacher_log_ratio", 0.0),)}), zero)
  # Same weights (synced after every update) and the same context (no privileged text):
  # the teacher's log-probs are the policy's, bit for bit, at any lambda.
  same = str(tmp_path / "same")
  rl.run(
    _config(
      **{
        "reward.token_terms": (("teacher_log_ratio", 5.0),),
        "teacher.privileged": "",
        "teacher.sync_every": 1,
      }
    ),
    same,
  )
  a, b, c = train_records(grpo), train_records(zero), train_records(same)
  assert sorted(a) == sorted(b) == sorted(c) == [1, 2, 3, 4]
  assert any(a[s]["train/grad_norm"] > 0 for s in a)
  for s in a:
    for k in ("train/loss", "train/grad_norm", "rl/reward_mean"):
      assert a[s][k] == b[s][k] == c[s][k], (s, k)
    assert c[s]["reward/teacher_log_ratio"] == 0.0
    assert a[s]["train/ratio_mean"] == pytest.approx(1.0)  # one update per rollout: IS weight 1
  _same_params(_params(grpo), _params(zero))
  _same_params(_params(grpo), _params(same))


def test_the_privileged_teacher_moves_the_policy_and_only_it_sees_the_text(tmp_path, monkeypatch):
  seen = {"student": [], "teacher": []}
  real_view, real_collect = privileged.rollout_view, rl.groups_lib.collect_groups

  def view(batch, prompts, **kw):
    out = real_view(batch, prompts, **kw)
    seen["teacher"].append(np.asarray(out[0].tokens))
    return out

  def collect(*a, **kw):  # the rows the policy is scored and updated on
    out = real_collect(*a, **kw)
    seen["student"].append(np.asarray(out[0].batch.tokens))
    return out

  monkeypatch.setattr(privileged, "rollout_view", view)
  monkeypatch.setattr(rl.groups_lib, "collect_groups", collect)
  workdir = str(tmp_path / "sd")
  rl.run(_config(**{"reward.token_terms": (("teacher_log_ratio", 1.0),)}), workdir)
  records = train_records(workdir)
  assert all(r["reward/teacher_log_ratio"] != 0.0 for r in records.values())
  tok = _tokenizer(workdir)
  assert len(seen["student"]) == len(seen["teacher"]) == 4
  for rows in seen["student"]:
    for row in rows:  # one question per row: "Q: 17*56\nA: ..." and nothing before "A:"
      text = tok.decode([int(t) for t in row if t != tok.pad_id])
      assert text.split("\nA:")[0].count("\n") == 0 and ": <think>" not in text
  for rows in seen["teacher"]:
    text = tok.decode([int(t) for t in rows[0] if t != tok.pad_id])
    demo = privileged.skill_demo("mul2x2", text.split("\n")[0][3:])
    assert f"\n{demo.prompt}: <think>{demo.thinking}</think>{demo.answer}" in text


def _tokenizer(workdir):
  from jaxpost.recipes import common

  return common.load_tokenizer(_config(), workdir)


def test_resume_restores_the_synced_copy(tmp_path):
  """The copy lives in the optimizer state: a run resumed at step 2 (between syncs of
  every 3 steps) continues exactly like the uninterrupted one."""
  over = {"reward.token_terms": (("teacher_log_ratio", 1.0),), "teacher.sync_every": 3}
  full = str(tmp_path / "full")
  rl.run(_config(**over), full)
  parts = str(tmp_path / "parts")
  shutil.copytree(full, parts)
  shutil.rmtree(os.path.join(parts, "checkpoints", "4"))
  with open(os.path.join(parts, "metrics.jsonl")) as f:
    kept = [line for line in f if json.loads(line)["step"] <= 2]
  with open(os.path.join(parts, "metrics.jsonl"), "w") as f:
    f.writelines(kept)
  rl.run(_config(**over), parts)
  a, b = train_records(full), train_records(parts)
  for s in (3, 4):
    for k in ("train/loss", "reward/teacher_log_ratio", "train/grad_norm"):
      assert a[s][k] == pytest.approx(b[s][k], rel=1e-5, abs=1e-7), (s, k)


def test_rollout_view_lays_out_privileged_prompt_and_the_same_completion():
  rng = np.random.default_rng(0)
  prompts = [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9]]  # two groups of two rows
  gen = rng.integers(10, 30, size=(4, 6)).astype(np.int32)
  lengths = np.array([6, 3, 4, 1], np.int32)
  gen = np.where(np.arange(6)[None] < lengths[:, None], gen, 0)
  tokens, mask = sampler.left_pad(prompts, 0)
  out = sampler.GenerateOutput(
    tokens=gen,
    lengths=lengths,
    logp=np.zeros((4, 6), np.float32),
    filtered_logp=np.zeros((4, 6), np.float32),
    stopped=np.ones(4, bool),
  )
  student = batching.rollout_batch(tokens, mask, out, pad_id=0).batch
  teacher_prompts = [[5, 6, 7, 1, 2], [5, 6, 7, 1, 2], [8, 9, 3], [8, 9, 3]]
  view, cols = privileged.rollout_view(student, teacher_prompts, window=6, bucket=8)
  assert view.tokens.shape == (4, 8 + 6)
  for b in range(4):
    n = len(teacher_prompts[b]) + lengths[b]
    np.testing.assert_array_equal(
      view.tokens[b, :n], teacher_prompts[b] + list(gen[b, : lengths[b]])
    )
    assert np.all(view.tokens[b, n:] == 0) and np.all(view.segment_ids[b, n:] == 0)
    assert (view.roles[b] == ROLE_PROMPT).sum() == len(teacher_prompts[b]) - 1
    on = student.loss_mask[b] > 0
    # Same completion targets, at the shifted columns, with the same mask.
    np.testing.assert_array_equal(view.targets[b, cols[b][on]], student.targets[b][on])
    assert view.loss_mask[b].sum() == student.loss_mask[b].sum() == lengths[b]
  with pytest.raises(ValueError, match="teacher prompts"):
    privileged.rollout_view(student, teacher_prompts[:3], window=6)


def test_skill_notes_and_validation():
  problem = tasks.mixture({"mul2x2": 1.0}, "train", 0)(0)
  text = privileged.problem_prompt(problem, "skill")
  demo = privileged.skill_demo("mul2x2", problem.prompt)
  assert text == f"{problem.prompt}\n{demo.prompt}: <think>{demo.thinking}</think>{demo.answer}"
  assert demo.prompt != problem.prompt
  other = privileged.skill_demo("mul2x2", demo.prompt)  # never the problem itself
  assert other.prompt != demo.prompt and other.level == "mul2x2"
  with pytest.raises(ValueError, match="task level"):
    privileged.privileged_example(template.Example("1+1", "", "2"), "skill")
  c = _config("grpo.py:tiny", **{"teacher.follow": "lagged"})
  with pytest.raises(config_lib.ConfigError, match="teacher_log_ratio"):
    config_lib.validate(c)
  c = _config(**{"teacher.init_from": "zoo:teacher-mul2x2"})
  with pytest.raises(config_lib.ConfigError, match="copy of the student"):
    config_lib.validate(c)
  config_lib.validate(_config("skill_sd.py:quickstart"))
