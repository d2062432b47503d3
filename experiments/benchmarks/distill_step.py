"""Benchmark D of ../shared/design/workloads.md: one off-policy distillation step.

Student W-tiny (Qwen2 architecture, 8.13M params), teacher the same with 8 layers
(12.07M), both random with fixed seeds and identical weights in every system; batch
8 x 256 random tokens; loss forward KL(teacher || student) over the full vocabulary at
every position; AdamW lr 1e-4; median of ``--steps`` steps after ``--warmup``.
  jaxpost   the SFT recipe's train step with the ``kd`` loss (``--lm_head``: fused =
            neither model's [tokens, vocab] logits are built; logits = materialised)
  torch     a plain PyTorch loop on the same weights (transformers models, sdpa):
            teacher forward under no_grad, student forward, KL, backward, AdamW
  trl       TRL's ``GKDTrainer`` (lmbda=0: never samples; beta=0: forward KL) calling
            its own ``training_step`` + optimizer step on the same batch
Each system runs in its own subprocess (peak RSS is its own); systems alternate over
``--rounds``. Memory (``--memory``): the compiled temporary bytes of the whole jaxpost
distillation step (student + teacher forward, kd loss, backward, AdamW; ``remat``: the
same with ``model.remat`` on the student), of its gradient alone, and of the two LM
heads + divergence alone, at a 151936-token vocabulary and 4096 tokens, fused vs
materialised logits (compile only).

  pip install -e '.[bench]'
  python experiments/benchmarks/distill_step.py [--rounds 2] [--steps 10] [--memory]

The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SYSTEMS = ("jaxpost", "torch", "trl")


def _configs():
  from jaxpost import models

  student = models.named_config("w-tiny")
  return student, dataclasses.replace(student, n_layers=8)


def _models(tmp: str):
  """Student and teacher as jaxpost models (seeds 0, 1) saved as HF dirs under ``tmp``."""
  from jaxpost import models
  from jaxpost.models import hf

  student_cfg, teacher_cfg = _configs()
  dirs = {}
  for name, cfg, seed in (("student", student_cfg, 0), ("teacher", teacher_cfg, 1)):
    dirs[name] = os.path.join(tmp, name)
    if not os.path.exists(dirs[name]):
      hf.save_model(models.create_model(cfg, seed), dirs[name])
  return dirs


def _timed(step, warmup: int, steps: int) -> list[float]:
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return times


def _tokens(args, vocab: int) -> np.ndarray:
  return np.random.default_rng(0).integers(0, vocab, (args.batch, args.seq))


def child_jaxpost(args, dirs) -> list[float]:
  import jax
  import jax.numpy as jnp
  import optax

  from jaxpost import scoring, train
  from jaxpost.models import hf
  from jaxpost.types import Batch

  student, teacher = hf.load_model(dirs["student"]), hf.load_model(dirs["teacher"])
  optimizer = optax.adamw(1e-4)
  graphdef, params, rest = train.split_model(student)
  t_graph, t_params, t_rest = train.split_model(teacher)
  state = train.init_train_state(params, optimizer, 0)
  readers = {"teacher": scoring.make_scorer(t_graph, lm_head=args.lm_head)}
  objective = train.objective_for(
    "kd", graphdef, {"divergence": "fkl"}, readers=readers, lm_head=args.lm_head
  )
  step = train.make_train_step(objective, optimizer)
  batch = Batch.from_tokens(jnp.asarray(_tokens(args, student.config.vocab_size), jnp.int32))
  frozen = {"rest": rest, "teacher": (t_params, t_rest)}
  box = [state]

  def run():
    box[0], m = step(box[0], batch, frozen)
    jax.block_until_ready(m)

  return _timed(run, args.warmup, args.steps)


def child_torch(args, dirs) -> list[float]:
  import torch
  import transformers

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  kw = dict(dtype=torch.float32, attn_implementation="sdpa")
  student = transformers.AutoModelForCausalLM.from_pretrained(dirs["student"], **kw)
  teacher = transformers.AutoModelForCausalLM.from_pretrained(dirs["teacher"], **kw).eval()
  ids = torch.as_tensor(_tokens(args, student.config.vocab_size))
  if args.system == "torch":
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def run():
      with torch.no_grad():
        t_logp = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1].float(), -1)
      s_logp = torch.log_softmax(student(input_ids=ids).logits[:, :-1].float(), -1)
      kl = torch.nn.functional.kl_div(s_logp, t_logp, log_target=True, reduction="none")
      loss = kl.sum(-1).mean()
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)

    return _timed(run, args.warmup, args.steps)
  return _trl_steps(args, student, teacher, ids)


def _trl_steps(args, student, teacher, ids) -> list[float]:
  import datasets
  import tokenizers
  import torch
  import transformers
  from trl.experimental.gkd import GKDConfig, GKDTrainer

  vocab = {str(i): i for i in range(student.config.vocab_size)}
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="0"))
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="0")
  cfg = GKDConfig(
    output_dir=tempfile.mkdtemp(),
    lmbda=0.0,  # never sample: the off-policy step
    beta=0.0,  # forward KL(teacher || student)
    temperature=1.0,
    per_device_train_batch_size=args.batch,
    learning_rate=1e-4,
    max_length=args.seq,
    report_to=[],
    use_cpu=True,
    disable_dropout=True,
  )
  inputs = {
    "input_ids": ids,
    "attention_mask": torch.ones_like(ids),
    "labels": ids.clone(),  # every position counts (as in the other systems)
  }
  data = datasets.Dataset.from_dict({"x": [0] * args.batch})
  trainer = GKDTrainer(
    model=student,
    teacher_model=teacher,
    args=cfg,
    train_dataset=data,
    processing_class=tok,
    data_collator=lambda rows: inputs,
  )
  trainer.create_optimizer_and_scheduler(num_training_steps=args.warmup + args.steps)
  trainer.current_gradient_accumulation_steps = 1  # what its training loop would set
  model = trainer.model

  def run():
    trainer.training_step(model, dict(inputs))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)

  return _timed(run, args.warmup, args.steps)


def memory(args) -> dict:
  """Compiled temporary bytes, fused vs logits, V = 151936: the jaxpost kd train step,
  its gradient alone (no AdamW), and the LM heads + divergence alone."""
  import jax
  import jax.numpy as jnp
  import optax

  from jaxpost import models, scoring, train
  from jaxpost.losses import compute_normalizers
  from jaxpost.types import Batch
  from pallas_kernels.fused_linear_divergence import fused_linear_divergence

  student_cfg = dataclasses.replace(models.named_config("w-tiny"), vocab_size=151936)
  teacher_cfg = dataclasses.replace(student_cfg, n_layers=8)
  out = {}
  for head, remat in (("logits", False), ("fused", False), ("logits", True), ("fused", True)):
    student = models.create_model(dataclasses.replace(student_cfg, remat=remat), 0)
    teacher = models.create_model(teacher_cfg, 1)
    optimizer = optax.adamw(1e-4)
    graphdef, params, rest = train.split_model(student)
    t_graph, t_params, t_rest = train.split_model(teacher)
    state = train.init_train_state(params, optimizer, 0)
    readers = {"teacher": scoring.make_scorer(t_graph, lm_head=head)}
    objective = train.objective_for("kd", graphdef, readers=readers, lm_head=head)
    step = train.make_train_step(objective, optimizer)
    batch = Batch.from_tokens(jnp.zeros((args.memory_batch, args.memory_seq), jnp.int32))
    frozen = {"rest": rest, "teacher": (t_params, t_rest)}
    compiled = step.lower(state, batch, frozen).compile()
    if remat:  # model.remat: the student's blocks recomputed in the backward pass
      out[f"remat_{head}"] = compiled.memory_analysis().temp_size_in_bytes
      continue
    out[f"step_{head}"] = compiled.memory_analysis().temp_size_in_bytes
    # The gradient alone (student + teacher forward, kd loss, backward): what the fused
    # divergence changes; the AdamW update's temporaries are the same on both paths.
    norm = compute_normalizers(batch.loss_mask, batch.segment_ids)

    def loss(p, objective=objective, frozen=frozen, batch=batch, norm=norm):
      return objective(p, frozen, batch, norm)[0]

    grad = jax.jit(jax.grad(loss))
    out[f"grad_{head}"] = grad.lower(params).compile().memory_analysis().temp_size_in_bytes
  # The LM heads + divergence alone (its value and gradient w.r.t. the student's hidden
  # states and head, the teacher given as hidden states + head), same sizes.
  n, d, v = args.memory_batch * args.memory_seq, student_cfg.d_model, student_cfg.vocab_size
  h, w = jnp.zeros((n, d)), jnp.zeros((d, v))
  teacher_in = (jnp.zeros((n, d)), jnp.zeros((d, v)))
  for head, impl in (("logits", "reference"), ("fused", "xla")):

    def loss(h, w, impl=impl):
      stats = fused_linear_divergence(h, w, kind="fkl", teacher=teacher_in, implementation=impl)
      return stats.loss.sum()

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    out[f"head_{head}"] = grad.lower(h, w).compile().memory_analysis().temp_size_in_bytes
  return out


def run_child(system: str, argv: list[str]) -> dict:
  proc = subprocess.Popen(
    [sys.executable, __file__, "--child", system, *argv], stdout=subprocess.PIPE, text=True
  )
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  if status:
    raise RuntimeError(f"{system} failed (status {status})")
  return {"times": json.loads(out.strip().splitlines()[-1]), "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--lm_head", default="fused")
  p.add_argument("--torch_threads", type=int, default=0, help="0 = torch's default")
  p.add_argument("--systems", default=",".join(SYSTEMS))
  p.add_argument("--memory", action="store_true", help="also the V = 151936 memory figures")
  p.add_argument("--memory_batch", type=int, default=4)
  p.add_argument("--memory_seq", type=int, default=1024)
  p.add_argument("--tmp", default=os.path.join(tempfile.gettempdir(), "jaxpost_bench_distill"))
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    args.system = args.child
    dirs = _models(args.tmp)
    fn = child_jaxpost if args.child == "jaxpost" else child_torch
    print(json.dumps(fn(args, dirs)))
    return
  _models(args.tmp)  # written once, before any child reads them
  argv = [a for a in sys.argv[1:] if a != "--memory"]
  systems = args.systems.split(",")
  runs: dict[str, list[dict]] = {}
  for r in range(args.rounds):
    for system in systems if r % 2 == 0 else systems[::-1]:
      res = run_child(system, argv)
      runs.setdefault(system, []).append(res)
      times = [round(t, 3) for t in res["times"]]
      print(f"round {r} {system}: {times} peak {res['peak_mib']:.0f} MiB")
  med = {s: statistics.median([t for r in runs[s] for t in r["times"]]) for s in systems}
  summary = {f"{s}_step_s": round(med[s], 4) for s in systems}
  summary.update({f"{s}_peak_mib": round(max(r["peak_mib"] for r in runs[s])) for s in systems})
  if "jaxpost" in med:
    for s in systems:
      if s != "jaxpost":
        summary[f"speedup_vs_{s}"] = round(med[s] / med["jaxpost"], 3)
  if args.memory:
    mem = memory(args)
    for part in ("step", "remat", "grad", "head"):
      summary[f"mem_{part}_logits_mib"] = round(mem[f"{part}_logits"] / 2**20, 1)
      summary[f"mem_{part}_fused_mib"] = round(mem[f"{part}_fused"] / 2**20, 1)
      summary[f"mem_{part}_fused_over_logits"] = round(
        mem[f"{part}_fused"] / mem[f"{part}_logits"], 4
      )
  summary["lm_head"] = args.lm_head
  print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
  main()
