"""Where a run starts and ends: train.stop_at, train.stop_when, train.init_mode=fork."""

import json
import os

import jax
import numpy as np
import pytest
from tiny_configs import sft_tiny  # tests/recipes

from jaxpost import checkpoint, config_lib, metrics
from jaxpost.recipes import common, sft

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.usefixtures("subprocess_env")


def _params(workdir):
  """The latest checkpoint's raw state (params and optimizer) and data position."""
  import orbax.checkpoint as ocp

  m = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
  out = m.restore(
    m.latest_step(),
    args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()),
  )
  m.close()
  return out.state, dict(out.data)


def _losses(workdir):
  recs = metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  return {r["step"]: r["train/loss"] for r in recs if "train/loss" in r}


def test_fork_continues_the_run_exactly(tmp_path):
  """A run stopped at step 4 (stop_at) and continued in a new workdir (fork) ends with the
  uninterrupted 8-step run's state, bit for bit, with the same losses on steps 5-8."""
  kw = {"train.steps": 8, "train.checkpoint_every": 4}
  full, first, forked = (str(tmp_path / n) for n in ("full", "first", "forked"))
  sft.run(sft_tiny(**kw), full)
  assert sft.run(sft_tiny(**kw, **{"train.stop_at": 4}), first)["step"] == 4
  out = sft.run(sft_tiny(**kw, **{"train.init_from": first, "train.init_mode": "fork"}), forked)
  assert out["step"] == 8
  (state_full, data_full), (state_fork, data_fork) = _params(full), _params(forked)
  assert data_full == data_fork
  for a, b in zip(jax.tree.leaves(state_full), jax.tree.leaves(state_fork), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  full_losses, fork_losses = _losses(full), _losses(forked)
  assert sorted(fork_losses) == [5, 6, 7, 8]  # the fork logs only its own steps
  assert all(fork_losses[s] == full_losses[s] for s in fork_losses)
  # The source run is untouched (read only): still one checkpoint, at step 4.
  ckpt = checkpoint.Checkpointer(os.path.join(first, "checkpoints"))
  assert ckpt.all_steps() == [4]
  ckpt.close()


def test_stop_at_is_absolute_so_a_resumed_run_ends_at_the_same_step(tmp_path):
  wd = str(tmp_path / "a")
  config = sft_tiny(**{"train.steps": 8, "train.stop_at": 3, "train.checkpoint_every": 2})
  assert sft.run(config, wd)["step"] == 3
  assert sft.run(config, wd)["step"] == 3  # nothing more to do: report only
  assert sorted(_losses(wd)) == [1, 2, 3]
  # Raising it continues the same run (a run-control field: no identity change).
  config.train.stop_at = 5
  assert sft.run(config, wd)["step"] == 5
  assert sorted(_losses(wd)) == [1, 2, 3, 4, 5]


def test_stop_when_ends_at_the_first_evaluation_meeting_it(tmp_path):
  wd = str(tmp_path / "a")
  config = sft_tiny(
    **{
      "train.steps": 8,
      "eval.every": 2,
      "train.stop_when": "eval/format>=0",
      "eval.levels": "mul2x2",
    }
  )
  with pytest.raises(config_lib.ConfigError, match="logs no 'eval/format'"):
    sft.run(config, wd)  # the metric is per level: eval/format/mul2x2
  wd = str(tmp_path / "b")
  config.train.stop_when = "eval/accuracy>=0.0"  # met by the first evaluation
  assert sft.run(config, wd)["step"] == 2
  ckpt = checkpoint.Checkpointer(os.path.join(wd, "checkpoints"))
  assert ckpt.all_steps() == [2]
  ckpt.close()
  wd = str(tmp_path / "c")
  config.train.stop_when = "eval/accuracy>1.0"  # never met: the run goes to its end
  assert sft.run(config, wd)["step"] == 8


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    ({"train.init_mode": "fork"}, "set train.init_from"),
    ({"train.stop_at": 9}, "train.stop_at=9 > train.steps=4"),
    ({"train.stop_when": "eval/accuracy>=0.5"}, "needs periodic evaluations"),
    ({"train.stop_when": "accuracy=0.5", "eval.every": 2}, "not METRIC>=VALUE"),
    ({"train.stop_when": "train/loss<1", "eval.every": 2}, "reads an evaluation metric"),
    ({"train.init_from": "zoo:no-such"}, "no zoo entry 'no-such'"),
    ({"train.init_from": "zoo:tiny-sft@x"}, "must be a non-negative integer"),
  ],
)
def test_run_control_config_errors(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(sft_tiny(**overrides))


def test_fork_refuses_a_run_of_another_recipe(tmp_path):
  src = tmp_path / "rl"
  (src / "checkpoints").mkdir(parents=True)
  with open(src / "run.json", "w") as f:
    json.dump({"config": {"recipe": "rl"}}, f)
  config = sft_tiny(**{"train.init_from": str(src), "train.init_mode": "fork"})
  with pytest.raises(config_lib.ConfigError, match="is a rl run, this is the sft recipe"):
    common.fork_state(config, None)


def test_zero_steps_evaluates_the_starting_model(tmp_path):
  """train.steps=0: the start is evaluated and checkpointed as it is (a zero-shot row of a
  sweep); with train.init_from, the loaded parameters are exactly what is saved."""
  base = str(tmp_path / "base")
  sft.run(sft_tiny(), base)
  workdir = str(tmp_path / "zero")
  result = sft.run(sft_tiny(**{"train.steps": 0, "train.init_from": base}), workdir)
  assert result["step"] == 0 and "eval/accuracy" in result
  recs = metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in recs if "eval/accuracy" in r] == [0]
  assert not any("train/loss" in r for r in recs)
  zero, _ = _params(workdir)
  trained, _ = _params(base)
  for a, b in zip(jax.tree.leaves(zero["params"]), jax.tree.leaves(trained["params"]), strict=True):
    np.testing.assert_array_equal(a, b)
