"""Attention maps of the decoder and P2D's ICL data scoring (jaxpost.data.icl_selection)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import models
from jaxpost.data import icl_selection, tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.models import decoder


def _model(seed=0):
  config = models.named_config(
    "tiny", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
    mlp_dim=64,
  )  # fmt: skip
  return models.create_model(config, seed)


def test_attention_maps_are_the_softmax_the_block_applies():
  """probabilities @ v through o_proj == the attention module's output, for each block;
  rows are distributions, causal and segment-aware."""
  model = _model()
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 64, (2, 12)), jnp.int32)
  segments = jnp.asarray([[1] * 12, [1] * 7 + [2] * 5], jnp.int32)
  maps = model.attention_maps(tokens, [0, 1], segment_ids=segments)
  positions = decoder._segment_positions(segments)
  assert positions[1, 7] == 0 and positions[1, 11] == 4
  mask = decoder.make_attention_mask(segments, segments)
  out = model.forward(tokens, positions=positions, segment_ids=segments, hidden_layers=(0,))
  inputs = [jnp.take(model.embed[...], tokens, axis=0), out.hidden_states[0]]
  for layer in (0, 1):
    block = model.layers[layer]
    x = block.input_norm(inputs[layer])
    p = maps[layer]
    assert p.shape == (2, 4, 12, 12)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert float(jnp.abs(jnp.triu(p, 1)).max()) == 0.0  # causal
    assert float(jnp.abs(p[1, :, 8, :7]).max()) == 0.0  # the second segment never sees the first
    v = block.attn.v_proj(x)  # [B, T, K, E]
    v = jnp.repeat(v, 2, axis=2)  # per query head
    mixed = jnp.einsum("bhts,bshe->bthe", p, v)
    want, _ = block.attn(x, positions, mask)
    np.testing.assert_allclose(block.attn.o_proj(mixed), want, rtol=1e-4, atol=1e-5)


def test_top_fraction_keeps_ceil_fraction_of_n():
  scores = np.asarray([0.1, 0.9, 0.5, 0.9, 0.3, 0.0, 0.7])
  for f in (0.1, 0.25, 0.5, 1.0):
    keep = icl_selection.top_fraction(scores, f)
    assert len(keep) == math.ceil(f * 7)
  np.testing.assert_array_equal(icl_selection.top_fraction(scores, 0.3), [1, 3, 6])
  np.testing.assert_array_equal(icl_selection.top_fraction(np.ones(5), 0.4), [0, 1])  # ties
  assert len(icl_selection.top_fraction(icl_selection.random_scores(1000, 0), 0.1)) == 100
  with pytest.raises(ValueError, match="fraction"):
    icl_selection.top_fraction(scores, 0.0)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  texts = [template.render_example(template.Example(p.prompt, p.thinking, p.answer))
           for p in (tasks.make_problem("add3", "train", 0, i) for i in range(300))]  # fmt: skip
  path = str(tmp_path_factory.mktemp("tok") / "tok")
  return SentencePieceTokenizer.train(texts, path, vocab_size=48, byte_fallback=False)


def _examples(n, seed):
  return [template.Example(p.prompt, p.thinking, p.answer)
          for p in (tasks.make_problem("add3", "train", seed, i) for i in range(n))]  # fmt: skip


def test_icl_scores_split_each_context_s_metric_among_its_demos(tok):
  """With one pass every candidate sits in one context; its demos' scores sum to the
  mean over the context's queries of exp(mean log p(response)), computed here by a
  plain forward of each sequence; batching does not change the scores."""
  model = _model()
  cands, queries = _examples(10, 0), _examples(4, 1)
  kw = dict(n_demo=3, n_query=2, passes=1, seed=5, progress=False)
  heads = {0: [1, 3], 1: [0]}
  scores = icl_selection.icl_scores(model, tok, cands, queries, heads, batch_size=4, **kw)
  again = icl_selection.icl_scores(model, tok, cands, queries, heads, batch_size=3, **kw)
  np.testing.assert_allclose(scores, again, rtol=1e-5, atol=1e-7)
  assert scores.shape == (10,) and np.all(scores > 0)
  # Rebuild the contexts as icl_scores draws them and check the sums by hand.
  rng = np.random.default_rng([5, 0x1C1])
  order = rng.permutation(10)
  enc = lambda ex: template.encode_example(tok, ex)  # noqa: E731
  for start in range(0, 10, 3):
    group = order[start : start + 3]
    metrics = []
    for q in rng.choice(4, size=2, replace=False):
      seq = np.concatenate([enc(cands[d]).tokens for d in group] + [enc(queries[q]).tokens])
      roles = enc(queries[q]).roles
      logp = jax.nn.log_softmax(model(jnp.asarray(seq[None]))[0], -1)
      t0 = len(seq) - len(roles)
      picks = [t for t in range(len(roles) - 1) if roles[t + 1] in (2, 3)]
      lp = [float(logp[t0 + t, seq[t0 + t + 1]]) for t in picks]
      metrics.append(math.exp(np.mean(lp)))
    np.testing.assert_allclose(scores[group].sum(), np.mean(metrics), rtol=1e-4)


def test_icl_scores_refuse_no_heads_and_no_queries(tok):
  model = _model()
  with pytest.raises(ValueError, match="head"):
    icl_selection.icl_scores(model, tok, _examples(3, 0), _examples(2, 1), {0: []})
  with pytest.raises(ValueError, match="query"):
    icl_selection.icl_scores(model, tok, _examples(3, 0), [], {0: [1]})
