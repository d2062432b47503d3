"""Runs that survive a hostile user: NaN training, two runs on one workdir, a changed
config on resume (issue 12). Each test reproduces a failure once seen and now caught."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from tiny_configs import sft_tiny  # tests/recipes

from jaxpost import metrics, workdir
from jaxpost.recipes import common, sft

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("subprocess_env")


def _params_finite(ckpt_dir: str, step: int) -> bool:
  import orbax.checkpoint as ocp

  manager = ocp.CheckpointManager(ckpt_dir, item_names=("state", "data"))
  saved = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved.state["params"]))


def test_diverging_run_stops_clearly_and_keeps_only_finite_checkpoints(tmp_path):
  """lr=1e3 used to go NaN at step ~13, run on and exit 0 with NaN checkpoints only."""
  d = str(tmp_path / "run")
  c = sft_tiny(
    **{
      "optim.lr": 1e3,
      "optim.warmup_steps": 0,
      "train.steps": 40,
      "train.log_every": 2,
      "train.checkpoint_every": 4,
      "train.max_nonfinite_steps": 3,
    }
  )
  with pytest.raises(common.NonFiniteError, match="consecutive train steps .* non-finite"):
    sft.run(c, d)
  ckpt_dir = os.path.join(d, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  assert steps, "a checkpoint of the finite steps was written"
  assert all(_params_finite(ckpt_dir, s) for s in steps)
  records = [r for r in metrics.read_jsonl_metrics(os.path.join(d, "metrics.jsonl")) if r["step"]]
  skipped = [r["train/skipped_nonfinite"] for r in records]
  assert skipped[-1] >= 1 and sum(skipped) >= 3  # counted, and the last window is logged
  # The run is resumable from its last finite checkpoint (and still diverges).
  with pytest.raises(common.NonFiniteError):
    sft.run(c, d)


def test_skipped_steps_are_counted_as_a_streak():
  class _Ckpt:
    def latest_step(self):
      return 8

  run = common.Run.__new__(common.Run)
  run.config, run.ckpt, run.skipped_streak = (
    sft_tiny(**{"train.max_nonfinite_steps": 3}),
    _Ckpt(),
    0,
  )
  assert common.count_skipped(run, [0, 1, 1], 3) == 2.0 and run.skipped_streak == 2
  assert common.count_skipped(run, [0], 4) == 0.0 and run.skipped_streak == 0  # reset
  common.count_skipped(run, [1, 1], 6)
  with pytest.raises(common.NonFiniteError, match=r"3 consecutive .* step 7 .* \(step 8\)"):
    common.count_skipped(run, np.float32([1]), 7)


def test_train_metrics_average_applied_steps_only():
  run = common.Run.__new__(common.Run)
  run.config, run.skipped_streak = sft_tiny(), 0
  fetched = [
    {"train/loss": 2.0, "train/skipped_nonfinite": 0.0},
    {"train/loss": float("nan"), "train/skipped_nonfinite": 1.0},
    {"train/loss": 4.0, "train/skipped_nonfinite": 0.0},
  ]
  out = common.train_metrics(run, fetched, 3)
  assert out == {"train/loss": 3.0, "train/skipped_nonfinite": 1.0}
  stacked = {"train/loss": np.float32([1.0, 5.0]), "train/skipped_nonfinite": np.float32([0, 0])}
  assert common.train_metrics(run, stacked, 4)["train/loss"] == 3.0


def test_save_refuses_nonfinite_params():
  run = common.Run.__new__(common.Run)

  class _Ckpt:
    def latest_step(self):
      return 2

    def save(self, *a, **k):
      raise AssertionError("must not be called")

  run.ckpt = _Ckpt()
  run.state = type("S", (), {"params": {"w": jax.numpy.asarray([1.0, np.inf])}})()
  with pytest.raises(common.NonFiniteError, match=r"refusing to checkpoint step 4.*step 2"):
    run.save(4, {})
  assert common.all_finite({"w": np.float32([1, 2]), "i": np.int32([3])})


# --- One run per workdir ---------------------------------------------------------------

_HOLD = textwrap.dedent(
  """
  import sys, time
  from jaxpost import workdir
  workdir.lock(sys.argv[1])
  print("locked", flush=True)
  time.sleep(120)
  """
)


def _holder(path):
  proc = subprocess.Popen(
    [sys.executable, "-c", _HOLD, path], stdout=subprocess.PIPE, text=True, cwd=REPO
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_run_refuses_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
  d = str(tmp_path / "run")
  os.makedirs(d)
  proc = _holder(d)
  try:
    with pytest.raises(workdir.WorkdirError, match=rf"in use by another run \(pid {proc.pid} on "):
      workdir.lock(d)
  finally:
    proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup, the lock file still names it
    proc.wait()
  assert json.load(open(os.path.join(d, workdir.LOCK_FILE)))["pid"] == proc.pid
  workdir.lock(d)  # stale: the kernel dropped the dead holder's flock
  assert json.load(open(os.path.join(d, workdir.LOCK_FILE)))["pid"] == os.getpid()
  workdir.lock(d)  # this process again (a run that raised): taken over, not refused
  workdir.release(d)
  assert open(os.path.join(d, workdir.LOCK_FILE)).read() == ""


def test_cli_second_run_exits_2_without_touching_the_run(tmp_path, run_cli):
  d = str(tmp_path / "run")
  os.makedirs(d)
  proc = _holder(d)
  try:
    out = run_cli("--config=configs/sft.py:tiny", f"--workdir={d}")
  finally:
    proc.kill()
    proc.wait()
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"in use by another run (pid {proc.pid}" in out.stderr
  assert "Traceback" not in out.stderr
  assert sorted(os.listdir(d)) == [workdir.LOCK_FILE]  # no tokenizer, no run.json


# --- A resume continues the run recorded in the workdir -------------------------------


def test_resume_with_a_changed_config_or_dataset_is_refused_unless_allowed(tmp_path):
  d = str(tmp_path / "run")
  data = tmp_path / "data.jsonl"
  data.write_text('{"prompt": "1+1", "response": "2"}\n')
  c = sft_tiny(**{"data.source": "jsonl", "data.path": str(data)})
  workdir.claim(c, d)
  workdir.release(d)
  workdir.claim(sft_tiny(**{"data.source": "jsonl", "data.path": str(data)}), d)  # same run
  workdir.release(d)
  # Run control may change (resume later, on another mesh, with a time limit).
  workdir.claim(
    sft_tiny(**{"data.source": "jsonl", "data.path": str(data), "train.stop_after": 2}), d
  )
  workdir.release(d)
  changed = sft_tiny(**{"data.source": "jsonl", "data.path": str(data), "optim.lr": 1e-3})
  with pytest.raises(workdir.WorkdirError, match=r"optim.lr: 0.002 -> 0.001.*allow_changes"):
    workdir.claim(changed, d)
  assert open(os.path.join(d, workdir.LOCK_FILE)).read() == ""  # released on refusal
  data.write_text('{"prompt": "1+1", "response": "3"}\n')
  with pytest.raises(workdir.WorkdirError, match="data sha256"):
    workdir.claim(sft_tiny(**{"data.source": "jsonl", "data.path": str(data)}), d)
  # Opt in: accepted, and the change is kept in the history.
  changed.train.allow_changes = True
  workdir.claim(changed, d)
  workdir.release(d)
  recorded = json.load(open(os.path.join(d, workdir.IDENTITY_FILE)))
  (entry,) = recorded["history"]
  assert "optim.lr: 0.002 -> 0.001" in entry["changes"]
  assert any(ch.startswith("data sha256") for ch in entry["changes"])
  assert recorded["config"]["optim.lr"] == 1e-3


def test_tasks_fingerprint_follows_the_levels_and_seed():
  a = workdir.data_fingerprint(sft_tiny())
  assert a == workdir.data_fingerprint(sft_tiny())
  assert a != workdir.data_fingerprint(sft_tiny(**{"seed": 1}))
  assert a != workdir.data_fingerprint(sft_tiny(**{"data.levels": "add3"}))


def test_blocks_a_run_does_not_use_leave_its_identity_alone(tmp_path):
  """A newly registered loss or reward adds its block to every config; that must not
  change a config's hash (sweep cells, zoo entries) or refuse a resume. The selected
  loss's block and the listed rewards' do count."""
  c = sft_tiny()
  flat = workdir.flat_config(c)
  added = {**flat, "loss.brand_new.alpha": 0.5, "reward.brand_new.scale": 2.0}
  assert workdir.in_use(added) == workdir.in_use(flat)
  d = str(tmp_path / "run")
  workdir.claim(c, d)
  workdir.release(d)
  path = os.path.join(d, workdir.IDENTITY_FILE)
  recorded = json.load(open(path))
  recorded["config"] = {
    k: v for k, v in recorded["config"].items() if not k.startswith("loss.token_priority.")
  }  # as written before that loss existed
  json.dump(recorded, open(path, "w"))
  workdir.claim(sft_tiny(), d)  # accepted: the run uses cross_entropy
  workdir.release(d)
  other = sft_tiny(**{"loss.cross_entropy.label_smoothing": 0.1})
  assert workdir.config_hash(other) != workdir.config_hash(c)
  with pytest.raises(workdir.WorkdirError, match="label_smoothing"):
    workdir.claim(other, d)
  assert workdir.config_hash(sft_tiny(**{"loss.kd.temperature": 3.0})) == workdir.config_hash(c)


def test_a_field_added_since_the_recording_at_its_default_is_not_a_change(tmp_path):
  d = str(tmp_path / "run")
  workdir.claim(sft_tiny(), d)
  workdir.release(d)
  path = os.path.join(d, workdir.IDENTITY_FILE)
  recorded = json.load(open(path))
  del recorded["config"]["teacher.follow"]  # as written before the field existed
  json.dump(recorded, open(path, "w"))
  workdir.claim(sft_tiny(), d)  # the default: the behaviour that run had
  workdir.release(d)
  with pytest.raises(workdir.WorkdirError, match="teacher.follow: '<absent>' -> 'ema'"):
    workdir.claim(sft_tiny(**{"teacher.follow": "ema", "loss.name": "kd"}), d)
