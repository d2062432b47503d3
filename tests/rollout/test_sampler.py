"""Generation: cached lockstep decoding vs naive full forwards, EOS handling, sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import Decoder, ModelConfig
from jaxpost.rollout import generate, left_pad, make_generate_fn

CFG = ModelConfig(
  vocab_size=40,
  d_model=32,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  head_dim=8,
  mlp_dim=64,
  max_seq_len=64,
  qk_norm=True,
)
PROMPTS = [[5, 3, 9], [7, 1, 2, 8, 4, 6], [11]]
N = 6
NO_EOS = -1  # never sampled
PAD = 0


@pytest.fixture(scope="module")
def model():
  """Random O(1)-logit weights (NumPy-built: eager JAX init is slow on CPU)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(CFG, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    scale = 1.0 if "embed" in name else 0.3
    return jnp.asarray(1.0 + 0.2 * noise if "norm" in name else scale * noise)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@functools.partial(jax.jit, static_argnames="graphdef")
def _full_logits(graphdef, state, tokens):
  return nnx.merge(graphdef, state)(tokens)


def full_logits(model, tokens):
  """No-cache forward over right-padded rows (causality makes the padding irrelevant)."""
  graphdef, state = nnx.split(model)
  return np.asarray(_full_logits(graphdef, state, jnp.asarray(tokens)))


def naive_greedy(model, prompts, n, eos_id):
  """Greedy decoding by re-running the whole sequence each step; list of token lists."""
  width = max(map(len, prompts)) + n
  buf = np.zeros((len(prompts), width), np.int32)
  for row, p in enumerate(prompts):
    buf[row, : len(p)] = p
  outs = [[] for _ in prompts]
  for _ in range(n):
    logits = full_logits(model, buf)
    for row, p in enumerate(prompts):
      if outs[row] and outs[row][-1] == eos_id:
        continue
      tok = int(np.argmax(logits[row, len(p) + len(outs[row]) - 1]))
      buf[row, len(p) + len(outs[row])] = tok
      outs[row].append(tok)
  return outs


def teacher_forced_logp(model, prompts, generated, temperature):
  """log softmax(logits / temperature) of each generated token, from one full forward."""
  width = max(map(len, prompts)) + N
  buf = np.zeros((len(prompts), width), np.int32)
  for row, (p, g) in enumerate(zip(prompts, generated, strict=True)):
    buf[row, : len(p) + len(g)] = list(p) + list(g)
  logits = full_logits(model, buf) / temperature
  logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
  return [
    np.array([logp[row, len(p) - 1 + i, tok] for i, tok in enumerate(g)])
    for row, (p, g) in enumerate(zip(prompts, generated, strict=True))
  ]


def check_rows(out, expected_tokens, expected_logp):
  tokens, lengths, logp = map(np.asarray, (out.tokens, out.lengths, out.logp))
  assert tokens.shape == logp.shape == (len(expected_tokens), N)
  for row, (want, want_logp) in enumerate(zip(expected_tokens, expected_logp, strict=True)):
    assert lengths[row] == len(want)
    np.testing.assert_array_equal(tokens[row, : len(want)], want)
    assert np.all(tokens[row, len(want) :] == PAD)
    np.testing.assert_allclose(logp[row, : len(want)], want_logp, atol=1e-5, rtol=0)
    assert np.all(logp[row, len(want) :] == 0.0)


def test_left_pad():
  tokens, mask = left_pad([[1, 2], [3, 4, 5], [6]], pad_id=9)
  np.testing.assert_array_equal(tokens, [[9, 1, 2], [3, 4, 5], [9, 9, 6]])
  np.testing.assert_array_equal(mask, [[0, 1, 1], [1, 1, 1], [0, 0, 1]])
  assert tokens.dtype == mask.dtype == np.int32
  with pytest.raises(ValueError):
    left_pad([[1], []])


def test_greedy_matches_naive_full_forward(model):
  tokens, mask = left_pad(PROMPTS, PAD)
  out = generate(model, tokens, mask, max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD)
  want = naive_greedy(model, PROMPTS, N, NO_EOS)
  assert all(len(w) == N for w in want)
  check_rows(out, want, teacher_forced_logp(model, PROMPTS, want, 1.0))
  # The jitted entry on split state gives the same result.
  graphdef, state = nnx.split(model)
  fn = make_generate_fn(graphdef, max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD)
  again = fn(state, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0))
  np.testing.assert_array_equal(again.tokens, out.tokens)


def test_eos_truncates_and_pads(model):
  free = naive_greedy(model, PROMPTS, N, NO_EOS)
  # EOS := the first token of row 0 that is new at step >= 1, so row 0 stops early.
  step = next(i for i in range(1, N) if free[0][i] not in free[0][:i])
  eos = free[0][step]
  want = [g[: g.index(eos) + 1] if eos in g else g for g in free]
  assert len(want[0]) == step + 1 < N
  tokens, mask = left_pad(PROMPTS, PAD)
  out = generate(model, tokens, mask, max_new_tokens=N, eos_id=eos, pad_id=PAD)
  check_rows(out, want, teacher_forced_logp(model, PROMPTS, want, 1.0))
  assert naive_greedy(model, PROMPTS, N, eos) == want


def test_sampling_is_deterministic_per_key_and_logp_matches(model):
  tokens, mask = left_pad(PROMPTS, PAD)
  kw = dict(max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD, temperature=0.8)
  a = generate(model, tokens, mask, key=jax.random.key(1), **kw)
  b = generate(model, tokens, mask, key=jax.random.key(1), **kw)
  c = generate(model, tokens, mask, key=jax.random.key(2), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logp, b.logp)
  assert not np.array_equal(a.tokens, c.tokens)
  sampled = [list(map(int, row)) for row in np.asarray(a.tokens)]
  check_rows(a, sampled, teacher_forced_logp(model, PROMPTS, sampled, 0.8))
  with pytest.raises(ValueError, match="key"):
    generate(model, tokens, mask, **kw)
