"""Losses over groups of rows through the SFT recipe: REDI, DPO against a frozen reference
(SODA), distilling step-by-step, and discriminative fine-tuning (gold + negatives)."""

import json
import os

import jax
import numpy as np
import pytest
from tiny_configs import REPO, sft_tiny  # tests/recipes

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


def test_step_by_step_rows_are_label_and_rationale_tasks_and_eval_asks_plainly(
  tmp_path, monkeypatch
):
  """configs/step_by_step.py:tiny: row 2i is a record's label task (plain prompt, answer
  only), row 2i + 1 its rationale task ("explain: " prompt, rationale only); the
  evaluator never builds the explain input (card check iii)."""
  from jaxpost.data import pairs, pipeline, streams
  from jaxpost.eval import accuracy
  from jaxpost.recipes import common

  c = config_lib.load_config(os.path.join(REPO, "configs/step_by_step.py:tiny"))
  for k, v in {
    "train.steps": 3,
    "train.progress": False,
    "eval.every": 3,
    "eval.num_examples": 4,
    "eval.batch_size": 4,
    "eval.max_new_tokens": 4,
    "eval.levels": "mul2x2",
  }.items():
    config_lib.set_field(c, k, v)
  asked = []
  real = accuracy.Evaluator._prompt_ids

  def prompt_ids(self, prompt):  # every prompt the evaluator builds
    asked.append(prompt if isinstance(prompt, str) else prompt.prompt)
    return real(self, prompt)

  monkeypatch.setattr(accuracy.Evaluator, "_prompt_ids", prompt_ids)
  workdir = str(tmp_path / "sbs")
  result = sft.run(c, workdir)
  assert np.isfinite(result["train/label_ce"]) and np.isfinite(result["train/rationale_ce"])
  assert asked and not any(pairs.EXPLAIN_PREFIX in p for p in asked)

  tok = common.load_tokenizer(c, workdir)
  source, _ = pipeline.build_source(c, tok)
  batch, _ = streams.StreamPacker.for_config(source, c.data, list(range(8))).next_batch()
  for row in range(0, 8, 2):
    label = tok.decode([int(t) for t in batch["tokens"][row] if t != tok.pad_id])
    rationale = tok.decode([int(t) for t in batch["tokens"][row + 1] if t != tok.pad_id])
    question = label.split("\n")[0][len("Q: ") :]
    assert rationale.startswith("Q: " + pairs.EXPLAIN_PREFIX + question)
    assert "<think></think>" in label and rationale.rstrip().endswith("</think>")


@pytest.fixture(scope="module")
def negatives_path(tmp_path_factory):
  """Reference traces, each with 4 negatives: the same trace ending in a wrong answer."""
  path = str(tmp_path_factory.mktemp("negatives") / "negatives.jsonl")
  mix = tasks.mixture({"mul2x2": 1.0}, "train", 0)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(24):
      p = mix(i)
      wrong = [f"<think>{p.thinking}</think>{int(p.answer) + k}" for k in (1, 2, 10, 11)]
      gold = f"<think>{p.thinking}</think>{p.answer}"
      f.write(json.dumps({"prompt": p.prompt, "response": gold, "negatives": wrong}) + "\n")
  return path


def _discft(start, path, **overrides):
  return sft_tiny(
    **{
      "data.source": "negatives",
      "data.path": path,
      "data.pack": False,
      "data.batch_size": 24,  # 8 examples x (gold + 2 negatives)
      "loss.name": "discft",
      "teacher.init_from": start,
      "train.init_from": start,
      "train.steps": 6,
      "train.log_every": 1,
      "optim.lr": 3e-3,
      **overrides,
    }
  )


def test_discft_resume_reproduces_the_run_and_its_per_example_state(tmp_path, start,
                                                                    negatives_path):  # fmt: skip
  """The per-example u is checkpointed: a run stopped at step 3 (24 examples = one epoch
  in 3 steps) and resumed equals the uninterrupted run bit for bit, u included; every
  example's u has been set; the gold responses gain on their negatives."""
  from jaxpost import checkpoint

  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  sft.run(_discft(start, negatives_path), whole)
  sft.run(_discft(start, negatives_path, **{"train.stop_at": 3}), parts)
  assert checkpoint.latest_state_tree(parts)["step"] == 3
  sft.run(_discft(start, negatives_path), parts)
  a, b = checkpoint.latest_state_tree(whole), checkpoint.latest_state_tree(parts)
  u = np.asarray(a["loss_state"]["u"])
  assert u.shape == (72,)  # the dataset's rows per epoch bound the ids
  assert np.all(u[:24] != 0) and np.all(u[24:] == 0)  # ids are the 24 records
  np.testing.assert_array_equal(u, np.asarray(b["loss_state"]["u"]))
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  gap = [g - n for g, n in zip(_first(whole, "train/gold_score"),
                               _first(whole, "train/negative_score"), strict=True)]  # fmt: skip
  assert np.mean(gap[-2:]) > np.mean(gap[:2])
  assert _first(whole, "train/gamma")[0] == 1.0


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"data.source": "tasks"}, "data.source must say which example"),
    ({"loss.discft.negatives": 3}, "loss.discft.negatives=3, but data.negatives=2"),
    ({"data.batch_size": 16}, "a multiple of 3"),
    ({"teacher.init_from": ""}, "reads a teacher model"),
    ({"loss.discft.form": "dft2"}, "reads no reference"),
  ],
)
def test_discft_config_errors(start, negatives_path, overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_discft(start, negatives_path, **overrides))
