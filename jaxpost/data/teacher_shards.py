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

Layout (``jaxpost.data.step_shards``): ``DIR/meta.json`` (k, temperature, steps, batch
shape, the teacher and the data fingerprint) and ``DIR/shard_<first step>.safetensors``
with ``ids`` i32[n, B, T, k], ``logp`` f32[n, B, T, k] and ``tokens`` i32[n, B, T] for
``steps_per_shard`` steps each. Values are stored exactly as computed (f32), so training
on shards gives the same loss as the live teacher with ``loss.kd.top_k=k`` (tested).

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

from jaxpost import scoring
from jaxpost.data import step_shards
from jaxpost.losses.head import top_k_teacher
from jaxpost.types import DistillBatch

make_packer = step_shards.make_packer
FIELD = "teacher.offline"


def write(config, out: str, *, k: int, steps_per_shard: int = 100) -> dict:
  """Runs ``config.teacher`` over the ``config.train.steps`` batches of ``config``.

  The top k are of log_softmax(teacher logits / ``loss.kd.temperature``), the
  distribution the ``kd`` loss compares with.

  Returns:
    the metadata written to ``out/meta.json``.
  """
  from jaxpost.recipes import common

  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if os.path.exists(os.path.join(out, step_shards.META)):
    raise ValueError(f"{out!r} already holds teacher shards")
  tok = common.load_tokenizer(config, out, teacher=True)
  graphdef, state = common.load_teacher(config, tok)
  scorer = scoring.make_scorer(graphdef)
  temperature = float(config.loss.kd.temperature)

  @jax.jit
  def top_k(state, batch):
    return top_k_teacher(scorer.outputs(state, batch), k, temperature)

  def compute(batch):
    top = top_k(state, jax.tree.map(np.asarray, batch))
    return {"ids": np.asarray(top.ids, np.int32), "logp": np.asarray(top.logp, np.float32)}

  t = config.teacher
  meta = {
    "k": k,
    "temperature": temperature,
    "teacher": {"init_from": t.init_from, "hf_dir": t.hf_dir, "gguf": t.gguf, "size": t.size},
  }
  return step_shards.write(
    config, tok, out, compute, meta, steps_per_shard=steps_per_shard, desc="teacher shards"
  )


class Reader(step_shards.Reader):
  """The teacher shards of one directory, read step by step; a batch view
  (``reader(step, batch)``: the batch with the step's teacher top k, a ``DistillBatch``)."""

  def __init__(self, directory: str):
    super().__init__(directory, FIELD)

  def check(self, config, vocab_size: int) -> None:
    """Refuses shards written for another run shape, teacher temperature or top k."""
    want = {"temperature": float(config.loss.kd.temperature)}
    if config.loss.kd.top_k:
      want["k"] = config.loss.kd.top_k
    super().check(config, vocab_size, **want)

  def step(self, step: int, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids i32[B, T, k], logp f32[B, T, k]) of training step ``step`` (1-based)."""
    arrays = super().step(step, tokens)
    return arrays["ids"], arrays["logp"]

  def __call__(self, step: int, batch) -> DistillBatch:
    return DistillBatch(batch, *self.step(step, np.asarray(batch.tokens)))


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
