"""Inference-time stop control in the sampler: TLDR's temperature scaling of the stop
token (``stop_bias``) and s1's budget forcing (``force_after`` / ``force_ids``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.models import ModelConfig
from jaxpost.rollout.sampler import generate, left_pad

CFG = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  mlp_dim=64, max_seq_len=64)  # fmt: skip
EOS = 3
N = 12


@pytest.fixture(scope="module")
def model(random_decoder):
  return random_decoder(CFG)


def _batch(rows=32, seed=0):
  rng = np.random.default_rng(seed)
  return left_pad([list(rng.integers(4, 40, rng.integers(2, 6))) for _ in range(rows)], 0)


def _gen(model, **kw):
  tokens, mask = _batch()
  settings = {"max_new_tokens": N, "eos_id": EOS, "pad_id": 0, "temperature": 1.0, **kw}
  return generate(model, tokens, mask, key=jax.random.key(7), **settings)


def test_stop_bias_zero_is_the_identity_and_a_bias_only_raises_the_stop_token(model):
  plain, zero = _gen(model), _gen(model, stop_bias=0.0, stop_bias_ids=(EOS,))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(zero), strict=True):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  # One step, greedy: the recorded log-prob of the chosen token under the shifted logits
  # against the plain ones; for a non-stop token the shift is log(1 - p + p e^d), the
  # same for every non-stop token (their ratios are unchanged), and p(stop) rises.
  tokens, mask = _batch()
  logits = model(jnp.asarray(tokens), segment_ids=jnp.asarray(mask))[:, -1]
  p = jax.nn.softmax(logits, -1)
  for delta in (0.5, 2.0):
    out = generate(model, tokens, mask, max_new_tokens=1, eos_id=EOS, pad_id=0,
                   stop_bias=delta)  # fmt: skip
    picked = np.asarray(out.tokens[:, 0])
    shifted = logits.at[:, EOS].add(delta)
    np.testing.assert_allclose(out.logp[:, 0], jax.nn.log_softmax(shifted, -1)[
      np.arange(len(picked)), picked], rtol=1e-5, atol=1e-5)  # fmt: skip
    q = jax.nn.softmax(shifted, -1)
    assert np.all(np.asarray(q[:, EOS]) > np.asarray(p[:, EOS]))
    others = [t for t in range(CFG.vocab_size) if t != EOS]
    np.testing.assert_allclose(q[:, others] / q[:, others].sum(-1, keepdims=True),
                               p[:, others] / p[:, others].sum(-1, keepdims=True),
                               rtol=1e-5)  # fmt: skip


def test_a_larger_stop_bias_stops_sooner(model):
  lengths = [float(np.mean(_gen(model, stop_bias=d).lengths)) for d in (0.0, 2.0, 4.0, 50.0)]
  assert lengths[0] > lengths[1] > lengths[2] > lengths[3] == 1.0


def test_budget_forcing_emits_the_sequence_once_the_budget_is_spent(model):
  force = (7, 9)
  out = _gen(model, eos_id=-1, force_after=4, force_ids=force)
  tokens = np.asarray(out.tokens)
  assert np.array_equal(np.asarray(_gen(model, eos_id=-1, force_after=0).tokens),
                        np.asarray(_gen(model, eos_id=-1).tokens))  # fmt: skip
  for row in tokens:
    matched, seen = 0, False
    for t, tok in enumerate(row):
      if t >= 4 and matched < len(force):
        assert tok == force[matched], (row, t)  # forced: the sequence's next token
      if matched < len(force):
        matched = matched + 1 if tok == force[matched] else int(tok == force[0])
      seen |= matched == len(force)
    assert seen  # every row emitted the sequence, by itself or forced, by step 4 + 2
  free = _gen(model, eos_id=-1)
  assert not np.array_equal(np.asarray(free.tokens[:, 4:6]), np.tile(force, (32, 1)))
  with pytest.raises(ValueError, match="force_ids"):
    _gen(model, force_after=3)
