"""Server-side aggregation of client updates, as pure functions over pytrees.

A round: every client k starts from the global parameters theta, trains locally on its
n_k examples and returns theta_k; the server forms the n_k-weighted pseudo-gradient
delta = sum_k (n_k / n) (theta_k - theta) and updates theta with it:

  fedavg      theta + delta                                      (McMahan et al. 2017)
  fedavgm     server momentum: v = beta v + delta, theta + lr v  (Hsu et al. 2019)
  fedadam / fedyogi / fedadagrad
              an adaptive server optimiser on -delta             (Reddi et al. 2021)
  fedprox     fedavg's server; the client adds mu / 2 ||theta_k - theta||^2 to its
              loss (``optim.l2_to_start``: the pull toward where the round started)

``Server`` holds the server optimiser (optax) and its state. Clients' parameters are
stacked on a leading axis [C, ...] (what a vmapped local round produces), so the
weighted mean is one reduction. LoRA: averaging A and B separately is not averaging
the products B A; ``lora_product_mean`` gives the exact mean update and
``refactor`` its best rank-r factorisation (SVD), the choice offered beside plain A/B
averaging.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpost import train

AGGREGATORS = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def client_weights(sizes: Sequence[int]) -> jax.Array:
  """n_k / n: f32[C]."""
  n = np.asarray(sizes, np.float64)
  if n.ndim != 1 or n.size == 0 or np.any(n < 0) or n.sum() <= 0:
    raise ValueError(f"client sizes must be >= 0 and not all 0, got {list(sizes)}")
  return jnp.asarray(n / n.sum(), jnp.float32)


def weighted_delta(global_params, stacked_clients, weights: jax.Array):
  """sum_k w_k (theta_k - theta): clients stacked on axis 0 of every leaf, in f32."""

  def one(g, c):
    d = c.astype(jnp.float32) - g.astype(jnp.float32)[None]
    return jnp.tensordot(weights, d, axes=1)

  return jax.tree.map(one, global_params, stacked_clients)


def server_optimizer(
  name: str, *, lr: float = 1.0, momentum: float = 0.9, b1: float = 0.9, b2: float = 0.99,
  eps: float = 1e-3,
) -> optax.GradientTransformation:  # fmt: skip
  """The server's update rule on the pseudo-gradient -delta (module doc); the adaptive
  ones use Reddi et al.'s tau = ``eps`` (an adaptivity floor, not a tiny epsilon)."""
  if name in ("fedavg", "fedprox"):
    return optax.sgd(lr)
  if name == "fedavgm":
    return optax.sgd(lr, momentum=momentum)
  if name == "fedadam":
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)
  if name == "fedyogi":
    return optax.yogi(lr, b1=b1, b2=b2, eps=eps)
  if name == "fedadagrad":
    return optax.adagrad(lr, eps=eps)
  raise ValueError(f"aggregator {name!r}; expected one of {AGGREGATORS}")


@dataclasses.dataclass
class Server:
  """A server optimiser over the global parameters (``server_optimizer``)."""

  optimizer: optax.GradientTransformation
  state: optax.OptState

  @classmethod
  def create(cls, name: str, global_params, **kwargs) -> Server:
    opt = server_optimizer(name, **kwargs)
    return cls(opt, opt.init(jax.tree.map(lambda x: x.astype(jnp.float32), global_params)))

  def step(self, global_params, stacked_clients, sizes: Sequence[int]):
    """The new global parameters (dtypes kept) from one round's clients."""
    new, self.state = server_update(
      self.optimizer, global_params, self.state, stacked_clients, client_weights(sizes)
    )
    return new


def server_update(optimizer, global_params, opt_state, stacked_clients, weights):
  """``Server.step`` as a pure function: (new global parameters, new server state)."""
  delta = weighted_delta(global_params, stacked_clients, weights)
  g32 = jax.tree.map(lambda x: x.astype(jnp.float32), global_params)
  updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, delta), opt_state, g32)
  new = optax.apply_updates(g32, updates)
  return jax.tree.map(lambda n, g: n.astype(g.dtype), new, global_params), opt_state


def lora_product_mean(a: jax.Array, b: jax.Array, weights: jax.Array) -> jax.Array:
  """sum_k w_k A_k B_k for clients' A [C, in, r] and B [C, r, out]: the exact mean
  update (not (mean A)(mean B))."""
  return jnp.einsum("c,cir,cro->io", weights, a.astype(jnp.float32), b.astype(jnp.float32))


def refactor(delta: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """(A [in, r], B [r, out]) with A B the best rank-r approximation of ``delta`` (SVD;
  the singular values split evenly between the factors)."""
  u, s, vt = jnp.linalg.svd(delta, full_matrices=False)
  root = jnp.sqrt(s[:rank])
  return u[:, :rank] * root[None], root[:, None] * vt[:rank]


def lora_exact_mean(stacked_clients, weights: jax.Array):
  """Every adapter of stacked client states ([C, ...] leaves named ``....a`` / ``....b``,
  A [*in, r] and B [r, *out] per client) replaced by the rank-r factors of the exact
  weighted mean of its products, sum_k w_k A_k B_k (``lora_product_mean`` +
  ``refactor``); the result has no client axis. Leaves that are not adapter factors
  are averaged."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(stacked_clients)
  names = [train.path_name(p) for p, _ in flat]
  index = {n: i for i, n in enumerate(names)}
  out = [jnp.tensordot(weights, x.astype(jnp.float32), axes=1).astype(x.dtype) for _, x in flat]
  for i, name in enumerate(names):
    if not name.endswith(".a") or name[:-2] + ".b" not in index:
      continue
    j = index[name[:-2] + ".b"]
    a, b = flat[i][1], flat[j][1]
    rank = a.shape[-1]
    in_shape, out_shape = a.shape[1:-1], b.shape[2:]
    delta = lora_product_mean(a.reshape(a.shape[0], -1, rank), b.reshape(b.shape[0], rank, -1),
                              weights)  # fmt: skip
    new_a, new_b = refactor(delta, rank)
    out[i] = new_a.reshape(*in_shape, rank).astype(a.dtype)
    out[j] = new_b.reshape(rank, *out_shape).astype(b.dtype)
  return jax.tree_util.tree_unflatten(treedef, out)


def payload_bytes(tree) -> int:
  """Bytes a client uploads for ``tree`` (its leaves as stored)."""
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
