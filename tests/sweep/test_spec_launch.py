"""Sweep declarations, planning, backends' dry-run commands, and a real local sweep that
is interrupted, resumed and reported (finished cells skipped, a crashing cell kept)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from jaxpost import config_lib
from jaxpost.sweep import Cell, Sweep, cells, grid, launch, load, product, report, zipped

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.usefixtures("subprocess_env")


# --- declarations ---------------------------------------------------------------------


def test_grid_zipped_cells_product():
  g = grid({"optim.lr": [1e-3, 3e-3], "rl.epochs": [1, 2]})
  assert [c.group for c in g] == [
    "lr=0.001,epochs=1",
    "lr=0.001,epochs=2",
    "lr=0.003,epochs=1",
    "lr=0.003,epochs=2",
  ]
  assert g[1].overrides == {"optim.lr": 1e-3, "rl.epochs": 2}
  z = zipped({"optim.lr": [1e-3, 3e-3], "loss.name": ["grpo", "dapo"]})
  assert [(c.group, c.overrides) for c in z] == [
    ("lr=0.001,name=grpo", {"optim.lr": 1e-3, "loss.name": "grpo"}),
    ("lr=0.003,name=dapo", {"optim.lr": 3e-3, "loss.name": "dapo"}),
  ]
  e = cells({"name": "a", "config": "configs/sft.py:tiny", "optim.lr": 1.0}, {"rl.epochs": 3})
  assert e == [
    Cell("a", {"optim.lr": 1.0}, "configs/sft.py:tiny"),
    Cell("epochs=3", {"rl.epochs": 3}, None),
  ]
  p = product(e, grid({"seed_offset.x": [1, 2]}))
  assert [c.group for c in p] == ["a,x=1", "a,x=2", "epochs=3,x=1", "epochs=3,x=2"]
  assert p[0].overrides == {"optim.lr": 1.0, "seed_offset.x": 1}
  assert p[0].config == "configs/sft.py:tiny" and p[2].config is None


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: grid({"optim.lr": []}), "non-empty list"),
    (lambda: grid({"optim.lr": "1e-3"}), "non-empty list"),
    (lambda: zipped({"a.b": [1, 2], "c.d": [1]}), "differ in length"),
  ],
)
def test_declaration_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_runs_expand_seeds_fixed_and_seed_token():
  sweep = Sweep(
    base="configs/sft.py:tiny",
    cells=cells(
      {"name": "x", "train.init_from": "zoo:tiny-sft@{seed}", "optim.lr": 2.0},
      {"name": "a/b"},
    ),
    seeds=(3, 5),
    fixed={"optim.lr": 1.0, "train.steps": 7},
  )
  runs = sweep.runs()
  assert [r.id for r in runs] == ["x/seed3", "x/seed5", "a_divb/seed3", "a_divb/seed5"]
  assert runs[1].overrides == {
    "optim.lr": 2.0,  # the cell's own wins over fixed
    "train.steps": 7,
    "train.init_from": "zoo:tiny-sft@5",
    "seed": 5,
  }
  assert runs[2].overrides == {"optim.lr": 1.0, "train.steps": 7, "seed": 3}
  assert all(r.config == "configs/sft.py:tiny" for r in runs)


@pytest.mark.parametrize(
  "sweep, match",
  [
    (Sweep("c.py", seeds=()), "seeds must be distinct"),
    (Sweep("c.py", seeds=(1, 1)), "seeds must be distinct"),
    (Sweep("c.py", cells=cells({"name": "a"}, {"name": "a"})), "share the group"),
    (Sweep("c.py", cells=cells({"name": "a b"}, {"name": "a_b"})), "one directory"),
  ],
)
def test_runs_errors(sweep, match):
  with pytest.raises(ValueError, match=match):
    sweep.runs()


def test_load_sweep_files(tmp_path):
  for name in (
    "grpo_demo.py",
    "grpo_demo.py:tiny",
    "rl_algorithms.py",
    "sft_lr.py:tiny",
    "smollm2.py",
    "detect.py",
    "data_methods.py",
    "data_methods.py:uds",
    "data_methods.py:self_distill",
    "data_methods.py:dmt1",
    "data_methods.py:aft",
    "data_methods.py:self_distill_long",
    "data_methods.py:dmt2",
    "data_methods.py:cycle",
    "data_methods.py:cycle_smollm2",
    "data_methods.py:s3ft_smollm2",
    "data_methods.py:adp",
    "data_methods.py:self_distill_smollm2",
  ):
    sweep = load(os.path.join(REPO, "configs", "sweeps", name))
    assert isinstance(sweep, Sweep) and len(sweep.seeds) >= 3
    assert launch.plan(sweep)  # every shipped sweep's every run passes the field checks
  assert load(os.path.join(REPO, "configs", "sweeps", "grpo_demo.py:tiny")).name == "grpo_demo-tiny"
  with pytest.raises(FileNotFoundError, match="no sweep file"):
    load(str(tmp_path / "missing.py"))
  (tmp_path / "bad.py").write_text("def get_config(variant=None):\n  return 3\n")
  with pytest.raises(TypeError, match="not a Sweep"):
    load(str(tmp_path / "bad.py"))
  with pytest.raises(ValueError, match="unknown variant"):
    load(os.path.join(REPO, "configs", "sweeps", "grpo_demo.py:nope"))


def test_plan_lists_every_bad_run():
  sweep = Sweep(
    "configs/sft.py:tiny",
    cells=cells(
      {"name": "ok"},
      {"name": "typo", "optim.lrr": 1.0},
      {"name": "neg", "optim.lr": -1.0},
      {"name": "long", "data.seq_len": 4096},  # each field fine, together not
      # data an earlier step writes: its path is the run's to check
      {"name": "later", "data.source": "jsonl", "data.path": "/not/written/yet.jsonl"},
    ),
    seeds=(0, 1),
  )
  with pytest.raises(launch.SweepError, match=r"6 run\(s\)") as e:
    launch.plan(sweep)
  text = str(e.value)
  assert "typo/seed0" in text and "typo/seed1" in text and "neg/seed0" in text
  assert "long/seed0: data.seq_len=4096 > model.max_seq_len" in text
  assert "ok/seed" not in text and "later/seed" not in text


# --- backends' commands ---------------------------------------------------------------


def _cli(*args, cwd=REPO, env=None, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", "jaxpost.sweep", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def test_dry_run_local_prints_each_cells_main_command(tmp_path):
  root = str(tmp_path / "s")
  out = _cli(
    "--base=configs/sft.py:tiny",
    "--grid=optim.lr=[1e-3, 3e-3]",
    "--set=train.steps=5",
    "--seeds=0,1",
    f"--root={root}",
    "--dry-run",
  )
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 4 and "4 runs, 4 to do" in out.stderr
  argv = shlex.split(lines[3])
  assert argv[:3] == [sys.executable, "-m", "jaxpost.main"]
  assert argv[3] == f"--config={os.path.join(REPO, 'configs', 'sft.py')}:tiny"
  assert argv[4] == f"--workdir={root}/runs/lr=0.003/seed1"
  assert argv[5:] == ["--config.train.steps=5", "--config.optim.lr=0.003", "--config.seed=1"]
  manifest = launch.read_manifest(root)
  assert [e["status"] for e in manifest["cells"]] == ["pending"] * 4
  assert len({e["config_hash"] for e in manifest["cells"]}) == 4


def test_root_token_becomes_the_sweep_root_in_each_command():
  sweep = Sweep(
    "configs/flag.py:tiny",
    cells=cells({"name": "heads", "detect.features": "{root}/runs/x/seed{seed}/features"}),
    seeds=(2,),
  )
  (entry,) = launch.plan(sweep)
  assert entry["overrides"]["detect.features"] == "{root}/runs/x/seed2/features"  # as written
  argv = launch.command(entry, "/tmp/sweeps/d")
  assert "--config.detect.features=/tmp/sweeps/d/runs/x/seed2/features" in argv


def test_dry_run_tpu_and_slurm(tmp_path):
  root = str(tmp_path / "s")
  common = (
    "--base=configs/sft.py:tiny",
    "--zip=optim.lr=1e-3,3e-3",
    "--seeds=0,1,2",
    f"--root={root}",
  )
  out = _cli(
    *common,
    "--backend=tpu",
    "--tpu-name=v5e",
    "--zone=us-west4-a",
    "--remote-root=gs://b/s",
    "--dry-run",
  )
  assert out.returncode == 0, out.stderr
  lines = [shlex.split(x) for x in out.stdout.strip().splitlines()]
  assert len(lines) == 6
  assert lines[0][0] == os.path.join(REPO, "tpu", "launch.sh")
  assert lines[0][1:] == [
    "--name",
    "v5e",
    "--zone",
    "us-west4-a",
    "--config",
    "configs/sft.py:tiny",
    "--workdir",
    "gs://b/s/runs/lr=0.001/seed0",
    "--tag",
    "lr_0.001.seed0",  # launch.sh's tags are [A-Za-z0-9_./-]
    "--config.optim.lr=0.001",
    "--config.seed=0",
  ]
  # Each printed command is one launch.sh accepts (its own --dry-run checks the flags).
  check = subprocess.run(
    [*lines[5], "--dry-run"], capture_output=True, text=True, timeout=60, cwd=REPO
  )
  assert check.returncode == 0, check.stderr
  assert "gs://b/s/runs/lr=0.003/seed2" in check.stdout

  assert _cli(*common, "--backend=tpu", "--dry-run").returncode == 2  # no --tpu-name / --zone

  out = _cli(*common, "--backend=slurm", "--parallel=2", "--sbatch=--time=01:00:00", "--dry-run")
  assert out.returncode == 0, out.stderr
  script, sbatch = out.stdout.rstrip("\n").rsplit("\n", 1)
  assert shlex.split(sbatch) == ["sbatch", f"{root}/slurm/array.sbatch"]
  assert "#SBATCH --array=0-5%2" in script and "#SBATCH --time=01:00:00" in script
  assert f"--root {root} --run_cell" in script
  ids = "lr=0.001/seed0 lr=0.001/seed1 lr=0.001/seed2 lr=0.003/seed0 lr=0.003/seed1 lr=0.003/seed2"
  assert f"cells=({ids})" in script
  lint = subprocess.run(["shellcheck", "-"], input=script, capture_output=True, text=True)
  assert lint.returncode == 0, lint.stdout


def test_cli_errors(tmp_path):
  out = _cli(f"--root={tmp_path}")
  assert out.returncode == 2 and "give --config" in out.stderr
  out = _cli("--base=configs/sft.py:tiny", "--grid=optim.lr", f"--root={tmp_path}", "--dry-run")
  assert out.returncode == 2 and "expected FIELD=" in out.stderr
  out = _cli("--base=configs/sft.py:tiny", "--set=optim.lrr=1", f"--root={tmp_path}", "--dry-run")
  assert out.returncode == 2 and "bad configs" in out.stderr and "optim.lrr" in out.stderr


def test_worker_env_limits_threads(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo")
  env = launch.worker_env(1)
  assert env["XLA_FLAGS"].startswith("--xla_foo ")
  assert "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
  assert env["OMP_NUM_THREADS"] == "1"
  assert launch.worker_env(None)["XLA_FLAGS"] == "--xla_foo"


def test_prepare_keeps_history_and_reruns_changed_cells(tmp_path):
  root = str(tmp_path)
  sweep = Sweep("configs/sft.py:tiny", cells=grid({"optim.lr": [1e-3, 2e-3]}), seeds=(0,))
  launch.prepare(sweep, root)
  launch.update_cell(root, "lr=0.001/seed0", status="done", wall_s=3.0, attempts=1)
  launch.update_cell(root, "lr=0.002/seed0", status="done", wall_s=4.0, attempts=1)
  sweep.fixed = {"train.steps": 9}  # changes both cells' configs
  sweep.cells = grid({"optim.lr": [1e-3, 2e-3]})
  launch.prepare(sweep, root)
  cells_ = {e["id"]: e for e in launch.read_manifest(root)["cells"]}
  assert cells_["lr=0.001/seed0"]["status"] == "pending"
  assert "config changed" in cells_["lr=0.001/seed0"]["error"]
  assert cells_["lr=0.001/seed0"]["wall_s"] == 3.0  # history kept
  launch.update_cell(root, "lr=0.001/seed0", status="done")
  sweep.cells = grid({"optim.lr": [1e-3]})  # a dropped cell leaves the manifest
  launch.prepare(sweep, root)
  (only,) = launch.read_manifest(root)["cells"]
  assert only["id"] == "lr=0.001/seed0" and only["status"] == "done"
  with pytest.raises(KeyError, match="no cell"):
    launch.update_cell(root, "nope/seed0", status="done")


def test_prepare_keeps_a_done_cell_whose_workdir_recorded_the_same_run(tmp_path, monkeypatch):
  """A new hash alone (jaxpost gained a field, at its default) does not rerun a cell
  whose run.json holds the same config and data; a real change does."""
  from jaxpost import workdir

  root = str(tmp_path)
  sweep = Sweep("configs/sft.py:tiny", cells=grid({"optim.lr": [1e-3]}), seeds=(0,))
  (entry,) = launch.prepare(sweep, root)["cells"]
  c = config_lib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
  for field, value in entry["overrides"].items():
    config_lib.set_field(c, field, value)
  workdir.claim(c, os.path.join(root, entry["workdir"]))  # writes run.json
  workdir.release(os.path.join(root, entry["workdir"]))
  path = os.path.join(root, entry["workdir"], workdir.IDENTITY_FILE)
  recorded = json.load(open(path))
  del recorded["config"]["model.remat"]  # recorded before the field existed
  json.dump(recorded, open(path, "w"))
  launch.update_cell(root, entry["id"], status="done", config_hash="older-scheme")
  launch.prepare(sweep, root)
  assert launch.read_manifest(root)["cells"][0]["status"] == "done"
  sweep.fixed = {"train.steps": 9}  # a real change of the same cell
  launch.prepare(sweep, root)
  assert launch.read_manifest(root)["cells"][0]["status"] == "pending"


# --- a real sweep, end to end -------------------------------------------------------------

SWEEP_FILE = """
from jaxpost.sweep import Sweep, cells

def get_config(variant=None):
  return Sweep(
    base="configs/sft.py:tiny",
    cells=cells(
      {"name": "ok"},
      {"name": "bad", "train.init_from": "/nonexistent/run"},
      {"name": "long", "train.steps": 200, "train.checkpoint_every": 5},
    ),
    seeds=(0,),
    fixed={
      "train.steps": 6, "train.log_every": 1, "train.checkpoint_every": 3,
      "train.progress": False, "tokenizer.train_examples": 2000,
      "data.batch_size": 8, "data.seq_len": 64,
      "eval.every": 3, "eval.num_examples": 8, "eval.batch_size": 8, "eval.max_new_tokens": 4,
    },
    report={"metrics": ["eval/accuracy", "train/loss"], "baseline": "ok"},
  )
"""


def _statuses(root):
  return {e["id"]: e["status"] for e in launch.read_manifest(root)["cells"]}


def test_local_sweep_interrupt_resume_failure_and_report(tmp_path, subprocess_env):
  """ok runs, bad crashes (kept with its error), long is stopped by SIGTERM to the
  launcher after its first checkpoint; a relaunch skips ok, resumes long from its
  checkpoint to the end, runs bad again (failed again), and the report reads them."""
  sweep_file = tmp_path / "three.py"
  sweep_file.write_text(SWEEP_FILE)
  root = str(tmp_path / "root")
  args = [sys.executable, "-m", "jaxpost.sweep", f"--config={sweep_file}", f"--root={root}"]
  args += ["--workers=1", "--no-progress"]
  env = {**subprocess_env, "XLA_FLAGS": ""}
  proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  ckpts = os.path.join(root, "runs", "long", "seed0", "checkpoints")
  deadline = time.time() + 600
  while not (os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))):
    assert proc.poll() is None, proc.stderr.read()
    assert time.time() < deadline, "the long cell never checkpointed"
    time.sleep(0.5)
  time.sleep(1.0)  # let the async save finish writing
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert "run the same command again to resume" in err
  assert _statuses(root) == {"ok/seed0": "done", "bad/seed0": "failed", "long/seed0": "interrupted"}
  bad = next(e for e in launch.read_manifest(root)["cells"] if e["id"] == "bad/seed0")
  assert bad["returncode"] not in (0, None) and "/nonexistent/run" in bad["error"]
  ok_mtime = os.path.getmtime(os.path.join(root, "runs", "ok", "seed0", "metrics.jsonl"))

  again = subprocess.run(
    [*args, "--report"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
  )
  assert again.returncode == 1, again.stderr  # bad is still failing
  assert "3 runs, 2 to do" in again.stderr
  assert "failed bad/seed0" in again.stderr and "bad.seed0.log" in again.stderr
  cells_ = {e["id"]: e for e in launch.read_manifest(root)["cells"]}
  assert {i: e["status"] for i, e in cells_.items()} == {
    "ok/seed0": "done",
    "bad/seed0": "failed",
    "long/seed0": "done",
  }
  assert cells_["ok/seed0"]["attempts"] == 1  # skipped, not rerun
  assert os.path.getmtime(os.path.join(root, "runs", "ok", "seed0", "metrics.jsonl")) == ok_mtime
  assert cells_["long/seed0"]["attempts"] == 2 and cells_["bad/seed0"]["attempts"] == 2
  assert all(e["commit"] for e in cells_.values())
  with open(os.path.join(root, cells_["long/seed0"]["log"]), encoding="utf-8") as f:
    log = f.read()
  assert log.count("=== attempt ") == 2 and "resumed at step" in log.split("=== attempt 2")[1]

  built = report.build(root)
  assert [(c["id"], c["status"]) for c in built.not_done] == [("bad/seed0", "failed")]
  assert "/nonexistent/run" in built.not_done[0]["error"]
  assert {r.group: r.n for r in built.results["train/loss"]} == {"ok": 1, "bad": 0, "long": 1}
  with open(os.path.join(root, "results.md"), encoding="utf-8") as f:
    md = f.read()
  assert "bad/seed0" in md and "failed" in md  # the report says what is missing
  with open(os.path.join(root, "results.json"), encoding="utf-8") as f:
    assert json.load(f)["name"] == "three"


def test_run_cell_pins_cpus_and_threads(tmp_path):
  """A worker slot's limits reach the cell's process: its CPU set and thread count."""
  if not hasattr(os, "sched_setaffinity"):
    pytest.skip("no CPU affinity on this platform")
  root = str(tmp_path)
  launch.prepare(Sweep("configs/sft.py:tiny", seeds=(0,)), root)
  probe = "import os, time; time.sleep(1.0); "
  probe += "print(sorted(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'])"
  cpu = sorted(os.sched_getaffinity(0))[-1]
  entry = launch.run_cell(
    root, "base/seed0", argv=[sys.executable, "-c", probe], threads=1, cores=[cpu]
  )
  assert entry["status"] == "done" and entry["returncode"] == 0 and entry["attempts"] == 1
  with open(os.path.join(root, entry["log"]), encoding="utf-8") as f:
    assert f.read().splitlines()[-1] == f"[{cpu}] 1"
  failing = launch.run_cell(
    root, "base/seed0", argv=[sys.executable, "-c", "raise SystemExit('boom')"]
  )
  assert failing["status"] == "failed" and failing["returncode"] == 1 and failing["attempts"] == 2
  assert failing["error"].splitlines()[-1] == "boom"
