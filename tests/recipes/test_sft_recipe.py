"""The SFT recipe end to end on tiny configs: exact resume, the CLI, JSONL data, overlong."""

import glob
import json
import logging
import os
import re

import jax
import numpy as np
import pytest
from tiny_configs import sft_tiny  # tests/recipes

from jaxpost import checkpoint, metrics, optim, train
from jaxpost.data import DataError
from jaxpost.data.packing import OverlongError
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.recipes import common, sft

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A persistent compilation cache for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("subprocess_env")


def _records(workdir):
  return metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))


def _train_lines(workdir):
  """{step: record} of the train-metric lines of a run's metrics.jsonl (one per step)."""
  out = {}
  for r in _records(workdir):
    if "train/loss" in r:
      assert r["step"] not in out, f"step {r['step']} logged twice"
      out[r["step"]] = r
  return out


def _restore(workdir, config, step=None):
  """(TrainState, data dict) of a run's checkpoint, restored into an abstract target."""
  tok = SentencePieceTokenizer.load(os.path.join(workdir, "tokenizer.model"))
  optimizer, _ = optim.make_optimizer(config.optim, config.train.steps)

  def init():
    _, params, _ = train.split_model(common.build_model(config, tok.vocab_size))
    return train.init_train_state(params, optimizer, config.seed)

  like = jax.eval_shape(init)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    return ckpt.restore(step, like=like)
  finally:
    ckpt.close()


def _assert_trees_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # atol=0, rtol=0


def test_cli_quickstart_smoke(tmp_path, run_cli):
  """The README's quickstart command, reduced to seconds."""
  workdir = tmp_path / "run"
  proc = run_cli(
    "--config=configs/quickstart.py",
    f"--workdir={workdir}",
    "--config.train.steps=6",
    "--config.train.log_every=2",
    "--config.train.checkpoint_every=3",
    "--config.train.progress=False",
    "--config.data.batch_size=8",
    "--config.data.seq_len=64",
    "--config.tokenizer.train_examples=2000",
    "--config.eval.every=0",
    "--config.eval.num_examples=8",
    "--config.eval.batch_size=8",
    "--config.eval.max_new_tokens=4",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]

  records = _records(str(workdir))
  assert all("step" in r for r in records)
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]
  assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
  assert any(k.startswith("eval/accuracy/") for r in records for k in r)
  assert glob.glob(str(workdir / "tensorboard" / "**" / "events.out.tfevents.*"), recursive=True)
  with open(workdir / "metrics.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert "finished at step 6" in proc.stdout
  assert "held-out exact-match accuracy" in proc.stdout
  # Every shipped level is reported at the end, trained or not.
  for level in ("add3", "mul2x2", "mul3x3", "expr4"):
    assert level in proc.stdout


def test_resume_reproduces_uninterrupted_run(tmp_path):
  config = sft_tiny(
    **{
      "train.steps": 6,
      "train.checkpoint_every": 3,
      "train.async_checkpoint": True,
    }
  )
  a, b = str(tmp_path / "a"), str(tmp_path / "b")

  full = sft.run(config, a)
  assert full["step"] == 6

  config.train.stop_after = 3  # same schedule length, interrupted after step 3
  part = sft.run(config, b)
  assert part["step"] == 3
  ckpt = checkpoint.Checkpointer(os.path.join(b, "checkpoints"))
  assert ckpt.all_steps() == [3]
  ckpt.close()
  config.train.stop_after = 0
  resumed = sft.run(config, b)
  assert resumed["step"] == 6

  state_a, data_a = _restore(a, config)
  state_b, data_b = _restore(b, config)
  assert int(state_a.step) == int(state_b.step) == 6
  assert data_a == data_b
  assert data_a["next_index"] > 0 and data_a["dataset_size"] is None
  _assert_trees_equal(state_a, state_b)  # params, optimizer state, step and RNG, exactly
  # The mid-run checkpoints agree too, and the run did move the parameters.
  mid_a, mid_data_a = _restore(a, config, step=3)
  mid_b, mid_data_b = _restore(b, config, step=3)
  _assert_trees_equal(mid_a, mid_b)
  assert mid_data_a == mid_data_b and 0 < mid_data_a["next_index"] < data_a["next_index"]
  assert not np.array_equal(
    np.asarray(jax.tree.leaves(mid_a.params)[0]), np.asarray(jax.tree.leaves(state_a.params)[0])
  )

  # Same training curve, step by step (perf/* is wall-clock dependent).
  lines_a, lines_b = _train_lines(a), _train_lines(b)
  assert sorted(lines_a) == sorted(lines_b) == [1, 2, 3, 4, 5, 6]
  for step in lines_a:
    for key, value in lines_a[step].items():
      if not key.startswith("perf/"):
        assert lines_b[step][key] == value, (step, key)
  assert full["train/loss"] == resumed["train/loss"]
  assert full["eval/accuracy"] == resumed["eval/accuracy"]
  # The step-0 record is written once per workdir, not again on resume.
  assert sum(r["step"] == 0 and "model/params" in r for r in _records(b)) == 1


# Small user dataset: prompt/response pairs with and without think blocks, and chat records.
_JSONL_RECORDS = [
  {"prompt": "What is 2+3?", "response": "<think>2 plus 3 is 5</think>5"},
  {"prompt": "Name a colour.", "response": "red"},
  {"prompt": "What is 7*6?", "response": "<think>7 times 6 is 42</think>42", "id": 3},
  {
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "What is 9-4?"},
      {"role": "assistant", "content": "<think>9 minus 4 is 5</think>5"},
    ]
  },
  {"prompt": "Spell cat.", "response": "<think>c a t</think>cat"},
  {"prompt": "What is 10/2?", "response": "<think>ten over two</think>5"},
]
_LONG_RECORD = {
  "prompt": "Count to twenty.",
  "response": "<think>" + "one two " * 30 + "</think>20",
}


def _write_jsonl(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def _jsonl_config(path, **overrides):
  return sft_tiny(**{"data.source": "jsonl", "data.path": path, "train.steps": 2, **overrides})


def test_jsonl_malformed_line_fails_or_is_skipped_and_recorded(tmp_path, caplog):
  lines = [json.dumps(r) for r in _JSONL_RECORDS]
  lines.insert(2, '{"prompt": "unterminated')  # line 3
  path = _write_jsonl(tmp_path / "data.jsonl", lines)

  with pytest.raises(DataError, match=re.escape(f"{path}:3: invalid JSON")):
    sft.run(_jsonl_config(path), str(tmp_path / "strict"))
  assert not os.path.exists(tmp_path / "strict" / "checkpoints")

  workdir = str(tmp_path / "skip")
  with caplog.at_level(logging.WARNING):
    result = sft.run(_jsonl_config(path, **{"data.skip_malformed": True}), workdir)
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
  assert "skipped 1 malformed" in caplog.text
  first = _records(workdir)[0]
  assert first["step"] == 0 and first["data/skipped_malformed"] == 1
  state, data = _restore(workdir, _jsonl_config(path))
  assert int(state.step) == 2 and data["dataset_size"] == len(_JSONL_RECORDS)
  assert not any(k.startswith("eval/") for r in _records(workdir) for k in r)  # no task levels


@pytest.mark.parametrize(
  "policy, key", [("reject", "data/rejected_overlong"), ("truncate", "data/truncated")]
)
def test_overlong_policy_is_recorded(tmp_path, policy, key):
  lines = [json.dumps(r) for r in [*_JSONL_RECORDS, _LONG_RECORD]]
  path = _write_jsonl(tmp_path / "data.jsonl", lines)
  config = _jsonl_config(path, **{"data.overlong": policy})
  assert config.data.seq_len == 64  # only _LONG_RECORD (86 tokens) is longer
  workdir = str(tmp_path / policy)
  result = sft.run(config, workdir)
  assert result["step"] == 2 and np.isfinite(result["train/loss"])
  train_lines = _train_lines(workdir)
  assert sorted(train_lines) == [1, 2]
  assert sum(r[key] for r in train_lines.values()) > 0
  other = "data/truncated" if policy == "reject" else "data/rejected_overlong"
  assert all(r[other] == 0 for r in train_lines.values())


def test_overlong_error_raises(tmp_path):
  lines = [json.dumps(r) for r in [*_JSONL_RECORDS, _LONG_RECORD]]
  path = _write_jsonl(tmp_path / "data.jsonl", lines)
  config = _jsonl_config(path, **{"data.overlong": "error"})
  with pytest.raises(OverlongError, match=r"has 86 tokens > seq_len=64"):
    sft.run(config, str(tmp_path / "err"))


def _step_counts(workdir):
  """{(step, kind): count} of metrics.jsonl records; kind = 'train', 'eval' or 'start'."""
  counts = {}
  for r in _records(workdir):
    kind = "train" if "train/loss" in r else "eval" if "eval/accuracy" in r else "start"
    counts[(r["step"], kind)] = counts.get((r["step"], kind), 0) + 1
  return counts


def test_metrics_once_per_step_after_crashes(tmp_path):
  """Issue 12: records an interrupted run wrote past its last checkpoint are dropped on
  resume, so every step (and the step-0 line, and the final evaluation) appears once."""
  import shutil

  c = sft_tiny(**{"eval.every": 2})
  full = str(tmp_path / "full")
  sft.run(c, full)
  want = _step_counts(full)
  assert all(n == 1 for n in want.values()) and (4, "eval") in want and (0, "start") in want
  # Killed after step 4's logs and final evaluation, before the last checkpoint.
  crashed = str(tmp_path / "crashed")
  shutil.copytree(full, crashed)
  shutil.rmtree(os.path.join(crashed, "checkpoints", "4"))
  with open(os.path.join(crashed, "metrics.jsonl"), "a") as f:
    f.write('{"step": 4, "train/lo')  # and a torn last line
  sft.run(c, crashed)
  assert _step_counts(crashed) == want
  # Killed during compilation of step 1: only the step-0 line was written.
  early = str(tmp_path / "early")
  shutil.copytree(full, early)
  shutil.rmtree(os.path.join(early, "checkpoints"))
  sft.run(c, early)
  assert _step_counts(early) == want
  # A finished run started again logs nothing twice.
  sft.run(c, full)
  assert _step_counts(full) == want
