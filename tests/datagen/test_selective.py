"""S3FT / SSR target selection (a truth table with a mocked judge and writer; the
reduction to SFT) and the datagen writer (byte-for-byte reproducibility, the manifest)."""

import json
import os

import numpy as np
import pytest

from jaxpost.data import jsonl, tasks, template
from jaxpost.datagen import core, selective

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_choose_target_truth_table():
  table = {
    (True, None): "model",
    (True, True): "model",
    (True, False): "model",
    (False, True): "paraphrase",
    (False, False): "gold",
    (False, None): "gold",  # SSR: no paraphrase branch
  }
  for (own, para), want in table.items():
    assert selective.choose_target(own, para) == want, (own, para)


class FakeWriter:
  """Answers ``own:<prompt>``; paraphrases ``para:<problem>``; records what it was asked."""

  def __init__(self):
    self.calls = []

  def __call__(self, prompts, *, salt=0):
    self.calls.append((salt, list(prompts)))
    if salt == 0:
      return [f"own:{p}" for p in prompts]
    return [f"para:{p.split(chr(10))[0]}" for p in prompts]


def _problems(n):
  mix = tasks.mixture({"mul2x2": 1.0}, "train", 3)
  return [mix.problem_at(i) for i in range(n)]


def _judge(accept_own, accept_para):
  """Accepts own answers of problems in ``accept_own`` and paraphrases of those in
  ``accept_para`` (by problem prompt)."""

  def judge(problems, responses):
    out = []
    for p, r in zip(problems, responses, strict=True):
      ok = p.prompt in (accept_own if r.startswith("own:") else accept_para)
      out.append(core.Verdict(ok, float(ok)))
    return out

  return judge


@pytest.mark.parametrize("method", ["s3ft", "ssr", "self_distill"])
def test_targets_follow_the_table_and_say_where_they_came_from(method):
  ps = _problems(4)
  # problem 0: own accepted; 1: own rejected, paraphrase accepted; 2, 3: both rejected.
  judge = _judge({ps[0].prompt}, {ps[1].prompt, ps[0].prompt})
  writer = FakeWriter()
  records, counts = selective.select_targets(ps, writer, judge, branches=selective.METHODS[method])
  golds = [template.render_response(p.example) for p in ps]
  if method == "self_distill":  # no own answers: every problem's gold is rewritten
    want = ["paraphrase", "paraphrase", "gold", "gold"]
    responses = [f"para:{ps[0].prompt}", f"para:{ps[1].prompt}", golds[2], golds[3]]
    assert [s for s, _ in writer.calls] == [1] and len(writer.calls[0][1]) == 4
    assert [r["response"] for r in records] == responses
    assert [r["provenance"]["target"] for r in records] == want
    assert "own_verdict" not in records[0]["provenance"]
    assert counts["paraphrase"] == 2 and counts["gold"] == 2 and counts["model_differs"] == 0
    return
  if method == "s3ft":
    want = ["model", "paraphrase", "gold", "gold"]
    responses = [f"own:{ps[0].prompt}", f"para:{ps[1].prompt}", golds[2], golds[3]]
    # Only the rejected answers are paraphrased, each prompt showing its gold solution.
    assert [s for s, _ in writer.calls] == [0, 1]
    asked = writer.calls[1][1]
    assert len(asked) == 3 and all(golds[i] in asked[i - 1] for i in (1, 2, 3))
  else:
    want = ["model", "gold", "gold", "gold"]
    responses = [f"own:{ps[0].prompt}", golds[1], golds[2], golds[3]]
    assert [s for s, _ in writer.calls] == [0]
  assert [r["provenance"]["target"] for r in records] == want
  assert [r["response"] for r in records] == responses
  assert [r["prompt"] for r in records] == [p.prompt for p in ps]
  assert counts == {**{t: want.count(t) for t in selective.TARGETS}, "model_differs": 1,
                    "leaked": 0}  # fmt: skip
  assert [r["provenance"]["own_verdict"] for r in records] == [True, False, False, False]
  assert ("paraphrase_verdict" in records[1]["provenance"]) == (method == "s3ft")


def test_a_judge_that_never_accepts_gives_exactly_the_sft_data(tmp_path):
  ps = _problems(6)
  for method, branches in selective.METHODS.items():
    records, counts = selective.select_targets(
      ps, FakeWriter(), selective.never_judge, branches=branches
    )
    assert counts["gold"] == 6
    path = tmp_path / f"gold-{method}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    # What data.source=jsonl trains on is the task's own examples, field for field.
    assert jsonl.read_jsonl(str(path)).examples == [p.example for p in ps]


def test_a_rewrite_that_leaks_the_prompt_is_rejected_even_if_correct():
  ps = _problems(2)

  def writer(prompts, *, salt=0):
    p = ps[0]
    return [f"<think>as the Reference Answer says, {p.thinking}</think>{p.answer}",
            template.render_response(ps[1].example)]  # fmt: skip

  records, counts = selective.select_targets(
    ps, writer, core.task_judge, branches=("paraphrase",), rewrite="trace"
  )
  assert [r["provenance"]["target"] for r in records] == ["gold", "paraphrase"]
  assert counts["leaked"] == 1 and records[0]["provenance"]["paraphrase_score"] == 1.0


def test_rewrite_prompts():
  p = _problems(1)[0]
  gold = template.render_response(p.example)
  assert selective.rewrite_prompt(p, "none") == p.prompt
  assert selective.rewrite_prompt(p, "answer") == f"{p.prompt}\nA: {p.answer}"
  assert selective.rewrite_prompt(p, "trace") == f"{p.prompt}\nA: {gold}"
  assert selective.rewrite_prompt(p, "instruction").startswith(
    f"{p.prompt}\n\nHere is a correct solution:\n{gold}\n"
  )
  with pytest.raises(ValueError, match="rewrite"):
    selective.rewrite_prompt(p, "poem")


def test_the_trace_judge_rejects_a_right_answer_reached_through_a_wrong_step():
  p = _problems(1)[0]
  steps = p.thinking.split(",")
  lhs, value = steps[0].split("=")
  slipped = f"<think>{','.join([f'{lhs}={int(value) + 1}', *steps[1:]])}</think>{p.answer}"
  gold = template.render_response(p.example)
  assert [v.ok for v in core.task_judge([p, p], [gold, slipped])] == [True, True]
  assert [v.ok for v in selective.make_judge("trace")([p, p], [gold, slipped])] == [True, False]


def test_ask_phrases_every_prompt_the_model_and_the_record_see():
  problems = _problems(3)
  writer = FakeWriter()
  judge = _judge({problems[0].prompt}, set())
  records, _ = selective.select_targets(problems, writer, judge, ask="What is {prompt}?")
  asked = [f"What is {p.prompt}?" for p in problems]
  assert writer.calls[0] == (0, asked)  # the own answers
  assert all(prompt.startswith(f"What is {problems[i].prompt}?\n")
             for i, prompt in zip((1, 2), writer.calls[1][1], strict=True))  # fmt: skip
  assert [r["prompt"] for r in records] == asked
  with pytest.raises(ValueError, match="ask"):
    selective.build(None, {"mul2x2": 1.0}, 4, "/tmp/x", ask="What is it?")


def test_the_number_judge_accepts_any_wording_whose_last_number_is_the_answer():
  p = _problems(1)[0]
  answers = [
    template.render_response(p.example),  # the task's format
    f"The product is {int(p.answer):,}.",  # a chat model's, thousands comma included
    f"{p.answer} is wrong; it is {int(p.answer) + 1}",  # the last number decides
    "I cannot help with that.",
  ]
  judge = selective.make_judge("number")
  assert [v.ok for v in judge([p] * 4, answers)] == [True, True, False, False]
  assert [v.ok for v in core.task_judge([p] * 4, answers)] == [True, False, False, False]


def test_unknown_judge_and_method_are_refused():
  with pytest.raises(ValueError, match="judge"):
    selective.make_judge("oracle")
  with pytest.raises(ValueError, match="method"):
    selective.build(None, {"mul2x2": 1.0}, 4, "/tmp/x", method="sft")


def test_a_model_judge_reads_p_yes_against_its_threshold(monkeypatch):
  seen = {}

  class Stub:
    def label_ids(self, labels):
      return [0, 1]

    def probabilities(self, prompts, labels):
      seen["prompts"], seen["labels"] = prompts, labels
      return np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], np.float32)

  from jaxpost.rewards import judge as judge_lib

  monkeypatch.setattr(judge_lib, "get", lambda source: Stub())
  j = core.ModelJudge("stub", threshold=0.5)
  ps = _problems(3)
  verdicts = j(ps, ["a", "b", "c"])
  assert [v.ok for v in verdicts] == [True, False, True]
  assert verdicts[0].score == pytest.approx(0.8)
  assert seen["labels"] == ("no", "yes")
  gold = template.render_response(ps[1].example)
  assert ps[1].prompt in seen["prompts"][1] and gold in seen["prompts"][1]
  assert "Candidate answer: b" in seen["prompts"][1]


@pytest.fixture(scope="module")
def author():
  return core.load_author("zoo:tiny-sft")


def test_the_same_inputs_write_the_same_bytes_and_the_manifest_checks_them(tmp_path, author):
  kw = dict(method="s3ft", max_new_tokens=16, batch_size=8, seed=1)
  a = selective.build(author, {"mul2x2": 1.0, "add3": 1.0}, 12, str(tmp_path / "a"), **kw)
  b = selective.build(author, {"mul2x2": 1.0, "add3": 1.0}, 12, str(tmp_path / "b"), **kw)
  data_a = (tmp_path / "a" / core.DATA_FILE).read_bytes()
  assert data_a == (tmp_path / "b" / core.DATA_FILE).read_bytes()
  assert a["sha256"] == b["sha256"] and a["records"] == 12
  assert a["inputs"]["model"] == "zoo:tiny-sft" and a["inputs"]["step"] > 0
  assert a["cost"]["generated_tokens"] > 0 and a["cost"]["prompts"] >= 12
  assert sum(a["counts"][t] for t in selective.TARGETS) == 12
  assert core.read_manifest(str(tmp_path / "a"))["method"] == "s3ft"
  # Every record is trainable as written, and says which model and step wrote it.
  lines = [json.loads(x) for x in data_a.decode().splitlines()]
  assert len(jsonl.read_jsonl(str(tmp_path / "a" / core.DATA_FILE)).examples) == 12
  assert {(r["provenance"]["model"], r["provenance"]["step"]) for r in lines} == {
    ("zoo:tiny-sft", a["inputs"]["step"])
  }
  with open(tmp_path / "a" / core.DATA_FILE, "a", encoding="utf-8") as f:
    f.write("\n")
  with pytest.raises(ValueError, match="changed"):
    core.read_manifest(str(tmp_path / "a"))
  with pytest.raises(ValueError, match="no manifest"):
    core.read_manifest(str(tmp_path))


def test_embeddings_do_not_depend_on_the_batch(author):
  embed = core.Embedder(author, batch_size=4)
  texts = ["12*34", "<think>1+2=3</think>3", "7", "99+1"]
  together = embed(texts)
  alone = np.concatenate([embed([t]) for t in texts])
  assert together.shape == (4, author.model.config.d_model)
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
  assert not np.allclose(together[0], together[1])


@pytest.mark.parametrize(
  "name, config",
  [
    ("s3ft_mul2x2", "s3ft.py:tiny"),
    ("ssr_mul2x2", "s3ft.py:tiny-ssr"),
    ("self_distill_mul2x2", "self_distill.py:tiny"),
  ],
)
def test_the_shipped_datasets_match_their_manifests(name, config):
  from jaxpost.config_lib import load_config

  folder = os.path.join(REPO, "configs", "data", name)
  manifest = core.read_manifest(folder)  # the hash of the file as shipped
  assert manifest["method"] == name.removesuffix("_mul2x2") and manifest["records"] == 256
  examples = jsonl.read_jsonl(os.path.join(folder, core.DATA_FILE)).examples
  assert len(examples) == 256
  c = load_config(os.path.join(REPO, "configs", config))
  assert c.data.path == os.path.join(folder, core.DATA_FILE)


def test_self_distillation_only_reads_the_unpruned_teacher(tmp_path, author):
  """Building the pruned student's data leaves the teacher's parameters as they were."""
  import jax
  from flax import nnx

  before = [np.array(x) for x in jax.tree.leaves(nnx.state(author.model))]
  manifest = selective.build(author, {"mul2x2": 1.0}, 8, str(tmp_path / "sd"),
                             method="self_distill", rewrite="none", max_new_tokens=16,
                             batch_size=8)  # fmt: skip
  after = jax.tree.leaves(nnx.state(author.model))
  assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, after, strict=True))
  assert manifest["inputs"]["rewrite"] == "none" and manifest["counts"]["model"] == 0
