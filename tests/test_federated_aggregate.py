"""Server aggregation against hand computations: FedAvg is the n_k-weighted mean,
momentum / adaptive servers are their optax rules on -delta, LoRA products averaged
exactly (not A and B apart), payload bytes."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpost import federated as fed


def _clients():
  g = {"w": jnp.asarray([1.0, 2.0, 3.0]), "b": jnp.asarray(0.5)}
  stacked = {"w": jnp.asarray([[2.0, 2.0, 2.0], [0.0, 4.0, 3.0]]), "b": jnp.asarray([1.0, 0.0])}
  return g, stacked, [30, 10]


def test_fedavg_is_the_size_weighted_mean_of_the_clients():
  g, stacked, sizes = _clients()
  server = fed.Server.create("fedavg", g)
  new = server.step(g, stacked, sizes)
  np.testing.assert_allclose(new["w"], 0.75 * stacked["w"][0] + 0.25 * stacked["w"][1])
  np.testing.assert_allclose(new["b"], 0.75 * 1.0 + 0.25 * 0.0)
  # identical clients: the global model becomes that client for every aggregator's lr 1 fedavg
  same = {"w": jnp.stack([g["w"] + 1] * 2), "b": jnp.stack([g["b"]] * 2)}
  np.testing.assert_allclose(fed.Server.create("fedavg", g).step(g, same, sizes)["w"], g["w"] + 1)


def test_fedavgm_and_fedadam_follow_their_rules_on_minus_delta():
  g, stacked, sizes = _clients()
  delta = fed.weighted_delta(g, stacked, fed.client_weights(sizes))
  np.testing.assert_allclose(delta["w"], [0.75 * 1 + 0.25 * -1, 0.75 * 0 + 0.25 * 2, -0.75])
  server = fed.Server.create("fedavgm", g, lr=0.5, momentum=0.9)
  one = server.step(g, stacked, sizes)
  two = server.step(one, jax_stack_like(one, stacked, g), sizes)
  v1 = delta["w"]
  np.testing.assert_allclose(one["w"], g["w"] + 0.5 * v1, rtol=1e-6)
  d2 = fed.weighted_delta(one, jax_stack_like(one, stacked, g), fed.client_weights(sizes))["w"]
  np.testing.assert_allclose(two["w"], one["w"] + 0.5 * (0.9 * v1 + d2), rtol=1e-6)
  adam = fed.Server.create("fedadam", g, lr=0.1, eps=1e-3)
  ref = optax.adam(0.1, b1=0.9, b2=0.99, eps=1e-3)
  state = ref.init(g)
  upd, _ = ref.update({"w": -delta["w"], "b": -delta["b"]}, state, g)
  np.testing.assert_allclose(adam.step(g, stacked, sizes)["w"], g["w"] + upd["w"], rtol=1e-6)
  for name in fed.AGGREGATORS:
    assert fed.Server.create(name, g).step(g, stacked, sizes)["w"].shape == (3,)
  with pytest.raises(ValueError, match="aggregator"):
    fed.Server.create("fedsgd", g)


def jax_stack_like(new_global, stacked, old_global):
  """The same client deltas applied to the new global model."""
  return {k: stacked[k] - old_global[k] + new_global[k] for k in stacked}


def test_lora_products_average_exactly_and_refactor_to_rank_r():
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(3, 6, 2)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(3, 2, 5)), jnp.float32)
  w = fed.client_weights([1, 2, 1])
  exact = fed.lora_product_mean(a, b, w)
  by_hand = sum(float(w[k]) * np.asarray(a[k] @ b[k]) for k in range(3))
  np.testing.assert_allclose(exact, by_hand, rtol=1e-5, atol=1e-6)
  naive = np.einsum("c,cir->ir", w, a) @ np.einsum("c,cro->ro", w, b)
  assert np.abs(naive - by_hand).max() > 0.1  # averaging A and B apart is not the mean
  ra, rb = fed.refactor(exact, 6)  # full rank of a 6 x 5: exact
  np.testing.assert_allclose(ra @ rb, exact, rtol=1e-4, atol=1e-5)
  ra, rb = fed.refactor(exact, 2)
  s = np.linalg.svd(np.asarray(exact), compute_uv=False)
  assert np.linalg.norm(np.asarray(ra @ rb) - exact) == pytest.approx(
    np.sqrt((s[2:] ** 2).sum()), rel=1e-3
  )


def test_payload_bytes_and_bad_sizes():
  assert fed.payload_bytes({"a": jnp.zeros((4, 2)), "b": jnp.zeros(3, jnp.bfloat16)}) == 32 + 6
  with pytest.raises(ValueError, match="client sizes"):
    fed.client_weights([0, 0])
