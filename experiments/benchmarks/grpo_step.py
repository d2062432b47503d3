"""Benchmark R of ../shared/design/workloads.md: one GRPO step, jaxpost vs TRL ``GRPOTrainer``.

One step on W-tiny (Qwen2-architecture, 8.13M params, f32): 4 prompts x 8 samples
(B = 32 rows), each prompt 32 random token ids, exactly 64 new tokens at temperature 1.0
(no truncation), reward = fraction of even token ids in the completion, group z-score
advantages, GRPO loss (token ratio, clip 0.2, per-sequence token mean then mean over
sequences) with a k3 KL to a frozen reference at beta 0.04, one AdamW update (lr 1e-6,
no weight decay, grad-norm clip 1.0: TRL's defaults) per generation batch. Median of
``--steps`` full steps after ``--warmup`` warm-up steps (compile / first-call time is in
the warm-up only). Both systems start from the same weights: the jaxpost model is
exported with ``models.hf.save_model`` and TRL loads that directory.

jaxpost step, built from the RL recipe's public pieces (``jaxpost.recipes.rl``):
  sample   ``sampler.make_generate_fn`` + ``sampler.generate_groups`` (``eos_id=-1``: a
           negative stop id never matches, so every row decodes exactly 64 tokens);
  reward   on the host from the sampled ids; ``rollout.batching.rollout_batch`` lays out
           the [32, 96] rows;
  score    ``scoring.jit_logp`` twice: ``old_logp`` under the current policy (the
           recipe's default, ``rl.old_logp=recompute``) and ``ref_logp`` under the frozen
           reference; as in the recipe, the LM head runs on the 64 completion columns
           only (``window``), not on the prompts, and each group's prompt runs once
           (``group_size=8``, the recipe's ``rl.shared_prompt``; the sampler's
           ``generate_groups`` prefills each prompt once too);
  update   ``advantages.grpo`` + ``broadcast_to_tokens``, then ``train.make_update``
           (the recipe's one jitted update) with the registered ``grpo`` loss (its preset is
           beta 0.04, k3, seq_mean_token_mean).
  Each step is timed from the start of sampling to ``block_until_ready`` of the update.
  ``--old_logp sampler`` takes pi_old from the sampler's recorded log-probs instead (one
  forward fewer, what TRL does; the recipe's ``rl.old_logp=sampler``); ``--lm_head
  fused`` scores with the fused LM head; ``--shared_prompt 0`` runs every row's prompt
  in scoring and the update (``rl.shared_prompt=False``).

TRL step: ``GRPOTrainer`` with ``per_device_train_batch_size=32, num_generations=8``
(4 prompts x 8), ``max_completion_length=64`` and ``generation_kwargs`` adding
``min_new_tokens=64`` (EOS masked until the budget, so no early stop), ``top_k=0``,
``loss_type="grpo"``, ``beta=0.04``. Prompts are strings of a word-level tokenizer whose
word ``<i>`` is token id i, so they encode to the same 32 ids; the reward function
reads ``completion_ids``. TRL (num_iterations=1) skips the old-log-prob forward and
computes the reference log-probs in its generation step; one trainer step is
sample + reward + reference forward + policy forward/backward + AdamW. A callback
times each step from ``on_step_begin`` to ``on_step_end`` (generation, reward, reference
forward, update and TRL's metric gathering all happen in between); TRL's own logged
``step_time`` is reported beside it as a cross-check.

The two systems alternate step by step (the callback runs jaxpost step k right after TRL
step k, outside TRL's timing), because the shared machine's load drifts by 2-5x within
minutes and a back-to-back comparison would mostly measure the drift.

  python experiments/benchmarks/grpo_step.py [--steps 5] [--warmup 1] [--skip_trl]
    [--torch_threads 1] [--lm_head fused] [--old_logp sampler] [--shared_prompt 0]

On a busy machine use ``--torch_threads 1`` (see generate.py and README.md).

Prints a markdown table; the last line is key=value pairs.

Peers are not runtime dependencies: `pip install -e '.[bench]'` (torch 2.13.0 CPU,
transformers, TRL) installs them for this benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxpost import models, scoring, train
from jaxpost.losses import advantages
from jaxpost.models import hf
from jaxpost.recipes import rl
from jaxpost.rollout import batching, sampler
from jaxpost.types import Rollout

P, G, PROMPT_LEN, NEW_TOKENS = 4, 8, 32, 64  # noqa: N816 (axis letters)
BETA, LR, MAX_GRAD_NORM = 0.04, 1e-6, 1.0


def even_fraction(completion_ids: np.ndarray) -> np.ndarray:
  """f32[B] reward: fraction of even token ids in each [B, N] completion (all N count)."""
  return np.mean(np.asarray(completion_ids) % 2 == 0, axis=-1).astype(np.float32)


def make_prompts(vocab: int, num_steps: int, seed: int) -> np.ndarray:
  """i32[S, P, PROMPT_LEN] random prompt ids, P fresh prompts per step."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, vocab, (num_steps, P, PROMPT_LEN)).astype(np.int32)


# ----------------------------------------------------------------------------------------
# jaxpost


PHASES = ("sample", "reward", "score", "update")


def make_jaxpost_step(
  model: models.Decoder, seed: int, *, lm_head: str, old_logp_from: str, shared_prompt: bool
) -> Callable[[int, np.ndarray], tuple[float, dict[str, float]]]:
  """``run(step, prompts i32[P, PROMPT_LEN]) -> (seconds, {phase: seconds})``, one GRPO step.

  Args:
    model: the initial policy (also the frozen reference).
    seed: PRNG seed.
    lm_head: key of ``losses.head.LM_HEADS`` for scoring and the update.
    old_logp_from: "recompute" (the recipe: a forward of the current policy) or
      "sampler" (the sampler's recorded log_softmax(logits / T), the same quantity up
      to float noise when there is one update per generation batch, as TRL assumes).
    shared_prompt: score and update with each group's prompt run once.
  """
  graphdef, params, rest = train.split_model(model)
  ref_params = jax.tree.map(jnp.copy, params)
  optimizer = optax.chain(
    optax.clip_by_global_norm(MAX_GRAD_NORM), optax.adamw(LR, weight_decay=0.0)
  )
  generate_fn = sampler.make_generate_fn(
    graphdef, max_new_tokens=NEW_TOKENS, eos_id=-1, temperature=1.0
  )
  # As the recipe does: the LM head only on the 64 completion columns of each row.
  head = dict(temperature=1.0, lm_head=lm_head, chunk_size=0, window=NEW_TOKENS)
  head["group_size"] = G if shared_prompt else 1
  logp_fn = scoring.jit_logp(scoring.make_scorer(graphdef, **head))
  # The registered grpo preset: k3 KL, beta 0.04, seq_mean_token_mean. One update per
  # batch through the recipe's jitted epochs x minibatches update (U = 1).
  update = train.make_update(train.objective_for("grpo", graphdef, {}, **head), optimizer)
  order = rl.update_order(np.random.default_rng(seed), P, G, 1, 1, whole_groups=shared_prompt)
  group_ids = np.repeat(np.arange(P, dtype=np.int32), G)
  base_key = jax.random.key(seed)
  box = {"state": train.init_train_state(params, optimizer, seed)}

  def run(step: int, step_prompts: np.ndarray) -> tuple[float, dict[str, float]]:
    state = box["state"]
    t0 = time.perf_counter()
    model_state = nnx.merge_state(state.params, rest)
    prompt_tokens, prompt_mask, out = sampler.generate_groups(
      generate_fn, model_state, step_prompts.tolist(), G, jax.random.fold_in(base_key, step)
    )
    out = jax.device_get(out)
    if not np.all(out.lengths == NEW_TOKENS):
      raise RuntimeError(f"jaxpost stopped early: lengths {sorted(set(out.lengths.tolist()))}")
    t1 = time.perf_counter()
    laid = batching.rollout_batch(prompt_tokens, prompt_mask, out)
    rewards = even_fraction(out.tokens)
    mask = laid.batch.loss_mask
    adv = np.asarray(advantages.grpo(rewards.reshape(P, G))).reshape(P * G)
    token_adv = np.asarray(advantages.broadcast_to_tokens(adv, mask))
    t2 = time.perf_counter()
    batch = jax.tree.map(jnp.asarray, laid.batch)
    if old_logp_from == "recompute":
      old_logp, _ = logp_fn((state.params, rest), batch)
    else:
      old_logp = jnp.asarray(laid.sampler_logp)
    ref_logp, _ = logp_fn((ref_params, rest), batch)
    jax.block_until_ready((old_logp, ref_logp))
    t3 = time.perf_counter()
    rollout = Rollout(
      batch=batch,
      advantages=jnp.asarray(token_adv),
      old_logp=old_logp,
      sampler_logp=jnp.asarray(laid.sampler_logp),
      ref_logp=ref_logp,
      group_ids=jnp.asarray(group_ids),
      turn_ids=jnp.asarray((mask > 0).astype(np.int32)),
    )
    state, metrics = update(state, rollout, {"rest": rest}, order)
    jax.block_until_ready(metrics)
    t4 = time.perf_counter()
    box["state"] = state
    return t4 - t0, dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True))

  return run


# ----------------------------------------------------------------------------------------
# TRL


def word_tokenizer(vocab: int):
  """A transformers tokenizer whose whitespace-separated word ``<i>`` is token id i."""
  import tokenizers
  import transformers

  # Delimited words: a special token's text (pad "<0>", EOS "<1>") is then never a
  # substring of another word ("t1" would split "t135" into EOS + "35").
  model = tokenizers.models.WordLevel({f"<{i}>": i for i in range(vocab)}, unk_token="<0>")
  tk = tokenizers.Tokenizer(model)
  tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tk.decoder = None
  # pad and EOS must be ids of the model's vocabulary; EOS never appears in a completion
  # (min_new_tokens masks it for the whole budget), pad only fills nothing (equal lengths).
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<0>", eos_token="<1>")


def trl_steps(
  hf_dir: str,
  prompts: np.ndarray,
  seed: int,
  out_dir: str,
  between: Callable[[int], None] | None = None,
) -> tuple[list[float], list[float]]:
  """Runs len(prompts) GRPOTrainer steps, calling ``between(k)`` after the k-th.

  Args:
    hf_dir: the exported checkpoint (policy and reference load it).
    prompts: i32[S, P, PROMPT_LEN], P prompts per step.
    seed: trainer seed.
    out_dir: trainer output directory (nothing is saved).
    between: run after each TRL step, outside its timing (the interleaved jaxpost step).

  Returns:
    (seconds of each step from ``on_step_begin`` to ``on_step_end``; TRL's own logged
    ``step_time`` per step, a cross-check).
  """
  import datasets
  import transformers
  import trl

  tok = word_tokenizer(models.named_config("w-tiny").vocab_size)
  texts = [" ".join(f"<{i}>" for i in row) for row in prompts.reshape(-1, PROMPT_LEN)]
  encoded = [tok(t)["input_ids"] for t in texts]
  if encoded != prompts.reshape(-1, PROMPT_LEN).tolist():
    raise RuntimeError("the word tokenizer does not round-trip the prompt ids")

  def reward(completion_ids, **_):
    return [float(np.mean(np.asarray(c) % 2 == 0)) for c in completion_ids]

  class StepTimer(transformers.TrainerCallback):
    def __init__(self):
      self.begin, self.ends = [], []

    def on_step_begin(self, args, state, control, **kwargs):
      self.begin.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
      self.ends.append(time.perf_counter())
      if between is not None:
        between(len(self.ends) - 1)

  config = trl.GRPOConfig(
    output_dir=out_dir,
    per_device_train_batch_size=P * G,
    num_generations=G,
    max_completion_length=NEW_TOKENS,
    generation_kwargs={"min_new_tokens": NEW_TOKENS},
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    beta=BETA,
    loss_type="grpo",
    learning_rate=LR,
    lr_scheduler_type="constant",
    weight_decay=0.0,
    max_grad_norm=MAX_GRAD_NORM,
    max_steps=len(prompts),
    shuffle_dataset=False,
    use_cpu=True,
    bf16=False,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    disable_tqdm=True,
    dataloader_num_workers=0,
    seed=seed,
  )
  timer = StepTimer()
  trainer = trl.GRPOTrainer(
    model=hf_dir,
    reward_funcs=reward,
    args=config,
    train_dataset=datasets.Dataset.from_dict({"prompt": texts}),
    processing_class=tok,
    callbacks=[timer],
  )
  trainer.train()
  lengths = [m.get("completions/mean_length") for m in trainer.state.log_history]
  lengths = [x for x in lengths if x is not None]
  if lengths and min(lengths) != NEW_TOKENS:
    raise RuntimeError(f"TRL completions were not all {NEW_TOKENS} tokens: {lengths}")
  own = [m["step_time"] for m in trainer.state.log_history if "step_time" in m]
  return [b - a for a, b in zip(timer.begin, timer.ends, strict=True)], own


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--skip_trl", action="store_true")
  p.add_argument(
    "--torch_threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default"
  )
  p.add_argument("--lm_head", default="logits", help="logits | fused | fused_xla (jaxpost)")
  p.add_argument("--shared_prompt", type=int, default=1, help="1: each prompt runs once (recipe)")
  p.add_argument(
    "--old_logp",
    default="recompute",
    choices=("recompute", "sampler"),
    help="jaxpost pi_old: recompute (the recipe) or the sampler's recorded log-probs",
  )
  args = p.parse_args()
  if args.torch_threads:
    import torch

    torch.set_num_threads(args.torch_threads)

  cfg = models.named_config("w-tiny")
  model = models.Decoder(cfg, rngs=nnx.Rngs(args.seed))
  n = args.warmup + args.steps
  prompts = make_prompts(cfg.vocab_size, n, args.seed)

  jax_times, phases = [], {k: [] for k in PHASES}

  def jax_step(k: int) -> None:
    seconds, split = run_jax(k, prompts[k])
    jax_times.append(seconds)
    for name, dt in split.items():
      phases[name].append(dt)

  with tempfile.TemporaryDirectory() as tmp:
    hf.save_model(model, tmp)  # before jaxpost trains: both start from these weights
    run_jax = make_jaxpost_step(
      model,
      args.seed,
      lm_head=args.lm_head,
      old_logp_from=args.old_logp,
      shared_prompt=bool(args.shared_prompt),
    )
    if args.skip_trl:
      trl_times, trl_own = [], []
      for k in range(n):
        jax_step(k)
    else:  # alternate: TRL step k, then jaxpost step k, so load drifts hit both alike
      trl_times, trl_own = trl_steps(tmp, prompts, args.seed, tmp + "/trl", between=jax_step)

  def med(xs):
    return statistics.median(xs[args.warmup :])

  jax_s = med(jax_times)
  print("| system | median s/step | steps after warm-up (s) | warm-up (s) |")
  print("|---|---|---|---|")
  rows = [("jaxpost", jax_times)] + ([("TRL GRPOTrainer", trl_times)] if trl_times else [])
  for name, times in rows:
    runs = ", ".join(f"{x:.2f}" for x in times[args.warmup :])
    warm = ", ".join(f"{x:.1f}" for x in times[: args.warmup])
    print(f"| {name} | {med(times):.3f} | {runs} | {warm} |")
  results = {
    "lm_head": args.lm_head,
    "old_logp": args.old_logp,
    "shared_prompt": args.shared_prompt,
    "jax_step_s": round(jax_s, 4),
  }
  if trl_times:
    import torch

    results["torch_threads"] = torch.get_num_threads()
  results.update({f"jax_{k}_s": round(med(v), 4) for k, v in phases.items()})
  if trl_times:
    results["trl_step_s"] = round(med(trl_times), 4)
    results["trl_own_step_time_s"] = round(med(trl_own), 4) if len(trl_own) > args.warmup else None
    results["speedup_vs_trl"] = round(med(trl_times) / jax_s, 3)
  print(" ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
  main()
