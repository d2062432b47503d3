"""Runs a sweep's cells and keeps its manifest; ``python -m jaxpost.sweep`` calls ``main``.

Layout under the sweep root::

  manifest.json          every cell: group, seed, config, overrides, config hash, status,
                         return code, wall time, attempts, commit, log tail on failure
  runs/<group>/seed<k>/  the cell's workdir (a normal jaxpost run directory)
  logs/<group>.seed<k>.log   its stdout + stderr, every attempt appended
  slurm/                 the array job (SLURM backend)

Each cell is its own ``python -m jaxpost.main`` process. Statuses: pending, running,
done, failed, interrupted. A relaunch skips done cells and runs the rest again: an
interrupted or failed cell resumes from its workdir's last checkpoint (the run's own
resume, with its config identity check). Cells update the manifest under a file lock,
so local worker threads and SLURM array tasks on a shared disk can share one.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures

from jaxpost.sweep import spec as spec_lib

MANIFEST = "manifest.json"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAIL_LINES = 25  # log lines kept in the manifest of a failed cell
STATUSES = ("pending", "running", "done", "failed", "interrupted")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class SweepError(ValueError):
  """A sweep that cannot run as declared; the message lists every problem."""


# --- planning ---------------------------------------------------------------------


def plan(sweep: spec_lib.Sweep) -> list[dict]:
  """The manifest entries of every run, each config checked before anything starts.

  Loads each cell's config, applies its overrides and validates it, so a typo or a
  conflict (a row longer than the model's) fails the sweep now, not one process at a
  time. (Paths and zoo entries are checked by the runs themselves: an earlier step or
  cell makes them.)
  """
  from jaxpost import config_lib, workdir

  entries, problems = [], []
  for run in sweep.runs():
    try:
      c = config_lib.load_config(_repo_path(run.config))
      for field, value in run.overrides.items():
        config_lib.set_field(c, field, value)
      config_lib.validate(c, paths=False)
    except (config_lib.ConfigError, FileNotFoundError, ValueError, TypeError) as e:
      problems.append(f"{run.id}: {e}")
      continue
    entries.append(
      {
        "id": run.id,
        "group": run.group,
        "seed": run.seed,
        "config": run.config,
        "overrides": {k: _jsonable(v) for k, v in run.overrides.items()},
        "config_hash": workdir.config_hash(c),
        "workdir": os.path.join("runs", run.id),
        "log": os.path.join("logs", run.id.replace("/", ".") + ".log"),
        "status": "pending",
        "returncode": None,
        "wall_s": 0.0,
        "attempts": 0,
        "commit": "",
        "started": "",
        "finished": "",
        "error": "",
      }
    )
  if problems:
    shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
    raise SweepError(f"{len(problems)} run(s) of the sweep have bad configs:\n  {shown}")
  return entries


def _repo_path(config: str) -> str:
  """A config spec with an absolute path: as given if it exists from here, else
  relative to the repository root (``configs/...`` works from any directory)."""
  path, sep, variant = config.partition(":")
  if not os.path.exists(path):
    path = os.path.join(REPO, path)
  return os.path.abspath(path) + sep + variant


def _jsonable(v):
  return json.loads(json.dumps(v, default=repr))


def command(entry: dict, root: str, python: str = sys.executable) -> list[str]:
  """The cell's ``python -m jaxpost.main`` argv (``{root}`` in a string override: ``root``)."""
  argv = [
    python,
    "-m",
    "jaxpost.main",
    f"--config={_repo_path(entry['config'])}",
    f"--workdir={os.path.join(root, entry['workdir'])}",
  ]
  for field, value in entry["overrides"].items():
    if isinstance(value, str):
      value = value.replace(spec_lib.ROOT_TOKEN, os.path.abspath(root))
    argv.append(f"--config.{field}={_flag_value(value)}")
  return argv


def _flag_value(value) -> str:
  # ml_collections parses an override by the field's type: strings are taken as they
  # are, everything else as a Python literal.
  if isinstance(value, str):
    return value
  if isinstance(value, list):  # tuples became JSON lists in the manifest
    return repr(_as_tuple(value))
  return repr(value)


def _as_tuple(v):
  return tuple(_as_tuple(x) for x in v) if isinstance(v, list) else v


# --- the manifest -----------------------------------------------------------------


_LOCAL = threading.Lock()


@contextlib.contextmanager
def _manifest_lock(root: str):
  with _LOCAL, open(os.path.join(root, MANIFEST + ".lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def read_manifest(root: str) -> dict:
  path = os.path.join(root, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {MANIFEST} in {root}: not a sweep root")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_manifest(root: str, manifest: dict) -> None:
  manifest["updated"] = _now()
  tmp = os.path.join(root, MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(root, MANIFEST))


def prepare(sweep: spec_lib.Sweep, root: str) -> dict:
  """Writes (or merges into) ``root/manifest.json``; returns it.

  A cell already in the manifest keeps its status and history when its config hash is
  unchanged, or when its workdir recorded the same config and data (the hash also moves
  when jaxpost gains a field, at its default); a changed cell goes back to pending (its
  workdir's identity check then decides whether it may resume there). Cells no longer in
  the sweep are dropped from the manifest (their directories stay).
  """
  entries = plan(sweep)
  os.makedirs(os.path.join(root, "logs"), exist_ok=True)
  with _manifest_lock(root):
    old = {}
    if os.path.exists(os.path.join(root, MANIFEST)):
      old = {e["id"]: e for e in read_manifest(root).get("cells", [])}
    for e in entries:
      prev = old.get(e["id"])
      if prev is not None:
        keep = ("status", "returncode", "wall_s", "attempts", "commit", "started", "finished")
        e.update({k: prev[k] for k in (*keep, "error") if k in prev})
        changed = prev.get("config_hash") != e["config_hash"]
        if changed and e["status"] == "done" and not _ran_this(root, e):
          e["status"], e["error"] = "pending", "the cell's config changed since it ran"
    manifest = {
      "name": sweep.name,
      "base": sweep.base,
      "seeds": list(sweep.seeds),
      "report": dict(sweep.report),
      "created": _now(),
      "cells": entries,
    }
    _write_manifest(root, manifest)
  return manifest


def _ran_this(root: str, entry: dict) -> bool:
  """The cell's workdir recorded this very config and data (a new hash can come from
  fields added to jaxpost since, at their defaults: ``workdir.describe_changes``)."""
  from jaxpost import config_lib, workdir

  path = os.path.join(root, entry["workdir"], workdir.IDENTITY_FILE)
  if not os.path.exists(path):
    return False
  c = config_lib.load_config(_repo_path(entry["config"]))
  for field, value in entry["overrides"].items():
    config_lib.set_field(c, field, value)
  now = {"config": workdir.flat_config(c), "data": workdir.data_fingerprint(c)}
  with open(path, encoding="utf-8") as f:
    recorded = json.load(f)
  return not workdir.describe_changes(recorded, now, workdir.base_defaults(c.recipe))


def update_cell(root: str, cell_id: str, **changes) -> dict:
  """Sets fields of one cell in the manifest (read-modify-write under the lock)."""
  with _manifest_lock(root):
    manifest = read_manifest(root)
    for e in manifest["cells"]:
      if e["id"] == cell_id:
        e.update(changes)
        _write_manifest(root, manifest)
        return e
  raise KeyError(f"no cell {cell_id!r} in {root}/{MANIFEST}")


def _now() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def commit() -> str:
  """The checkout's commit (with ``-dirty`` for uncommitted changes), or ``unknown``."""
  try:
    head = subprocess.run(
      ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      timeout=10,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return head + ("-dirty" if dirty else "")


# --- running one cell ---------------------------------------------------------------


def worker_env(threads: int | None) -> dict:
  """The environment of a cell; ``threads`` caps its CPU threads (None: no cap)."""
  env = dict(os.environ)
  if threads:
    flags = env.get("XLA_FLAGS", "")
    multi = "true" if threads > 1 else "false"
    env["XLA_FLAGS"] = (
      f"{flags} --xla_cpu_multi_thread_eigen={multi} intra_op_parallelism_threads={threads}"
    ).strip()
    for var in _THREAD_VARS:
      env[var] = str(threads)
  return env


class _Children:
  """Live cell processes, so an interrupted launcher stops them (process groups)."""

  def __init__(self):
    self.procs: set[subprocess.Popen] = set()
    self.stopping = threading.Event()
    self.lock = threading.Lock()

  def stop_all(self, grace_s: float = 20.0) -> None:
    self.stopping.set()
    with self.lock:
      procs = list(self.procs)
    for p in procs:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
      try:
        p.wait(max(0.1, deadline - time.time()))
      except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
          os.killpg(p.pid, signal.SIGKILL)


def run_cell(
  root: str,
  cell_id: str,
  *,
  argv: Sequence[str] | None = None,
  threads: int | None = None,
  cores: Sequence[int] | None = None,
  children: _Children | None = None,
  revision: str | None = None,
) -> dict:
  """Runs one cell to its end and records it; returns its manifest entry.

  Args:
    root: the sweep root.
    cell_id: the cell's id.
    argv: the command (default: ``command(entry, root)``; backends wrap it).
    threads, cores: CPU limits of the process (thread count, CPU affinity).
    children: where the process is registered while it runs (the local launcher).
    revision: the commit to record (default: ``commit()``).
  """
  entry = next((e for e in read_manifest(root)["cells"] if e["id"] == cell_id), None)
  if entry is None:
    raise KeyError(f"no cell {cell_id!r} in {root}/{MANIFEST}")
  argv = list(argv or command(entry, root))
  log_path = os.path.join(root, entry["log"])
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  attempt = entry["attempts"] + 1
  update_cell(
    root,
    cell_id,
    status="running",
    attempts=attempt,
    started=_now(),
    finished="",
    commit=revision or commit(),
    error="",
    returncode=None,
  )
  t0 = time.time()
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"=== attempt {attempt} at {_now()}: {shlex.join(argv)}\n")
    log.flush()

    proc = subprocess.Popen(
      argv,
      stdout=log,
      stderr=subprocess.STDOUT,
      env=worker_env(threads),
      start_new_session=True,
    )
    # Pinned from here, not in a preexec_fn: that would fork a process that may be running
    # JAX's threads (a notebook's kernel). The child is still importing Python modules,
    # long before it starts its compute threads, which inherit the affinity.
    if cores and hasattr(os, "sched_setaffinity"):
      with contextlib.suppress(ProcessLookupError):
        os.sched_setaffinity(proc.pid, cores)
    if children is not None:
      with children.lock:
        children.procs.add(proc)
    try:
      rc = proc.wait()
    finally:
      if children is not None:
        with children.lock:
          children.procs.discard(proc)
  interrupted = rc != 0 and (
    (children is not None and children.stopping.is_set()) or rc in (-signal.SIGTERM, -signal.SIGINT)
  )
  status = "done" if rc == 0 else "interrupted" if interrupted else "failed"
  return update_cell(
    root,
    cell_id,
    status=status,
    returncode=rc,
    finished=_now(),
    wall_s=round(entry["wall_s"] + time.time() - t0, 1),
    error="" if rc == 0 else log_tail(log_path),
  )


def log_tail(path: str, lines: int = TAIL_LINES) -> str:
  """The last ``lines`` lines of the log's last attempt."""
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  last = text.rsplit("=== attempt ", 1)[-1].splitlines()[1:]
  return "\n".join(last[-lines:])


# --- backends --------------------------------------------------------------------


def todo(manifest: dict) -> list[dict]:
  """Cells to run: everything not done."""
  return [e for e in manifest["cells"] if e["status"] != "done"]


def run_local(root: str, *, workers: int, progress: bool = True) -> dict:
  """Runs the cells not done, ``workers`` at a time, each pinned to its share of the
  CPUs with as many threads; returns the final manifest."""
  from tqdm import tqdm

  manifest = read_manifest(root)
  cells = todo(manifest)
  ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
  per = max(1, (ncpu or 1) // workers)
  # Worker slots: disjoint CPU sets when several cells run at once; one cell keeps all.
  slots = []
  for i in range(workers):
    cores = allowed[i * per : (i + 1) * per] if allowed and workers > 1 else None
    slots.append((per if workers > 1 else None, cores or None))
  free = list(range(workers))
  free_lock = threading.Lock()
  children = _Children()
  revision = commit()
  done_before = len(manifest["cells"]) - len(cells)
  bar = tqdm(
    total=len(manifest["cells"]),
    initial=done_before,
    desc=f"sweep {manifest['name']}",
    unit="cell",
    disable=not progress,
  )
  failed = 0

  def one(entry):
    with free_lock:
      slot = free.pop()
    try:
      if children.stopping.is_set():
        return update_cell(root, entry["id"], status="interrupted")
      threads, cores = slots[slot]
      return run_cell(
        root, entry["id"], threads=threads, cores=cores, children=children, revision=revision
      )
    finally:
      with free_lock:
        free.append(slot)

  previous = signal.signal(signal.SIGTERM, _raise_interrupt)
  pool = futures.ThreadPoolExecutor(max_workers=workers)
  try:
    pending = [pool.submit(one, e) for e in cells]
    for fut in futures.as_completed(pending):
      result = fut.result()
      failed += result["status"] == "failed"
      bar.update(1)
      bar.set_postfix(failed=failed, last=f"{result['id']} {result['status']}")
  except KeyboardInterrupt:
    children.stop_all()
    pool.shutdown(wait=True, cancel_futures=True)
    raise
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    signal.signal(signal.SIGTERM, previous)
    bar.close()
  return read_manifest(root)


def _raise_interrupt(signum, frame):
  raise KeyboardInterrupt


def tpu_commands(
  root: str, *, tpu_name: str, zone: str, remote_root: str | None
) -> list[list[str]]:
  """One ``tpu/launch.sh`` command per cell not done, run one after another (a TPU VM
  holds one job). ``remote_root`` (e.g. ``gs://bucket/sweeps/NAME``) replaces the root
  in the cells' workdirs; the manifest and logs stay local."""
  manifest = read_manifest(root)
  out = []
  for e in todo(manifest):
    workdir = os.path.join(remote_root or root, e["workdir"])
    argv = [
      os.path.join(REPO, "tpu", "launch.sh"),
      "--name",
      tpu_name,
      "--zone",
      zone,
      "--config",
      e["config"].removeprefix(REPO + os.sep),
      "--workdir",
      workdir,
      "--tag",
      _tag(e["id"]),
    ]
    argv += [f"--config.{k}={_flag_value(v)}" for k, v in e["overrides"].items()]
    out.append(argv)
  return out


def _tag(cell_id: str) -> str:
  # launch.sh puts the tag unquoted in a remote shell command: only [A-Za-z0-9_./-].
  return re.sub(r"[^A-Za-z0-9_./-]", "_", cell_id.replace("/", "."))


def slurm_job(
  root: str, *, python: str = sys.executable, parallel: int = 0, sbatch_args: Sequence[str] = ()
) -> tuple[str, list[str]]:
  """The SLURM array job over the cells not done: ``(script text, sbatch argv)``.

  Task i runs ``python -m jaxpost.sweep --root ROOT --run_cell ID_i``, which runs the
  cell and records it in the shared manifest (the root must be on a shared disk).
  """
  manifest = read_manifest(root)
  ids = [e["id"] for e in todo(manifest)]
  if not ids:
    raise SweepError("every cell is done: nothing to submit")
  slurm_dir = os.path.join(root, "slurm")
  throttle = f"%{parallel}" if parallel else ""
  script = "\n".join(
    [
      "#!/usr/bin/env bash",
      f"#SBATCH --job-name={spec_lib.slug(manifest['name']) or 'sweep'}",
      f"#SBATCH --array=0-{len(ids) - 1}{throttle}",
      f"#SBATCH --output={slurm_dir}/%A_%a.out",
      *(f"#SBATCH {a}" for a in sbatch_args),
      "set -euo pipefail",
      f"cd {shlex.quote(REPO)}",
      "cells=(" + " ".join(shlex.quote(i) for i in ids) + ")",
      f"exec {shlex.quote(python)} -m jaxpost.sweep --root {shlex.quote(root)} "
      '--run_cell "${cells[$SLURM_ARRAY_TASK_ID]}"',
      "",
    ]
  )
  return script, ["sbatch", os.path.join(slurm_dir, "array.sbatch")]


# --- command line -----------------------------------------------------------------


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _axes(items: Sequence[str], flag: str) -> dict:
  """``["optim.lr=[1e-3, 3e-4]", "loss.name=grpo,dapo"]`` -> {field: [values]}."""
  axes = {}
  for item in items:
    field, eq, values = item.partition("=")
    if not eq or not field:
      raise SweepError(f"{flag} {item!r}: expected FIELD=[v1, v2, ...] or FIELD=v1,v2")
    parsed = _literal(values)
    if not isinstance(parsed, list | tuple) or isinstance(parsed, str):
      parsed = [_literal(v.strip()) for v in values.split(",")]
    axes[field.strip()] = list(parsed)
  return axes


def build_sweep(args) -> spec_lib.Sweep:
  """The sweep of ``--config`` (a file) and/or the command-line pieces."""
  if args.config:
    sweep = spec_lib.load(args.config)
  elif args.base:
    sweep = spec_lib.Sweep(base=args.base, name=args.name or "sweep")
  else:
    raise SweepError("give --config=configs/sweeps/NAME.py or --base=CONFIG (with --grid/--zip)")
  parts = []
  if args.grid:
    parts.append(spec_lib.grid(_axes(args.grid, "--grid")))
  if args.zip:
    parts.append(spec_lib.zipped(_axes(args.zip, "--zip")))
  if parts:
    sweep.cells = spec_lib.product(sweep.cells, *parts)
  if args.set:
    sweep.fixed = {**sweep.fixed, **{k: v[0] for k, v in _axes(args.set, "--set").items()}}
  if args.seeds:
    sweep.seeds = tuple(int(s) for s in args.seeds.split(","))
  if args.name:
    sweep.name = args.name
  return sweep


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m jaxpost.sweep",
    description="Runs a config sweep: every cell x seed as its own jaxpost.main process.",
  )
  p.add_argument("--config", help="sweep file configs/sweeps/NAME.py[:VARIANT]")
  p.add_argument("--base", help="base config spec when the sweep is given on the command line")
  p.add_argument("--grid", action="append", default=[], help="FIELD=[v1, v2]: a grid axis")
  p.add_argument("--zip", action="append", default=[], help="FIELD=[v1, v2]: zipped axes")
  p.add_argument("--set", action="append", default=[], help="FIELD=VALUE for every run")
  p.add_argument("--seeds", help="comma-separated seeds (replaces the sweep's)")
  p.add_argument("--name", help="the sweep's name (default: the file's)")
  p.add_argument("--root", help="sweep root (default runs/sweeps/NAME)")
  p.add_argument("--backend", choices=("local", "tpu", "slurm"), default="local")
  p.add_argument(
    "--workers", type=int, default=0, help="local: cells at once (default: CPUs // 4, at least 1)"
  )
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
  p.add_argument("--report", action="store_true", help="write the report after the cells")
  p.add_argument("--tpu-name", help="tpu: the TPU VM (tpu/create.sh)")
  p.add_argument("--zone", help="tpu: its zone")
  p.add_argument("--remote-root", help="tpu: workdir root on the VM (e.g. gs://bucket/sweeps/NAME)")
  p.add_argument("--parallel", type=int, default=0, help="slurm: array tasks at once (0: all)")
  p.add_argument("--sbatch", action="append", default=[], help="slurm: extra #SBATCH line")
  p.add_argument("--run_cell", help=argparse.SUPPRESS)  # one cell (a SLURM array task)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)
  try:
    return _main(args)
  except (SweepError, FileNotFoundError, ValueError, TypeError) as e:
    print(f"jaxpost.sweep: {e}", file=sys.stderr)
    return 2


def _main(args) -> int:
  if args.run_cell:
    if not args.root:
      raise SweepError("--run_cell needs --root")
    entry = run_cell(os.path.abspath(args.root), args.run_cell)
    return 0 if entry["status"] == "done" else 1
  sweep = build_sweep(args)
  root = os.path.abspath(args.root or os.path.join("runs", "sweeps", spec_lib.slug(sweep.name)))
  os.makedirs(root, exist_ok=True)
  manifest = prepare(sweep, root)
  cells = todo(manifest)
  print(
    f"sweep {sweep.name}: {len(manifest['cells'])} runs, {len(cells)} to do, root {root}",
    file=sys.stderr,
  )
  if args.backend == "local":
    if args.dry_run:
      for e in cells:
        print(shlex.join(command(e, root)))
      return 0
    workers = args.workers or max(1, (os.cpu_count() or 1) // 4)
    try:
      manifest = run_local(root, workers=workers, progress=not args.no_progress)
    except KeyboardInterrupt:
      print("jaxpost.sweep: interrupted; run the same command again to resume", file=sys.stderr)
      return 130
  elif args.backend == "tpu":
    if not (args.tpu_name and args.zone):
      raise SweepError("--backend=tpu needs --tpu-name and --zone")
    argvs = tpu_commands(root, tpu_name=args.tpu_name, zone=args.zone, remote_root=args.remote_root)
    if args.dry_run:
      for a in argvs:
        print(shlex.join(a))
      return 0
    for e, a in zip(cells, argvs, strict=True):
      run_cell(root, e["id"], argv=a)
    manifest = read_manifest(root)
  else:
    script, sbatch = slurm_job(root, parallel=args.parallel, sbatch_args=args.sbatch)
    if args.dry_run:
      print(script)
      print(shlex.join(sbatch))
      return 0
    os.makedirs(os.path.join(root, "slurm"), exist_ok=True)
    with open(sbatch[-1], "w", encoding="utf-8") as f:
      f.write(script)
    subprocess.run(sbatch, check=True)
    print(f"submitted; when the tasks end: python -m jaxpost.sweep.report {root}", file=sys.stderr)
    return 0
  return _summary(manifest, root, args.report)


def _summary(manifest: dict, root: str, write_report: bool) -> int:
  counts = {s: sum(e["status"] == s for e in manifest["cells"]) for s in STATUSES}
  print("cells: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), file=sys.stderr)
  for e in manifest["cells"]:
    if e["status"] == "failed":
      last = (e["error"].strip().splitlines() or ["(no output)"])[-1]
      print(f"  failed {e['id']} (rc {e['returncode']}): {last}  [{e['log']}]", file=sys.stderr)
  if write_report:
    from jaxpost.sweep import report

    for path in report.write(report.build(root), root):
      print(path)
  return 0 if counts["failed"] == 0 else 1
