"""Decoder: masking, packing, KV cache, NumPy references, dtypes, sharding names."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import (
  Decoder,
  ModelConfig,
  init_cache,
  make_attention_mask,
  named_config,
)

CFG = ModelConfig(
  vocab_size=48,
  d_model=32,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  head_dim=16,  # deliberately != d_model / n_heads
  mlp_dim=64,
  rope_theta=10000.0,
  max_seq_len=64,
  norm_eps=1e-6,
)


def randomize(model: Decoder, seed: int) -> Decoder:
  """Replaces the (near-trivial) init with O(1)-logit random weights, norms != 1."""
  state = nnx.state(model, nnx.Param)
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  keys = jax.random.split(jax.random.key(seed), len(paths_leaves))
  new = []
  for (path, leaf), key in zip(paths_leaves, keys, strict=True):
    name = jax.tree_util.keystr(path)
    noise = jax.random.normal(key, leaf.shape, jnp.float32)
    if "norm" in name:
      value = 1.0 + 0.2 * noise
    elif "embed" in name:
      value = noise
    else:
      value = 0.2 * noise
    new.append(value.astype(leaf.dtype))
  nnx.update(model, jax.tree.unflatten(treedef, new))
  return model


def make_model(seed: int = 0, **overrides) -> Decoder:
  cfg = dataclasses.replace(CFG, **overrides)
  return randomize(Decoder(cfg, rngs=nnx.Rngs(seed)), seed + 100)


@pytest.fixture(scope="module")
def model():
  return make_model(0)


def rand_tokens(seed, shape, vocab=CFG.vocab_size):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# ----------------------------------------------------------------------------- NumPy reference


def np_rmsnorm(x, w, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def np_rope(x, positions, theta):
  """x: [T, N, E]; rotates pair (i, i + E/2) by positions * theta^(-2i/E)."""
  e = x.shape[-1]
  out = np.empty_like(x)
  for i in range(e // 2):
    ang = positions[:, None] * theta ** (-2.0 * i / e)  # [T, 1]
    a, b = x[..., i], x[..., i + e // 2]
    out[..., i] = a * np.cos(ang) - b * np.sin(ang)
    out[..., i + e // 2] = b * np.cos(ang) + a * np.sin(ang)
  return out


def np_attention_layer(p, cfg, x, positions, segments):
  """One attention layer for one row. x: [T, D] (already normed); loops over heads."""
  t = x.shape[0]
  h, k, e = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  q = (x @ p["q_kernel"].reshape(cfg.d_model, h * e)).reshape(t, h, e)
  kk = (x @ p["k_kernel"].reshape(cfg.d_model, k * e)).reshape(t, k, e)
  v = (x @ p["v_kernel"].reshape(cfg.d_model, k * e)).reshape(t, k, e)
  if cfg.attn_bias:
    q, kk, v = q + p["q_bias"], kk + p["k_bias"], v + p["v_bias"]
  if cfg.qk_norm:
    q = np_rmsnorm(q, p["q_norm"], cfg.norm_eps)
    kk = np_rmsnorm(kk, p["k_norm"], cfg.norm_eps)
  q = np_rope(q, positions, cfg.rope_theta)
  kk = np_rope(kk, positions, cfg.rope_theta)
  out = np.zeros((t, h, e))
  group = h // k
  for head in range(h):
    kv = head // group
    for i in range(t):
      if segments[i] == 0:
        continue
      allowed = [j for j in range(i + 1) if segments[j] == segments[i]]
      s = np.array([q[i, head] @ kk[j, kv] for j in allowed]) / np.sqrt(e)
      w = np.exp(s - s.max())
      w /= w.sum()
      out[i, head] = sum(wj * v[j, kv] for wj, j in zip(w, allowed, strict=True))
  return out.reshape(t, h * e) @ p["o_kernel"].reshape(h * e, cfg.d_model)


def np_attn_params(attn, cfg):
  f = lambda a: np.asarray(a[...], np.float64)
  p = {
    "q_kernel": f(attn.q_proj.kernel),
    "k_kernel": f(attn.k_proj.kernel),
    "v_kernel": f(attn.v_proj.kernel),
    "o_kernel": f(attn.o_proj.kernel),
  }
  if cfg.attn_bias:
    p |= {"q_bias": f(attn.q_proj.bias), "k_bias": f(attn.k_proj.bias), "v_bias": f(attn.v_proj.bias)}
  if cfg.qk_norm:
    p |= {"q_norm": f(attn.q_norm.weight), "k_norm": f(attn.k_norm.weight)}
  return p


def np_forward(model, tokens, positions, segments):
  """Full float64 forward of one row; returns logits [T, V] (padding rows unspecified)."""
  cfg = model.config
  f = lambda a: np.asarray(a[...], np.float64)
  x = f(model.embed)[tokens]
  for layer in model.layers:
    h = np_rmsnorm(x, f(layer.input_norm.weight), cfg.norm_eps)
    x = x + np_attention_layer(np_attn_params(layer.attn, cfg), cfg, h, positions, segments)
    h = np_rmsnorm(x, f(layer.post_attn_norm.weight), cfg.norm_eps)
    m = layer.mlp
    gate, up = h @ f(m.gate_proj.kernel), h @ f(m.up_proj.kernel)
    x = x + (gate / (1 + np.exp(-gate)) * up) @ f(m.down_proj.kernel)
  h = np_rmsnorm(x, f(model.final_norm.weight), cfg.norm_eps)
  head = f(model.embed).T if cfg.tie_embeddings else f(model.lm_head.kernel)
  return h @ head


# ----------------------------------------------------------------------------- tests


def test_causal_future_tokens_do_not_change_past(model):
  tokens = rand_tokens(0, (2, 10))
  changed = tokens.at[:, 6:].set((tokens[:, 6:] + 7) % CFG.vocab_size)
  a, b = model(tokens), model(changed)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6, rtol=0)
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-2  # the change is visible where it should be


def test_packed_row_matches_separate_sequences(model):
  seq_a, seq_b = rand_tokens(1, (1, 5)), rand_tokens(2, (1, 4))
  packed = jnp.concatenate([seq_a, seq_b, jnp.zeros((1, 3), jnp.int32)], axis=1)
  segments = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3], jnp.int32)
  positions = jnp.asarray([list(range(5)) + list(range(4)) + [0] * 3], jnp.int32)
  logits = model(packed, positions=positions, segment_ids=segments)
  np.testing.assert_allclose(logits[:, :5], model(seq_a), atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits[:, 5:9], model(seq_b), atol=1e-5, rtol=0)


def test_padding_rows_are_finite(model):
  tokens = rand_tokens(3, (3, 6))
  segments = jnp.asarray([[0] * 6, [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]], jnp.int32)
  out = model.forward(tokens, segment_ids=segments, hidden_layers=(0, 1))
  assert bool(jnp.all(jnp.isfinite(out.logits)))
  assert all(bool(jnp.all(jnp.isfinite(h))) for h in out.hidden_states)


def test_mask_semantics():
  seg = jnp.asarray([[1, 1, 2, 0]], jnp.int32)
  mask = np.asarray(make_attention_mask(seg, seg))[0]
  expected = np.array(
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
    bool,
  )
  np.testing.assert_array_equal(mask, expected)


def test_attention_layer_matches_numpy_reference():
  model = make_model(1, qk_norm=True, attn_bias=True)
  cfg = model.config
  x = jax.random.normal(jax.random.key(5), (2, 7, cfg.d_model), jnp.float32)
  positions = jnp.asarray([np.arange(7) + 3, [0, 1, 2, 0, 1, 2, 3]], jnp.int32)
  segments = jnp.asarray([[1] * 7, [1, 1, 1, 2, 2, 2, 0]], jnp.int32)
  attn = model.layers[0].attn
  out, cache = attn(x, positions, make_attention_mask(segments, segments))
  assert cache is None
  p = np_attn_params(attn, cfg)
  for row in range(2):
    ref = np_attention_layer(
      p, cfg, np.asarray(x[row], np.float64), np.asarray(positions[row]), np.asarray(segments[row])
    )
    real = np.asarray(segments[row]) != 0
    np.testing.assert_allclose(np.asarray(out[row])[real], ref[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
  "overrides",
  [
    dict(),
    dict(qk_norm=True, tie_embeddings=True),
    dict(attn_bias=True),
    dict(attn_bias=True, tie_embeddings=True, n_kv_heads=1),
  ],
  ids=["llama", "qwen3-tied", "qwen2", "qwen2-tied-mqa"],
)
def test_full_forward_matches_numpy_reference(overrides):
  model = make_model(2, **overrides)
  tokens = rand_tokens(4, (2, 6))
  positions = jnp.asarray([np.arange(6), [0, 1, 2, 0, 1, 2]], jnp.int32)
  segments = jnp.asarray([[1] * 6, [1, 1, 1, 2, 2, 2]], jnp.int32)
  logits = model(tokens, positions=positions, segment_ids=segments)
  assert logits.dtype == jnp.float32
  assert (model.lm_head is None) == model.config.tie_embeddings
  for row in range(2):
    ref = np_forward(
      model, np.asarray(tokens[row]), np.asarray(positions[row]), np.asarray(segments[row])
    )
    np.testing.assert_allclose(np.asarray(logits[row]), ref, atol=1e-4, rtol=1e-4)


def test_kv_cache_matches_full_forward(model):
  tokens = rand_tokens(6, (2, 12))
  full = model(tokens)

  # Prefill 5, then one token at a time (eager, concrete length).
  cache = init_cache(model.config, 2, 12)
  out = model.forward(tokens[:, :5], cache=cache)
  pieces = [out.logits]
  cache = out.cache
  for t in range(5, 12):
    out = model.forward(tokens[:, t : t + 1], cache=cache)
    pieces.append(out.logits)
    cache = out.cache
  assert int(cache.length) == 12
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5, rtol=0)

  # Uneven chunks through a jitted step, so the cache length is traced.
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, chunk, cache):
    return nnx.merge(graphdef, state).forward(chunk, cache=cache)

  cache = init_cache(model.config, 2, 16)  # spare slots must not matter
  pieces = []
  for lo, hi in [(0, 3), (3, 7), (7, 9), (9, 12)]:
    out = step(state, tokens[:, lo:hi], cache)
    pieces.append(out.logits)
    cache = out.cache
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5, rtol=0)


def test_kv_cache_with_left_padding_and_segments(model):
  # Row 0 has 2 pad slots on the left; its positions start at the first real token.
  tokens = rand_tokens(7, (2, 8))
  seg = jnp.asarray([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8], jnp.int32)
  pos = jnp.maximum(jnp.cumsum(seg, 1) - 1, 0)
  full = model(tokens, positions=pos, segment_ids=seg)
  cache = init_cache(model.config, 2, 8)
  out = model.forward(tokens[:, :4], positions=pos[:, :4], segment_ids=seg[:, :4], cache=cache)
  rest = model.forward(tokens[:, 4:], positions=pos[:, 4:], segment_ids=seg[:, 4:], cache=out.cache)
  got = jnp.concatenate([out.logits, rest.logits], 1)
  real = np.asarray(seg) != 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full)[real], atol=1e-5, rtol=0)
  # Row 0 equals the unpadded sequence run alone.
  np.testing.assert_allclose(got[0, 2:], model(tokens[:1, 2:])[0], atol=1e-5, rtol=0)


def test_cache_overflow_raises(model):
  cache = init_cache(model.config, 1, 4)
  with pytest.raises(ValueError, match="overflow"):
    model.forward(rand_tokens(8, (1, 5)), cache=cache)


def test_bf16_close_to_f32():
  ref = make_model(3)
  tokens = rand_tokens(9, (2, 8))
  want = ref(tokens)
  for param_dtype, dtype in [("bfloat16", "bfloat16"), ("float32", "bfloat16")]:
    cfg = dataclasses.replace(CFG, param_dtype=param_dtype, dtype=dtype)
    low = Decoder(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(ref, nnx.Param)
    nnx.update(low, jax.tree.map(lambda a, d=cfg.jnp_param_dtype: a.astype(d), state))
    assert low.embed[...].dtype == cfg.jnp_param_dtype
    got = low(tokens)
    assert got.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(got)))
    err = float(jnp.abs(got - want).max() / jnp.abs(want).max())
    assert err < 0.05, (param_dtype, dtype, err)


def test_hidden_layers_and_lm_head(model):
  tokens = rand_tokens(10, (2, 5))
  out = model.forward(tokens, hidden_layers=(0, -1, 1))
  assert len(out.hidden_states) == 3
  assert all(h.shape == (2, 5, CFG.d_model) for h in out.hidden_states)
  np.testing.assert_array_equal(out.hidden_states[1], out.hidden_states[2])  # -1 == L-1
  # Index 0 is the stream after block 0.
  seg = jnp.ones((2, 5), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
  x = jnp.take(model.embed[...], tokens, axis=0)
  x0, _ = model.layers[0](x, pos, make_attention_mask(seg, seg))
  np.testing.assert_allclose(out.hidden_states[0], x0, atol=1e-6, rtol=0)
  np.testing.assert_allclose(
    out.final_hidden, model.final_norm(out.hidden_states[-1]), atol=1e-6, rtol=0
  )
  np.testing.assert_allclose(
    out.final_hidden @ model.lm_head_weight(), out.logits, atol=1e-5, rtol=1e-5
  )
  assert model.forward(tokens, compute_logits=False).logits is None
  with pytest.raises(ValueError, match="hidden_layers"):
    model.forward(tokens, hidden_layers=(CFG.n_layers,))


def test_tied_lm_head_is_embedding():
  model = make_model(4, tie_embeddings=True)
  np.testing.assert_array_equal(model.lm_head_weight(), model.embed[...].T)


def test_partition_specs_have_logical_names():
  allowed = {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "norm"}
  model = Decoder(dataclasses.replace(CFG, qk_norm=True, attn_bias=True), rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  specs = nnx.get_partition_spec(state)
  flat_specs = jax.tree_util.tree_flatten_with_path(specs)[0]
  flat_vals = jax.tree_util.tree_flatten_with_path(state)[0]
  assert len(flat_specs) == len(flat_vals) > 0
  for (path, spec), (_, value) in zip(flat_specs, flat_vals, strict=True):
    names = tuple(spec)
    assert len(names) == value.ndim, jax.tree_util.keystr(path)
    assert set(names) <= allowed, (jax.tree_util.keystr(path), names)
  specs_by_path = {jax.tree_util.keystr(p): tuple(s) for p, s in flat_specs}
  assert specs_by_path["['embed']"] == ("vocab", "embed")
  assert specs_by_path["['layers'][0]['attn']['q_proj']['kernel']"] == (
    "embed",
    "q_heads",
    "head_dim",
  )
  assert specs_by_path["['layers'][1]['attn']['k_proj']['bias']"] == ("kv_heads", "head_dim")
  assert specs_by_path["['layers'][0]['mlp']['down_proj']['kernel']"] == ("mlp", "embed")
  assert specs_by_path["['lm_head']['kernel']"] == ("embed", "vocab")


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(d_model=0), "d_model"),
    (dict(head_dim=15), "even"),
    (dict(dtype="float16"), "dtype"),
    (dict(rope_scaling=("llama3", 8.0)), "reserved"),
  ],
)
def test_config_validation(overrides, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CFG, **overrides)
  with pytest.raises(ValueError, match="unknown model size"):
    named_config("gpt-5")
