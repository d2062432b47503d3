"""model.keep_layers: a shallower model that starts from a deeper one's blocks."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import config_lib, models
from jaxpost.models import hf
from jaxpost.recipes import common

SFT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "sft.py")


def sft_tiny(**overrides):
  c = config_lib.load_config(SFT + ":tiny")
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


def _model(n_layers=4, seed=0):
  config = models.named_config(
    "tiny", vocab_size=48, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
    head_dim=8, mlp_dim=64,
  )  # fmt: skip
  return models.create_model(config, seed)


@pytest.mark.parametrize(
  "spec,expected",
  [("", [0, 1, 2, 3, 4, 5]), ("0,2,5", [0, 2, 5]), ("0:6:2", [0, 2, 4]), ("1::2", [1, 3, 5]),
   (":3", [0, 1, 2]), ("-2:", [4, 5])],
)  # fmt: skip
def test_parse_layers(spec, expected):
  assert models.parse_layers(spec, 6) == expected


@pytest.mark.parametrize(
  "spec,match",
  [("0,6", "out of range"), ("2,1", "increase"), ("1,1", "increase"), ("4:2", "keeps no"),
   ("a,b", "expected"), ("0:1:2:3", "expected")],
)  # fmt: skip
def test_bad_layer_selections_are_refused(spec, match):
  with pytest.raises(ValueError, match=match):
    models.parse_layers(spec, 6)


def test_kept_blocks_compute_the_deeper_models_blocks_in_order():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 48, (2, 10)), jnp.int32)
  full = _model()
  # Reference: the full model's own pieces, skipping blocks 0 and 2 by hand.
  positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
  mask = models.make_attention_mask(jnp.ones((2, 10), jnp.int32), jnp.ones((2, 10), jnp.int32))
  x = jnp.take(full.embed[...], tokens, axis=0)
  for i in (1, 3):
    x = full.layers[i](x, positions, mask)[0]
  expected = full.logits(full.final_norm(x))
  cut = models.keep_layers(_model(), [1, 3])
  assert cut.config.n_layers == 2 and len(cut.layers) == 2
  np.testing.assert_allclose(np.asarray(cut(tokens)), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_keeping_every_layer_changes_nothing_and_exports(tmp_path):
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 48, (2, 7)), jnp.int32)
  same = models.keep_layers(_model(), [0, 1, 2, 3])
  np.testing.assert_array_equal(np.asarray(same(tokens)), np.asarray(_model()(tokens)))
  cut = models.keep_layers(_model(), [0, 3])
  hf.save_model(cut, str(tmp_path / "cut"))  # a 2-layer checkpoint that loads back
  back = hf.load_model(str(tmp_path / "cut"))
  assert back.config.n_layers == 2
  np.testing.assert_allclose(np.asarray(back(tokens)), np.asarray(cut(tokens)), atol=1e-6)


def test_the_runs_own_model_is_cut_a_teacher_of_another_source_is_not():
  c = sft_tiny(**{"model.size": "tiny", "model.keep_layers": "1:"})
  full = common.build_model(sft_tiny(**{"model.size": "tiny"}), 40)
  cut = common.build_model(c, 40)
  assert cut.config.n_layers == full.config.n_layers - 1
  for a, b in zip(cut.layers, list(full.layers)[1:], strict=True):
    np.testing.assert_array_equal(
      np.asarray(a.mlp.up_proj.kernel[...]), np.asarray(b.mlp.up_proj.kernel[...])
    )
  teacher = common.build_model(c, 40, size="tiny")  # a teacher named by its own size
  assert teacher.config.n_layers == full.config.n_layers


def test_a_selection_past_the_models_depth_is_a_config_error():
  c = sft_tiny(**{"model.size": "tiny", "model.keep_layers": "0,99"})
  with pytest.raises(config_lib.ConfigError, match="out of range"):
    common.build_model(c, 40)
