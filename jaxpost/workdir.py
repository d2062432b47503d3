"""One run per workdir, and a resumed run is the run that was started there.

``claim(config, workdir)`` is called by every recipe before it does any work:

* **Lock.** ``<workdir>/run.lock`` is held with ``fcntl.flock`` for the life of the run
  and says who holds it (pid, host, start time, command). A second run on the same
  workdir refuses, naming the holder. The kernel drops the lock when its process dies,
  ``kill -9`` included, so a lock left by a dead run is stale by construction and is
  taken over (and logged); no pid guessing. ``flock`` works on local disks and on NFSv4
  (where it becomes a POSIX lock); on a file system without locks the run refuses to
  start rather than run unguarded. Multi-host jobs share one workdir: process 0 holds
  the lock for the job.
* **Identity.** ``<workdir>/run.json`` records, at the first start, the config (every
  field) and a fingerprint of the data (the JSONL / tokenizer files' SHA-256, the tfds
  name and split, or the first generated examples of each task level). Resuming with a
  different config or dataset is refused with the list of what changed, unless the
  config sets ``train.allow_changes=True``; accepted changes are appended to the file's
  history. Fields that only steer a run and do not change what it computes (``RUN_CONTROL``:
  stop rules, progress bar, async saving, mesh and multi-host addresses, the switch
  itself) are not compared: a run may resume on another mesh or with a later time limit.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import socket
import sys

from ml_collections import config_dict

LOCK_FILE = "run.lock"
IDENTITY_FILE = "run.json"

# Fields that steer a run without changing its result; changing them on resume is fine.
RUN_CONTROL = (
  "train.stop_after",
  "train.stop_at",
  "train.stop_when",
  "train.max_minutes",
  "train.progress",
  "train.async_checkpoint",
  "train.allow_changes",
  "mesh.",
  "distributed.",
)


class WorkdirError(RuntimeError):
  """The workdir is in use, or holds a different run; the message says which and why."""


# Locks held by this process: realpath -> open file (the flock lives as long as the fd).
_HELD: dict[str, object] = {}


def claim(config, workdir: str, *, primary: bool = True) -> None:
  """Locks ``workdir`` for this run and checks it is the run recorded there.

  Args:
    config: the validated config.
    workdir: the run directory (created if missing).
    primary: this process holds the lock and writes ``run.json`` (process 0); the
      others only compare.

  Raises:
    WorkdirError: another live process holds the workdir, or the workdir records
      another config or dataset and ``train.allow_changes`` is off.
  """
  os.makedirs(workdir, exist_ok=True)
  if primary:
    lock(workdir)
  try:
    check_identity(config, workdir, write=primary)
  except BaseException:
    release(workdir)
    raise


def lock(workdir: str) -> None:
  """Takes ``<workdir>/run.lock``; refuses (WorkdirError) while a live process holds it."""
  import fcntl

  key = os.path.realpath(workdir)
  if key in _HELD:  # this process ran here before and did not finish (an exception)
    release(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    f.seek(0)
    holder = f.read().strip()
    f.close()
    if e.errno in (errno.EAGAIN, errno.EACCES):
      raise WorkdirError(
        f"workdir {workdir} is in use by another run ({_describe(holder)}); wait for it, "
        "stop it, or use another --workdir"
      ) from None
    raise WorkdirError(f"cannot lock {path} ({e.strerror}); the file system has no locks") from None
  f.seek(0)
  previous = f.read().strip()
  if previous:
    logging.warning("taking over the lock of a run that is gone (%s)", _describe(previous))
  f.seek(0)
  f.truncate()
  f.write(json.dumps(_holder()) + "\n")
  f.flush()
  _HELD[key] = f


def release(workdir: str) -> None:
  """Releases the lock (clean end of a run); the file is emptied so it names no holder."""
  f = _HELD.pop(os.path.realpath(workdir), None)
  if f is None:
    return
  try:
    f.seek(0)
    f.truncate()
    f.flush()
  finally:
    f.close()  # closing drops the flock


def _holder() -> dict:
  return {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": " ".join(sys.argv)[:500],
  }


def _describe(holder: str) -> str:
  try:
    h = json.loads(holder)
    return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
  except (ValueError, KeyError, TypeError):
    return "holder unknown"


def flat_config(config) -> dict:
  """``{dotted field: JSON value}`` of every leaf of ``config`` (tuples as lists)."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, config_dict.ConfigDict):
        walk(value, f"{prefix}{key}.")
      else:
        out[prefix + key] = json.loads(json.dumps(value, default=repr))

  walk(config, "")
  return out


def in_use(flat: dict) -> dict:
  """A flat config without the hyperparameter blocks it does not use.

  Every registered loss has a ``loss.<name>`` block and every reward a ``reward.<name>``
  block in every config; only the selected loss's and the listed rewards' change what a
  run computes. Dropping the others keeps a config's identity (its hash, a resume's
  check) unchanged when a new loss or reward is registered.
  """
  rewards = {t[0] for key in ("reward.terms", "reward.token_terms") for t in flat.get(key, ())}

  def used(key: str) -> bool:
    parts = key.split(".")
    if len(parts) < 3:
      return True
    if parts[0] == "loss":
      return parts[1] == flat.get("loss.name")
    if parts[0] == "reward":
      return parts[1] in rewards
    return True

  return {k: v for k, v in flat.items() if used(k)}


def config_hash(config) -> str:
  """12 hex digits of SHA-256 over the fields of ``config`` it uses (``in_use``): names a
  config in a sweep manifest or the model zoo."""
  text = json.dumps(in_use(flat_config(config)), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def recorded_config(workdir: str) -> dict:
  """The flat config recorded in ``<workdir>/run.json`` ({} if there is none)."""
  path = os.path.join(workdir, IDENTITY_FILE)
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f).get("config", {})


def data_fingerprint(config) -> dict:
  """What identifies the run's data and tokenizer (files by content, tasks by output)."""
  from jaxpost.data import sources

  d = config.data
  spec = sources.get(d.source)
  out = {"source": d.source}
  if spec.generated:
    out["tasks"] = _tasks_fingerprint(d.levels, config.seed)
  elif spec.file:
    out.update(path=d.path, sha256=_file_sha256(d.path))
  else:  # a directory or table, or a tfds name (not a path: no hash)
    out.update(path=d.path, split=d.split)
    if os.path.exists(d.path):
      out["sha256"] = _tree_sha256(d.path)
  if spec.fingerprint is not None:
    out.update(spec.fingerprint(d))
  if config.tokenizer.path and os.path.isfile(config.tokenizer.path):
    out["tokenizer_sha256"] = _file_sha256(config.tokenizer.path)
  return out


def _tree_sha256(path: str) -> str:
  """SHA-256 over a file, or over every file under a directory (names and contents)."""
  if os.path.isfile(path):
    return _file_sha256(path)
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode() + b"\0" + _file_sha256(full).encode())
  return h.hexdigest()


def _file_sha256(path: str) -> str:
  if not os.path.isfile(path):
    return ""  # the reader reports the missing file
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _tasks_fingerprint(levels: str, seed: int) -> str:
  """SHA-256 of the first examples of each level: catches a changed task generator."""
  from jaxpost.config_lib import parse_levels
  from jaxpost.data import tasks

  h = hashlib.sha256()
  for name in sorted(parse_levels(levels)):
    for i in range(16):
      p = tasks.make_problem(name, "train", seed, i)
      h.update(f"{name}|{p.prompt}|{p.thinking}|{p.answer}\n".encode())
  return h.hexdigest()


def _compared(flat: dict) -> dict:
  return {k: v for k, v in in_use(flat).items() if not any(k.startswith(p) for p in RUN_CONTROL)}


def check_identity(config, workdir: str, *, write: bool = True) -> None:
  """Records the run's config and data in ``run.json``, or checks them on a resume."""
  path = os.path.join(workdir, IDENTITY_FILE)
  now = {"config": flat_config(config), "data": data_fingerprint(config)}
  if not os.path.exists(path):
    if write:
      write_json(path, {**now, "history": []})
    return
  with open(path, encoding="utf-8") as f:
    recorded = json.load(f)
  changes = describe_changes(recorded, now, base_defaults(config.recipe))
  if not changes:
    return
  listing = "; ".join(changes[:12]) + ("; ..." if len(changes) > 12 else "")
  if not config.train.allow_changes:
    raise WorkdirError(
      f"workdir {workdir} holds a run with another config or dataset ({len(changes)} "
      f"change(s): {listing}). Use another --workdir, or resume anyway with "
      "--config.train.allow_changes=True"
    )
  logging.warning("resuming with changes (train.allow_changes): %s", listing)
  if write:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    history = [*recorded.get("history", []), {"at": stamp, "changes": changes}]
    write_json(path, {**now, "history": history})


def describe_changes(recorded: dict, now: dict, defaults: dict | None = None) -> list[str]:
  """``field: old -> new`` for each compared config field and data entry that differs.

  A field the recording lacks that holds its default now (``defaults``: the recipe's
  flat base config) is not a change: it was added to jaxpost after the run was recorded,
  and a field is only ever added with the behaviour the runs before it had.
  """
  changes = []
  old_c, new_c = _compared(recorded.get("config", {})), _compared(now["config"])
  for key in sorted(old_c.keys() | new_c.keys()):
    if key not in old_c and defaults is not None and key in defaults:
      if new_c.get(key) == defaults[key]:
        continue
    if old_c.get(key, "<absent>") != new_c.get(key, "<absent>"):
      changes.append(f"{key}: {old_c.get(key, '<absent>')!r} -> {new_c.get(key, '<absent>')!r}")
  old_d, new_d = recorded.get("data", {}), now["data"]
  for key in sorted(old_d.keys() | new_d.keys()):
    if old_d.get(key) != new_d.get(key):
      changes.append(f"data {key}: {_short(old_d.get(key))} -> {_short(new_d.get(key))}")
  return changes


def base_defaults(recipe: str) -> dict:
  """The flat base config of ``recipe`` (``configs/base.py``): every field's default."""
  from jaxpost import config_lib

  return flat_config(config_lib.from_flat(recipe, {})[0])


def _short(value) -> str:
  s = repr(value)
  return s[:18] + "..." if len(s) > 24 else s


def write_json(path: str, obj: dict) -> None:
  """``obj`` as JSON at ``path``, atomically (a temporary file renamed into place)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
