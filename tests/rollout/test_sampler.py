"""The sampler: cached lockstep decoding vs naive full forwards, truncation filters,
stop tokens and strings, per-row key streams, padding invariance, the sharded mesh.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import config_lib, sharding
from jaxpost.models import ModelConfig
from jaxpost.rollout.sampler import (
  GenerateOutput,
  apply_stop_strings,
  filter_logits,
  find_stop_string,
  generate,
  left_pad,
  make_generate_fn,
  sample_logits,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Every sharded dimension divides 2 (vocab 40, d_model 32, heads 4, kv heads 2, mlp 64).
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
# Four rows: one per (data, fsdp) shard in the mesh test; every test decodes this batch.
PROMPTS = [[5, 3, 9], [7, 1, 2, 8, 4, 6], [11], [2, 2]]
N = 6
NO_EOS = -1  # never sampled
PAD = 0
SAMPLING = dict(max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD, temperature=0.7, top_k=10, top_p=0.95)
# Cached decode vs one full forward over differently padded rows: same math, different
# summation order; ~1e-7 seen in f32.
ATOL = 1e-5


@pytest.fixture(scope="module")
def model(random_decoder):
  return random_decoder(CFG)


@functools.partial(jax.jit, static_argnames="graphdef")
def _full_logits(graphdef, state, tokens):
  return nnx.merge(graphdef, state)(tokens)


def full_logits(model, tokens):
  """No-cache forward over right-padded rows (causality makes the padding irrelevant)."""
  graphdef, state = nnx.split(model)
  return np.asarray(_full_logits(graphdef, state, jnp.asarray(tokens)))


def naive_greedy(model, prompts, n, stop_ids):
  """Greedy decoding by re-running the whole sequence each step; list of token lists."""
  width = max(map(len, prompts)) + n
  buf = np.zeros((len(prompts), width), np.int32)
  for row, p in enumerate(prompts):
    buf[row, : len(p)] = p
  outs = [[] for _ in prompts]
  for _ in range(n):
    logits = full_logits(model, buf)
    for row, p in enumerate(prompts):
      if outs[row] and outs[row][-1] in stop_ids:
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
  logits = full_logits(model, buf).astype(np.float64) / temperature
  logp = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  return [
    np.array([logp[row, len(p) - 1 + i, tok] for i, tok in enumerate(g)])
    for row, (p, g) in enumerate(zip(prompts, generated, strict=True))
  ]


def as_lists(out):
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  return [list(map(int, tokens[row, : lengths[row]])) for row in range(tokens.shape[0])]


def check_rows(out, expected_tokens, expected_logp):
  tokens, lengths, logp = map(np.asarray, (out.tokens, out.lengths, out.logp))
  assert tokens.shape == logp.shape == (len(expected_tokens), N)
  for row, (want, want_logp) in enumerate(zip(expected_tokens, expected_logp, strict=True)):
    assert lengths[row] == len(want)
    np.testing.assert_array_equal(tokens[row, : len(want)], want)
    assert np.all(tokens[row, len(want) :] == PAD)
    np.testing.assert_allclose(logp[row, : len(want)], want_logp, atol=ATOL, rtol=0)
    assert np.all(logp[row, len(want) :] == 0.0)


def test_left_pad():
  tokens, mask = left_pad([[1, 2], [3, 4, 5], [6]], pad_id=9)
  np.testing.assert_array_equal(tokens, [[9, 1, 2], [3, 4, 5], [9, 9, 6]])
  np.testing.assert_array_equal(mask, [[0, 1, 1], [1, 1, 1], [0, 0, 1]])
  assert tokens.dtype == mask.dtype == np.int32
  with pytest.raises(ValueError):
    left_pad([[1], []])


# ----------------------------------------------------------------------------------------
# Filters and one sampling step, no model.

# p = [0.5, 0.3, 0.15, 0.05] (and a permuted copy, so order in the vocab does not matter).
_P = np.array([[0.5, 0.3, 0.15, 0.05], [0.15, 0.05, 0.5, 0.3]])
_LOGITS = np.log(_P).astype(np.float32)


# Jitted once per setting: eager calls would compile every primitive separately.
_filter = jax.jit(filter_logits, static_argnames=("top_k", "top_p", "min_p"))
_sample = jax.jit(sample_logits, static_argnames=("temperature", "top_k", "top_p", "min_p"))


def kept(logits, **kw):
  return np.isfinite(np.asarray(_filter(jnp.asarray(logits), **kw)))


@pytest.mark.parametrize(
  "kw, want_row0",
  [
    ({}, [1, 1, 1, 1]),
    ({"top_k": 2}, [1, 1, 0, 0]),
    ({"top_k": 4}, [1, 1, 1, 1]),
    ({"top_p": 0.75}, [1, 1, 0, 0]),  # 0.5 < 0.75 <= 0.8
    ({"top_p": 0.81}, [1, 1, 1, 0]),
    ({"top_p": 1e-6}, [1, 0, 0, 0]),
    ({"top_p": 0.6}, [1, 1, 0, 0]),
    # top-k first: within {0.5, 0.3} renormalised to {0.625, 0.375}, 0.6 needs only one.
    ({"top_k": 2, "top_p": 0.6}, [1, 0, 0, 0]),
    ({"min_p": 0.2}, [1, 1, 1, 0]),  # keep p >= 0.1
    ({"min_p": 0.31}, [1, 1, 0, 0]),  # keep p >= 0.155
    ({"min_p": 1.0}, [1, 0, 0, 0]),
    ({"top_k": 3, "min_p": 0.2}, [1, 1, 1, 0]),
  ],
)
def test_filter_logits_golden(kw, want_row0):
  want = np.array(want_row0, bool)
  got = kept(_LOGITS, **kw)
  np.testing.assert_array_equal(got[0], want)
  np.testing.assert_array_equal(got[1], want[[2, 3, 0, 1]])


def naive_filter(logits, top_k, top_p, min_p):
  """Per-row float64 loop: the kept set after top-k, then top-p, then min-p."""
  keep = np.ones(logits.shape, bool)
  for row, x in enumerate(logits.astype(np.float64)):
    order = np.argsort(-x)
    alive = np.ones(len(x), bool)
    if top_k:
      alive[order[top_k:]] = False
    if top_p < 1:
      p = np.where(alive, np.exp(x - x.max()), 0.0)
      p /= p.sum()
      mass = 0.0
      for i in order:
        if alive[i] and mass >= top_p:
          alive[i] = False
        mass += p[i]
    if min_p > 0:
      alive &= np.exp(x - x.max()) >= min_p
    keep[row] = alive
  return keep


@pytest.mark.parametrize(
  "top_k, top_p, min_p", [(5, 1.0, 0.0), (0, 0.8, 0.0), (0, 1.0, 0.05), (12, 0.9, 0.02)]
)
def test_filter_logits_matches_naive_loop(top_k, top_p, min_p):
  logits = np.random.default_rng(1).normal(0, 2, (16, 40)).astype(np.float32)
  got = kept(logits, top_k=top_k, top_p=top_p, min_p=min_p)
  want = naive_filter(logits, top_k, top_p, min_p)
  np.testing.assert_array_equal(got, want)
  assert 1 < got.sum(axis=1).mean() < 40  # the filter is doing something


def test_sample_logits_min_p_and_recorded_logp():
  """Every draw has p >= min_p * p_max; all such tokens occur; both log-probs are right."""
  rows, temperature, min_p = 4000, 0.5, 0.2
  base = np.log(np.array([0.4, 0.25, 0.2, 0.1, 0.05]))  # at T = 0.5: p ~ x^2
  logits = jnp.asarray(np.tile(base, (rows, 1)), jnp.float32)
  tokens, logp, flogp = _sample(logits, jax.random.key(3), temperature, min_p=min_p)
  tokens = np.asarray(tokens)
  scaled = base / temperature
  p = np.exp(scaled - scaled.max())
  p /= p.sum()
  allowed = p >= min_p * p.max()
  assert allowed.tolist() == [True, True, True, False, False]
  assert set(tokens.tolist()) == set(np.flatnonzero(allowed).tolist())
  np.testing.assert_allclose(logp, np.log(p)[tokens], atol=1e-6, rtol=0)
  q = np.where(allowed, p, 0.0) / p[allowed].sum()
  np.testing.assert_allclose(flogp, np.log(q[tokens]), atol=1e-6, rtol=0)
  # Frequencies follow the truncated distribution (4000 draws: 4 sigma < 0.04).
  freq = np.bincount(tokens, minlength=5) / rows
  np.testing.assert_allclose(freq, q, atol=0.04)


@pytest.mark.parametrize("kw", [{"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}])
def test_sample_logits_truncated_to_one_token_is_argmax(kw):
  logits = jnp.asarray(np.random.default_rng(2).normal(0, 1, (256, 40)), jnp.float32)
  tokens, logp, flogp = _sample(logits, jax.random.key(0), 0.7, **kw)
  np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
  np.testing.assert_allclose(logp, np.max(jax.nn.log_softmax(logits / 0.7), axis=-1), atol=1e-6)
  np.testing.assert_array_equal(flogp, 0.0)


def test_sample_logits_greedy_and_row_keys():
  logits = jnp.asarray(_LOGITS)
  tokens, logp, flogp = _sample(logits, jax.random.key(0), 0.0, top_k=3)
  np.testing.assert_array_equal(tokens, [0, 2])
  np.testing.assert_allclose(logp, np.log([0.5, 0.5]), atol=1e-6)
  np.testing.assert_array_equal(flogp, [0.0, 0.0])
  key = jax.random.key(7)
  wide = jnp.zeros((64, 40), jnp.float32)  # uniform: draws are pure key
  a = _sample(wide, key, 1.0)[0]
  # Row b's draw depends on fold_in(key, b) alone: rows 5..12 drawn as a batch of their own.
  keys = jnp.stack([jax.random.fold_in(key, b) for b in range(5, 13)])
  np.testing.assert_array_equal(_sample(wide[:8], keys, 1.0)[0], a[5:13])
  assert len(set(np.asarray(a).tolist())) > 20


# ----------------------------------------------------------------------------------------
# Decoding with the model.


def test_greedy_matches_naive_full_forward(model):
  tokens, mask = left_pad(PROMPTS, PAD)
  out = generate(model, tokens, mask, max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD)
  want = naive_greedy(model, PROMPTS, N, ())
  assert all(len(w) == N for w in want)
  check_rows(out, want, teacher_forced_logp(model, PROMPTS, want, 1.0))
  np.testing.assert_array_equal(out.filtered_logp, 0.0)  # greedy: a point mass
  np.testing.assert_array_equal(out.stopped, False)
  # The jitted entry on split state gives the same result.
  graphdef, state = nnx.split(model)
  fn = make_generate_fn(graphdef, max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD)
  again = fn(state, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0))
  np.testing.assert_array_equal(again.tokens, out.tokens)
  # A prompt alone (no padding) == the same prompt after 5 columns of padding.
  t1, m1 = left_pad([PROMPTS[2]], PAD)
  alone = generate(model, t1, m1, max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD)
  np.testing.assert_array_equal(alone.tokens[0], out.tokens[2])
  np.testing.assert_allclose(alone.logp[0], out.logp[2], atol=ATOL, rtol=0)


def test_decode_phases_give_the_one_loop_result(model):
  """Decoding in phases over a cache grown between them == one loop over the full cache
  (which the tests above check against naive full-forward decoding): same greedy tokens,
  same sampled tokens and log-probs, and a stop token ends rows (and the last ones the
  loop) inside a later phase."""
  n = 20  # auto = 1 phase below 64 steps; force several
  tokens, mask = map(jnp.asarray, left_pad(PROMPTS, PAD))
  graphdef, state = nnx.split(model)
  greedy = make_generate_fn(graphdef, max_new_tokens=n, eos_id=NO_EOS, pad_id=PAD)
  one, phased = (greedy(state, tokens, mask, jax.random.key(0), phases=k) for k in (1, 4))
  np.testing.assert_array_equal(phased.tokens, one.tokens)
  np.testing.assert_allclose(phased.logp, one.logp, atol=ATOL, rtol=0)

  settings = {**SAMPLING, "max_new_tokens": n}
  key = jax.random.key(3)
  free = make_generate_fn(graphdef, **settings)(state, tokens, mask, key, phases=1)
  row0 = np.asarray(free.tokens)[0].tolist()
  step = next(i for i in range(6, n) if row0[i] not in row0[:i])  # row 0 stops in phase 2+
  settings["eos_id"] = row0[step]
  fn = make_generate_fn(graphdef, **settings)
  one = fn(state, tokens, mask, key, phases=1)
  assert int(one.lengths[0]) == step + 1 < n
  for phases in (4,):
    out = fn(state, tokens, mask, key, phases=phases)
    np.testing.assert_array_equal(out.tokens, one.tokens)
    np.testing.assert_array_equal(out.lengths, one.lengths)
    np.testing.assert_allclose(out.logp, one.logp, atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.filtered_logp, one.filtered_logp, atol=ATOL, rtol=0)


def test_stop_tokens_truncate_and_pad(model):
  free = naive_greedy(model, PROMPTS, N, ())
  # Stop set: a token new at step >= 1 of row 0 (the EOS) and one of row 1 (stop_ids).
  step0 = next(i for i in range(1, N) if free[0][i] not in free[0][:i])
  eos = free[0][step0]
  step1 = next(i for i in range(1, N) if free[1][i] not in free[1][:i] + [eos])
  stop = free[1][step1]
  want = naive_greedy(model, PROMPTS, N, (eos, stop))
  assert len(want[0]) == step0 + 1 < N and len(want[1]) <= step1 + 1 < N
  tokens, mask = left_pad(PROMPTS, PAD)
  out = generate(model, tokens, mask, max_new_tokens=N, eos_id=eos, stop_ids=(stop,), pad_id=PAD)
  check_rows(out, want, teacher_forced_logp(model, PROMPTS, want, 1.0))
  np.testing.assert_array_equal(out.stopped, [w[-1] in (eos, stop) for w in want])
  assert out.stopped[0] and out.stopped[1]


def test_top_k_1_equals_greedy(model):
  """Truncation to one token is greedy; the recorded logp stays at temperature 0.7."""
  tokens, mask = left_pad(PROMPTS, PAD)
  kw = dict(max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD)
  greedy = as_lists(generate(model, tokens, mask, **kw))
  out = generate(model, tokens, mask, temperature=0.7, top_k=1, key=jax.random.key(5), **kw)
  check_rows(out, greedy, teacher_forced_logp(model, PROMPTS, greedy, 0.7))
  np.testing.assert_array_equal(out.filtered_logp, 0.0)  # one token left: log 1
  assert np.all(np.asarray(out.logp) < -1e-3)  # the unfiltered distribution, not log 1


def test_sampling_deterministic_per_key(model):
  tokens, mask = left_pad(PROMPTS, PAD)
  a = generate(model, tokens, mask, key=jax.random.key(1), **SAMPLING)
  b = generate(model, tokens, mask, key=jax.random.key(1), **SAMPLING)
  c = generate(model, tokens, mask, key=jax.random.key(2), **SAMPLING)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.tokens, c.tokens)
  sampled = as_lists(a)
  check_rows(a, sampled, teacher_forced_logp(model, PROMPTS, sampled, 0.7))
  # Truncation only raises a kept token's probability.
  assert np.all(np.asarray(a.filtered_logp) >= np.asarray(a.logp) - 1e-6)
  assert np.any(np.asarray(a.filtered_logp) > np.asarray(a.logp) + 1e-3)
  with pytest.raises(ValueError, match="key"):
    generate(model, tokens, mask, max_new_tokens=N, eos_id=NO_EOS, temperature=0.7)


@pytest.mark.parametrize(
  "kw", [{"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"min_p": 1.5}, {"temperature": -1.0}]
)
def test_bad_settings_raise(kw):
  with pytest.raises(ValueError):
    make_generate_fn(None, max_new_tokens=N, eos_id=NO_EOS, **kw)


# ----------------------------------------------------------------------------------------
# Stop strings (host side).


def _detok(ids):
  """Toy detokenizer: id i -> chr(ord('a') + i), id 26 -> ' '."""
  return "".join(" " if i == 26 else chr(ord("a") + i) for i in ids)


def test_find_stop_string():
  ids = [7, 4, 11, 11, 14, 26, 3, 14, 13, 4]  # "hello done"
  assert find_stop_string(ids, _detok, ["done"]) == 10
  assert find_stop_string(ids, _detok, ["ll"]) == 4
  # The first completed wins, whichever is listed first.
  assert find_stop_string(ids, _detok, ["done", "lo"]) == 5
  assert find_stop_string(ids, _detok, ["o d"]) == 7  # spans three tokens
  assert find_stop_string(ids, _detok, ["xyz"]) is None
  assert find_stop_string(ids, _detok, []) is None
  with pytest.raises(ValueError):
    find_stop_string(ids, _detok, [""])


def test_apply_stop_strings():
  tokens = np.array([[7, 4, 11, 11, 14], [3, 14, 13, 4, 0], [0, 1, 2, 3, 4]], np.int32)
  out = GenerateOutput(
    tokens=tokens,
    lengths=np.array([5, 4, 5], np.int32),
    logp=-np.arange(1, 16, dtype=np.float32).reshape(3, 5) * (tokens != 0),
    filtered_logp=np.full((3, 5), -0.5, np.float32),
    stopped=np.array([False, True, False]),
  )
  cut = apply_stop_strings(out, _detok, ["ll", "on"], pad_id=0)
  # Row 0 "hello" -> "hell"; row 1 "done" (already stopped) -> "do"+"n"; row 2 untouched.
  np.testing.assert_array_equal(cut.lengths, [4, 3, 5])
  np.testing.assert_array_equal(cut.stopped, [True, True, False])
  np.testing.assert_array_equal(cut.tokens, [[7, 4, 11, 11, 0], [3, 14, 13, 0, 0], tokens[2]])
  np.testing.assert_array_equal(cut.logp[0], [-1, -2, -3, -4, 0])
  np.testing.assert_array_equal(cut.filtered_logp[1], [-0.5, -0.5, -0.5, 0, 0])
  np.testing.assert_array_equal(cut.logp[2], out.logp[2])
  np.testing.assert_array_equal(out.lengths, [5, 4, 5])  # the input is not modified


# ----------------------------------------------------------------------------------------
# Sharded mesh.


@functools.cache
def _mesh():
  c = config_lib.load_sibling(os.path.join(REPO, "configs", "base.py"), "base").get_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.data.batch_size = 8
  return sharding.make_mesh(c, jax.devices()[:8])


def test_sharded_mesh_matches_single_device(model):
  """Greedy decoding on a 2x2x2 (data, fsdp, tensor) mesh of 8 fake CPU devices == one
  device; and sampling draws do not depend on how the rows are sharded."""
  tokens, mask = left_pad(PROMPTS, PAD)
  graphdef, state = nnx.split(model)
  mesh = _mesh()
  fn = make_generate_fn(graphdef, max_new_tokens=N, eos_id=NO_EOS, pad_id=PAD)
  key = jax.random.key(4)
  want = fn(state, jnp.asarray(tokens), jnp.asarray(mask), key)
  tokens_s, mask_s = sharding.shard_batch((tokens, mask), mesh)
  got = fn(sharding.shard_tree(state, mesh), tokens_s, mask_s, key)
  assert len(got.tokens.sharding.device_set) == 8
  for name in ("tokens", "lengths", "stopped"):
    np.testing.assert_array_equal(np.asarray(getattr(got, name)), getattr(want, name))
  np.testing.assert_allclose(np.asarray(got.logp), want.logp, rtol=0, atol=ATOL)
  assert len(set(np.asarray(want.tokens).ravel())) > 4  # not a degenerate repeat

  # One sampling step (the decode loop's) on rows split over data * fsdp: the per-row key
  # streams give the same draws as on one device. (The full sampled decode on the mesh
  # costs another ~10 s of CPU compile for no new code path.)
  logits = np.random.default_rng(5).normal(0, 1, (8, CFG.vocab_size)).astype(np.float32)
  step = jax.jit(lambda x, k: sample_logits(x, k, 0.7, top_k=10, top_p=0.95))
  want = step(jnp.asarray(logits), key)
  got = step(sharding.shard_batch(logits, mesh), key)
  assert len(got[0].sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(got[0]), want[0])
  np.testing.assert_allclose(np.asarray(got[1]), want[1], rtol=0, atol=1e-6)
  assert len(set(np.asarray(want[0]).tolist())) > 3


def test_inverse_cdf_draws_match_probabilities_and_skip_removed_tokens():
  from jaxpost.rollout.sampler import _inverse_cdf_sample

  probs = np.array([0.1, 0.0, 0.6, 0.3, 0.0], np.float32)
  logits = jnp.log(jnp.asarray(probs))[None].repeat(20000, axis=0)  # -inf where p = 0
  keys = jax.random.split(jax.random.key(7), 20000)
  tokens, lse = _inverse_cdf_sample(keys, logits)
  tokens = np.asarray(tokens)
  freq = np.bincount(tokens, minlength=5) / tokens.size
  assert freq[1] == 0 and freq[4] == 0  # removed tokens are never drawn, even at the end
  np.testing.assert_allclose(freq, probs, atol=0.015)
  np.testing.assert_allclose(lse, 0.0, atol=1e-6)  # logsumexp(log probs) = log 1
  # One key per row: a row's draw does not depend on the other rows.
  np.testing.assert_array_equal(_inverse_cdf_sample(keys[:5], logits[:5])[0], tokens[:5])


def test_two_level_inverse_cdf_equals_a_flat_float64_inversion():
  """Across blocks (V = 1000 is 7 full blocks and a partial one, some blocks with no mass),
  the draw is the token a float64 searchsorted of the same uniform over the whole CDF
  picks: the two-level inversion is exact, not just right in distribution."""
  from jaxpost.rollout.sampler import _CDF_BLOCK, _inverse_cdf_sample

  v, rows = 1000, 4000
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (rows, v)).astype(np.float32)
  logits[:, 128:384] = -np.inf  # two whole blocks removed
  logits[:, 999] = 6.0  # mass in the last, partial block
  logits[:, ::7] = -np.inf  # scattered removed tokens, including block edges
  logits[:, 0] = -np.inf
  keys = jax.random.split(jax.random.key(3), rows)
  tokens, lse = _inverse_cdf_sample(keys, jnp.asarray(logits))
  tokens = np.asarray(tokens)
  assert v > 7 * _CDF_BLOCK
  u = np.asarray(jax.vmap(jax.random.uniform)(keys), np.float64)
  probs = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
  cdf = np.cumsum(probs, axis=-1)
  want = np.array(
    [np.searchsorted(c, x * c[-1], side="right") for c, x in zip(cdf, u, strict=True)]
  )
  assert np.mean(tokens == want) > 0.999  # float32 vs float64 rounding at a boundary
  assert np.all(np.isfinite(logits[np.arange(rows), tokens]))  # never a removed token
  np.testing.assert_allclose(lse, np.log(cdf[:, -1]) + logits.max(-1), rtol=1e-6)
  assert len(set(tokens.tolist())) > 200
