"""Decoder: masking, packing, KV cache, NumPy references, dtypes, sharding names."""

import dataclasses
import functools

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


def random_model(cfg: ModelConfig, seed: int) -> Decoder:
  """Decoder with O(1)-logit random weights and norm weights != 1.

  Built from NumPy arrays on an abstract model: eager JAX init compiles one kernel per
  parameter shape, which dominates the runtime of tiny tests.
  """
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if "norm" in name:
      value = 1.0 + 0.2 * noise
    elif "embed" in name:
      value = noise
    else:
      value = 0.2 * noise
    return jnp.asarray(value, leaf.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def make_model(seed: int = 0, **overrides) -> Decoder:
  return random_model(dataclasses.replace(CFG, **overrides), seed)


@functools.partial(jax.jit, static_argnames=("graphdef", "hidden_layers", "compute_logits"))
def _forward(graphdef, state, tokens, positions, segment_ids, cache, hidden_layers, compute_logits):
  model = nnx.merge(graphdef, state)
  return model.forward(
    tokens,
    positions=positions,
    segment_ids=segment_ids,
    cache=cache,
    hidden_layers=hidden_layers,
    compute_logits=compute_logits,
  )


def forward(
  model,
  tokens,
  *,
  positions=None,
  segment_ids=None,
  cache=None,
  hidden_layers=(),
  compute_logits=True,
):
  """Jitted ``model.forward`` (one compile per shape instead of one per op)."""
  graphdef, state = nnx.split(model)
  return _forward(
    graphdef, state, tokens, positions, segment_ids, cache, hidden_layers, compute_logits
  )


def logits_of(model, tokens, **kw):
  return forward(model, tokens, **kw).logits


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
    p |= {
      "q_bias": f(attn.q_proj.bias),
      "k_bias": f(attn.k_proj.bias),
      "v_bias": f(attn.v_proj.bias),
    }
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
  a, b = logits_of(model, tokens), logits_of(model, changed)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6, rtol=0)
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-2  # the change is visible where it should be


def test_packed_row_matches_separate_sequences(model):
  # Both sequences are run alone as one [2, 5] batch (seq_b right-padded) to share a compile.
  seq_a, seq_b = rand_tokens(1, (5,)), rand_tokens(2, (4,))
  packed = jnp.concatenate([seq_a, seq_b, jnp.zeros((3,), jnp.int32)])[None]
  segments = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3], jnp.int32)
  positions = jnp.asarray([list(range(5)) + list(range(4)) + [0] * 3], jnp.int32)
  logits = logits_of(model, packed, positions=positions, segment_ids=segments)
  alone = logits_of(model, jnp.stack([seq_a, jnp.append(seq_b, 0)]))
  np.testing.assert_allclose(logits[0, :5], alone[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits[0, 5:9], alone[1, :4], atol=1e-5, rtol=0)


def test_padding_rows_are_finite(model):
  tokens = rand_tokens(3, (3, 6))
  segments = jnp.asarray([[0] * 6, [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]], jnp.int32)
  out = forward(model, tokens, segment_ids=segments, hidden_layers=(0, 1))
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
  # With a cache offset of 2, query 0 sits at slot 2.
  kv = jnp.asarray([[1, 1, 1, 1, 0]], jnp.int32)
  mask = np.asarray(make_attention_mask(jnp.asarray([[1, 1]], jnp.int32), kv, q_offset=2))[0]
  np.testing.assert_array_equal(mask, np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool))


def test_attention_layer_matches_numpy_reference():
  model = make_model(1, qk_norm=True, attn_bias=True)
  cfg = model.config
  x = jax.random.normal(jax.random.key(5), (2, 7, cfg.d_model), jnp.float32)
  positions = jnp.asarray([np.arange(7) + 3, [0, 1, 2, 0, 1, 2, 3]], jnp.int32)
  segments = jnp.asarray([[1] * 7, [1, 1, 1, 2, 2, 2, 0]], jnp.int32)
  attn = model.layers[0].attn
  out, cache = nnx.jit(lambda a, *args: a(*args))(
    attn, x, positions, make_attention_mask(segments, segments)
  )
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
    dict(attn_bias=True, n_kv_heads=1),
  ],
  ids=["llama", "qwen3-tied", "qwen2-mqa"],
)
def test_full_forward_matches_numpy_reference(overrides):
  model = make_model(2, **overrides)
  tokens = rand_tokens(4, (2, 6))
  positions = jnp.asarray([np.arange(6), [0, 1, 2, 0, 1, 2]], jnp.int32)
  segments = jnp.asarray([[1] * 6, [1, 1, 1, 2, 2, 2]], jnp.int32)
  logits = logits_of(model, tokens, positions=positions, segment_ids=segments)
  assert logits.dtype == jnp.float32
  assert (model.lm_head is None) == model.config.tie_embeddings
  for row in range(2):
    ref = np_forward(
      model, np.asarray(tokens[row]), np.asarray(positions[row]), np.asarray(segments[row])
    )
    np.testing.assert_allclose(np.asarray(logits[row]), ref, atol=1e-4, rtol=1e-4)


def test_kv_cache_matches_full_forward(model):
  tokens = rand_tokens(6, (2, 12))
  full = logits_of(model, tokens)

  def run(chunks):
    cache = init_cache(model.config, 2, 16)  # spare slots must not matter
    pieces = []
    for lo, hi in chunks:
      out = forward(model, tokens[:, lo:hi], cache=cache)
      pieces.append(out.logits)
      cache = out.cache
    assert int(cache.length) == 12
    return jnp.concatenate(pieces, 1)

  # Prefill 5 then one token at a time; uneven chunks (the length is traced under jit).
  one_by_one = [(0, 5)] + [(t, t + 1) for t in range(5, 12)]
  np.testing.assert_allclose(run(one_by_one), full, atol=1e-5, rtol=0)
  chunks = [(0, 1), (1, 5), (5, 9), (9, 10), (10, 11), (11, 12)]
  np.testing.assert_allclose(run(chunks), full, atol=1e-5, rtol=0)


def test_kv_cache_with_left_padding_and_segments(model):
  # Row 0 has 2 pad slots on the left; its positions start at the first real token.
  tokens = rand_tokens(7, (2, 8))
  seg = jnp.asarray([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8], jnp.int32)
  pos = jnp.maximum(jnp.cumsum(seg, 1) - 1, 0)
  full = logits_of(model, tokens, positions=pos, segment_ids=seg)
  cache = init_cache(model.config, 2, 8)
  out = forward(model, tokens[:, :4], positions=pos[:, :4], segment_ids=seg[:, :4], cache=cache)
  rest = forward(
    model, tokens[:, 4:], positions=pos[:, 4:], segment_ids=seg[:, 4:], cache=out.cache
  )
  got = jnp.concatenate([out.logits, rest.logits], 1)
  real = np.asarray(seg) != 0
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full)[real], atol=1e-5, rtol=0)
  # Row 0 equals its unpadded sequence run alone (row 1 here is the same tokens shifted).
  alone = jnp.stack([tokens[0, 2:], tokens[1, :6]])
  np.testing.assert_allclose(got[0, 2:], logits_of(model, alone)[0], atol=1e-5, rtol=0)


def test_cache_overflow_raises(model):
  cache = init_cache(model.config, 1, 4)
  with pytest.raises(ValueError, match="overflow"):
    model.forward(rand_tokens(8, (1, 5)), cache=cache)


def test_bf16_close_to_f32():
  ref = make_model(3)
  tokens = rand_tokens(9, (2, 8))
  want = logits_of(ref, tokens)
  for param_dtype, dtype in [("bfloat16", "bfloat16"), ("float32", "bfloat16")]:
    cfg = dataclasses.replace(CFG, param_dtype=param_dtype, dtype=dtype)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda c=cfg: Decoder(c, rngs=nnx.Rngs(0))))
    state = jax.tree.map(lambda a, d=cfg.jnp_param_dtype: a.astype(d), nnx.state(ref))
    low = nnx.merge(graphdef, state)
    assert low.embed[...].dtype == cfg.jnp_param_dtype
    out = forward(low, tokens)
    assert out.logits.dtype == jnp.float32
    assert out.final_hidden.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(out.logits)))
    err = float(jnp.abs(out.logits - want).max() / jnp.abs(want).max())
    assert err < 0.05, (param_dtype, dtype, err)


def test_hidden_layers_and_lm_head(model):
  tokens = rand_tokens(10, (2, 5))
  out = forward(model, tokens, hidden_layers=(0, -1, 1))
  assert len(out.hidden_states) == 3
  assert all(h.shape == (2, 5, CFG.d_model) for h in out.hidden_states)
  np.testing.assert_array_equal(out.hidden_states[1], out.hidden_states[2])  # -1 == L-1

  @nnx.jit
  def manual(model, tokens):
    # Index 0 is the stream after block 0; final_hidden is the final norm of the last one.
    seg = jnp.ones(tokens.shape, jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = jnp.take(model.embed[...], tokens, axis=0)
    x0, _ = model.layers[0](x, pos, make_attention_mask(seg, seg))
    return x0, model.final_norm(out.hidden_states[-1])

  x0, final = manual(model, tokens)
  np.testing.assert_allclose(out.hidden_states[0], x0, atol=1e-6, rtol=0)
  np.testing.assert_allclose(out.final_hidden, final, atol=1e-6, rtol=0)
  np.testing.assert_allclose(
    out.final_hidden @ model.lm_head_weight(), out.logits, atol=1e-5, rtol=1e-5
  )
  assert forward(model, tokens, compute_logits=False).logits is None
  with pytest.raises(ValueError, match="hidden_layers"):
    model.forward(tokens, hidden_layers=(CFG.n_layers,))


def test_tied_lm_head_is_embedding():
  model = make_model(4, tie_embeddings=True)
  assert model.lm_head is None
  np.testing.assert_array_equal(model.lm_head_weight(), model.embed[...].T)


def test_partition_specs_have_logical_names():
  allowed = {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "norm"}
  cfg = dataclasses.replace(CFG, qk_norm=True, attn_bias=True)
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  specs = {}
  for path, var in nnx.to_flat_state(nnx.get_partition_spec(state)):
    specs[".".join(map(str, path))] = var
  shapes = {".".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(state)}
  assert specs.keys() == shapes.keys() and len(specs) > 10
  for name, var in specs.items():
    spec = tuple(var.get_value())
    assert len(spec) == len(shapes[name]), name
    assert set(spec) <= allowed, (name, spec)
    assert tuple(var.get_metadata()["out_sharding"]) == spec
  expected = {
    "embed": ("vocab", "embed"),
    "layers.0.attn.q_proj.kernel": ("embed", "q_heads", "head_dim"),
    "layers.1.attn.k_proj.bias": ("kv_heads", "head_dim"),
    "layers.0.attn.o_proj.kernel": ("q_heads", "head_dim", "embed"),
    "layers.0.attn.q_norm.weight": ("norm",),
    "layers.0.mlp.down_proj.kernel": ("mlp", "embed"),
    "final_norm.weight": ("norm",),
    "lm_head.kernel": ("embed", "vocab"),
  }
  for name, spec in expected.items():
    assert tuple(specs[name].get_value()) == spec, name


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(d_model=0), "d_model"),
    (dict(head_dim=15), "even"),
    (dict(dtype="float16"), "dtype"),
    (dict(rope_scaling=("llama3", 8.0)), "rope_scaling must be"),
  ],
)
def test_config_validation(overrides, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(CFG, **overrides)


def test_named_config():
  assert named_config("tiny", vocab_size=300).vocab_size == 300
  with pytest.raises(ValueError, match="unknown model size"):
    named_config("gpt-5")


def test_blocked_causal_attention_equals_full():
  """Skipping key blocks the causal mask hides changes nothing for real queries."""
  from jaxpost.models.decoder import attention

  b, t, h, kh, e = 2, 24, 4, 2, 8
  keys = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(keys[0], (b, t, h, e))
  k = jax.random.normal(keys[1], (b, kh, e, t))
  v = jax.random.normal(keys[2], (b, kh, t, e))
  # Packed rows with padding at the end of the second row.
  seg = jnp.asarray([[1] * 10 + [2] * 14, [1] * 7 + [2] * 9 + [0] * 8], jnp.int32)
  mask = make_attention_mask(seg, seg)
  full = attention(q, k, v, mask)
  for block in (4, 8, 12):
    blocked = attention(q, k, v, mask, causal_block=block)
    real = np.asarray(seg != 0)
    np.testing.assert_allclose(
      np.asarray(blocked)[real], np.asarray(full)[real], rtol=1e-6, atol=1e-6
    )
  # Not a multiple of T, or keys from a cache (S != T): the plain path.
  np.testing.assert_array_equal(attention(q, k, v, mask, causal_block=7), full)


def test_model_with_blocked_attention_matches_unblocked(monkeypatch):
  from jaxpost.models import decoder

  model = Decoder(CFG, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 48), 0, CFG.vocab_size)
  monkeypatch.setattr(decoder, "_CAUSAL_BLOCK", 0)
  full = model(tokens)
  monkeypatch.setattr(decoder, "_CAUSAL_BLOCK", 16)
  np.testing.assert_allclose(model(tokens), full, rtol=1e-5, atol=1e-5)
