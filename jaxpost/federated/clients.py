"""Clients of a federated round as one computation: their trainable states stacked on
a leading axis, local steps as a ``lax.scan``, clients as a ``vmap`` over it (no
process, no Python loop per client), the frozen base shared by all.

``local_rounds(step_fn, states, batches, frozen)`` takes the *unjitted* per-client step
(``train.step_function``: the same one ``train.make_train_step`` jits) so it traces once
for all clients; ``stack`` / ``unstack`` move between a list of pytrees and the stacked
form the server's aggregation (``jaxpost.federated.aggregate``) reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def stack(trees: Sequence):
  """A list of same-structure pytrees -> one pytree with a leading client axis."""
  if not trees:
    raise ValueError("stack needs at least one tree")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, n: int) -> list:
  """The inverse of ``stack``."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def make_local_rounds(step_fn: Callable):
  """``local(states, batches, frozen) -> (states [C, ...], metrics [C, S])``, jitted once:
  every client's local steps, ``states`` [C, ...], ``batches`` [C, S, ...] (S steps
  each), ``frozen`` shared by all clients."""

  def one_client(state, client_batches, frozen):
    def body(s, batch):
      return step_fn(s, batch, frozen)

    return jax.lax.scan(body, state, client_batches)

  return jax.jit(jax.vmap(one_client, in_axes=(0, 0, None)))


def local_rounds(step_fn: Callable, states, batches, frozen):
  """``make_local_rounds(step_fn)(states, batches, frozen)`` (compiles on every call)."""
  return make_local_rounds(step_fn)(states, batches, frozen)


def broadcast(tree, n: int):
  """``n`` copies of ``tree`` stacked (every client starts a round from the global model)."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), tree)
