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


def _lora_clients():
  import jax
  from flax import nnx

  from jaxpost import models, peft, train
  from jaxpost.types import ROLE_ANSWER, Batch

  cfg = models.named_config("tiny", vocab_size=29, n_layers=1, d_model=16, mlp_dim=32,
                            n_heads=2, n_kv_heads=1, head_dim=8)  # fmt: skip
  model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  peft.add_lora(model, peft.LoRASettings(rank=2, name="r"))
  peft.add_lora(model, peft.LoRASettings(rank=2, name="s"), seed=1)
  rng = np.random.default_rng(0)

  def batch():
    t = jnp.asarray(rng.integers(1, 29, (2, 8)), jnp.int32)
    return Batch(tokens=t, targets=jnp.roll(t, -1, 1), loss_mask=jnp.ones(t.shape),
                 segment_ids=jnp.ones(t.shape, jnp.int32),
                 positions=jnp.broadcast_to(jnp.arange(8), t.shape),
                 roles=jnp.full(t.shape, ROLE_ANSWER))  # fmt: skip

  # clients x local steps of batches: [C=3, S=2, ...]
  batches = fed.stack([fed.stack([batch(), batch()]) for _ in range(3)])
  return jax, model, peft, train, batches


def test_vmapped_clients_equal_clients_run_one_by_one():
  jax, model, peft, train, batches = _lora_clients()
  graphdef, params, rest = train.split_model(model, peft.adapter_filter("r"))
  optimizer = optax.adamw(1e-2)
  step = train.step_function(train.objective_for("cross_entropy", graphdef), optimizer)
  state = train.init_train_state(params, optimizer, 0)
  together, metrics = fed.local_rounds(step, fed.broadcast(state, 3), batches, {"rest": rest})
  assert metrics["train/loss"].shape == (3, 2)
  jitted = jax.jit(step)
  for k, got in enumerate(fed.unstack(together, 3)):
    s = state
    for i in range(2):
      s, _ = jitted(s, jax.tree.map(lambda x, k=k, i=i: x[k, i], batches), {"rest": rest})
    for x, y in zip(jax.tree.leaves(got.params), jax.tree.leaves(s.params), strict=True):
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)


def test_fedsdr_round_uploads_and_averages_the_rectification_adapter_only():
  """FedSDR's server step over dual-stream LoRA: clients train their smoothing adapter
  (stage 1, ``s``: the rectifier's gradient is zero) then the rectifier (stage 2, ``r``);
  only ``r`` goes up; afterwards every client's ``s`` is what it trained and the global
  ``r`` is the n_k-weighted mean; the payload is one adapter's."""
  jax, model, peft, train, batches = _lora_clients()
  optimizer = optax.sgd(0.1)
  stage = {}
  for name in ("s", "r"):
    graphdef, params, rest = train.split_model(model, peft.adapter_filter(name))
    stage[name] = (graphdef, params, rest)
  # Stage 1 trains s with r in the frozen rest: r's gradient does not exist, by the split.
  g1, s_params, rest1 = stage["s"]
  assert all(".lora.s." in p for p in train.param_paths(s_params))
  step1 = train.step_function(train.objective_for("cross_entropy", g1), optimizer)
  start = fed.broadcast(train.init_train_state(s_params, optimizer, 0), 3)
  s_states, _ = fed.local_rounds(step1, start, batches, {"rest": rest1})
  g2, r_params, _ = stage["r"]
  uploads = []
  for k, s_state in enumerate(fed.unstack(s_states, 3)):  # stage 2 per client, its own s in rest
    client = nnx_merge(g1, s_state.params, rest1)
    g2, r_k, rest2 = train.split_model(client, peft.adapter_filter("r"))
    step2 = jax.jit(train.step_function(train.objective_for("cross_entropy", g2), optimizer))
    st = train.init_train_state(r_k, optimizer, 0)
    st, _ = step2(st, jax.tree.map(lambda x, k=k: x[k, 0], batches), {"rest": rest2})
    uploads.append(st.params)
  server = fed.Server.create("fedavg", r_params)
  new_r = server.step(r_params, fed.stack(uploads), [10, 20, 30])
  w = np.asarray([10, 20, 30]) / 60
  for path, x in zip(train.param_paths(new_r), jax.tree.leaves(new_r), strict=True):
    want = sum(w[k] * np.asarray(jax.tree.leaves(uploads[k])[train.param_paths(new_r).index(path)])
               for k in range(3))  # fmt: skip
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-6)
  both = fed.payload_bytes(r_params) + fed.payload_bytes(s_params)
  assert fed.payload_bytes(uploads[0]) == fed.payload_bytes(r_params) == both / 2  # one adapter
  first = jax.tree.leaves(fed.unstack(s_states, 3)[0].params)
  s_moved = [
    not np.array_equal(a, b) for a, b in zip(first, jax.tree.leaves(s_params), strict=True)
  ]
  assert all(s_moved)  # each client's s trained locally and never left it


def nnx_merge(graphdef, params, rest):
  from flax import nnx

  return nnx.merge(graphdef, params, rest)
