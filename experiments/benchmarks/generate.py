"""Benchmark G of ../shared/design/workloads.md: the KV-cache sampler vs HF ``generate``.

W-tiny (Qwen2-architecture, 8.13M params, f32), 32 prompts x 32 random tokens, exactly
128 new tokens each, temperature-1.0 sampling with no truncation, KV cache; median of
``--runs`` runs after 1 warm-up (which includes compilation). Both systems run the same
weights: the jaxpost model is exported with ``models.hf.save_model`` and loaded by
``transformers.AutoModelForCausalLM`` (sdpa attention, float32), and the two models'
logits on one batch are compared before timing.

No early stop on either side:
- jaxpost: ``eos_id=-1``; a negative stop id never equals a sampled token (ids are in
  [0, V)), so every row runs the full budget; the script checks all lengths are 128.
- HF: ``min_new_tokens=128`` (EOS is masked until the budget) with ``max_new_tokens=128``;
  ``top_k=0, top_p=1.0`` turn off the default top-50 filter so both draw from the full
  softmax(logits / 1.0).

The two systems alternate run by run, so machine load hits both alike; the ratio of
their medians is the figure. On a machine whose cores are busy with other work, torch's
default OpenMP threads spin at barriers and ``generate`` slows down several-fold;
``--torch_threads 1`` keeps it at its idle speed (see README.md).

  python experiments/benchmarks/generate.py [--runs 3] [--prompts 32] [--prompt_len 32]
    [--new_tokens 128] [--torch_threads 1]

The last line is key=value pairs.

Peers are not runtime dependencies: `pip install -e '.[bench]'` (torch 2.13.0 CPU,
transformers, TRL) installs them for this benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from jaxpost import models
from jaxpost.models import hf
from jaxpost.rollout import sampler


def export_to_torch(model: models.Decoder, out_dir: str):
  """The same weights as a transformers model (f32, sdpa attention, eval mode)."""
  hf.save_model(model, out_dir)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
    out_dir, dtype=torch.float32, attn_implementation="sdpa"
  )
  return hf_model.eval()


def max_logit_gap(model: models.Decoder, hf_model, tokens: np.ndarray) -> float:
  """max |logits_jax - logits_torch| over a [B, T] batch: proves the weights match."""
  ours = np.asarray(model(jnp.asarray(tokens, jnp.int32)), np.float32)
  with torch.no_grad():
    theirs = hf_model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
  return float(np.max(np.abs(ours - theirs)))


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--prompts", type=int, default=32)
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--torch_threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default"
  )
  args = p.parse_args()
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  torch.manual_seed(args.seed)

  cfg = models.named_config("w-tiny")
  model = models.Decoder(cfg, rngs=nnx.Rngs(args.seed))
  rng = np.random.default_rng(args.seed)
  prompts = rng.integers(0, cfg.vocab_size, (args.prompts, args.prompt_len)).astype(np.int32)

  with tempfile.TemporaryDirectory() as tmp:
    hf_model = export_to_torch(model, tmp)
  gap = max_logit_gap(model, hf_model, prompts[:4])

  # jaxpost: the compiled prefill + while_loop decode. eos_id=-1 never matches a token.
  graphdef, state = nnx.split(model)
  generate_fn = sampler.make_generate_fn(
    graphdef, max_new_tokens=args.new_tokens, eos_id=-1, temperature=1.0
  )
  jax_tokens = jnp.asarray(prompts)
  jax_mask = jnp.ones_like(jax_tokens)

  def run_jax(i: int) -> float:
    t = time.perf_counter()
    out = generate_fn(state, jax_tokens, jax_mask, jax.random.key(i))
    lengths = np.asarray(jax.block_until_ready(out.lengths))
    elapsed = time.perf_counter() - t
    if not np.all(lengths == args.new_tokens):
      raise RuntimeError(f"jaxpost stopped early: lengths {sorted(set(lengths.tolist()))}")
    return elapsed

  # HF: plain sampling from the full softmax, exactly new_tokens tokens.
  torch_tokens = torch.as_tensor(prompts, dtype=torch.long)
  torch_mask = torch.ones_like(torch_tokens)
  gen_kwargs = dict(
    do_sample=True,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    max_new_tokens=args.new_tokens,
    min_new_tokens=args.new_tokens,
    use_cache=True,
    pad_token_id=0,
  )

  def run_hf(i: int) -> float:
    torch.manual_seed(i)
    t = time.perf_counter()
    with torch.no_grad():
      out = hf_model.generate(input_ids=torch_tokens, attention_mask=torch_mask, **gen_kwargs)
    elapsed = time.perf_counter() - t
    if out.shape[1] != args.prompt_len + args.new_tokens:
      raise RuntimeError(f"HF generated {out.shape[1] - args.prompt_len} tokens")
    return elapsed

  t = time.perf_counter()
  run_jax(0)  # warm-up: includes compilation
  jax_first = time.perf_counter() - t
  run_hf(0)
  jax_times, hf_times = [], []
  for i in range(1, args.runs + 1):  # alternate, so load drifts hit both alike
    jax_times.append(run_jax(i))
    hf_times.append(run_hf(i))

  n_tokens = args.prompts * args.new_tokens
  jax_s, hf_s = statistics.median(jax_times), statistics.median(hf_times)
  print("| system | median s | generated tokens/s | runs (s) |")
  print("|---|---|---|---|")
  for name, s, times in (("jaxpost sampler", jax_s, jax_times), ("HF generate", hf_s, hf_times)):
    runs = ", ".join(f"{x:.3f}" for x in times)
    print(f"| {name} | {s:.3f} | {n_tokens / s:.0f} | {runs} |")
  results = {
    "params": sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
    "max_logit_gap": f"{gap:.2e}",
    "jax_first_call_s": round(jax_first, 2),
    "jax_s": round(jax_s, 4),
    "hf_s": round(hf_s, 4),
    "jax_tokens_per_s": round(n_tokens / jax_s, 1),
    "hf_tokens_per_s": round(n_tokens / hf_s, 1),
    "speedup_vs_hf": round(hf_s / jax_s, 3),
    "torch_threads": torch.get_num_threads(),
  }
  print(" ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
  main()
