"""Which blocks to prune (jaxpost/models/depth.py): the angular distance of each span."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import models
from jaxpost.models import depth


@pytest.fixture
def model(random_decoder):
  config = models.named_config(
    "tiny", vocab_size=48, d_model=32, n_layers=5, n_heads=4, n_kv_heads=2, head_dim=8,
    mlp_dim=64,
  )  # fmt: skip
  return random_decoder(config)


def _jit(fn, model, *args):
  """``fn(model, *args)`` compiled (eager decoding of a forward pass is slow)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda state, *a: fn(nnx.merge(graphdef, state), *a))(state, *args)


def _streams(model, tokens, segments):
  return _jit(depth.block_inputs, model, tokens, segments)


def _logits(model, tokens, segments):
  return _jit(lambda m, t, s: m.forward(t, segment_ids=s).logits, model, tokens, segments)


def _silence(model, blocks):
  """Blocks that add nothing to the stream: their attention and MLP outputs zeroed."""
  for i in blocks:
    layer = model.layers[i]
    for proj in (layer.attn.o_proj, layer.mlp.down_proj):
      proj.kernel[...] = jnp.zeros_like(proj.kernel[...])
  return model


def _batch():
  tokens = np.random.default_rng(0).integers(1, 48, (4, 12)).astype(np.int32)
  segments = np.ones_like(tokens)
  segments[1, 9:] = 0  # padding is not read
  segments[3, 5:] = 0
  return jnp.asarray(tokens), jnp.asarray(segments)


def _reference(streams, segments, n, last=False):
  s = np.asarray(streams, np.float64)
  seg = np.asarray(segments)
  out = []
  for start in range(s.shape[0] - n):
    angles = []
    for b in range(s.shape[1]):
      real = np.flatnonzero(seg[b])
      for t in real[-1:] if last else real:
        x, y = s[start, b, t], s[start + n, b, t]
        angles.append(np.arccos(np.clip(x @ y / np.linalg.norm(x) / np.linalg.norm(y), -1, 1)))
    out.append(np.mean(angles) / np.pi)
  return np.asarray(out)


@pytest.mark.parametrize("position", ["all", "last"])
def test_distances_match_a_direct_computation(model, position):
  tokens, segments = _batch()
  streams = _streams(model, tokens, segments)
  assert streams.shape[0] == model.config.n_layers + 1
  np.testing.assert_allclose(streams[0], model.embed[...][tokens], rtol=1e-6)
  for n in (1, 2, 5):
    d = depth.angular_distances(streams, segments, n, position)
    ref = _reference(streams, segments, n, last=position == "last")
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-5)
    assert d.shape == (model.config.n_layers - n + 1,) and np.all((d >= 0) & (d <= 1))


def test_silent_blocks_are_chosen_and_removing_them_changes_nothing(model):
  model = _silence(model, [1, 2])
  tokens, segments = _batch()
  d = depth.angular_distances(_streams(model, tokens, segments), segments, 2)
  assert (
    depth.best_span(d) == 1 and d[1] == pytest.approx(0.0, abs=1e-6) and min(d[[0, 2, 3]]) > 0.01
  )
  spec = depth.prune_spec(5, 1, 2)
  assert spec == "0,3,4"
  full = _logits(model, tokens, segments)
  pruned = models.keep_layers(nnx.clone(model), models.parse_layers(spec, 5))
  np.testing.assert_allclose(_logits(pruned, tokens, segments), full, atol=1e-5)


def test_measure_over_texts_and_bad_arguments(model):
  from jaxpost.data import tasks, template

  class Tok:  # digits as ids (the model's vocabulary is 48)
    pad_id = 0

    def encode(self, text):
      return [1 + ord(c) % 40 for c in text]

  texts = [
    template.render_example(tasks.make_problem("add3", "train", 0, i).example) for i in range(5)
  ]
  model = _silence(model, [3])
  d = depth.measure(model, Tok(), texts, 1, batch_size=2)
  assert depth.best_span(d) == 3 and d[3] == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="n must be"):
    depth.angular_distances(jnp.zeros((3, 1, 2, 4)), jnp.ones((1, 2)), 3)
  with pytest.raises(ValueError, match="position"):
    depth.angular_distances(jnp.zeros((3, 1, 2, 4)), jnp.ones((1, 2)), 1, "first")
  with pytest.raises(ValueError, match="cannot remove"):
    depth.prune_spec(4, 2, 3)
