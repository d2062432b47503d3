"""Benchmark S of ../shared/design/workloads.md: the SFT train step on W-tiny.

W-tiny (Qwen2-architecture, 8.13M params), batch 8 x 256 random tokens, causal-LM
cross-entropy, AdamW lr 1e-4; median of 10 steps after 3 warm-up. Reports tokens/s and
achieved FLOP/s as a fraction of a dense f32 matmul's FLOP/s measured in the same run
(the machine's practical peak), so the ratio means the same on any machine. The LM head
runs fused with the cross-entropy by default (``--lm_head fused``; ``logits`` materialises
them).

  python experiments/benchmarks/train_step.py [--steps 10] [--warmup 3] [--lm_head fused]

The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxpost import models, train
from jaxpost.types import Batch


def matmul_flops_per_s(sizes=(2048, 4096), repeats: int = 5) -> float:
  """The machine's practical peak: best median FLOP/s of jitted n x n f32 matmuls.

  Taking the best size makes the peak high and so the reported fraction conservative.
  """
  best = 0.0
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      f(a, b).block_until_ready()
      times.append(time.perf_counter() - t)
    best = max(best, 2 * n**3 / statistics.median(times))
  return best


def model_flops_per_step(cfg: models.ModelConfig, batch: int, seq: int) -> float:
  """Analytic training FLOPs: 6 x matmul params x tokens + causal attention scores.

  Matmul params exclude the input embedding (a gather) and include the LM head.
  Attention: QK^T and PV are 2 x 2 x T^2 x H x E per sequence and layer in the
  forward, halved for the causal triangle, x3 for forward + backward.
  """
  d, f, h, k, e, layers = (
    cfg.d_model,
    cfg.mlp_dim,
    cfg.n_heads,
    cfg.n_kv_heads,
    cfg.head_dim,
    cfg.n_layers,
  )
  per_layer = d * h * e + 2 * d * k * e + h * e * d + 3 * d * f
  matmul_params = layers * per_layer + d * cfg.vocab_size
  tokens = batch * seq
  attention = 3 * layers * batch * 2 * 2 * seq * seq * h * e / 2
  return 6 * matmul_params * tokens + attention


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument(
    "--lm_head",
    default="fused",
    help="config.kernels.lm_head: logits (materialised) or fused (gradient-in-forward LM head)",
  )
  args = p.parse_args()

  cfg = models.named_config("w-tiny")
  model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  optimizer = optax.adamw(1e-4)
  graphdef, params, rest = train.split_model(model)
  state = train.init_train_state(params, optimizer, 0)
  objective = train.objective_for("cross_entropy", graphdef, lm_head=args.lm_head)
  step = train.make_train_step(objective, optimizer)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq))
  batch = Batch.from_tokens(jnp.asarray(tokens, jnp.int32))

  compiled = step.lower(state, batch, {"rest": rest}).compile()
  xla_flops = float((compiled.cost_analysis() or {}).get("flops", float("nan")))
  for _ in range(args.warmup):
    state, m = step(state, batch, {"rest": rest})
  jax.block_until_ready(m)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, m = step(state, batch, {"rest": rest})
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  peak = matmul_flops_per_s()
  median = statistics.median(times)
  flops = model_flops_per_step(cfg, args.batch, args.seq)
  n_tokens = args.batch * args.seq
  results = {
    "lm_head": args.lm_head,
    "params": sum(x.size for x in jax.tree.leaves(params)),
    "step_s": round(median, 4),
    "tokens_per_s": round(n_tokens / median, 1),
    "model_gflop_per_step": round(flops / 1e9, 2),
    "xla_gflop_per_step": round(xla_flops / 1e9, 2),
    "achieved_gflop_s": round(flops / median / 1e9, 1),
    "matmul_gflop_s": round(peak / 1e9, 1),
    "fraction_of_matmul": round(flops / median / peak, 3),
  }
  print(" ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
  main()
