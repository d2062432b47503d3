"""Parameter-guided data selection (P2D step (c)): score candidate examples by in-context
learning read through chosen attention heads, keep the top fraction.

P2D ranks candidates with an "ICL scoring" step through its selected heads; its exact
rule is not published (methods card section 2). This is the Data Whisperer reading
(Wang et al. 2025) restricted to those heads, our choice:

  contexts  the candidates are shuffled into groups of ``n_demo`` demonstrations
            (``passes`` shuffles: each candidate sits in ``passes`` contexts); each
            group is followed by ``n_query`` query examples (drawn from a query set
            that is not selected from), one sequence per query:
            [demo_1 ... demo_n, query], all one attention segment
  metric    m_q = exp(mean log p(query response | demos, query prompt)), teacher-forced
            (Data Whisperer scores generated answers with the task metric; the
            likelihood of the reference answer is its smooth, decode-free stand-in)
  attention a_q(d) = the attention of the query's response tokens to demonstration d's
            tokens, averaged over the selected (layer, head) pairs and the response
            tokens, normalised over the demonstrations (sums to 1)
  score     s(d) = mean over the contexts and queries of m_q * a_q(d)

A demonstration scores high when the selected heads lean on it while the model gets
the query right. ``random_scores`` is the random-selection baseline; ``top_fraction``
keeps exactly ceil(fraction x N) examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxpost.data import template
from jaxpost.types import RESPONSE_ROLES


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
  """Indices of the ceil(fraction x N) highest scores (ties: the lower index), sorted."""
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  scores = np.asarray(scores, np.float64)
  k = math.ceil(round(fraction * scores.size, 9))  # round: 0.1 * 30 is 3.0000000000000004
  order = np.lexsort((np.arange(scores.size), -scores))  # by score desc, then index
  return np.sort(order[:k])


def random_scores(n: int, seed: int) -> np.ndarray:
  """Uniform scores: ``top_fraction`` of them is a seeded random subset."""
  return np.random.default_rng([seed, 0xDA7A]).random(n)


def icl_scores(
  model,
  tok,
  candidates: Sequence[template.Example],
  queries: Sequence[template.Example],
  heads: Mapping[int, Sequence[int]],
  *,
  n_demo: int = 5,
  n_query: int = 3,
  passes: int = 1,
  batch_size: int = 32,
  seed: int = 0,
  progress: bool = True,
) -> np.ndarray:
  """f32[N] scores of ``candidates`` (module doc); ``heads`` = {layer: [head, ...]}."""
  if not heads or not any(heads.values()):
    raise ValueError("icl_scores needs at least one selected head")
  if n_demo < 1 or n_query < 1 or passes < 1:
    raise ValueError(f"n_demo, n_query and passes must be >= 1, got {n_demo}, {n_query}, {passes}")
  if not queries:
    raise ValueError("icl_scores needs query examples")
  n = len(candidates)
  rng = np.random.default_rng([seed, 0x1C1])
  enc = [template.encode_example(tok, ex) for ex in candidates]
  q_enc = [template.encode_example(tok, ex) for ex in queries]
  rows = []  # (demo indices, query index)
  for _ in range(passes):
    order = rng.permutation(n)
    for start in range(0, n, n_demo):
      group = order[start : start + n_demo]
      for q in rng.choice(len(queries), size=min(n_query, len(queries)), replace=False):
        rows.append((group, int(q)))
  width = max(sum(len(enc[d]) for d in g) + len(q_enc[q]) for g, q in rows)
  layers = sorted(k for k, v in heads.items() if v)
  head_mask = np.zeros((len(layers), model.config.n_heads), np.float32)
  for i, layer in enumerate(layers):
    head_mask[i, list(heads[layer])] = 1.0
  graphdef, state = nnx.split(model)
  score_fn = _score_fn(graphdef, tuple(layers), n_demo)
  totals, counts = np.zeros(n), np.zeros(n)
  steps = range(0, len(rows), batch_size)
  for start in tqdm(steps, desc="icl scoring", unit="batch", disable=not progress):
    chunk = rows[start : start + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape
    tokens, demo_of, query_span, query = _pack(chunk, enc, q_enc, width, tok.pad_id)
    s = np.asarray(score_fn(state, tokens, demo_of, query_span, query, jnp.asarray(head_mask)))
    for (group, _), row_scores in zip(rows[start : start + batch_size], s, strict=False):
      totals[group] += row_scores[: len(group)]
      counts[group] += 1
  return (totals / np.maximum(counts, 1)).astype(np.float32)


def _pack(chunk, enc, q_enc, width: int, pad_id: int):
  """tokens i32[B, W]; demo_of i32[B, W] (1 + demo slot, 0 elsewhere); query_span
  i32[B, W] (1 on the query's tokens); query f32[B, W] (1 on the query's response
  targets: positions whose next token is a response token)."""
  b = len(chunk)
  tokens = np.full((b, width), pad_id, np.int32)
  demo_of = np.zeros((b, width), np.int32)
  query = np.zeros((b, width), np.float32)
  query_span = np.zeros((b, width), np.int32)
  for r, (group, q) in enumerate(chunk):
    at = 0
    for slot, d in enumerate(group):
      e = enc[d]
      tokens[r, at : at + len(e)] = e.tokens
      demo_of[r, at : at + len(e)] = slot + 1
      at += len(e)
    e = q_enc[q]
    tokens[r, at : at + len(e)] = e.tokens
    query_span[r, at : at + len(e)] = 1
    response = np.isin(e.roles, RESPONSE_ROLES)
    query[r, at : at + len(e) - 1] = response[1:]  # position t predicts token t + 1
  return tokens, demo_of, query_span, query


def _score_fn(graphdef, layers: tuple[int, ...], n_demo: int):
  @jax.jit
  def score(state, tokens, demo_of, query_span, query, head_mask):
    model = nnx.merge(graphdef, state)
    segment_ids = (demo_of > 0) | (query_span > 0)  # one segment, right padding 0
    segment_ids = segment_ids.astype(jnp.int32)
    out = model.forward(tokens, segment_ids=segment_ids)
    logp = jax.nn.log_softmax(out.logits, axis=-1)
    nxt = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    tok_logp = jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]
    metric = jnp.exp((tok_logp * query).sum(1) / jnp.maximum(query.sum(1), 1))  # [B]
    maps = model.attention_maps(tokens, layers, segment_ids=segment_ids)
    weights = head_mask / head_mask.sum()
    attn = sum(jnp.einsum("bhts,h->bts", maps[lyr], weights[i]) for i, lyr in enumerate(layers))
    onehot = jax.nn.one_hot(demo_of - 1, n_demo)  # [B, S, n_demo]; 0 outside the demos
    per_demo = jnp.einsum("bts,bsd->btd", attn, onehot)  # [B, T, n_demo]
    share = per_demo / jnp.maximum(per_demo.sum(-1, keepdims=True), 1e-9)
    share = (share * query[..., None]).sum(1) / jnp.maximum(query.sum(1), 1)[:, None]
    return metric[:, None] * share

  return score
