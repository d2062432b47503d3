"""P2D, From Parameters to Data (methods card section 2), top to bottom (``recipe=p2d``):
task-sensitive heads -> the data they favour -> those heads trained on that data.

    pool     ``p2d.pool`` candidate examples of ``data.levels``' mixture (training
             split): what the data selection picks from. The target task
             ``p2d.target`` (levels) supplies the proxy examples and the ICL queries,
             drawn apart from the pool and from each other; the evaluation is on
             ``eval.levels`` (default: the target)
    (a) proxy  full fine-tuning of the start (``train.init_from``) on
             ``p2d.proxy_examples`` target examples for ``p2d.proxy_steps`` steps (an
             SFT run in WORKDIR/proxy), for the head scores that need it
    (b) heads  every attention head scored by ``p2d.heads``: ``alps`` (the Wasserstein
             distance between the start's and the proxy's softmaxed [W_q; W_k; W_v] of
             the head: ALPS, P2D's predecessor), ``gradient`` (first-order |theta dL/dtheta|
             of the proxy examples' loss at the start), ``random``; the top
             ``p2d.head_fraction`` are kept (WORKDIR/heads.json). ``all``: no
             selection, every parameter trains (full fine-tuning, or LoRA with
             ``lora.rank``)
    (c) data   every pool example scored by ``p2d.data``: ``icl`` (in-context scoring
             read through the selected heads, ``jaxpost.data.icl_selection``; the
             start reads the demonstrations), ``random``; the top ``p2d.data_fraction``
             are kept (WORKDIR/selected.jsonl). ``all``: the whole pool
    (d) adapt  SFT of the start on the kept data for ``p2d.epochs`` epochs, training
             only the kept heads' q / k / v / o slices (``train.heads``), in
             WORKDIR/adapt (an ordinary run: load it, export it); its final evaluation
             is this run's

AER, the Alignment Efficiency Ratio: P2D reports it over "selection latency and
training time", lower is better, without a formula (card: not found). Ours:

    AER = (selection seconds + adaptation seconds) / reference seconds

where selection = (a) + (b) + (c) wall time and adaptation = (d)'s, and the reference
is the end-to-end time of full fine-tuning on all the data (``p2d.reference``: that
run's directory; a run with ``p2d.reference=""`` is its own reference, AER = 1). Wall
times include compilation and the final evaluation, the same for every row. Logged
with the parts: ``p2d/selection_s``, ``p2d/adapt_s``, ``p2d/end_to_end_s``,
``p2d/aer``; and what the selection kept: ``p2d/kept_examples``,
``p2d/kept_target_fraction`` (the share of target-level examples among them),
``p2d/kept_heads``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import numpy as np
from flax import nnx
from ml_collections import config_dict

from jaxpost import config_lib, fields, metrics, train
from jaxpost import workdir as jaxpost_workdir
from jaxpost.data import generated, icl_selection, packing, tasks, template
from jaxpost.losses import reduce
from jaxpost.peft import heads as heads_lib
from jaxpost.recipes import common, register, sft
from jaxpost.types import Batch

LOSS_FAMILIES = ("token",)
DEFAULT_LOSS = "cross_entropy"
HEAD_SCORES = ("alps", "gradient", "random", "all")
DATA_SCORES = ("icl", "random", "all")
TIMES_FILE = "p2d_times.json"


def config_sections(c: config_dict.ConfigDict) -> None:
  c.p2d = config_dict.ConfigDict()
  p = c.p2d
  p.pool = 2000  # candidate examples (data.levels' mixture) the selection picks from
  p.target = ""  # the task's levels (proxy examples, ICL queries); "" = eval.levels
  p.heads = "alps"  # alps | gradient | random | all (no head selection)
  p.head_fraction = 0.1  # heads kept
  p.data = "icl"  # icl | random | all (the whole pool)
  p.data_fraction = 0.1  # pool examples kept
  p.proxy_examples = 100  # target examples of the proxy run (and of the gradient score)
  p.proxy_steps = 30  # proxy run steps (full fine-tuning, data.batch_size rows)
  p.queries = 16  # target examples used as ICL queries
  p.n_demo = 5  # demonstrations per ICL context
  p.n_query = 3  # queries per context
  p.passes = 1  # contexts each candidate sits in
  p.epochs = 3.0  # adaptation epochs over the kept data (train.steps is derived)
  p.reference = ""  # full fine-tuning's run dir (its end-to-end time: AER's denominator)
  fields.declare(
    "p2d",
    pool=fields.integer(ge=1),
    target=fields.TEXT,
    heads=fields.one_of(HEAD_SCORES),
    head_fraction=fields.num(gt=0, le=1),
    data=fields.one_of(DATA_SCORES),
    data_fraction=fields.num(gt=0, le=1),
    proxy_examples=fields.integer(ge=1),
    proxy_steps=fields.integer(ge=1),
    queries=fields.integer(ge=1),
    n_demo=fields.integer(ge=1),
    n_query=fields.integer(ge=1),
    passes=fields.integer(ge=1),
    epochs=fields.num(gt=0),
    reference=fields.TEXT,
  )


def validate(c: config_dict.ConfigDict) -> None:
  if "p2d" not in c:
    raise config_lib.ConfigError("recipe=p2d needs its section: start from configs/p2d.py")
  p = c.p2d
  if not c.train.init_from:
    raise config_lib.ConfigError("recipe=p2d adapts a trained start: set train.init_from")
  if c.data.source != "tasks":
    raise config_lib.ConfigError("recipe=p2d draws its pool and target from the task levels")
  if not (p.target or c.eval.levels):
    raise config_lib.ConfigError("set p2d.target (or eval.levels): the task the heads serve")
  if c.train.heads or c.train.trainable:
    raise config_lib.ConfigError("recipe=p2d chooses the heads itself: no train.heads / trainable")
  if c.lora.rank and p.heads != "all":
    raise config_lib.ConfigError("lora.rank trains adapters: with p2d.heads='all' only")
  if p.data == "icl" and p.heads == "all":
    raise config_lib.ConfigError("p2d.data='icl' reads the selected heads: choose p2d.heads")


@register("p2d")
def run(config, workdir: str) -> dict:
  """Runs P2D's four steps per ``config`` in ``workdir``; returns the adaptation's summary."""
  common.validate_and_start(config, workdir, "p2d")
  p = config.p2d
  target = config_lib.parse_levels(p.target or config.eval.levels)
  times_path = os.path.join(workdir, TIMES_FILE)
  times = _read_json(times_path)
  selected_path = os.path.join(workdir, "selected.jsonl")

  # The pool, and the target's proxy and query examples (apart from the pool: another seed).
  mix = tasks.mixture(config_lib.parse_levels(config.data.levels), "train", config.seed)
  pool = [mix.problem_at(i) for i in range(p.pool)]
  aside = tasks.mixture(target, "train", config.seed + 7919)
  proxy = [aside.problem_at(i) for i in range(p.proxy_examples)]
  queries = [aside.problem_at(p.proxy_examples + i) for i in range(p.queries)]

  if "selection_s" not in times:  # (a) - (c), once; a resumed run reuses their outputs
    t0 = time.time()
    start, tok, _ = generated.load_run(config.train.init_from)
    selection = _select_heads(config, workdir, start, tok, proxy)
    keep = _select_data(config, start, tok, pool, queries, selection)
    _write_examples(selected_path, [pool[i] for i in keep])
    on_target = float(np.mean([pool[i].level in target for i in keep]))
    kept_heads = sum(len(h) for h in selection.values()) if selection else -1  # -1: all
    times = {"selection_s": time.time() - t0, "kept_examples": len(keep), "kept_heads": kept_heads,
             "kept_target_fraction": on_target}  # fmt: skip
    jaxpost_workdir.write_json(times_path, times)

  # (d) The kept heads trained on the kept data.
  adapt_dir = os.path.join(workdir, "adapt")
  t0 = time.time()
  summary = sft.run(_adapt_config(config, workdir, times["kept_examples"], target), adapt_dir)
  if "adapt_s" not in times:
    times["adapt_s"] = time.time() - t0
    jaxpost_workdir.write_json(times_path, times)
  end_to_end = times["selection_s"] + times["adapt_s"]
  reference = _reference_seconds(p.reference) if p.reference else end_to_end
  m = {f"p2d/{k}": float(v) for k, v in times.items()}
  m.update({"p2d/end_to_end_s": end_to_end, "p2d/aer": end_to_end / reference})
  m.update({k: v for k, v in summary.items() if k.startswith("eval/")})
  writer = metrics.MetricWriter(workdir, resume_step=-1)
  writer.write(int(summary["step"]), m)
  writer.close()
  jaxpost_workdir.release(workdir)
  return {**summary, **m, "adapt_dir": adapt_dir}


def _select_heads(config, workdir, start, tok, proxy) -> dict | None:
  """(a) + (b): the kept heads {layer: heads} (None for ``all``), written to heads.json."""
  p, mc = config.p2d, start.config
  if p.heads == "all":
    return None
  base = nnx.state(start, nnx.Param)
  if p.heads == "alps":
    proxy_dir = os.path.join(workdir, "proxy")
    sft.run(_proxy_config(config, workdir, proxy), proxy_dir)
    tuned = nnx.state(generated.load_run(proxy_dir)[0], nnx.Param)
    scores = heads_lib.alps_scores(base, tuned, mc.n_layers, mc.n_heads, mc.n_kv_heads)
  elif p.heads == "gradient":
    grads = _proxy_gradient(start, tok, proxy, config)
    scores = heads_lib.gradient_scores(base, grads, mc.n_layers, mc.n_heads, mc.n_kv_heads)
  else:
    scores = np.random.default_rng([config.seed, 0x4EAD]).random((mc.n_layers, mc.n_heads))
  selection = heads_lib.select_heads(scores, p.head_fraction)
  heads_lib.write_selection(os.path.join(workdir, "heads.json"), selection, scores,
                            method=p.heads, fraction=p.head_fraction)  # fmt: skip
  logging.info("p2d heads (%s): %s", p.heads, selection)
  return selection


def _select_data(config, start, tok, pool, queries, selection) -> np.ndarray:
  """(c): indices of the kept pool examples."""
  p = config.p2d
  if p.data == "all":
    return np.arange(len(pool))
  if p.data == "random":
    scores = icl_selection.random_scores(len(pool), config.seed)
  else:
    scores = icl_selection.icl_scores(
      start, tok, [x.example for x in pool], [x.example for x in queries], selection,
      n_demo=p.n_demo, n_query=p.n_query, passes=p.passes, batch_size=config.eval.batch_size,
      seed=config.seed, progress=config.train.progress,
    )  # fmt: skip
  return icl_selection.top_fraction(scores, p.data_fraction)


def _proxy_gradient(model, tok, proxy, config):
  """The proxy examples' mean loss gradient at the start (every parameter)."""
  graphdef, params, rest = train.split_model(model)
  objective = train.objective_for(config.loss.name, graphdef)
  encoded = [template.encode_example(tok, x.example) for x in proxy]
  arrays, _, _ = packing.pack_batch(lambda i: (encoded[i].tokens, encoded[i].roles), 0,
                                    batch_size=len(encoded), seq_len=config.data.seq_len,
                                    pack=False, overlong="truncate",
                                    stop=len(encoded))  # fmt: skip
  batch = Batch(**arrays)
  norm = reduce.compute_normalizers(batch.loss_mask, batch.segment_ids)
  loss = lambda p: objective(p, {"rest": rest}, batch, norm)[0]  # noqa: E731
  return jax.grad(loss)(params)


def _sft_config(config, **fields_):
  """An SFT config with this run's shared sections (model, data, optim, eval, ...)."""
  flat = {k: v for k, v in config_lib.leaves(config) if not k.startswith(("p2d.", "recipe"))}
  c, _ = config_lib.from_flat("sft", flat, strict=False)
  for field, value in fields_.items():
    config_lib.set_field(c, field, value)
  return c


def _proxy_config(config, workdir, proxy):
  path = os.path.join(workdir, "proxy.jsonl")
  _write_examples(path, proxy)
  return _sft_config(config, **{"data.source": "jsonl", "data.path": path, "lora.rank": 0,
                                "train.steps": config.p2d.proxy_steps, "eval.every": 0,
                                "eval.final_levels": "", "eval.num_examples": 1,
                                "train.export_hf": False})  # fmt: skip


def _adapt_config(config, workdir, kept: int, target):
  steps = max(1, math.ceil(config.p2d.epochs * kept / config.data.batch_size))
  heads = os.path.join(workdir, "heads.json") if config.p2d.heads != "all" else ""
  return _sft_config(config, **{"data.source": "jsonl", "train.steps": steps,
                                "data.path": os.path.join(workdir, "selected.jsonl"),
                                "train.heads": heads,
                                "eval.levels": config.eval.levels or ",".join(target)})  # fmt: skip


def _write_examples(path: str, problems) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for x in problems:
      response = template.render_response(x.example)
      f.write(json.dumps({"prompt": x.prompt, "response": response, "level": x.level}) + "\n")
  os.replace(path + ".tmp", path)


def _reference_seconds(run: str) -> float:
  times = _read_json(os.path.join(run, TIMES_FILE))
  if "adapt_s" not in times:
    raise config_lib.ConfigError(f"p2d.reference={run!r} has no finished {TIMES_FILE}")
  return times["selection_s"] + times["adapt_s"]


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)
