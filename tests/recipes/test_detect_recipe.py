"""recipe=detect end to end on small inputs: user records, stored features, the split."""

import json
import os

import numpy as np
import pytest

from jaxpost import config_lib
from jaxpost.data import tasks
from jaxpost.detection import features
from jaxpost.recipes import detect

FLAG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "flag.py")


def _config(**overrides):
  c = config_lib.load_config(FLAG + ":tiny")
  c.train.init_from = "zoo:tiny-sft"
  c.detect.groups = 4
  c.detect.proj_dim = 8
  c.detect.steps = 30
  c.detect.bootstrap = 20
  c.detect.batch_size = 32
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


def _records(path, n=120):
  """Questions with a right or a wrong answer (alternating), as a user would bring."""
  mix = tasks.mixture({"add3": 1.0}, "train", 0)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      p = mix.problem_at(i)
      answer = p.answer if i % 2 == 0 else str(int(p.answer) + 1 + i % 7)
      f.write(json.dumps({"question": p.prompt, "answer": answer, "label": int(i % 2 == 0)}))
      f.write("\n")
  return str(path)


def test_user_records_then_heads_from_the_stored_features(tmp_path):
  records = _records(tmp_path / "r.jsonl")
  out = detect.run(_config(**{"detect.records": records}), str(tmp_path / "a"))
  names = {k.split("/")[1] for k in out if k.startswith("detect/")}
  assert {"flag", "linear_probe", "mlp_probe", "mahalanobis", "perplexity"} <= names
  assert all(0.0 <= out[f"detect/{n}/auroc"] <= 1.0 for n in names)
  stored, info = features.read(str(tmp_path / "a" / "features"))
  assert len(stored["label"]) == 120 and info["layers"] == [1]  # "1,-1" of 2 blocks
  table = json.loads((tmp_path / "a" / "results.json").read_text())
  assert set(table["flag"]) == {"auroc", "auprc", "prr", "ece", "brier", "accuracy"}
  assert (tmp_path / "a" / "detection.png").exists()
  (record,) = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
  assert record["detect/flag/auroc"] == out["detect/flag/auroc"] and "detect/flag/ece" in record
  # Heads only, from the stored features (no model): the same split gives the same
  # unsupervised scores.
  again = detect.run(
    _config(**{"detect.features": str(tmp_path / "a" / "features"), "train.init_from": ""}),
    str(tmp_path / "b"),
  )
  for name in ("perplexity", "max_sequence_probability", "instability"):
    assert again[f"detect/{name}/auroc"] == pytest.approx(out[f"detect/{name}/auroc"])
  # The same run again in its workdir reuses its features (nothing re-extracted).
  stamp = os.path.getmtime(tmp_path / "a" / "features" / "features.json")
  resumed = detect.run(_config(**{"detect.records": records}), str(tmp_path / "a"))
  assert os.path.getmtime(tmp_path / "a" / "features" / "features.json") == stamp
  assert resumed["detect/flag/auroc"] == pytest.approx(out["detect/flag/auroc"])


def test_split_keeps_each_question_on_one_side_and_thins_labels():
  q = np.repeat(np.arange(50), 4)  # 4 answers per question
  f = {"label": np.tile([0, 1], 100), "index": np.arange(200), "question": q}
  train, calib, test = detect._split(f, None, _config().detect, seed=0)
  sides = [set(x["question"]) for x in (train, calib, test)]
  assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
  assert len(test["label"]) == 4 * 15  # 30% of 50 questions
  assert len(calib["label"]) == 4 * 7  # 20% of the other 35
  thin = detect._split(f, None, _config(**{"detect.label_fraction": 0.1}).detect, seed=0)
  assert len(thin[0]["label"]) + len(thin[1]["label"]) == int(0.1 * 140)


def _by_level(levels, seed=0):
  """Stored-feature rows: 2 answers to each of 20 questions per level, labels mixed."""
  n = 40 * len(levels)
  return {
    "label": np.tile([0, 1, 1, 0], n // 4),
    "index": np.arange(n),
    "question": np.repeat(np.arange(n // 2) + 1000 * seed, 2),
    "level": np.repeat(np.asarray(levels), 40),
  }


def test_test_levels_split_stored_answers_by_level():
  f = _by_level(["add3", "mul2x2", "expr2"])
  c = _config(**{"detect.test_levels": "mul2x2,expr2"})
  train, calib, test = detect._split(f, None, c.detect, seed=0)
  assert set(test["level"]) == {"mul2x2", "expr2"} and len(test["label"]) == 80
  assert set(train["level"]) == set(calib["level"]) == {"add3"}
  assert len(train["label"]) + len(calib["label"]) == 40
  with pytest.raises(config_lib.ConfigError, match=r"no test answer.*'add3', 'expr2', 'mul2x2'"):
    detect._split(f, None, _config(**{"detect.test_levels": "add5"}).detect, seed=0)
  with pytest.raises(config_lib.ConfigError, match="no training answer"):
    detect._split(f, None, _config(**{"detect.test_levels": "add3,mul2x2,expr2"}).detect, 0)


def test_test_features_of_another_model_test_on_questions_no_head_trained_on():
  # Two models' answers to the same questions (same ids): the heads train on model A's
  # answers to some questions and are tested on model B's answers to the others.
  a, b = _by_level(["add3", "mul2x2"]), _by_level(["add3", "mul2x2"])
  b["label"] = 1 - b["label"]
  b["index"] = b["index"] + 10_000  # B's rows, told apart
  train, calib, test = detect._split(a, b, _config().detect, seed=0)
  assert np.all(test["index"] >= 10_000) and np.all(train["index"] < 10_000)
  assert not set(test["question"]) & (set(train["question"]) | set(calib["question"]))
  assert len(test["label"]) == 2 * 12  # 30% of the 40 questions, B's answers to them
  # With test_levels: every B answer at the level, A's answers elsewhere.
  c = _config(**{"detect.test_levels": "mul2x2"})
  train, calib, test = detect._split(a, b, c.detect, seed=0)
  assert set(test["level"]) == {"mul2x2"} and len(test["label"]) == 40
  assert np.all(test["index"] >= 10_000) and set(train["level"]) == {"add3"}


def test_a_model_that_is_never_right_is_a_clear_error(tmp_path):
  c = _config(**{"detect.questions": 32, "detect.max_new_tokens": 8})  # tiny-sft: ~0%
  with pytest.raises(config_lib.ConfigError, match="every training answer is incorrect"):
    detect.run(c, str(tmp_path / "w"))


@pytest.mark.parametrize(
  "overrides,match",
  [
    ({"detect.families": "last,words"}, "kinds from"),
    ({"detect.layers": "a"}, "comma-separated"),
    ({"detect.records": "x.jsonl", "detect.features": "d"}, "one of"),
    ({"train.init_from": ""}, "which model"),
  ],
)
def test_bad_configs_are_refused(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(_config(**overrides))


def test_semantic_entropy_from_sampled_answers_joins_each_answer_by_question(tmp_path):
  from jaxpost.data import generated

  c = _config(**{"detect.questions": 6, "detect.se_samples": 4, "detect.max_new_tokens": 8})
  model, tok, _ = generated.load_run("zoo:tiny-sft")
  se = detect._semantic(c, model, tok, "add3:1.0", str(tmp_path))
  sampled = features.read_records(str(tmp_path / "sampled_answers.jsonl"))
  assert set(se) <= set(range(6)) and all(-np.log(4) - 1e-6 <= v <= 0 for v in se.values())
  by_q = {}
  for r in sampled:
    by_q.setdefault(r["index"], []).append(r["response"])
  assert len(sampled) <= 24 and all(len(v) <= 4 for v in by_q.values())
  records = [{"question": "1+1", "answer": "2", "label": 1, "index": q} for q in (0, 3)]
  detect._extract(model, tok, records, (1,), c.detect, str(tmp_path / "f"), se)
  got = detect._stored(str(tmp_path / "f"))
  np.testing.assert_allclose(got["semantic"][:, 0], [se.get(0, 0.0), se.get(3, 0.0)])


def test_calibration_answers_hold_both_outcomes_even_when_one_is_rare():
  # 200 questions, 3 wrong answers (a strong model): 20% held apart by class, so the
  # calibration answers always include a wrong one, whatever the seed.
  labels = np.ones(200, int)
  labels[[5, 77, 150]] = 0
  f = {"label": labels, "index": np.arange(200), "question": np.arange(200)}
  c = _config(**{"detect.test_fraction": 0.01})
  for seed in range(20):
    train, calib, _ = detect._split(f, None, c.detect, seed=seed)
    assert set(calib["label"]) == {0, 1} and set(train["label"]) == {0, 1}, seed
