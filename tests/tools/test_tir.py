"""Tool-integrated rollouts (jaxpost/tools/tir.py): turns, the sandbox in the loop, the
layout for the trainer, and SimpleTIR's four card cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import rewards
from jaxpost.data import tasks
from jaxpost.losses import advantages
from jaxpost.losses.policy import policy_loss
from jaxpost.losses.reduce import compute_normalizers
from jaxpost.tools import sandbox, tir
from jaxpost.types import Rollout

EOS = 1
CODE = "<think>```python\nprint(6*7)\n```\n"
LIMITS = sandbox.Limits(wall_s=2.0)


class _CharTok:
  """One token per character (ids are code points); EOS 1, padding 0."""

  eos_id, pad_id = EOS, 0

  def encode(self, text):
    return [ord(c) for c in text]

  def decode(self, ids):
    return "".join(chr(i) for i in ids if i > 1)


def _scripted(script):
  """A GenerateTurn playing ``script[prompt][turn - 1]`` ("$" at the end = EOS)."""
  seen = []

  def generate_turn(contexts, turn):
    seen.append(len(contexts))
    out = []
    for ctx in contexts:
      text = script[chr(ctx[0])][turn - 1]
      ids = [ord(c) for c in text.rstrip("$")] + ([EOS] if text.endswith("$") else [])
      out.append((ids, [-0.5] * len(ids), [-0.5] * len(ids), text.endswith("$")))
    return out

  return generate_turn, seen


def test_parse_turn():
  assert tir.parse_turn(CODE) == tir.Turn("code", "print(6*7)")
  assert tir.parse_turn("```py\nx=1\nprint(x)\n```\n").code == "x=1\nprint(x)"
  assert tir.parse_turn("```\nprint(1)\n```\n").kind == "code"  # a bare fence
  assert tir.parse_turn("```output\n42\n```\n").kind == "void"  # not code
  assert tir.parse_turn("</think>42").kind == "answer"
  assert tir.parse_turn(CODE + "</think>42").kind == "answer"  # the answer wins
  assert tir.parse_turn("</think>  ").kind == "void"  # a blank answer
  assert tir.parse_turn("I think it is 42").kind == "void"


SCRIPT = {
  "A": [CODE, "</think>42$"],  # code, then the answer: kept
  "B": [CODE, "so it is big$"],  # code, then prose: void
  "C": ["```python\nwhile True: pass\n```\n", "</think>0$"],  # a hanging call
  "D": ["hello$"],  # prose at once: void
  "E": ["```python\nimport socket; socket.socket()\n```\n", "</think>1$"],  # blocked
}


def _rollout(max_new_tokens=200, max_turns=3):
  turns, seen = _scripted(SCRIPT)
  prompts = [[ord(k)] for k in SCRIPT]
  rows = tir.rollout(
    turns, _CharTok(), prompts, max_turns=max_turns, max_new_tokens=max_new_tokens,
    limits=LIMITS,
  )  # fmt: skip
  return dict(zip(SCRIPT, rows, strict=True)), seen


def test_rollout_runs_code_in_the_sandbox_and_appends_its_output():
  rows, seen = _rollout()
  tok = _CharTok()
  a = rows["A"]
  assert tok.decode(a.ids) == CODE + "```output\n42\n```\n</think>42"
  assert (a.calls, a.failed_calls, a.void, a.finished) == (1, 0, False, True)
  out = tok.encode("```output\n42\n```\n")
  assert a.tool == [False] * len(CODE) + [True] * len(out) + [False] * len("</think>42$")
  assert a.turn == [1] * len(CODE) + [0] * len(out) + [2] * len("</think>42$")
  assert a.raw_logp[len(CODE) : len(CODE) + len(out)] == [0.0] * len(out)  # not sampled
  assert rows["B"].void and rows["B"].finished and rows["B"].calls == 1
  assert rows["D"].void and rows["D"].calls == 0
  # The hanging and the socket-opening calls are failed turns, and the rollout goes on.
  assert "```output\ntimeout\n" in tok.decode(rows["C"].ids) and rows["C"].failed_calls == 1
  assert "```output\nblocked: " in tok.decode(rows["E"].ids) and rows["E"].finished
  assert seen == [5, 4]  # turn 2 only for the rows that called a tool


def test_the_budget_cuts_a_trajectory():
  rows, _ = _rollout(max_new_tokens=len(CODE) + 5)
  a = rows["A"]
  assert len(a.ids) == len(CODE) + 5 and not a.finished and not a.void  # the output is cut
  rows, _ = _rollout(max_new_tokens=10)
  assert len(rows["A"].ids) == 10 and not rows["A"].finished and rows["A"].calls == 0
  rows, _ = _rollout(max_turns=1)  # one turn: the code runs, no turn reads it
  assert rows["A"].calls == 1 and not rows["A"].finished


def _groups(max_new_tokens=96):
  rows, _ = _rollout()
  keys = ["A", "B", "D", "C"]  # one group of 4: kept, void, void, kept (wrong answer)
  problems = [tasks.Problem("mul2x2", "6*7", "", "42")]
  spec = rewards.make_spec((("exact_answer", 1.0),))
  contexts = [[ord("Q"), ord(":")]] * 4
  return tir.tool_groups(
    [rows[k] for k in keys], contexts, problems, _CharTok(), spec, max_new_tokens=max_new_tokens
  )


def test_tool_groups_lay_out_the_trajectories_for_the_trainer():
  groups, metrics = _groups()
  batch = groups.batch
  np.testing.assert_array_equal(groups.rewards, [1, 0, 0, 0])
  np.testing.assert_array_equal(groups.info["void"], [False, True, True, False])
  assert groups.correct.tolist() == [True, False, False, False]
  assert groups.completions[0] == CODE + "```output\n42\n```\n</think>42"
  on = batch.loss_mask[0] > 0
  # Card 3: tool-output tokens never carry loss; every model token does.
  targets = batch.targets[0]
  text_on = "".join(chr(t) for t in targets[on] if t > 1)
  assert text_on == CODE + "</think>42" and "output" not in text_on
  assert on.sum() == len(CODE) + len("</think>42") + 1  # + EOS
  turn_ids = groups.info["turn_ids"][0]
  assert set(turn_ids[on]) == {1, 2} and (turn_ids[~on & (batch.roles[0] == 0)] == 0).all()
  assert metrics["reward/exact_answer"] == 0.25


def _grad(groups, mask, baseline=None):
  token_adv, seq, _ = advantages.combine(
    groups.rewards, {}, mask, estimator="grpo", group_size=4, baseline=baseline
  )
  old = jnp.where(mask > 0, -0.5, 0.0)
  batch = groups.batch.replace(loss_mask=mask)
  rollout = Rollout(
    batch=batch,
    advantages=token_adv,
    old_logp=old,
    sampler_logp=old,
    ref_logp=old,
    group_ids=jnp.zeros(4, jnp.int32),
    turn_ids=jnp.asarray(groups.info["turn_ids"]),
  )
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  return np.asarray(jax.grad(lambda z: policy_loss(z, rollout, norm=norm)[0])(old)), np.asarray(seq)


def test_card_cases_void_filter_zeroes_the_loss_not_the_group_baseline():
  groups, _ = _groups()
  void = groups.info["void"]
  masked = groups.batch.loss_mask * ~void[:, None]
  assert masked[0].sum() > 0 and masked[3].sum() > 0  # card 1: code then answer is kept
  assert not masked[1].any() and not masked[2].any()  # card 2: mask 0 ...
  grad, seq = _grad(groups, masked)
  assert not grad[1].any() and not grad[2].any() and grad[0].any()  # ... so gradient 0
  # Card 4: removing the void rows' loss leaves the baseline of the others unchanged.
  _, seq_unmasked = _grad(groups, groups.batch.loss_mask)
  np.testing.assert_allclose(seq[[0, 3]], seq_unmasked[[0, 3]])
  r = groups.rewards
  np.testing.assert_allclose(seq[0], (1 - r.mean()) / (r.std(ddof=1) + 1e-6), rtol=1e-5)
  # The separate flag: the baseline over the non-void rows only (rewards 1 and 0).
  mean, scale = tir.group_baseline(r, void, 4)
  assert mean[0] == pytest.approx(0.5) and scale[0] == pytest.approx(np.sqrt(0.5) + 1e-6)
  _, seq_out = _grad(groups, masked, baseline=(mean, scale))
  np.testing.assert_allclose(seq_out[[0, 3]], [0.5 / np.sqrt(0.5), -0.5 / np.sqrt(0.5)], rtol=1e-5)
  same = tir.group_baseline(np.array([1.0, 0.0, 1.0, 1.0]), np.array([0, 1, 0, 0], bool), 4)
  assert same[0][0] == 1.0 and same[1][0] == 1.0  # kept rows all equal: advantage 0
  all_void = tir.group_baseline(np.ones(4), np.ones(4, bool), 4)
  assert all_void[0][0] == 0.0 and all_void[1][0] == 1.0


def test_tool_traces_are_what_a_rollout_would_show(tmp_path):
  problem = tasks.make_problem("mul4x3", "train", 0, 0)
  trace = tir.tool_trace(problem)
  code = tir.parse_turn(trace.split(tir.OUTPUT_OPEN)[0])
  result = sandbox.run_python(code.code)  # the real tool gives the text the trace holds
  assert tir.tool_text(result) in trace and trace.endswith("</think>" + problem.answer)
  assert tasks.check_answer(problem, trace)
  path = tmp_path / "t.jsonl"
  tir.main([str(path), "--levels=mul4x3:1.0", "--n=3"])
  assert len(path.read_text().splitlines()) == 3


def test_a_turn_that_overshoots_the_stop_string_continues_the_output_fence():
  script = {"A": [CODE + "```", "</think>42$"], "B": [CODE + "hm", "</think>42$"]}
  turns, _ = _scripted(script)
  a, b = tir.rollout(
    turns, _CharTok(), [[ord("A")], [ord("B")]], max_turns=2, max_new_tokens=200, limits=LIMITS
  )
  tok = _CharTok()
  assert tok.decode(a.ids) == CODE + "```output\n42\n```\n</think>42"  # not "``````output"
  assert tok.decode(b.ids) == CODE + "hm```output\n42\n```\n</think>42"  # not a prefix


def test_the_shipped_sft_data_is_the_generator_s_output(tmp_path):
  import os

  shipped = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs", "data", "tir_sft.jsonl",
  )  # fmt: skip
  out = tmp_path / "again.jsonl"
  tir.write_sft(str(out), {"mul3x3": 1.0, "mul4x3": 1.0}, 1500, seed=0)
  with open(shipped) as f:
    assert f.read() == out.read_text()
