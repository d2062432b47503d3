"""Federated LoRA fine-tuning simulated in one process, top to bottom (``recipe=federated``):
FedAvg and the FedOpt servers, FedSD and FedSDR (the FedSDR card, methods card section 5).

    pool      ``fed.examples`` training problems of ``data.levels``' mixture, cut into
              ``fed.clients`` clients (``jaxpost.federated.partition``: iid, by level,
              Dirichlet); a client's weight n_k is its number of examples
    rewrite   FedSD / FedSDR only, once before the first round: the global model (the
              start) rewrites every client's responses (``jaxpost.federated.rewrite``),
              giving each client a distilled copy D_dist of its raw data D_raw
    model     the frozen base (``model`` / ``train.init_from``) with one LoRA adapter
              ``lora.name``: the global adapter the server aggregates (this run's train
              state, so checkpoints, ``load_run`` and ``export_hf`` see an ordinary LoRA
              run); FedSDR's clients add a second adapter, ``smoothing``, that never
              leaves them (its update is summed with the global one in every layer:
              h = W0 h + s_r B_r A_r h + s_s B_s A_s h)
    round     (one run step) every client starts from the global adapter and trains
              locally, all clients at once (one jitted vmap over stacked client states,
              local steps as a scan: ``jaxpost.federated.clients``), the client
              optimiser (``optim``) restarting each round:
                fedavg  ``fed.local_steps`` steps on D_raw
                fedsd   ``fed.local_steps`` steps on D_dist
                fedsdr  stage 1: ``fed.smoothing_steps`` steps of the smoothing adapter
                        on D_dist (the global adapter masked: zero gradient); stage 2:
                        ``fed.local_steps`` steps of the global adapter on D_raw (the
                        smoothing adapter masked)
              then uploads its global adapter; the server forms the n_k-weighted
              pseudo-gradient and applies ``fed.aggregator`` (FedAvg, FedProx: the
              clients' pull ``optim.l2_to_start`` = mu, FedAvgM, FedAdam, FedYogi,
              FedAdagrad), or with ``fed.lora_aggregation=product`` the rank-r factors
              of the exact mean of the clients' B A
    metrics   per round: the clients' mean loss per stage, bytes uploaded and
              downloaded (``fed/upload_bytes``: one adapter per client, FedSDR
              included) and their running total; every ``eval.every`` rounds and at
              the end the global model's held-out accuracy (base + global adapter);
              FedSDR with ``fed.eval_clients`` also each client's own model (with its
              smoothing adapter) at the end

``train.steps`` counts rounds (``eval.every``, ``train.checkpoint_every`` too);
``data.batch_size`` is each client's local batch. A run resumes from its last
checkpoint: the global adapter and server state, the clients' data positions, and
FedSDR's smoothing adapters (``clients/``, saved with each checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import numpy as np
from flax import nnx
from ml_collections import config_dict
from tqdm import tqdm

from jaxpost import checkpoint, config_lib, fields, optim, peft, scoring, train
from jaxpost.data import packing, tasks, template
from jaxpost.eval import accuracy
from jaxpost.federated import aggregate, clients, partition, rewrite
from jaxpost.losses import LOSSES
from jaxpost.recipes import common, register
from jaxpost.types import Batch

LOSS_FAMILIES = ("token",)
DEFAULT_LOSS = "cross_entropy"
METHODS = ("fedavg", "fedsd", "fedsdr")
LORA_AGGREGATION = ("factors", "product")
SMOOTHING = "smoothing"  # FedSDR's client-only adapter


def config_sections(c: config_dict.ConfigDict) -> None:
  c.fed = config_dict.ConfigDict()
  f = c.fed
  f.method = "fedavg"  # fedavg | fedsd (train on rewrites) | fedsdr (dual-stream LoRA)
  f.aggregator = "fedavg"  # server rule: jaxpost.federated.AGGREGATORS
  f.clients = 4  # number of clients
  f.partition = "level"  # iid | level | dirichlet
  f.alpha = 0.5  # dirichlet concentration (small = skewed)
  f.examples = 2000  # training problems in the pool, shared out among the clients
  f.local_steps = 10  # client steps per round (FedSDR: of stage 2, the global adapter)
  f.smoothing_steps = 0  # FedSDR stage 1 steps (smoothing adapter); 0 = fed.local_steps
  f.server_lr = 1.0  # server learning rate (fedavg / fedprox: 1 = plain averaging)
  f.server_momentum = 0.9  # fedavgm
  f.server_b1 = 0.9  # fedadam / fedyogi
  f.server_b2 = 0.99  # fedadam / fedyogi
  f.server_eps = 1e-3  # adaptive servers' tau (Reddi et al.)
  f.lora_aggregation = "factors"  # factors: average A and B | product: exact mean of B A
  f.rewrite_context = "answer"  # what the rewriting model sees: answer | trace | none
  f.rewrite_temperature = 0.0  # 0 = greedy rewrites
  f.rewrite_max_tokens = 96  # decode budget of a rewrite
  f.eval_clients = False  # fedsdr: also evaluate every client's own model at the end
  fields.declare(
    "fed",
    method=fields.one_of(METHODS),
    aggregator=fields.one_of(aggregate.AGGREGATORS),
    clients=fields.integer(ge=1),
    partition=fields.one_of(partition.SCHEMES),
    alpha=fields.num(gt=0),
    examples=fields.integer(ge=1),
    local_steps=fields.integer(ge=1),
    smoothing_steps=fields.integer(ge=0),
    server_lr=fields.num(gt=0),
    server_momentum=fields.num(ge=0, lt=1),
    server_b1=fields.num(ge=0, lt=1),
    server_b2=fields.num(ge=0, lt=1),
    server_eps=fields.num(gt=0),
    lora_aggregation=fields.one_of(LORA_AGGREGATION),
    rewrite_context=fields.one_of(rewrite.CONTEXTS),
    rewrite_temperature=fields.num(ge=0),
    rewrite_max_tokens=fields.integer(ge=1),
    eval_clients=fields.FLAG,
  )


def validate(c: config_dict.ConfigDict) -> None:
  if "fed" not in c:
    raise config_lib.ConfigError("recipe=federated needs its section: start from configs/fedsd.py")
  f = c.fed
  if not c.lora.rank:
    raise config_lib.ConfigError("recipe=federated trains LoRA adapters: set lora.rank > 0")
  if c.train.trainable or c.train.heads:
    raise config_lib.ConfigError("recipe=federated trains adapters only: no train.trainable/heads")
  if c.data.source != "tasks":
    raise config_lib.ConfigError("recipe=federated draws its clients from the task levels")
  if c.lora.name == SMOOTHING:
    raise config_lib.ConfigError(f"lora.name={SMOOTHING!r} is FedSDR's client adapter")
  if f.aggregator == "fedprox" and not c.optim.l2_to_start > 0:
    raise config_lib.ConfigError(
      "fed.aggregator='fedprox': set optim.l2_to_start > 0 (its mu, the clients' pull "
      "toward the round's global adapter)"
    )
  if f.lora_aggregation == "product" and f.aggregator not in ("fedavg", "fedprox"):
    raise config_lib.ConfigError(
      "fed.lora_aggregation='product' replaces the server's update by the exact mean: "
      "with fed.aggregator fedavg or fedprox only"
    )
  if f.eval_clients and f.method != "fedsdr":
    raise config_lib.ConfigError("fed.eval_clients evaluates FedSDR's clients' own models")


@register("federated")
def run(config, workdir: str) -> dict:
  """Runs ``train.steps`` federated rounds per ``config`` in ``workdir``; returns the summary."""
  mesh = common.validate_and_start(config, workdir, "federated")
  f = config.fed
  tok = common.load_tokenizer(config, workdir)

  # The pool and its clients.
  mix = tasks.mixture(config_lib.parse_levels(config.data.levels), "train", config.seed)
  problems = [mix.problem_at(i) for i in range(f.examples)]
  parts = partition.partition([p.level for p in problems], f.clients, f.partition,
                              alpha=f.alpha, seed=config.seed)  # fmt: skip
  sizes = [len(p) for p in parts]
  logging.info("clients (examples per level): %s", partition.level_counts(
    [p.level for p in problems], parts))  # fmt: skip
  weights = aggregate.client_weights(sizes)

  # The global adapter is the run's state; the server optimiser is its optimiser.
  server = aggregate.server_optimizer(f.aggregator, lr=f.server_lr, momentum=f.server_momentum,
                                      b1=f.server_b1, b2=f.server_b2, eps=f.server_eps)  # fmt: skip
  run_ = common.setup(config, workdir, mesh, tok, total_updates=config.train.steps,
                      optimizer=server, step_zero=_client_counts(sizes))  # fmt: skip
  base = run_.frozen["rest"]

  # Each client's data: raw, and the rewrites (FedSD / FedSDR, once, kept in the workdir).
  raw = [p.example for p in problems]
  streams = {"raw": raw}
  if f.method in ("fedsd", "fedsdr"):
    streams["distilled"] = _rewrites(run_, config, problems, workdir)
  encoded = {k: [template.encode_example(tok, ex) for ex in v] for k, v in streams.items()}

  # The clients' model and local steps: the global adapter (+ FedSDR's smoothing one).
  stages = _stages(f)
  client_graphdef, smoothing = _client_model(config, run_, tok.vocab_size)
  scorer = scoring.make_scorer(client_graphdef, lm_head=config.kernels.lm_head,
                               chunk_size=config.kernels.chunk_size)  # fmt: skip
  name = config.loss.name
  objective = train.make_objective(
    LOSSES.family(name), scorer, LOSSES.bind(name, config.loss[name], where=f"loss.{name}")
  )
  local, optimizers = {}, {}
  for stage in stages:
    optimizers[stage.name], _ = _client_optimizer(config, stage)
    local[stage.name] = clients.make_local_rounds(
      train.step_function(objective, optimizers[stage.name], microbatches=config.train.microbatches)
    )
  positions = run_.data_state.get("positions") or {k: [0] * f.clients for k in streams}
  client_ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "clients"), keep=config.train.keep_checkpoints, async_save=False
  )
  if smoothing is not None:
    smoothing = clients.broadcast(smoothing, f.clients)
    if run_.first_step:
      smoothing, _ = client_ckpt.restore(run_.first_step, like=smoothing)
  place = _client_placement(run_.mesh, f.clients) if run_.sharded else (lambda tree: tree)
  upload = aggregate.payload_bytes(run_.state.params)
  sent = float(run_.data_state.get("bytes", 0.0))

  def data() -> dict:
    if smoothing is not None and client_ckpt.latest_step() != step:
      client_ckpt.save(step, smoothing, {}, force=True)
    return {"positions": positions, "bytes": sent}

  # The rounds.
  total = common.end_step(config)
  bar = tqdm(total=total, initial=run_.first_step, desc="rounds",
             disable=not (config.train.progress and jax.process_index() == 0))  # fmt: skip
  last, step = {}, run_.first_step
  for step in range(run_.first_step + 1, total + 1):
    params = clients.broadcast(run_.state.params, f.clients)
    if smoothing is not None:
      params = nnx.merge_state(params, smoothing)
    m = {}
    for stage in stages:
      data_ = encoded[stage.data]
      batches = _round_batches(data_, parts, positions[stage.data], stage.steps, config)
      init = jax.vmap(lambda p, o=optimizers[stage.name]: train.init_train_state(p, o, config.seed))
      states = place(init(params))
      states, metrics = local[stage.name](states, place(batches), {"rest": base})
      params = states.params
      m[f"fed/{stage.name}_loss"] = float(np.mean(jax.device_get(metrics["train/loss"])))
    shared, mine = _split_adapters(params, config.lora.name)
    drift = _drift(run_.state.params, shared)
    if f.lora_aggregation == "product":
      new = aggregate.lora_exact_mean(shared, weights)
      opt_state = run_.state.opt_state
    else:
      new, opt_state = aggregate.server_update(server, run_.state.params, run_.state.opt_state,
                                               shared, weights)  # fmt: skip
    run_.state = dataclasses.replace(run_.state, params=new, opt_state=opt_state,
                                     step=run_.state.step + 1)  # fmt: skip
    smoothing = mine
    sent += 2 * upload * f.clients  # down and up: one adapter per client each way
    m["train/loss"] = m[f"fed/{stages[-1].name}_loss"]
    m.update({"fed/upload_bytes": upload * f.clients, "fed/download_bytes": upload * f.clients,
              "fed/total_bytes": sent, "fed/drift": drift})  # fmt: skip
    if step % config.train.log_every == 0 or step == total:
      run_.writer.write(step, m)
      bar.set_postfix(loss=f"{m['train/loss']:.4f}")
    last = m
    bar.update(1)
    stop = common.periodic(run_, step, data, common.should_stop(run_, step))
    if stop:
      logging.warning("stopping at round %d (%s)", step, stop)
      break
  bar.close()
  extra = {}
  if f.eval_clients and smoothing is not None:
    extra = _evaluate_clients(run_, config, client_graphdef, smoothing, tok, step)
  result = common.finish(run_, step, data(), last, extra=extra)
  client_ckpt.close()
  return result


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # "local" (fedavg / fedsd) or FedSDR's "smoothing" / "rectify"
  data: str  # "raw" | "distilled"
  steps: int
  trains: str  # the adapter it trains: the global one or SMOOTHING


def _stages(f) -> list[Stage]:
  if f.method == "fedsdr":
    return [Stage("smoothing", "distilled", f.smoothing_steps or f.local_steps, SMOOTHING),
            Stage("rectify", "raw", f.local_steps, "")]  # fmt: skip
  return [Stage("local", "distilled" if f.method == "fedsd" else "raw", f.local_steps, "")]


def _client_optimizer(config, stage: Stage):
  """The client optimiser of a stage, masked to the adapter it trains (zero gradient and
  zero update for the other: ``optim.mask_updates``)."""
  trains = stage.trains or config.lora.name

  def label(params):
    return jax.tree_util.tree_map_with_path(
      lambda p, _: f".lora.{trains}." in f".{train.path_name(p)}.", params
    )

  mask = label if config.fed.method == "fedsdr" else None
  return optim.make_optimizer(config.optim, stage.steps, trainable=mask)


def _client_model(config, run_, vocab_size: int):
  """(the clients' graphdef, FedSDR's initial smoothing adapter or None)."""
  if config.fed.method != "fedsdr":
    return run_.graphdef, None
  model = common.build_model(config, vocab_size, adapters=True)
  settings = dataclasses.replace(common.lora_settings(config), name=SMOOTHING)
  peft.add_lora(model, settings, seed=config.seed + 1)
  graphdef, params, _ = train.split_model(model, peft.adapter_filter())
  _, smoothing = _split_adapters(params, config.lora.name)
  return graphdef, smoothing


def _client_placement(mesh, n_clients: int):
  """Stacked client trees on the run's mesh: the client axis split over (data, fsdp) when
  the clients divide evenly (clients train in parallel on their devices), else
  replicated; every other axis whole."""
  from jax.sharding import NamedSharding, PartitionSpec

  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  spec = PartitionSpec(("data", "fsdp")) if n_clients % shards == 0 else PartitionSpec()
  return lambda tree: jax.device_put(tree, NamedSharding(mesh, spec))


def _split_adapters(params, name: str):
  """(the adapter ``name``'s leaves, the rest: FedSDR's smoothing adapter or None)."""
  shared, mine = nnx.split_state(params, peft.adapter_filter(name), ...)
  return shared, (mine if jax.tree.leaves(mine) else None)


def _round_batches(examples, parts, positions: list[int], steps: int, config) -> Batch:
  """[C, S, B, T] batches: client k's next S x B examples of its shuffled data (a new
  seeded order every pass), one per row; ``positions`` advance in place."""
  b, t = config.data.batch_size, config.data.seq_len
  out = []
  for k, part in enumerate(parts):
    n = len(part)

    def source(i, k=k, part=part, n=n):
      order = np.random.default_rng([config.seed, k, i // n]).permutation(n)
      e = examples[part[order[i % n]]]
      return e.tokens, e.roles

    rows = []
    for _ in range(steps):
      arrays, positions[k], _ = packing.pack_batch(source, positions[k], batch_size=b, seq_len=t,
                                                   pack=False, overlong="truncate")  # fmt: skip
      rows.append(arrays)
    out.append({key: np.stack([r[key] for r in rows]) for key in rows[0]})
  return Batch(**{key: np.stack([c[key] for c in out]) for key in out[0]})


def _rewrites(run_, config, problems, workdir: str) -> list[template.Example]:
  """The global model's rewrites of every pool problem (``rewrite.rewrite``), written once
  to WORKDIR/distilled.jsonl and read back on a resume."""
  path = os.path.join(workdir, "distilled.jsonl")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as fh:
      rows = [json.loads(line) for line in fh]
    return [template.Example(r["prompt"], r["thinking"], r["answer"]) for r in rows]
  f = config.fed
  model = nnx.merge(run_.graphdef, run_.model_state())
  out, stats = rewrite.rewrite(
    model, run_.tok, problems, context=f.rewrite_context, temperature=f.rewrite_temperature,
    max_new_tokens=f.rewrite_max_tokens, batch_size=config.eval.batch_size, seed=config.seed,
    progress=config.train.progress,
  )  # fmt: skip
  logging.info("rewrites: %s", stats)
  run_.writer.write(0, stats)
  with open(path + ".tmp", "w", encoding="utf-8") as fh:
    for ex in out:
      fh.write(json.dumps(dataclasses.asdict(ex)) + "\n")
  os.replace(path + ".tmp", path)
  return out


def _drift(global_params, stacked) -> float:
  """Mean over clients of ||theta_k - theta|| (the uploaded adapters' spread)."""
  sq = 0.0
  for g, c in zip(jax.tree.leaves(global_params), jax.tree.leaves(stacked), strict=True):
    d = np.asarray(c, np.float32) - np.asarray(g, np.float32)[None]
    sq = sq + np.sum(d**2, axis=tuple(range(1, d.ndim)))
  return float(np.mean(np.sqrt(sq)))


def _client_counts(sizes) -> dict:
  return {"fed/clients": len(sizes), "fed/min_client_examples": min(sizes),
          "fed/max_client_examples": max(sizes)}  # fmt: skip


def _evaluate_clients(run_, config, graphdef, smoothing, tok, step: int) -> dict:
  """FedSDR: every client's own model (base + global + its smoothing adapter), held out."""
  evaluator = accuracy.Evaluator.from_config(graphdef, tok, config)
  levels = common.eval_levels(config, final=False)
  accs = []
  for k, s_k in enumerate(clients.unstack(smoothing, config.fed.clients)):
    state = nnx.merge_state(run_.state.params, s_k, run_.frozen["rest"])
    results = evaluator.evaluate(state, levels)
    accs.append(float(np.mean([r.accuracy for r in results.values()])))
    logging.info("client %d: %s", k, {lv: r.accuracy for lv, r in results.items()})
  m = {"eval_clients/accuracy": float(np.mean(accs)), "eval_clients/min_accuracy": min(accs)}
  run_.writer.write(step, m)
  return m
