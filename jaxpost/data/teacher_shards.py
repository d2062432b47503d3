"""Offline teacher: its top-k next-token log-probs for every batch of a run, on disk.

A distillation run with a large teacher need not hold it in training memory: run the
teacher once over exactly the batches the student will see, keep its k most likely
tokens and their log-probs per position (the divergence compares the rest as one tail
bucket), and stream them back during training (``teacher.offline=DIR``).

Alignment is by *step*, not by example: the SFT recipe's batches are a pure function of
the config (data, tokenizer, seed, batch and row sizes, packing), so shard step t holds
the teacher's view of training batch t. Each shard also stores the batch's tokens, and
the training loop compares them with its own batch at every step: a shard written for
other data, another seed or another packing is refused, never silently misaligned.

Layout: ``DIR/meta.json`` (k, temperature, steps, batch shape, the teacher and the data
fingerprint) and ``DIR/shard_<first step>.safetensors`` with ``ids`` i32[n, B, T, k],
``logp`` f32[n, B, T, k] and ``tokens`` i32[n, B, T] for ``steps_per_shard`` steps
each. Values are stored exactly as computed (f32), so training on shards gives the same
loss as the live teacher with ``loss.kd.top_k=k`` (tested).

  python -m jaxpost.data.teacher_shards --config=configs/distill.py:tiny --out=runs/shards \\
      --k=8 [--steps_per_shard=100] [--config.train.steps=500 ...]
  python -m jaxpost.main --config=configs/distill.py:tiny --workdir=runs/kd_offline \\
      --config.teacher.offline=runs/shards --config.loss.kd.top_k=8
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from jaxpost import scoring
from jaxpost.data import pipeline, streams
from jaxpost.losses.head import top_k_teacher
from jaxpost.types import Batch
from jaxpost.workdir import data_fingerprint

META = "meta.json"


def _shard_name(first: int) -> str:
  return f"shard_{first:07d}.safetensors"


def make_packer(config, tok):
  """The SFT recipe's batch stream for ``config`` (one host): what training will see."""
  counts: dict = {}
  source, _ = pipeline.build_source(config, tok, counts)
  return streams.StreamPacker.for_config(source, config.data)


def write(config, out: str, *, k: int, steps_per_shard: int = 100) -> dict:
  """Runs ``config.teacher`` over the ``config.train.steps`` batches of ``config``.

  The top k are of log_softmax(teacher logits / ``loss.kd.temperature``), the
  distribution the ``kd`` loss compares with.

  Returns:
    the metadata written to ``out/meta.json``.
  """
  from jaxpost.recipes import common

  if k < 1 or steps_per_shard < 1:
    raise ValueError(f"k and steps_per_shard must be >= 1, got {k}, {steps_per_shard}")
  if os.path.exists(os.path.join(out, META)):
    raise ValueError(f"{out!r} already holds teacher shards")
  tok = common.load_tokenizer(config, out, teacher=True)
  graphdef, state = common.load_teacher(config, tok)
  scorer = scoring.make_scorer(graphdef)
  temperature = float(config.loss.kd.temperature)

  @jax.jit
  def top_k(state, batch):
    return top_k_teacher(scorer.outputs(state, batch), k, temperature)

  packer = make_packer(config, tok)
  steps = config.train.steps
  os.makedirs(out, exist_ok=True)
  for first in tqdm(range(1, steps + 1, steps_per_shard), desc="teacher shards", unit="shard"):
    ids, logp, tokens = [], [], []
    for _ in range(first, min(first + steps_per_shard, steps + 1)):
      arrays, _ = packer.next_batch()
      top = top_k(state, jax.tree.map(np.asarray, Batch(**arrays)))
      ids.append(np.asarray(top.ids, np.int32))
      logp.append(np.asarray(top.logp, np.float32))
      tokens.append(np.asarray(arrays["tokens"], np.int32))
    save_file(
      {"ids": np.stack(ids), "logp": np.stack(logp), "tokens": np.stack(tokens)},
      os.path.join(out, _shard_name(first)),
    )
  t = config.teacher
  meta = {
    "k": k,
    "temperature": temperature,
    "steps": steps,
    "steps_per_shard": steps_per_shard,
    "batch_size": config.data.batch_size,
    "seq_len": config.data.seq_len,
    "vocab_size": tok.vocab_size,
    "teacher": {"init_from": t.init_from, "hf_dir": t.hf_dir, "gguf": t.gguf, "size": t.size},
    "data": data_fingerprint(config),
    "seed": config.seed,
  }
  with open(os.path.join(out, META), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)
  return meta


class Reader:
  """Shards of one directory, read step by step (one shard in memory at a time)."""

  def __init__(self, directory: str):
    path = os.path.join(directory, META)
    if not os.path.exists(path):
      raise ValueError(f"teacher.offline={directory!r} holds no {META}: write shards first")
    with open(path, encoding="utf-8") as f:
      self.meta = json.load(f)
    self.directory = directory
    self._first, self._arrays = None, None

  def check(self, config, vocab_size: int) -> None:
    """Refuses shards written for another run shape, teacher temperature or top k."""
    m = self.meta
    want = {
      "batch_size": config.data.batch_size,
      "seq_len": config.data.seq_len,
      "vocab_size": vocab_size,
      "temperature": float(config.loss.kd.temperature),
    }
    if config.loss.kd.top_k:
      want["k"] = config.loss.kd.top_k
    for key, value in want.items():
      if m[key] != value:
        raise ValueError(
          f"teacher.offline={self.directory!r} was written with {key}={m[key]!r}, "
          f"this run has {value!r}"
        )
    if config.train.steps > m["steps"]:
      raise ValueError(
        f"teacher.offline={self.directory!r} covers {m['steps']} steps, "
        f"train.steps={config.train.steps}"
      )

  def step(self, step: int, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids i32[B, T, k], logp f32[B, T, k]) for training step ``step`` (1-based), after
    checking that the shard was written for this very batch of ``tokens``."""
    per = self.meta["steps_per_shard"]
    first = (step - 1) // per * per + 1
    if first != self._first:
      self._arrays = load_file(os.path.join(self.directory, _shard_name(first)))
      self._first = first
    i = step - first
    if not np.array_equal(self._arrays["tokens"][i], tokens):
      raise ValueError(
        f"teacher.offline={self.directory!r}: step {step}'s shard was written for other "
        "tokens (another dataset, seed, tokenizer or packing than this run's)"
      )
    return self._arrays["ids"][i], self._arrays["logp"][i]


def main(argv=None) -> None:
  from absl import app, flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file("config", None, "a distillation config")
  out = flags.DEFINE_string("out", None, "shard directory to write")
  k = flags.DEFINE_integer("k", 8, "teacher tokens kept per position")
  per = flags.DEFINE_integer("steps_per_shard", 100, "training steps per shard file")
  flags.mark_flags_as_required(["config", "out"])

  def run(_):
    meta = write(config_flag.value, out.value, k=k.value, steps_per_shard=per.value)
    print(json.dumps({"out": out.value, "k": meta["k"], "steps": meta["steps"]}))

  app.run(run, argv=argv)


if __name__ == "__main__":
  main()
