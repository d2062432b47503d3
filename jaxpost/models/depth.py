"""Which contiguous blocks to prune: the angular distance between a block span's input
and output residual streams (Gromov et al. 2024, "The Unreasonable Ineffectiveness of
the Deeper Layers"; the block choice of self-data distillation for pruned models,
Thangarasa et al. 2024).

For n blocks starting at l, d(l, n) = arccos(cos(x_l, x_{l+n})) / pi, where x_l is the
input of block l (x_0 the embeddings, x_L the last block's output), averaged over the
real tokens of some text (``position="all"``) or taken at each sequence's last token
(``"last"``, Gromov et al.'s choice). The span with the smallest distance changes the
stream least; removing it is ``model.keep_layers=prune_spec(...)``:

  python -m jaxpost.models.depth --model=smollm2 --levels=add3 --drop=10
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

POSITIONS = ("all", "last")


def block_inputs(model, tokens: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """f32[L + 1, B, T, D]: the residual stream entering each block, then the last
  block's output (before the final norm)."""
  n = model.config.n_layers
  out = model.forward(
    tokens, segment_ids=segment_ids, hidden_layers=tuple(range(n)), compute_logits=False
  )
  embedded = jnp.take(model.embed[...], tokens, axis=0)
  streams = [embedded, *(out.hidden_states[i] for i in range(n))]
  return jnp.stack([s.astype(jnp.float32) for s in streams])


def angular_distances(
  streams: jax.Array, segment_ids: jax.Array, n: int, position: str = "all"
) -> np.ndarray:
  """f64[L - n + 1]: d(l, n) for every start l, from ``block_inputs``' streams."""
  if position not in POSITIONS:
    raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
  depth = streams.shape[0] - 1
  if not 1 <= n <= depth:
    raise ValueError(f"n must be in [1, {depth}] (the model's blocks), got {n}")
  a, b = streams[: depth - n + 1], streams[n:]  # [S, B, T, D]
  u = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  v = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  # arccos(u . v), computed as 2 atan2(|u - v|, |u + v|): exact near 0, where arccos
  # of a float32 cosine is off by ~1e-4
  angle = 2 * jnp.arctan2(jnp.linalg.norm(u - v, axis=-1), jnp.linalg.norm(u + v, axis=-1))
  angle = angle / jnp.pi  # [S, B, T]
  real = segment_ids > 0
  if position == "last":  # each row's last real token
    last = jnp.max(jnp.where(real, jnp.arange(real.shape[1]), -1), axis=1)
    real = (jnp.arange(real.shape[1])[None] == last[:, None]) & (last[:, None] >= 0)
  weights = real.astype(jnp.float32)
  return np.asarray(jnp.sum(angle * weights, (1, 2)) / jnp.maximum(weights.sum(), 1), np.float64)


def best_span(distances: Sequence[float]) -> int:
  """The start of the span with the smallest distance (the earliest on a tie)."""
  return int(np.argmin(np.asarray(distances)))


def prune_spec(n_layers: int, start: int, n: int) -> str:
  """``model.keep_layers`` with blocks ``start .. start + n - 1`` removed."""
  if not (0 <= start and n >= 1 and start + n <= n_layers and n < n_layers):
    raise ValueError(f"cannot remove {n} blocks from {start} of {n_layers}")
  return ",".join(str(i) for i in range(n_layers) if not start <= i < start + n)


def measure(model, tok, texts: Sequence[str], n: int, *, position: str = "all",
            batch_size: int = 16) -> np.ndarray:  # fmt: skip
  """``angular_distances`` over ``texts`` (plain text, right-padded batches), averaged
  over the batches weighted by their tokens."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def streams_of(state, tokens, segments):
    return block_inputs(nnx.merge(graphdef, state), tokens, segments)

  total, weight = 0.0, 0.0
  rows = [list(tok.encode(t)) or [tok.pad_id] for t in texts]
  for start in range(0, len(rows), batch_size):
    chunk = rows[start : start + batch_size]
    width = -(-max(map(len, chunk)) // 32) * 32
    tokens = np.full((batch_size, width), tok.pad_id, np.int32)
    segments = np.zeros((batch_size, width), np.int32)
    for i, r in enumerate(chunk):
      tokens[i, : len(r)], segments[i, : len(r)] = r, 1
    d = angular_distances(streams_of(state, tokens, segments), segments, n, position)
    w = len(chunk) if position == "last" else int(segments.sum())
    total, weight = total + d * w, weight + w
  return total / max(weight, 1)


def main(argv=None) -> None:
  """Prints each span's distance and the ``model.keep_layers`` that removes the best."""
  import argparse
  import json

  from jaxpost import config_lib
  from jaxpost.data import tasks, template
  from jaxpost.datagen import core

  p = argparse.ArgumentParser(description="Angular distance of each block span")
  p.add_argument("--model", required=True, help="a run, zoo:NAME, smollm2 or a .gguf file")
  p.add_argument("--levels", required=True, help="task levels whose worked examples are read")
  p.add_argument("--drop", type=int, required=True, help="n: blocks to remove")
  p.add_argument("--n", type=int, default=64, help="examples read")
  p.add_argument("--position", default="all", choices=POSITIONS)
  a = p.parse_args(argv)
  author = core.load_author(a.model)
  mixture = tasks.mixture(config_lib.parse_levels(a.levels), "train", 0)
  texts = [template.render_example(mixture.problem_at(i).example) for i in range(a.n)]
  d = measure(author.model, author.tok, texts, a.drop, position=a.position)
  start = best_span(d)
  spec = prune_spec(author.model.config.n_layers, start, a.drop)
  print(json.dumps({"distances": [round(float(x), 5) for x in d], "start": start,
                    "keep_layers": spec}))  # fmt: skip


if __name__ == "__main__":
  main()
