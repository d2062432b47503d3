"""Per-answer features of a frozen model, for detectors that train without the model.

One forward pass of the frozen model over question + answer (right-padded batches,
each row one answer) gives, per answer, the feature families of FLaG's card (section 1
of ``../shared/methods/sft_distill_detect.md``; which layers and which trajectory
statistics the paper uses are NOT FOUND, so both are arguments):

  last.L{i}     [D]  residual stream after block i at the answer's last token
  mean.L{i}     [D]  ... averaged over the answer's tokens
  drift.L{i}    [D]  mean over the answer minus mean over the question at block i
  instability   [I]  the dynamic-instability signal of ``rl.md`` section 15
                     (``INSTABILITY_STATS``; ``instability`` below)
  tokens        [S]  statistics of the answer's token signals (``TOKEN_STATS``, in order):
                     for log p(y_t), the entropy H_t of p(. | y_<t) and the top-1 / top-2
                     probability margin m_t: mean, min, max, std; for log p(y_t) also the
                     first and last token's value, the slope over relative position
                     (least squares on t / (T - 1)) and the sum (the answer's
                     log-likelihood); then the answer length in tokens

The answer's tokens are the response as the model would have emitted it: its think
block and answer encoded span by span like ``template.encode_example`` (no EOS), after
the prompt as ``template.encode_prompt`` renders it (the chat template when the
tokenizer has one). The baselines read ``tokens`` (maximum sequence probability = the
sum, perplexity = exp(-mean log p), mean / max entropy) and the hidden families (probes,
Mahalanobis), so one extraction serves every detector.

On disk (``write`` / ``read``): safetensors shards ``features-00000.safetensors``, ...
each with the arrays above named as listed (f32, one row per answer) plus ``label``
(i32: 1 correct, 0 incorrect, -1 unknown), ``index`` (i32: the record's position in
its input file) and ``level`` (i32: the position of the record's ``level`` in
features.json's ``levels``, -1 for a record without one); a ``features.json`` with the
layers, ``TOKEN_STATS``, ``levels``, the model it came from and the record count.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost.data import template

TOKEN_SIGNALS = ("logp", "entropy", "margin")
TOKEN_STATS = (
  *(f"{signal}_{stat}" for signal in TOKEN_SIGNALS for stat in ("mean", "min", "max", "std")),
  "logp_first",
  "logp_last",
  "logp_slope",
  "logp_sum",
  "length",
)
INSTABILITY_WINDOWS = (4, 8, 16)
INSTABILITY_STATS = (
  "peak",  # S = max_t I_t
  "peak_rel",  # t* / (T - 1): an early peak is "corrective", a late one "destructive"
  "mean",
  *(f"peak_first_{w}" for w in INSTABILITY_WINDOWS),  # S_{<=W}: the first W tokens
  "jsd_mean",
  "jsd_max",
  "entropy_mean",
)
SCHEMA_VERSION = 2


def encode_answer(tok, question: str, answer: str) -> tuple[list[int], list[int]]:
  """(prompt ids, answer ids): the question as the template renders it, the answer's
  think block and final answer span by span (plain text when it has no think tags)."""
  prompt = template.encode_prompt(tok, question)
  try:
    thinking, final = template.split_response(answer)
  except ValueError:  # malformed tags: the text as it is
    return prompt, list(tok.encode(answer))
  if template.THINK_OPEN not in answer:
    return prompt, list(tok.encode(answer))
  ids = [
    *tok.encode(template.THINK_OPEN),
    *tok.encode(thinking),
    *tok.encode(template.THINK_CLOSE),
    *tok.encode(final),
  ]
  return prompt, ids


def pad_batch(pairs: Sequence[tuple[list[int], list[int]]], width: int, pad_id: int) -> dict:
  """Right-padded arrays of (prompt, answer) rows: tokens, segment_ids, positions
  i32[B, W] and the answer span [start, end) per row."""
  b = len(pairs)
  tokens = np.full((b, width), pad_id, np.int32)
  segment_ids = np.zeros((b, width), np.int32)
  start, end = np.zeros(b, np.int32), np.zeros(b, np.int32)
  for row, (prompt, answer) in enumerate(pairs):
    ids = list(prompt) + list(answer)
    if not answer:
      raise ValueError(f"row {row}: an empty answer has no tokens to read")
    if len(ids) > width:
      raise ValueError(f"row {row}: {len(ids)} tokens do not fit width {width}")
    tokens[row, : len(ids)] = ids
    segment_ids[row, : len(ids)] = 1
    start[row], end[row] = len(prompt), len(ids)
  positions = np.where(segment_ids > 0, np.arange(width)[None, :], 0).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions,
          "start": start, "end": end}  # fmt: skip


def _masked_stats(x: jax.Array, mask: jax.Array) -> list[jax.Array]:
  """mean, min, max, std of x[B, T] over mask[B, T] (every row has >= 1 token)."""
  n = jnp.sum(mask, axis=1)
  mean = jnp.sum(x * mask, axis=1) / n
  lo = jnp.min(jnp.where(mask > 0, x, jnp.inf), axis=1)
  hi = jnp.max(jnp.where(mask > 0, x, -jnp.inf), axis=1)
  var = jnp.sum(((x - mean[:, None]) ** 2) * mask, axis=1) / n
  return [mean, lo, hi, jnp.sqrt(var)]


def topk_distribution(logp: jax.Array, k: int) -> jax.Array:
  """p~: the top-k of each distribution (log-probs over the last axis), renormalised,
  dense (0 off the support)."""
  k = min(k, logp.shape[-1])
  kth = jax.lax.top_k(logp, k)[0][..., -1:]
  kept = jnp.where(logp >= kth, logp, -jnp.inf)
  return jax.nn.softmax(kept, axis=-1)


def _xlogy(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, y, 1.0)), 0.0)


def jsd(p: jax.Array, q: jax.Array) -> jax.Array:
  """Jensen-Shannon divergence (nats, in [0, ln 2]) of distributions on the last axis;
  a point where one has no mass contributes only through the other."""
  m = 0.5 * (p + q)
  kl_pm = jnp.sum(_xlogy(p, p) - _xlogy(p, m), axis=-1)
  kl_qm = jnp.sum(_xlogy(q, q) - _xlogy(q, m), axis=-1)
  return jnp.maximum(0.5 * (kl_pm + kl_qm), 0.0)


def instability(
  p_tilde: jax.Array,
  mask: jax.Array,
  *,
  lam: float = 1.0,
  windows: Sequence[int] = INSTABILITY_WINDOWS,
) -> jax.Array:
  """The trace summaries of ``INSTABILITY_STATS``: f32[B, I] for p~ f32[B, T, V] over
  the tokens in ``mask`` f32[B, T] (contiguous, >= 1 per row).

  Per step: H_t = entropy(p~_t), D_t = JSD(p~_t, p~_{t-1}) (0 at the first step), and
  I_t = D_t + lam * H_t. Which term carries lambda and its value are NOT FOUND in the
  paper (its math is stripped); lambda is an argument.
  """
  h = -jnp.sum(_xlogy(p_tilde, p_tilde), axis=-1)  # [B, T]
  prev = jnp.concatenate([p_tilde[:, :1], p_tilde[:, :-1]], axis=1)
  first = mask * (1.0 - jnp.concatenate([jnp.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1))
  d = jnp.where(first > 0, 0.0, jsd(p_tilde, prev)) * mask
  i_t = d + lam * h
  on = mask > 0
  n = jnp.sum(mask, axis=1)
  start = jnp.argmax(on, axis=1)
  step = jnp.arange(mask.shape[1])[None, :] - start[:, None]  # 0 at the first token
  masked = jnp.where(on, i_t, -jnp.inf)
  peak = jnp.max(masked, axis=1)
  peak_rel = jnp.argmax(masked, axis=1) - start
  out = [peak, peak_rel / jnp.maximum(n - 1, 1), jnp.sum(i_t * mask, axis=1) / n]
  for w in windows:
    out.append(jnp.max(jnp.where(on & (step < w), i_t, -jnp.inf), axis=1))
  out += [
    jnp.sum(d, axis=1) / jnp.maximum(n - 1, 1),
    jnp.max(jnp.where(on, d, 0.0), axis=1),
    jnp.sum(h * mask, axis=1) / n,
  ]
  return jnp.stack(out, axis=1).astype(jnp.float32)


def answer_features(
  model,
  batch: Mapping[str, jax.Array],
  layers: Sequence[int],
  *,
  top_k: int = 10,
  lam: float = 1.0,
) -> dict:
  """The feature families (module doc) of one padded batch: {name: f32[B, ...]}.

  Pure and jittable (``layers``, ``top_k``, ``lam`` static): token t of the answer is
  scored by the logits at t - 1, so the first answer token is read after the last
  prompt token. ``top_k`` and ``lam`` are the instability signal's k and lambda.
  """
  tokens, seg = batch["tokens"], batch["segment_ids"]
  start, end = batch["start"], batch["end"]
  out = model.forward(
    tokens, positions=batch["positions"], segment_ids=seg, hidden_layers=tuple(layers)
  )
  b, t = tokens.shape
  col = jnp.arange(t)[None, :]
  in_answer = ((col >= start[:, None]) & (col < end[:, None])).astype(jnp.float32)
  in_question = (col < start[:, None]).astype(jnp.float32)
  # Distributions over each answer token: the logits one column earlier.
  logp_all = jax.nn.log_softmax(out.logits.astype(jnp.float32), axis=-1)  # [B, T, V]
  prev = jnp.concatenate([logp_all[:, :1], logp_all[:, :-1]], axis=1)  # column t reads t-1
  token_logp = jnp.take_along_axis(prev, tokens[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(prev) * prev, axis=-1)
  top2 = jax.lax.top_k(prev, 2)[0]
  margin = jnp.exp(top2[..., 0]) - jnp.exp(top2[..., 1])
  m = in_answer
  n = jnp.sum(m, axis=1)
  stats = []
  for x in (token_logp, entropy, margin):
    stats += _masked_stats(x, m)
  first = jnp.take_along_axis(token_logp, start[:, None], axis=1)[:, 0]
  last = jnp.take_along_axis(token_logp, (end - 1)[:, None], axis=1)[:, 0]
  rel = jnp.where(m > 0, (col - start[:, None]) / jnp.maximum(n - 1, 1)[:, None], 0.0)
  rel_mean = jnp.sum(rel * m, axis=1) / n
  lp_mean = jnp.sum(token_logp * m, axis=1) / n
  cov = jnp.sum((rel - rel_mean[:, None]) * (token_logp - lp_mean[:, None]) * m, axis=1)
  var = jnp.sum(((rel - rel_mean[:, None]) ** 2) * m, axis=1)
  slope = jnp.where(var > 0, cov / jnp.where(var > 0, var, 1.0), 0.0)
  stats += [first, last, slope, jnp.sum(token_logp * m, axis=1), n]
  features = {
    "tokens": jnp.stack(stats, axis=1),
    "instability": instability(topk_distribution(prev, top_k), m, lam=lam),
  }
  for layer, hidden in zip(layers, out.hidden_states, strict=True):
    h = hidden.astype(jnp.float32)
    last_h = jnp.take_along_axis(h, (end - 1)[:, None, None], axis=1)[:, 0]
    mean_a = jnp.sum(h * m[..., None], axis=1) / n[:, None]
    n_q = jnp.maximum(jnp.sum(in_question, axis=1), 1.0)
    mean_q = jnp.sum(h * in_question[..., None], axis=1) / n_q[:, None]
    features[f"last.L{layer}"] = last_h
    features[f"mean.L{layer}"] = mean_a
    features[f"drift.L{layer}"] = mean_a - mean_q
  return features


def resolve_layers(layers: Sequence[int], n_layers: int) -> tuple[int, ...]:
  """Block indices in [0, n_layers), negatives from the end, repeats dropped."""
  bad = [i for i in layers if not -n_layers <= i < n_layers]
  if bad:
    raise ValueError(f"layers {bad} out of range for {n_layers} blocks")
  return tuple(dict.fromkeys(i % n_layers for i in layers))


def extract(
  model,
  tok,
  records: Iterable[Mapping],
  *,
  layers: Sequence[int] = (-1,),
  batch_size: int = 16,
  bucket: int = 32,
  mesh=None,
) -> dict[str, np.ndarray]:
  """Features of every (question, answer) record: {name: f32[N, ...]}, plus ``label``,
  ``index`` and ``level`` (into ``level_names(records)``; module doc). Records hold
  ``question``/``answer`` or ``prompt``/``response``, and optionally ``label`` or
  ``correct`` and ``level``. Every batch has ``batch_size`` rows (the last one filled
  with copies, dropped) and a multiple of ``bucket`` columns, so a few shapes compile.
  With a ``mesh`` of several devices the model's parameters are placed by their
  logical axes and each batch's rows split over (data, fsdp), as in training."""
  from flax import nnx

  from jaxpost import sharding

  graphdef, state = nnx.split(model)
  n_layers = model.config.n_layers
  layers = resolve_layers(layers, n_layers)
  sharded = mesh is not None and (mesh.devices.size > 1 or jax.process_count() > 1)
  if sharded:
    state = sharding.shard_tree(state, mesh, sharding.DEFAULT_RULES)

  @jax.jit
  def run(state, batch):
    return answer_features(nnx.merge(graphdef, state), batch, layers)

  records = list(records)
  pairs, labels = [], []
  for i, r in enumerate(records):
    question, answer, label = _fields(r, i)
    pairs.append(encode_answer(tok, question, answer))
    labels.append(label)
  chunks: dict[str, list[np.ndarray]] = {}
  for first in range(0, len(pairs), batch_size):
    part = pairs[first : first + batch_size]
    width = -(-max(len(p) + len(a) for p, a in part) // bucket) * bucket
    arrays = pad_batch(part + [part[-1]] * (batch_size - len(part)), width, tok.pad_id)
    if sharded:
      batch = sharding.shard_batch(arrays, mesh, sharding.DEFAULT_RULES)
    else:
      batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    feats = jax.device_get(run(state, batch))
    for name, value in feats.items():
      chunks.setdefault(name, []).append(np.asarray(value, np.float32)[: len(part)])
  out = {name: np.concatenate(parts) for name, parts in chunks.items()}
  out["label"] = np.asarray(labels, np.int32)
  out["index"] = np.arange(len(pairs), dtype=np.int32)
  names = {name: i for i, name in enumerate(level_names(records))}
  out["level"] = np.asarray([names.get(r.get("level"), -1) for r in records], np.int32)
  return out


def level_names(records: Iterable[Mapping]) -> list[str]:
  """The distinct ``level`` strings of the records, sorted: what ``level`` ids index."""
  return sorted({r["level"] for r in records if isinstance(r.get("level"), str)})


def answer_levels(features: Mapping[str, np.ndarray], info: Mapping) -> np.ndarray:
  """str[N]: each answer's level name ("" for none), from ``level`` and ``info["levels"]``."""
  names = np.asarray([*info.get("levels", []), ""], dtype=object)
  return names[features["level"]].astype(str)  # -1 picks the trailing ""


def _fields(record: Mapping, i: int) -> tuple[str, str, int]:
  question = record.get("question", record.get("prompt"))
  answer = record.get("answer", record.get("response"))
  if "response" in record and "prompt" in record:  # generated files: "answer" = reference
    question, answer = record["prompt"], record["response"]
  if not isinstance(question, str) or not isinstance(answer, str):
    raise ValueError(f"record {i}: needs string question/answer (or prompt/response)")
  label = record.get("label", record.get("correct", -1))
  if isinstance(label, bool):
    label = int(label)
  if label not in (-1, 0, 1):
    raise ValueError(f"record {i}: label {label!r} is not 1 (correct), 0 or -1 (unknown)")
  return question, answer, int(label)


def read_records(path: str) -> list[dict]:
  """A JSONL file of (question, answer, label) records (or a ``jaxpost.data.generated``
  file: prompt, response, correct); errors name the line."""
  records = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_no}: a record must be a JSON object")
      try:
        _fields(record, line_no)
      except ValueError as e:
        raise ValueError(f"{path}:{line_no}: {e}") from None
      records.append(record)
  return records


def write(features: Mapping[str, np.ndarray], out: str, *, meta: Mapping | None = None,
          rows_per_shard: int = 4096) -> list[str]:  # fmt: skip
  """Writes features as safetensors shards + features.json under ``out``; returns the
  shard paths."""
  from safetensors.numpy import save_file

  if "level" in features and "levels" not in (meta or {}):
    raise ValueError("features with level ids need meta['levels'] (their names, in order)")
  os.makedirs(out, exist_ok=True)
  n = len(features["label"])
  paths = []
  for k, first in enumerate(range(0, max(n, 1), rows_per_shard)):
    path = os.path.join(out, f"features-{k:05d}.safetensors")
    save_file({name: np.ascontiguousarray(v[first : first + rows_per_shard])
               for name, v in features.items()}, path)  # fmt: skip
    paths.append(path)
  info = {"schema": SCHEMA_VERSION, "records": n, "token_stats": list(TOKEN_STATS),
          "names": sorted(features), **(meta or {})}  # fmt: skip
  with open(os.path.join(out, "features.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
  return paths


def read(directory: str) -> tuple[dict[str, np.ndarray], dict]:
  """(features, features.json) of a directory ``write`` made."""
  from safetensors.numpy import load_file

  info_path = os.path.join(directory, "features.json")
  if not os.path.exists(info_path):
    raise FileNotFoundError(f"{directory} has no features.json: not a feature directory")
  with open(info_path, encoding="utf-8") as f:
    info = json.load(f)
  if info.get("schema") != SCHEMA_VERSION:
    raise ValueError(f"{directory}: feature schema {info.get('schema')}, expected {SCHEMA_VERSION}")
  shards = sorted(glob.glob(os.path.join(directory, "features-*.safetensors")))
  parts = [load_file(p) for p in shards]
  features = {name: np.concatenate([p[name] for p in parts]) for name in info["names"]}
  if len(features["label"]) != info["records"]:
    raise ValueError(f"{directory}: {len(features['label'])} rows, features.json says "
                     f"{info['records']}")  # fmt: skip
  return features, info
