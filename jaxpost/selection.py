"""Online batch selection: score a batch's rows with the current model, train on the best.

Each train step draws ``data.batch_size`` candidate rows; ``select.name`` scores them
(one forward pass of the current model, no gradient) and, in groups of ``select.pool``
adjacent rows taken in order, the ``select.keep`` best rows of each group become the
batch the gradient is computed on (its normalisers count only them). The gradient's
forward and backward run on the kept rows only: the compute a selection saves.

A selector is ``fn(logits, batch, key, **hparams) -> RowScores`` (``SELECTORS``):

  uds       UDS (Zou et al. 2025): utility U_i = ||Z_i||_* (nuclear norm of the row's
            logits Z_i in R^{T x V}, padding zeroed) plus alpha * D_i, the mean distance of
            the row's low-dimensional embedding e_i (``jl_embed``) to the embeddings in a
            FIFO queue of kept rows (0 while it is empty); each group reads the queue as
            the groups before it left it, and its kept rows' embeddings are pushed
            (the nuclear norm by Jacobi eigenvalues of the Gram matrix: ``nuclear_norm``)
  random    uniform scores: a random ``keep`` of every ``pool`` (the budget-matched control)
  max_loss  the highest token-mean NLL of the loss-masked tokens
  fit       fit-based selection: rows whose token-mean NLL lies in [min_nll, max_nll]
            (a perplexity band), lowest first; a kept row outside the band (a group with
            fewer than ``keep`` rows in it) has its loss mask zeroed

The queue (``UDS``'s only state) lives in ``TrainState.select_state``: checkpointed,
restored on resume, left as it was by a step skipped as non-finite.

Readings stated: a row (not a packed example) is the unit selected and scored, so UDS
expects ``data.pack=False`` (one example per row) as in its code; ``Z_i`` covers the
row's real tokens (prompt and response, padding zeroed); the JL map is a subsampled
randomised Fourier transform on each axis (random signs, unitary DFT, random rows kept,
scaled sqrt(n / r)), its complex output stored as real and imaginary parts (the same
norms); ``start_sampling_step`` of the authors' code (train on everything first) is not
offered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost import fields
from jaxpost.registry import Registry

SELECTORS = Registry(
  "selector",
  families=("default",),
  contract={"default": ("logits", "batch", "key")},
)


class RowScores(NamedTuple):
  """What a selector says about each of B rows.

  Attributes:
    score: f32[B], higher is kept first.
    eligible: bool[B], False = never trained on (its loss mask is zeroed if kept).
    embedding: f32[B, E] or None: rows compared with the queue (diversity).
    alpha: the diversity term's weight (with ``embedding``).
  """

  score: jax.Array
  eligible: jax.Array
  embedding: jax.Array | None = None
  alpha: float = 0.0


def _row_nll(logits, batch) -> jax.Array:
  """f32[B]: token-mean NLL of each row's loss-masked targets (0 for a row with none)."""
  from jaxpost.losses.head import target_stats

  stats = target_stats(logits, batch.targets, batch.loss_mask)
  mask = batch.loss_mask.astype(jnp.float32)
  return jnp.sum(stats.nll * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0)


def _round_robin(n: int) -> tuple[np.ndarray, np.ndarray]:
  """(p, q) i32[n - 1, n / 2]: n - 1 rounds of disjoint pairs covering every pair once."""
  players, rounds = list(range(n)), []
  for _ in range(n - 1):
    rounds.append([(players[i], players[n - 1 - i]) for i in range(n // 2)])
    players = [players[0], players[-1], *players[1:-1]]
  r = np.asarray(rounds, np.int32)
  return np.minimum(r[..., 0], r[..., 1]), np.maximum(r[..., 0], r[..., 1])


def symmetric_eigenvalues(a: jax.Array, sweeps: int = 8) -> jax.Array:
  """f32[..., n]: eigenvalues (unsorted) of symmetric [..., n, n] matrices by cyclic
  Jacobi rotations, n / 2 disjoint rotations at a time (round-robin order).

  Plain array ops, no LAPACK call: XLA's CPU LAPACK kernels (``jnp.linalg.svd`` /
  ``eigh``) deadlock the collectives of a train step sharded over several CPU devices,
  and this runs the same on every backend. ``sweeps`` of f32 Jacobi converge well
  past f32 resolution for n up to a few hundred.
  """
  n = a.shape[-1]
  if n % 2:  # a zero row and column: one extra eigenvalue 0, dropped below
    a = jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, 1), (0, 1)])
  m = a.shape[-1]
  if m < 2:
    return jnp.diagonal(a, axis1=-2, axis2=-1)[..., :n]
  ps, qs = (jnp.asarray(x) for x in _round_robin(m))

  def rotate(k, a):
    p, q = ps[k % (m - 1)], qs[k % (m - 1)]
    app, aqq, apq = a[..., p, p], a[..., q, q], a[..., p, q]
    zero = jnp.abs(apq) < 1e-30
    tau = (aqq - app) / (2.0 * jnp.where(zero, 1.0, apq))
    t = jnp.where(tau >= 0, 1.0, -1.0) / (jnp.abs(tau) + jnp.sqrt(1.0 + tau * tau))
    t = jnp.where(zero, 0.0, t)  # the smaller angle of the symmetric Schur 2 x 2
    c = 1.0 / jnp.sqrt(1.0 + t * t)
    s = t * c
    rows_p, rows_q = a[..., p, :], a[..., q, :]
    a = a.at[..., p, :].set(c[..., None] * rows_p - s[..., None] * rows_q)
    a = a.at[..., q, :].set(s[..., None] * rows_p + c[..., None] * rows_q)
    cols_p, cols_q = a[..., :, p], a[..., :, q]
    a = a.at[..., :, p].set(c[..., None, :] * cols_p - s[..., None, :] * cols_q)
    a = a.at[..., :, q].set(s[..., None, :] * cols_p + c[..., None, :] * cols_q)
    return a

  a = jax.lax.fori_loop(0, sweeps * (m - 1), rotate, a.astype(jnp.float32))
  return jnp.diagonal(a, axis1=-2, axis2=-1)[..., :n]


def nuclear_norm(z: jax.Array) -> jax.Array:
  """f32[...]: the sum of singular values of each [T, V] matrix of ``z`` [..., T, V].

  The square roots of the eigenvalues of the smaller Gram matrix (Z Z^T or Z^T Z);
  eigenvalues under its numerical-rank tolerance (size x f32 eps x the largest) are
  zero, so a rank-1 Z gives exactly its Frobenius norm.
  """
  z = z.astype(jnp.float32)
  t, v = z.shape[-2:]
  gram = (
    jnp.einsum("...tv,...sv->...ts", z, z) if t <= v else jnp.einsum("...tv,...tu->...vu", z, z)
  )
  eig = symmetric_eigenvalues(gram)
  tol = min(t, v) * np.finfo(np.float32).eps * jnp.max(eig, -1, keepdims=True)
  return jnp.sum(jnp.sqrt(jnp.where(eig > tol, eig, 0.0)), -1)


def _srft(x: jax.Array, axis: int, r: int, key: jax.Array) -> jax.Array:
  """x with axis ``axis`` (size n) mapped to r: sqrt(n / r) * S F D (random signs D, the
  unitary DFT F, r random rows S kept): E ||.||^2 = ||x||^2, distances kept w.h.p."""
  n = x.shape[axis]
  k_sign, k_rows = jax.random.split(key)
  shape = [1] * x.ndim
  shape[axis] = n
  signs = jax.random.rademacher(k_sign, (n,), jnp.float32).reshape(shape)
  f = jnp.fft.fft(x * signs, axis=axis, norm="ortho")
  rows = jax.random.choice(k_rows, n, (r,), replace=False)
  return jnp.take(f, rows, axis=axis) * jnp.sqrt(n / r)


def jl_embed(z: jax.Array, r1: int, r2: int, seed: int = 0) -> jax.Array:
  """f32[B, 2 * r1' * r2']: a bilinear random projection of each row's [T, V] logits
  to r1' x r2' (r1' = min(r1, T), r2' = min(r2, V)), real and imaginary parts.

  The same ``seed`` gives the same map at every step (embeddings are comparable across
  steps); distances between rows are preserved up to a small ratio (the tests state it).
  """
  b, t, v = z.shape
  k_tokens, k_vocab = jax.random.split(jax.random.key(seed))
  x = _srft(z.astype(jnp.float32), 2, min(r2, v), k_vocab)  # [B, T, r2]
  x = _srft(x, 1, min(r1, t), k_tokens)  # [B, r1, r2]
  return jnp.concatenate([x.real.reshape(b, -1), x.imag.reshape(b, -1)], -1)


def _real_tokens(logits, batch) -> jax.Array:
  return jnp.where((batch.segment_ids > 0)[..., None], logits, 0.0)


@SELECTORS.register(
  "uds",
  rules={
    "alpha": fields.num(ge=0.0),
    "queue": fields.integer(ge=1),
    "r1": fields.integer(ge=1),
    "r2": fields.integer(ge=1),
    "seed": fields.integer(ge=0),
  },
)
def uds(
  logits, batch, key, *, alpha: float = 2.5e-3, queue: int = 1024, r1: int = 8, r2: int = 128,
  seed: int = 0,
) -> RowScores:  # fmt: skip
  """UDS: nuclear-norm utility plus alpha x mean distance to the queue of kept rows.

  Args:
    alpha: weight of the inter-sample diversity (the authors' code 2.5e-3; their MMLU
      script 1.5e-3).
    queue: FIFO queue length in embeddings (their script: 1024).
    r1: the token axis's projected size (8).
    r2: the vocabulary axis's projected size (128).
    seed: the random projection's seed (fixed for the run).
  """
  z = _real_tokens(logits, batch)
  return RowScores(
    score=nuclear_norm(z),
    eligible=jnp.ones(z.shape[0], bool),
    embedding=jl_embed(z, r1, r2, seed),
    alpha=alpha,
  )


@SELECTORS.register("random", reads_logits=False)
def random_rows(logits, batch, key) -> RowScores:
  """Uniform random scores: ``keep`` rows of every ``pool`` at random."""
  b = batch.tokens.shape[0]
  return RowScores(jax.random.uniform(key, (b,)), jnp.ones(b, bool))


@SELECTORS.register("max_loss")
def max_loss(logits, batch, key) -> RowScores:
  """The rows the model fits worst: highest token-mean NLL first."""
  nll = _row_nll(logits, batch)
  return RowScores(nll, jnp.ones(nll.shape, bool))


def _check_band(min_nll: float, max_nll: float) -> None:
  if min_nll > max_nll:
    raise ValueError(f"fit: min_nll={min_nll} > max_nll={max_nll}")


@SELECTORS.register(
  "fit",
  rules={"min_nll": fields.num(ge=0.0), "max_nll": fields.num(ge=0.0)},
  check=_check_band,
)
def fit(logits, batch, key, *, min_nll: float = 0.0, max_nll: float = 1e9) -> RowScores:
  """Fit-based selection: rows whose token-mean NLL (log perplexity) is in the band, the
  best-fitting (lowest) first.

  Args:
    min_nll: the band's lower end (rows the model already knows by heart are below it).
    max_nll: its upper end (rows too far from the model: noise, other formats).
  """
  nll = _row_nll(logits, batch)
  has_tokens = jnp.sum(batch.loss_mask, 1) > 0
  return RowScores(-nll, (nll >= min_nll) & (nll <= max_nll) & has_tokens)


# ----------------------------------------------------------------------- the mechanism


@dataclasses.dataclass(frozen=True)
class Queue:
  """UDS's FIFO queue: ``items`` f32[Q, E], ``count`` i32[] embeddings pushed so far
  (slot ``count % Q`` is written next; the first min(count, Q) slots are filled)."""

  items: jax.Array
  count: jax.Array


jax.tree_util.register_dataclass(Queue, data_fields=["items", "count"], meta_fields=[])


def embedding_size(seq_len: int, vocab: int, r1: int, r2: int) -> int:
  return 2 * min(r1, seq_len) * min(r2, vocab)


def init_state(name: str, hparams: dict, *, seq_len: int, vocab: int) -> Queue | None:
  """The selector's state at step 0: UDS's empty queue, None for the others."""
  if name != "uds":
    return None
  hp = {**SELECTORS.hparams("uds"), **dict(hparams)}
  size = embedding_size(seq_len, vocab, hp["r1"], hp["r2"])
  return Queue(jnp.zeros((hp["queue"], size), jnp.float32), jnp.zeros((), jnp.int32))


def diversity(embedding: jax.Array, queue: Queue) -> jax.Array:
  """f32[N]: each embedding's mean L2 distance to the queue's filled slots (0 if none)."""
  filled = jnp.arange(queue.items.shape[0]) < queue.count
  d = jnp.sqrt(jnp.maximum(jnp.sum((embedding[:, None] - queue.items[None]) ** 2, -1), 0.0))
  n = jnp.sum(filled)
  return jnp.where(n > 0, jnp.sum(d * filled, -1) / jnp.maximum(n, 1), 0.0)


def push(queue: Queue, rows: jax.Array) -> Queue:
  """``queue`` with ``rows`` [K, E] written in order at the next slots, wrapping around."""
  slots = (queue.count + jnp.arange(rows.shape[0])) % queue.items.shape[0]
  return Queue(queue.items.at[slots].set(rows), queue.count + rows.shape[0])


def choose(rows: RowScores, state: Queue | None, pool: int, keep: int):
  """(kept row indices i32[B * keep / pool], eligible bool[same], next state, diversity
  f32[B]): the ``keep`` best of each group of ``pool`` rows, groups in order."""
  b = rows.score.shape[0]
  use_queue = rows.embedding is not None and state is not None
  grouped = lambda x: x.reshape(b // pool, pool, *x.shape[1:])
  groups = (grouped(rows.score), grouped(rows.eligible))
  if use_queue:
    groups += (grouped(rows.embedding),)

  def group(queue, g):
    score, eligible = g[0], g[1]
    div = jnp.zeros_like(score)
    if use_queue:
      div = diversity(g[2], queue)
      score = score + rows.alpha * div
    score = jnp.where(eligible, score, -jnp.inf)
    _, top = jax.lax.top_k(score, keep)
    if use_queue:
      queue = push(queue, g[2][top])
    return queue, (top, eligible[top], div)

  state, (top, eligible, div) = jax.lax.scan(group, state if use_queue else None, groups)
  index = (top + pool * jnp.arange(b // pool)[:, None]).reshape(-1)
  return index, eligible.reshape(-1), state, div.reshape(-1)


def make_select(name: str, hparams: dict, *, pool: int, keep: int, scorer, where: str = ""):
  """``select(params, frozen, batch, state, key) -> (batch, state, metrics)``: the step's
  selection (``train.step_function(select=...)``).

  Args:
    name: a ``SELECTORS`` key.
    hparams: its hyperparameters.
    pool: rows per group (the batch's rows must be a multiple).
    keep: rows kept per group (1 <= keep <= pool).
    scorer: how to read the trained model (its logits are read, never a fused head).
  """
  if not 1 <= keep <= pool:
    raise ValueError(f"select: keep={keep} must be in [1, pool={pool}]")
  fn = SELECTORS.bind(name, hparams, where=where)
  reads_logits = SELECTORS.entry(name).meta.get("reads_logits", True)

  def select(params, frozen, batch, state: Any, key):
    from jaxpost.scoring import model_outputs

    b = batch.tokens.shape[0]
    if b % pool:
      raise ValueError(f"select: {b} rows are not a multiple of select.pool={pool}")
    logits = None
    if reads_logits:
      model = scorer.model((params, frozen["rest"]))
      logits = jax.lax.stop_gradient(model_outputs(model, batch))
    rows = fn(logits, batch, key)
    index, eligible, state, div = choose(rows, state, pool, keep)
    kept = jax.tree.map(lambda x: x[index], batch)
    kept = dataclasses.replace(kept, loss_mask=kept.loss_mask * eligible[:, None])
    metrics = {
      "select/score": jnp.mean(rows.score[index]),
      "select/score_all": jnp.mean(rows.score),
      "select/eligible": jnp.mean(eligible.astype(jnp.float32)),
    }
    if rows.embedding is not None:
      metrics["select/diversity"] = jnp.mean(div[index])
    return kept, state, metrics

  return select
