"""Sharding on a 2x2x2 (data, fsdp, tensor) mesh of 8 fake CPU devices (see conftest).

Sharded == single device for the train step and greedy decoding; params keep their
declared shardings; batches split over data * fsdp; rule fallbacks; mesh config errors;
checkpoints saved on 8 devices restore onto 4 and onto 1; two real JAX processes
(4 devices each, see sharding_worker.py) assemble the same global batches as one.
"""

import functools
import json
import logging
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpost import checkpoint, config_lib, models, sharding, train
from jaxpost.data import packing, streams
from jaxpost.rollout import left_pad, make_generate_fn
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, Batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 64
# Every sharded dimension divides its mesh axes: vocab 64, embed 32, heads 4, kv heads 2,
# mlp 64 over tensor=2 / fsdp=2.
CFG = models.named_config(
  "tiny",
  vocab_size=V,
  d_model=32,
  n_layers=1,
  n_heads=4,
  n_kv_heads=2,
  head_dim=8,
  mlp_dim=64,
  max_seq_len=64,
)
# f32 sharded vs single device differ only in reduction order: ~1e-7 relative seen.
RTOL, ATOL = 1e-5, 1e-6


def _config(data=2, fsdp=2, tensor=2, batch_size=8):
  c = config_lib.load_sibling(os.path.join(REPO, "configs", "base.py"), "base").get_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, tensor
  c.data.batch_size = batch_size
  return c


@functools.cache
def _mesh(data=2, fsdp=2, tensor=2, n_devices=8):
  return sharding.make_mesh(_config(data, fsdp, tensor), jax.devices()[:n_devices])


def _model_parts(config=CFG):
  """(graphdef, params, rest) with seeded O(1) NumPy weights, so greedy argmaxes are clear."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: models.Decoder(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if "norm" in name:
      return jnp.asarray(1.0 + 0.2 * noise)
    return jnp.asarray((0.5 if "embed" in name else 0.2) * noise)

  model = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
  return train.split_model(model)


def _host_batch(b=8, t=16, seed=0) -> Batch:
  """A packed numpy batch (several segments per row, prompt tokens masked out)."""
  lengths = np.random.default_rng(seed).integers(4, 10, 256)

  def source(i):
    n = int(lengths[i])
    tokens = np.random.default_rng([seed, i]).integers(1, V, n).astype(np.int32)
    return tokens, np.array([ROLE_PROMPT] * 2 + [ROLE_ANSWER] * (n - 2), np.int32)

  arrays, _, _ = packing.pack_batch(source, 0, batch_size=b, seq_len=t)
  return Batch(**arrays)


def _optimizer():
  # eps=1e-4, not 1e-8: Adam's first steps are ~lr * g / (|g| + eps), which turns f32
  # reduction-order noise in a gradient entry near eps into an lr-sized difference.
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, eps=1e-4, weight_decay=0.01))


def _assert_close(a, b, rtol=RTOL, atol=ATOL):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _assert_shardings(tree, expected):
  """Every array of ``tree`` is laid out as ``expected`` (a tree_shardings result)."""
  leaves, want = jax.tree.leaves(tree), jax.tree.leaves(expected)
  assert len(leaves) == len(want)
  for x, s in zip(leaves, want, strict=True):
    assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)


@pytest.fixture(scope="module")
def trained():
  """Two train steps (microbatches=2) on one device and on the 2x2x2 mesh, same data."""
  graphdef, params, rest = _model_parts()
  objective = train.objective_for("cross_entropy", graphdef)
  opt = _optimizer()
  batches = [_host_batch(seed=s) for s in (0, 1)]

  step = train.make_train_step(objective, opt, microbatches=2, donate=False)
  single = train.init_train_state(params, opt, 0)
  single_losses = []
  for b in batches:
    single, m = step(single, jax.tree.map(jnp.asarray, b), {"rest": rest})
    single_losses.append(float(m["train/loss"]))

  mesh = _mesh()
  state = sharding.shard_train_state(train.init_train_state(params, opt, 0), mesh)
  rest_s = sharding.shard_tree(rest, mesh)
  shardings = sharding.tree_shardings(state, mesh)
  step_s = sharding.keep_state_sharding(
    train.make_train_step(objective, opt, microbatches=2, donate=False), shardings, donate=False
  )
  losses = []
  for b in batches:
    state, m = step_s(state, sharding.shard_batch(b, mesh), {"rest": rest_s})
    losses.append(float(m["train/loss"]))
  return dict(
    single=single,
    single_losses=single_losses,
    sharded=state,
    losses=losses,
    shardings=shardings,
    mesh=mesh,
    objective=objective,
    parts=(params, rest, rest_s),
  )


def test_train_step_sharded_matches_single_device(trained):
  np.testing.assert_allclose(trained["losses"], trained["single_losses"], rtol=RTOL)
  assert trained["losses"][1] < trained["losses"][0]
  assert int(trained["sharded"].step) == 2
  _assert_close(trained["sharded"].params, trained["single"].params)
  _assert_close(trained["sharded"].opt_state, trained["single"].opt_state)


def test_gradients_sharded_match_single_device(trained):
  params, rest, rest_s = trained["parts"]
  mesh = trained["mesh"]

  @jax.jit
  def grads(p, r, b):
    loss, _, g, _ = train.accumulate_grads(trained["objective"], p, {"rest": r}, b, 1)
    return loss, g

  host = _host_batch(seed=2)
  loss, g = grads(params, rest, jax.tree.map(jnp.asarray, host))
  p_s = sharding.shard_tree(params, mesh)
  loss_s, g_s = grads(p_s, rest_s, sharding.shard_batch(host, mesh))
  np.testing.assert_allclose(float(loss_s), float(loss), rtol=RTOL)
  _assert_close(g_s, g)
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(p_s))


def test_params_and_optimizer_state_keep_declared_shardings(trained):
  state, shardings = trained["sharded"], trained["shardings"]
  _assert_shardings(state, shardings)
  p = state.params
  mesh_spec = lambda v: v.get_value().sharding.spec  # noqa: E731
  # The declared rules, spelled out for a few parameters.
  assert mesh_spec(p["embed"]) == P("tensor", "fsdp")  # ('vocab', 'embed')
  assert mesh_spec(p["layers"][0]["attn"]["q_proj"]["kernel"])[:2] == ("fsdp", "tensor")
  assert mesh_spec(p["layers"][0]["mlp"]["down_proj"]["kernel"]) == P("tensor", "fsdp")
  assert p["final_norm"]["weight"].get_value().sharding.is_fully_replicated
  # Adam's moments mirror the parameters; its step count is replicated.
  adam = state.opt_state[1][0]
  assert adam.mu["embed"].get_value().sharding.spec == P("tensor", "fsdp")
  assert adam.count.sharding.is_fully_replicated
  # Sharded for real: each device holds a quarter of the embedding.
  shard = p["embed"].get_value().addressable_shards[0].data
  assert shard.shape == (V // 2, CFG.d_model // 2)


def test_greedy_generation_sharded_matches_single_device():
  graphdef, params, rest = _model_parts()
  state = nnx.merge_state(params, rest)
  prompts = [[5, 3, 9], [7, 1, 2, 8, 4, 6], [11], [2, 2], [9, 8, 7, 6], [1], [3, 4], [60, 61]]
  tokens, mask = left_pad(prompts, 0)
  generate = make_generate_fn(graphdef, max_new_tokens=6, eos_id=-1, pad_id=0)
  key = jax.random.key(0)
  want = generate(state, jnp.asarray(tokens), jnp.asarray(mask), key)

  mesh = _mesh()
  tokens_s, mask_s = sharding.shard_batch((tokens, mask), mesh)
  got = generate(sharding.shard_tree(state, mesh), tokens_s, mask_s, key)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))
  np.testing.assert_allclose(np.asarray(got.logp), np.asarray(want.logp), rtol=0, atol=1e-5)
  assert len(set(np.asarray(want.tokens).ravel())) > 4  # not a degenerate repeat


def test_shard_batch_splits_rows_over_data_and_fsdp():
  mesh = _mesh()
  host = _host_batch(b=8, t=16)
  batch = sharding.shard_batch(host, mesh)
  for x, h in zip(jax.tree.leaves(batch), jax.tree.leaves(host), strict=True):
    assert x.shape == (8, 16) and x.dtype == h.dtype
    assert x.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 2)
    assert {s.data.shape for s in x.addressable_shards} == {(2, 16)}  # 8 rows / (2*2)
    np.testing.assert_array_equal(np.asarray(x), h)
  np.testing.assert_array_equal(sharding.process_rows(mesh, 8), np.arange(8))


def test_batch_not_divisible_falls_back_and_logs(caplog):
  mesh = _mesh()
  with caplog.at_level(logging.WARNING):
    x = sharding.shard_batch(np.arange(6 * 3).reshape(6, 3), mesh)
  # 6 rows: not over data*fsdp=4, but over data=2 alone.
  assert x.sharding.spec == P("data", None)
  assert "'batch' dimension of size 6" in caplog.text
  np.testing.assert_array_equal(np.asarray(x), np.arange(18).reshape(6, 3))


def test_rules_fall_back_on_non_divisible_dims(caplog):
  """3 kv heads on tensor=2 are replicated (logged); everything else follows the rules."""
  config = models.named_config(
    "tiny", vocab_size=V, d_model=32, n_layers=1, n_heads=6, n_kv_heads=3, head_dim=8, mlp_dim=64
  )
  abstract = nnx.eval_shape(lambda: models.Decoder(config, rngs=nnx.Rngs(0)))
  _, params, _ = train.split_model(abstract)
  state = jax.eval_shape(lambda p: train.init_train_state(p, _optimizer(), 0), params)
  with caplog.at_level(logging.WARNING):
    shardings = sharding.tree_shardings(state, _mesh())
  spec = lambda v: v.get_value().spec  # noqa: E731
  attn = shardings.params["layers"][0]["attn"]
  assert spec(attn["k_proj"]["kernel"]) == P("fsdp", None, None)  # kv_heads=3: replicated
  assert spec(attn["q_proj"]["kernel"]) == P("fsdp", "tensor", None)  # 6 heads split
  assert spec(shardings.opt_state[1][0].nu["layers"][0]["attn"]["k_proj"]["kernel"]) == P(
    "fsdp", None, None
  )
  assert shardings.step.spec == P() and shardings.rng.spec == P()
  assert caplog.text.count("'kv_heads' dimension of size 3") == 1  # logged once, not per leaf
  # The abstract target carries those shardings (a restore target without allocation).
  target = sharding.abstract_state(state, _mesh())
  k = target.params["layers"][0]["attn"]["k_proj"]["kernel"].get_value()
  assert isinstance(k, jax.ShapeDtypeStruct) and k.sharding.spec == P("fsdp", None, None)


def test_logical_to_spec_rules():
  mesh = _mesh()
  spec = functools.partial(sharding.logical_to_spec, mesh=mesh)
  assert spec(("vocab", "embed"), (64, 32)) == P("tensor", "fsdp")
  assert spec(("embed", "mlp"), (32, 6)) == P("fsdp", "tensor")
  assert spec(("embed", "mlp"), (32, 5)) == P("fsdp", None)  # 5 % tensor=2: replicated
  assert spec(("norm",), (32,)) == P(None)
  assert spec(("unknown", "batch"), (3, 8)) == P(None, ("data", "fsdp"))
  # A mesh axis shards one dimension at most: the second 'embed' stays whole.
  assert spec(("embed", "embed"), (32, 32)) == P("fsdp", None)
  rules = (("embed", ("fsdp", "tensor")),)
  assert spec(("embed",), (32,), rules=rules) == P(("fsdp", "tensor"))
  fallbacks = []
  assert spec(("embed",), (6,), rules=rules, fallbacks=fallbacks) == P("fsdp")
  assert fallbacks == [("embed", 6, ("fsdp", "tensor"), ("fsdp",))]
  with pytest.raises(ValueError, match="axis names"):
    spec(("embed",), (4, 4))


def test_kv_cache_shardings():
  mesh = _mesh()
  cache = jax.eval_shape(lambda: models.init_cache(CFG, batch_size=8, max_len=16))
  s = sharding.cache_shardings(cache, mesh)
  assert len(s.k) == len(s.v) == CFG.n_layers
  assert all(k.spec == P(("data", "fsdp"), "tensor", None, None) for k in s.k)
  assert all(v.spec == P(("data", "fsdp"), "tensor", None, None) for v in s.v)
  assert s.segment_ids.spec == P(("data", "fsdp"), None)
  assert s.length.spec == P()


def test_make_mesh_from_config():
  mesh = sharding.make_mesh(_config(2, 2, 2))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert dict(sharding.make_mesh(_config(-1, 1, 1)).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert dict(sharding.make_mesh(_config(1, -1, 2)).shape)["fsdp"] == 4
  four = sharding.make_mesh(_config(-1, 2, 2), jax.devices()[:4])
  assert dict(four.shape) == {"data": 1, "fsdp": 2, "tensor": 2} and four.devices.size == 4
  config_lib.validate(_config(-1, 1, 1, batch_size=64))  # the defaults fill 8 devices


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(data=3, fsdp=1, tensor=1), "has 3 devices, not 8"),
    (dict(data=-1, fsdp=-1, tensor=1), "only one mesh axis may be -1"),
    (dict(data=0, fsdp=1, tensor=1), "mesh.data=0"),
    (dict(data=-1, fsdp=3, tensor=1), "do not divide the 8 devices"),
    (dict(data=2, fsdp=2, tensor=2, batch_size=6), "not divisible by mesh data\\*fsdp=4"),
    (dict(data=-1, fsdp=1, tensor=1, batch_size=12), "not divisible by mesh data\\*fsdp=8"),
  ],
)
def test_mesh_config_errors(overrides, match):
  c = _config(**overrides)
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)
  with pytest.raises(config_lib.ConfigError, match=match):
    sharding.make_mesh(c)


def test_streams_and_distributed_config_errors(monkeypatch):
  c = _config()
  c.data.streams = 3
  with pytest.raises(config_lib.ConfigError, match="data.streams=3"):
    config_lib.validate(c)
  # Under jax.distributed the device count is unknown at validation; make_mesh checks it.
  c = _config(data=3, fsdp=1, tensor=1)
  c.distributed.initialize = True
  config_lib.validate(c)
  with pytest.raises(config_lib.ConfigError, match="has 3 devices"):
    sharding.make_mesh(c)
  c.distributed.process_id = -2
  with pytest.raises(config_lib.ConfigError, match="distributed.process_id"):
    config_lib.validate(c)


def test_initialize_distributed_switch(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  c = _config()
  assert sharding.initialize_distributed(c) is False and calls == []
  c.distributed.initialize = True
  assert sharding.initialize_distributed(c) is True
  assert calls == [{}]  # everything from the environment
  c.distributed.coordinator_address = "10.0.0.1:1234"
  c.distributed.num_processes = 4
  c.distributed.process_id = 2
  sharding.initialize_distributed(c)
  assert calls[-1] == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)


def test_checkpoint_saved_on_8_devices_restores_on_4_and_1(tmp_path, trained):
  state = trained["sharded"]
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, async_save=False)
  ckpt.save(2, state, {"next_index": 3})
  ckpt.close()
  want = jax.device_get(state)
  for n, mesh in [(4, _mesh(1, 2, 2, n_devices=4)), (1, _mesh(1, 1, 1, n_devices=1))]:
    like = sharding.abstract_state(state, mesh)
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1)
    restored, data = ckpt.restore(2, like=like)
    ckpt.close()
    assert data == {"next_index": 3}
    _assert_close(restored, want, rtol=0, atol=0)
    _assert_shardings(restored, sharding.tree_shardings(state, mesh))
    assert {d for x in jax.tree.leaves(restored) for d in x.sharding.device_set} == set(
      jax.devices()[:n]
    )


def test_two_processes_build_the_single_process_global_batch(tmp_path):
  """2 processes x 4 CPU devices: each packs its rows; the global batches are unchanged."""
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  worker = os.path.join(REPO, "tests", "sharding_worker.py")
  procs = [
    subprocess.Popen(
      [sys.executable, worker, str(port), str(i), str(tmp_path / f"{i}.json")],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=REPO,
      env={
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
      },
    )
    for i in range(2)
  ]
  logs = [p.communicate(timeout=240)[0] for p in procs]
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]

  import sharding_worker as w

  packer = streams.StreamPacker(w.source, batch_size=w.B, seq_len=w.T, streams=w.STREAMS)
  want = [packer.next_batch()[0]["tokens"].sum(axis=1).tolist() for _ in range(3)]
  for r in results:
    assert r["process_count"] == 2 and r["shape"] == [w.B, w.T]
    assert r["row_sums"] == want
    assert r["state"] == packer.state()
  # Each process fed its own half of the rows.
  assert sorted(results[0]["rows"] + results[1]["rows"]) == list(range(w.B))
  assert len(results[0]["rows"]) == len(results[1]["rows"]) == w.B // 2
