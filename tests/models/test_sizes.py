"""Named sizes: abstract init (no allocation) and exact parameter counts."""

import math

import jax.numpy as jnp
import pytest
from flax import nnx

from jaxpost.models import NAMED_SIZES, Decoder, named_config, param_count

# Published counts (HF safetensors totals; tied heads counted once).
EXPECTED = {
  "tiny": 410_240,
  "w-tiny": 8_130_816,
  "qwen2.5-0.5b": 494_032_768,
  "qwen3-0.6b": 596_049_920,
  "llama3.2-1b": 1_235_814_400,
}


def test_every_size_has_an_expected_count():
  assert set(NAMED_SIZES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_count(name):
  cfg = named_config(name)
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  count = sum(math.prod(v.shape) for _, v in params)
  assert count == EXPECTED[name]
  assert param_count(cfg) == EXPECTED[name]
  assert all(v.dtype == cfg.jnp_param_dtype for _, v in params)
  names = {".".join(map(str, p)) for p, _ in params}
  assert ("lm_head.kernel" in names) == (not cfg.tie_embeddings)
  assert ("layers.0.attn.q_proj.bias" in names) == cfg.attn_bias
  assert ("layers.0.attn.q_norm.weight" in names) == cfg.qk_norm
  assert sum(n.endswith("input_norm.weight") for n in names) == cfg.n_layers


def test_w_tiny_shapes():
  cfg = named_config("w-tiny")
  assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.mlp_dim) == (8192, 256, 4, 1024)
  assert cfg.attn_bias and not cfg.tie_embeddings and cfg.jnp_param_dtype == jnp.float32
