"""LoRA adapters: a new adapter changes nothing, merged == unmerged, every head path,
sharding, several named adapters, and a LoRA run that trains adapters only (the base
bit-identical, the checkpoint adapters only, the model rebuilt from it)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpost import models, peft, scoring, sharding, train
from jaxpost.peft import lora as lora_lib
from jaxpost.types import ROLE_ANSWER, Batch

EVERYTHING = r"(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj|lm_head)$"  # the head too


def _model(seed=0, tie=False):
  cfg = models.named_config(
    "tiny", vocab_size=37, n_layers=2, d_model=32, mlp_dim=48, n_heads=4, n_kv_heads=2,
    head_dim=8, tie_embeddings=tie,
  )  # fmt: skip
  return models.Decoder(cfg, rngs=nnx.Rngs(seed))


def _tokens():
  return jnp.asarray(np.random.default_rng(0).integers(1, 37, (3, 9)), jnp.int32)


def _randomize_b(model, seed=1):
  """Nonzero B (a trained adapter), so the update is visible."""
  rng = np.random.default_rng(seed)
  for adapters in lora_lib.adapters_of(model).values():
    for a in adapters.values():
      a.b[...] = jnp.asarray(rng.normal(0, 0.3, a.b[...].shape), a.b[...].dtype)


def test_a_new_adapter_leaves_every_output_bit_identical():
  model, t = _model(), _tokens()
  before = model.forward(t, hidden_layers=(0, 1))
  hits = peft.add_lora(model, peft.LoRASettings(targets=EVERYTHING, rank=4))
  assert len(hits) == 2 * 7 + 1 and "lm_head" in hits and "layers.1.mlp.down_proj" in hits
  after = model.forward(t, hidden_layers=(0, 1))
  np.testing.assert_array_equal(after.logits, before.logits)
  for x, y in zip(after.hidden_states, before.hidden_states, strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("rslora", [False, True])
def test_merged_equals_unmerged_and_the_update_is_scale_times_ab(rslora):
  model, t = _model(), _tokens()
  peft.add_lora(model, peft.LoRASettings(targets=EVERYTHING, rank=4, alpha=8.0, rslora=rslora))
  _randomize_b(model)
  q = model.layers[0].attn.q_proj
  (adapter,) = q.lora.values()
  assert adapter.scale == pytest.approx(8.0 / (2.0 if rslora else 4.0))
  delta = np.einsum("dr,rhe->dhe", np.asarray(adapter.a[...]), np.asarray(adapter.b[...]))
  np.testing.assert_allclose(q.effective_kernel() - q.kernel[...], adapter.scale * delta,
                             rtol=1e-5, atol=1e-6)  # fmt: skip
  unmerged = model(t)
  assert float(jnp.max(jnp.abs(unmerged - _model()(t)))) > 1e-2  # the adapters act
  merged = peft.merge_lora(model)
  assert all(m.lora is None for _, m in lora_lib._linears(merged))
  np.testing.assert_allclose(merged(t), unmerged, rtol=1e-5, atol=1e-5)


def test_fused_head_loss_and_gradients_equal_the_materialised_logits():
  model = _model()
  peft.add_lora(model, peft.LoRASettings(targets=EVERYTHING, rank=4))
  _randomize_b(model)
  t = _tokens()
  batch = Batch(tokens=t, targets=jnp.roll(t, -1, 1), loss_mask=jnp.ones(t.shape),
                segment_ids=jnp.ones(t.shape, jnp.int32),
                positions=jnp.broadcast_to(jnp.arange(9), t.shape),
                roles=jnp.full(t.shape, ROLE_ANSWER))  # fmt: skip
  graphdef, adapters, rest = nnx.split(model, peft.adapter_filter(), ...)

  def loss(p, lm_head):
    out = scoring.model_outputs(nnx.merge(graphdef, p, rest), batch, lm_head=lm_head)
    from jaxpost.losses.head import target_stats

    return -jnp.mean(target_stats(out, batch.targets, batch.loss_mask).logp)

  for fused in ("fused_xla", "fused_pallas"):  # (Pallas in interpret mode on CPU)
    a, ga = jax.value_and_grad(loss)(adapters, "logits")
    b, gb = jax.value_and_grad(loss)(adapters, fused)
    np.testing.assert_allclose(b, a, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(gb), jax.tree.leaves(ga), strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  head = [k for k in train.param_paths(ga) if k.startswith("lm_head")]
  assert head and all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ga))


def test_adapters_shard_with_their_kernels_and_a_mesh_changes_nothing():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  model, t = _model(), _tokens()
  peft.add_lora(model, peft.LoRASettings(targets=EVERYTHING, rank=4))
  _randomize_b(model)
  expected = model(t)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)  # fmt: skip
  graphdef, state = nnx.split(model)
  placed = sharding.shard_tree(state, mesh)
  q = placed["layers"][0]["attn"]["q_proj"]["lora"]["default"]
  assert q["b"][...].sharding.spec == jax.sharding.PartitionSpec(None, "tensor", None)
  assert q["a"][...].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  got = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(placed, t)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_named_adapters_add_up_and_can_be_switched():
  model, t = _model(), _tokens()
  base = model(t)
  peft.add_lora(model, peft.LoRASettings(rank=2, name="math"))
  peft.add_lora(model, peft.LoRASettings(rank=4, name="chat", init="gaussian"), seed=3)
  _randomize_b(model)
  both = model(t)
  peft.set_enabled(model, ["math"])
  only_math = model(t)
  peft.set_enabled(model, [])
  np.testing.assert_array_equal(model(t), base)  # all off: the base exactly
  peft.set_enabled(model, None)
  np.testing.assert_allclose(model(t), both)
  assert float(jnp.abs(only_math - both).max()) > 1e-3
  math_only = nnx.state(model, peft.adapter_filter("math"))
  assert {p.split(".lora.")[1] for p in train.param_paths(math_only)} == {"math.a", "math.b"}
  with pytest.raises(ValueError, match="already has an adapter named 'math'"):
    peft.add_lora(model, peft.LoRASettings(rank=2, name="math"))


def test_bad_settings_and_targets_are_refused():
  with pytest.raises(ValueError, match="match no linear.*ties its LM head"):
    peft.add_lora(_model(tie=True), peft.LoRASettings(targets=r"lm_head$"))
  with pytest.raises(ValueError, match="paths read like"):
    peft.add_lora(_model(), peft.LoRASettings(targets=r"attention\.query"))
  for kwargs, match in (({"rank": 0}, "rank"), ({"init": "pissa"}, "init"),
                        ({"targets": "("}, "regular"), ({"name": "a.b"}, "letters")):  # fmt: skip
    with pytest.raises(ValueError, match=match):
      peft.LoRASettings(**kwargs)


def test_adapter_training_moves_only_the_adapters():
  model = _model()
  peft.add_lora(model, peft.LoRASettings(targets=EVERYTHING, rank=4))
  graphdef, params, rest = train.split_model(model, peft.adapter_filter())
  assert all(".lora.default." in p for p in train.param_paths(params))
  optimizer = optax.adamw(1e-2, weight_decay=0.1)
  state = train.init_train_state(params, optimizer, 0)
  step = train.make_train_step(train.objective_for("cross_entropy", graphdef), optimizer,
                               donate=False)  # fmt: skip
  t = _tokens()
  batch = Batch(tokens=t, targets=jnp.roll(t, -1, 1), loss_mask=jnp.ones(t.shape),
                segment_ids=jnp.ones(t.shape, jnp.int32),
                positions=jnp.broadcast_to(jnp.arange(9), t.shape),
                roles=jnp.full(t.shape, ROLE_ANSWER))  # fmt: skip
  losses = []
  for _ in range(5):
    state, m = step(state, batch, {"rest": rest})
    losses.append(float(m["train/loss"]))
  assert losses[-1] < losses[0]
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True)]  # fmt: skip
  assert all(moved)


def test_pull_to_start_is_the_gradient_of_an_l2_penalty_to_the_start():
  """optim.l2_to_start: SGD with the pull == SGD on loss + (l/2)||theta - theta_0||^2,
  theta_0 the first parameters, step after step (RegLoRA-style for adapters)."""
  from jaxpost import optim

  target = {"w": jnp.asarray([1.0, -2.0, 0.5])}
  start = {"w": jnp.asarray([0.3, 0.1, -0.4])}

  def loss(p):
    return jnp.sum((p["w"] - target["w"]) ** 2)

  strength, lr = 0.7, 0.05
  pulled = optax.chain(optim.pull_to_start(strength), optax.sgd(lr))
  p, state = start, pulled.init(start)
  q = start
  for _ in range(4):
    updates, state = pulled.update(jax.grad(loss)(p), state, p)
    p = optax.apply_updates(p, updates)
    penalised = jax.grad(lambda x: loss(x) + strength / 2 * jnp.sum((x["w"] - start["w"]) ** 2))
    q = jax.tree.map(lambda x, g: x - lr * g, q, penalised(q))
    np.testing.assert_allclose(p["w"], q["w"], rtol=1e-6)
  # The pull holds the parameters nearer the start than the plain loss would.
  plain = start
  for _ in range(4):
    plain = jax.tree.map(lambda x, g: x - lr * g, plain, jax.grad(loss)(plain))
  assert jnp.linalg.norm(p["w"] - start["w"]) < jnp.linalg.norm(plain["w"] - start["w"])


def test_adapters_merge_as_task_vectors_of_their_product():
  """Two adapters as task vectors (scale B A, not A and B averaged): their sum added
  to the base == the model with both enabled; TIES of identical vectors == the vector."""
  from jaxpost import merging

  model, t = _model(), _tokens()
  peft.add_lora(model, peft.LoRASettings(rank=2, name="x"))
  peft.add_lora(model, peft.LoRASettings(rank=3, name="y"), seed=4)
  _randomize_b(model)
  both = model(t)
  vx, vy = lora_lib.task_vector(model, "x"), lora_lib.task_vector(model, "y")
  zeros = jax.tree.map(jnp.zeros_like, vx)
  summed = merging.task_arithmetic(zeros, [vx, vy])
  plain = nnx.clone(model)
  peft.set_enabled(plain, [])
  lora_lib.add_task_vector(plain, summed)
  np.testing.assert_allclose(plain(t), both, rtol=1e-5, atol=1e-5)
  trimmed = merging.ties(zeros, [vx, vx], density=1.0)
  for k in vx:
    np.testing.assert_allclose(trimmed[k], vx[k], rtol=1e-6)
  with pytest.raises(ValueError, match="no adapter 'z'"):
    lora_lib.task_vector(model, "z")


def _batch(t):
  return Batch(tokens=t, targets=jnp.roll(t, -1, 1), loss_mask=jnp.ones(t.shape),
               segment_ids=jnp.ones(t.shape, jnp.int32),
               positions=jnp.broadcast_to(jnp.arange(t.shape[1]), t.shape),
               roles=jnp.full(t.shape, ROLE_ANSWER))  # fmt: skip


def test_dropout_is_off_outside_train_steps_and_unbiased_inside():
  """A dropout adapter evaluates exactly like the same adapter without dropout (its
  stored key is zeros); a step's key drops inputs, differently per step and adapter,
  the same again for the same step; over many keys the update averages to the plain one."""
  plain, dropped = _model(), _model()
  peft.add_lora(plain, peft.LoRASettings(targets=EVERYTHING, rank=4))
  peft.add_lora(dropped, peft.LoRASettings(targets=EVERYTHING, rank=4, dropout=0.5))
  _randomize_b(plain)
  _randomize_b(dropped)
  t = _tokens()
  forward = jax.jit(lambda g, *states: nnx.merge(g, *states)(t), static_argnums=0)
  assert (
    np.asarray(forward(*nnx.split(plain))).tobytes()
    == np.asarray(forward(*nnx.split(dropped))).tobytes()
  )
  assert dropped.lm_head.lora["default"].dropout == 0.0  # added to the head matrix: none
  graphdef, params, rest = train.split_model(dropped, peft.adapter_filter())
  state = train.init_train_state(params, optax.sgd(0.0), 3)

  def logits(step):
    frozen = train.with_dropout_keys({"rest": rest}, state.replace(step=jnp.int32(step)))
    keys = [x for p, x in zip(train.param_paths(frozen["rest"]), jax.tree.leaves(frozen["rest"]),
                               strict=True) if "dropout_key" in p]  # fmt: skip
    assert len(keys) == 2 * 7 and len({np.asarray(k).tobytes() for k in keys}) == 14
    return forward(graphdef, params, frozen["rest"])

  a, b = logits(1), logits(2)
  assert not np.allclose(a, b) and np.asarray(logits(1)).tobytes() == np.asarray(a).tobytes()
  # Inverted dropout: E[mask x / keep] = x, so the adapter's update is unbiased.
  layer = dropped.layers[0].mlp.up_proj
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 32)), jnp.float32)
  adapter = layer.lora["default"]
  want = np.asarray(adapter.update(x))  # key zeros: no dropout
  adapter_def, adapter_state = nnx.split(adapter)

  @jax.jit
  @jax.vmap
  def update_with(key_data):  # the adapter's update under one stored dropout key
    key = adapter_state["dropout_key"].replace(key_data)
    state = nnx.State({**adapter_state, "dropout_key": key})
    return nnx.merge(adapter_def, state).update(x)

  keys = jax.vmap(lambda i: jax.random.key_data(jax.random.key(i)))(jnp.arange(1, 401))
  draws = np.asarray(update_with(keys))
  np.testing.assert_allclose(np.mean(draws, 0), want, atol=0.15 * np.abs(want).max())
  assert np.abs(draws[0] - want).max() > 0.1 * np.abs(want).max()


def test_a_dropout_step_trains_only_the_adapters_and_replays_exactly():
  model = _model()
  peft.add_lora(model, peft.LoRASettings(targets=EVERYTHING, rank=4, dropout=0.3))
  _randomize_b(model)  # B = 0 would hide what dropout does to the input
  graphdef, params, rest = train.split_model(model, peft.adapter_filter())
  optimizer = optax.adam(1e-2)
  step = train.make_train_step(train.objective_for("cross_entropy", graphdef), optimizer,
                               donate=False)  # fmt: skip
  batch = _batch(_tokens())
  s0 = train.init_train_state(params, optimizer, 0)
  s1, m1 = step(s0, batch, {"rest": rest})
  again, m_again = step(s0, batch, {"rest": rest})
  assert float(m1["train/loss"]) == float(m_again["train/loss"])  # same rng and step
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(again.params), strict=True):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  # The same parameters at the next step draw other masks: another loss.
  _, m2 = step(s0.replace(step=s0.step + 1), batch, {"rest": rest})
  assert float(m2["train/loss"]) != float(m1["train/loss"])
  # Only adapters are trainable; the rest (with its stored, all-zero keys) is untouched.
  assert all(".lora.default." in p for p in train.param_paths(s1.params))
  keys = [x for p, x in zip(train.param_paths(rest), jax.tree.leaves(rest), strict=True)
          if "dropout_key" in p]  # fmt: skip
  assert keys and all(not np.asarray(k).any() for k in keys)
