"""Cycle-Instruct (recipe=cycle_instruct): the dual self-training cycle and Cycle-Filt."""

import json
import math
import os

import numpy as np
import pytest

from jaxpost import config_lib, zoo
from jaxpost.data import jsonl, template
from jaxpost.datagen import core
from jaxpost.datagen import cycle as cycle_data
from jaxpost.recipes import common, cycle_instruct

pytestmark = pytest.mark.usefixtures("subprocess_env")


def _config(variant="tiny-filt", **overrides):
  c = config_lib.load_config(f"configs/cycle_instruct.py:{variant}")
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
  """One tiny Cycle-Filt run: 1 cycle, 2 steps per model, then 2 final steps."""
  workdir = str(tmp_path_factory.mktemp("cycle") / "run")
  config = _config()
  summary = cycle_instruct.run(config, workdir)
  return config, workdir, summary


def _records(data_dir):
  core.read_manifest(data_dir)  # every phase's data is a verified datagen dataset
  with open(os.path.join(data_dir, core.DATA_FILE), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _loss_ids(tok, record) -> tuple:
  """The token ids SFT computes its loss on for one record: every non-prompt token."""
  enc = template.encode_example(tok, jsonl.record_to_example(record))
  return tuple(enc.tokens[enc.roles != template.ROLE_PROMPT].tolist())


def test_every_training_target_is_original_corpus_text(filtered):
  config, workdir, _ = filtered
  questions, answers, _ = cycle_instruct._corpus(config)
  tok = common.load_tokenizer(config, workdir)  # the base's
  phases = {"cycle1/aq_data": questions, "cycle1/qa_data": answers, "final_data": answers}
  for phase, originals in phases.items():
    label_ids = {_loss_ids(tok, {"prompt": "1", "response": text}) for text in originals}
    records = _records(os.path.join(workdir, phase))
    assert records and all(r["response"] in originals for r in records), phase
    for r in records:  # what the loss reads: an original paragraph's tokens (and EOS)
      assert _loss_ids(tok, r) in label_ids, (phase, r)
  # the generated side is the prompt: M_QA's answers to the real questions, M_AQ's
  # questions to the real answers, each record naming the model that wrote it
  aq = _records(os.path.join(workdir, "cycle1", "aq_data"))
  assert {r["provenance"]["model"] for r in aq} == {zoo.resolve("zoo:tiny-sft")}
  assert sorted(r["response"] for r in aq) == sorted(questions)
  qa = _records(os.path.join(workdir, "cycle1", "qa_data"))
  assert {r["provenance"]["model"] for r in qa} == {os.path.join(workdir, "cycle1", "aq")}
  assert sorted(r["response"] for r in qa) == sorted(answers)
  for r in aq + qa:  # the prompt is the other model's generation, as the paragraph it wrote
    assert r["prompt"] == r["provenance"]["generated"]
    assert not r["prompt"].startswith(template.THINK_OPEN + template.THINK_CLOSE)


def test_cycle_filt_drops_ceil_five_percent_per_cluster_the_farthest(filtered):
  config, workdir, summary = filtered
  with open(os.path.join(workdir, cycle_instruct.STATE_FILE), encoding="utf-8") as f:
    state = json.load(f)
  sizes = state["filter"]["cluster_sizes"]
  dropped = state["filter"]["dropped"]
  assert sum(sizes) == config.cycle.corpus_size
  assert len(dropped) == sum(math.ceil(0.05 * s) for s in sizes) == len(sizes)  # each < 20
  kept = _records(os.path.join(workdir, "final_data"))
  assert len(kept) == config.cycle.corpus_size - len(dropped) == summary["cycle/final_pairs"]
  for cluster in range(len(sizes)):
    inside = [r["provenance"]["distance"] for r in kept if r["provenance"]["cluster"] == cluster]
    out = [d["distance"] for d in dropped if d["cluster"] == cluster]
    assert len(inside) + len(out) == sizes[cluster]
    assert not inside or min(out) >= max(inside)
  # the final run trained on D_final and the cycle's cost and diagnostics are metrics
  assert summary["step"] == config.cycle.final_steps
  assert summary["cycle/generated_tokens"] > 0 and summary["cycle/filter_kept"] == len(kept)
  assert 0 <= summary["cycle/questions_exact_c1"] <= 1
  assert summary["cycle/answers_last_number_c1"] >= summary["cycle/answers_correct_c1"]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    logged = [json.loads(line) for line in f]
  assert sum("cycle/generated_tokens" in r for r in logged) == 1


def test_a_finished_run_is_not_trained_again(filtered):
  config, workdir, summary = filtered
  ckpt = os.path.join(workdir, "cycle1", "qa", "checkpoints")
  before = {n: os.path.getmtime(os.path.join(ckpt, n)) for n in os.listdir(ckpt)}
  again = cycle_instruct.run(config, workdir)
  after = {n: os.path.getmtime(os.path.join(ckpt, n)) for n in os.listdir(ckpt)}
  assert before == after
  assert again["eval/accuracy"] == summary["eval/accuracy"]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    assert sum("cycle/generated_tokens" in json.loads(line) for line in f) == 1


def test_a_raw_corpus_is_split_by_question_marks(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("How are 2 and 3 added?\n\n2+3=5\n\n  \n\nWhat is 4*4?\n\nIt is 16\n")
  c = _config(**{"cycle.corpus": str(path), "cycle.rewrite": "none"})
  questions, answers, truth = cycle_instruct._corpus(c)
  assert questions == ["How are 2 and 3 added?", "What is 4*4?"]
  assert answers == ["2+3=5", "It is 16"] and truth == {}
  c = _config(**{"cycle.corpus": str(path)})  # the task rewrite
  assert cycle_instruct._corpus(c)[0] == ["How are 2 and 3 added?", "4*4"]


def test_the_task_corpus_knows_its_true_pairs_for_the_gold_reference():
  c = _config()
  questions, answers, truth = cycle_instruct._corpus(c)
  assert len(questions) == len(answers) == c.cycle.corpus_size
  for a in answers:  # ALL-SFT trains on each answer's own question
    assert template.render_response(truth[a].example) == a
  assert {truth[q].prompt for q in questions} == set(questions)
  assert cycle_data.rewrite_question(" What is 3*4? ") == "3*4"
  assert cycle_data.rewrite_question("3*4") == "3*4"


def test_cosine_distance():
  x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  y = np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
  np.testing.assert_allclose(cycle_instruct.cosine_distance(x, y), [1.0, 0.0, 1.0], atol=1e-12)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"lora.rank": 0}, "set lora.rank"),
    ({"train.init_from": ""}, "set train.init_from or model.gguf"),
    ({"cycle.final": "gold", "cycle.corpus": "x.txt"}, "needs the task corpus"),
    ({"cycle.qa_prompt": "no text"}, "{text}"),
  ],
)
def test_bad_configs_are_refused(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_config(**overrides))


@pytest.mark.parametrize(
  "variant, final, frac",
  [("quickstart", "retrain", 0.0), ("quickstart-gold", "gold", 0.0),
   ("smollm2-filt", "retrain", 0.05), ("smollm2-qa", "qa", 0.0)],
)  # fmt: skip
def test_every_variant_validates(variant, final, frac):
  c = _config(variant)
  config_lib.validate(c)
  assert (c.cycle.final, c.cycle.filter_frac) == (final, frac)


def test_a_chain_of_adapter_runs_is_followed_to_its_base_however_long(monkeypatch, tmp_path):
  """Cycle-Instruct's phase c starts from phase c - 1: the base's leaves come from the
  bottom of a chain as long as the cycles (and a chain that loops ends)."""
  runs = [str(tmp_path / f"run{i}") for i in range(12)]
  for r in runs:
    os.makedirs(r)
  starts = {r: (runs[i - 1] if i else "") for i, r in enumerate(runs)}

  bases = {runs[0]}

  def load_params(run, params):
    if run in bases:  # the base: every leaf
      return {"base": "from run0", "lora": "from run0"}, []
    return {"base": params["base"], "lora": f"from {os.path.basename(run)}"}, ["base"]

  monkeypatch.setattr(common.checkpoint, "load_params", load_params)
  monkeypatch.setattr(
    common.jaxpost_workdir, "recorded_config", lambda run: {"train.init_from": starts[run]}
  )
  loaded, kept = common._load_chain(runs[-1], {"base": "built", "lora": "built"})
  assert loaded == {"base": "from run0", "lora": "from run11"} and kept == []
  bases.clear()  # no run holds the base's leaves, and run0 starts from run5: a loop
  starts[runs[0]] = runs[5]
  loaded, kept = common._load_chain(runs[-1], {"base": "built", "lora": "built"})
  assert kept == ["base"]
