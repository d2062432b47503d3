"""Head-sparse tuning: selections, the GQA policies and the masks' slices."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import models, train
from jaxpost.peft import heads


def test_parse_heads_forms():
  assert heads.parse_heads("0:1,3;2:0", 3, 4) == {0: (1, 3), 2: (0,)}
  assert heads.parse_heads("*:0; 1:2", 2, 4) == {0: (0,), 1: (0, 2)}
  assert heads.parse_heads("-1:-1", 3, 4) == {2: (3,)}


def test_parse_heads_reads_a_json_selection(tmp_path):
  path = tmp_path / "heads.json"
  path.write_text(json.dumps({"heads": {"0": [2], "1": [0, 1]}, "scores": [[0.1]]}))
  assert heads.parse_heads(str(path), 2, 4) == {0: (2,), 1: (0, 1)}


@pytest.mark.parametrize(
  "spec,match",
  [("0", "LAYER:H"), ("0:9", "head 9 out of range"), ("5:0", "layer 5"), ("x:1", "integer"),
   ("0:", "no head")],
)  # fmt: skip
def test_parse_heads_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    heads.parse_heads(spec, 2, 4)


def test_kv_policies_by_hand():
  # 8 query heads over 2 kv heads: heads 0-3 read kv 0, heads 4-7 kv 1.
  assert heads.kv_heads((1, 5), 8, 2, "any") == (0, 1)
  assert heads.kv_heads((0, 1, 2, 3, 5), 8, 2, "all") == (0,)
  assert heads.kv_heads((1, 5), 8, 2, "none") == ()
  assert heads.kv_heads((3,), 4, 4, "all") == (3,)  # MHA: each kv head is its own group
  with pytest.raises(ValueError, match="kv="):
    heads.kv_heads((0,), 4, 2, "some")


def test_masks_select_each_heads_slices_gqa_aware():
  cfg = models.named_config(
    "tiny", vocab_size=31, n_layers=2, d_model=16, mlp_dim=32, n_heads=4, n_kv_heads=2,
    head_dim=8, attn_bias=True,
  )  # fmt: skip
  selection = {1: (3,)}
  pattern = heads.head_filter(selection)
  _, params, _ = train.split_model(models.Decoder(cfg, rngs=nnx.Rngs(0)),
                                   train.trainable_filter(pattern))  # fmt: skip
  want = [
    f"layers.1.attn.{p}.{k}" for p in ("q_proj", "k_proj", "v_proj") for k in ("kernel", "bias")
  ]
  assert sorted(train.param_paths(params)) == sorted([*want, "layers.1.attn.o_proj.kernel"])
  labels = jax.tree.leaves(heads.head_masks(selection, 4, 2)(params))
  masks = dict(zip(train.param_paths(params), labels, strict=True))
  q, o = (
    np.asarray(masks["layers.1.attn.q_proj.kernel"]),
    np.asarray(masks["layers.1.attn.o_proj.kernel"]),
  )
  assert q.shape == (16, 4, 8) and q[:, 3].all() and not q[:, :3].any()
  assert o.shape == (4, 8, 16) and o[3].all() and not o[:3].any()
  k = np.asarray(masks["layers.1.attn.k_proj.kernel"])  # head 3 reads kv head 1
  assert k[:, 1].all() and not k[:, 0].any()
  b = np.asarray(masks["layers.1.attn.v_proj.bias"])  # [K, E]
  assert b[1].all() and not b[0].any()
  none = heads.head_masks(selection, 4, 2, "none")(params)
  assert not any(np.asarray(m).any() for p, m in zip(train.param_paths(params),
                 jax.tree.leaves(none), strict=True) if "k_proj" in p)  # fmt: skip
  assert "k_proj" not in heads.head_filter(selection, "none")


def _gqa_model(seed=0):
  cfg = models.named_config(
    "tiny", vocab_size=31, n_layers=2, d_model=16, mlp_dim=32, n_heads=4, n_kv_heads=2,
    head_dim=8,
  )  # fmt: skip
  return models.Decoder(cfg, rngs=nnx.Rngs(seed))


def test_alps_is_zero_for_identical_weights_symmetric_and_local():
  base = nnx.state(_gqa_model(), nnx.Param)
  assert float(jnp.abs(heads.alps_scores(base, base, 2, 4, 2)).max()) == 0.0
  tuned = jax.tree.map(lambda x: x, base)
  q = tuned["layers"][1]["attn"]["q_proj"]["kernel"]
  q[...] = q[...].at[:, 2].add(0.5)  # move query head 2 of layer 1 only
  s = heads.alps_scores(base, tuned, 2, 4, 2)
  assert s.shape == (2, 4) and float(s[1, 2]) > 0
  assert float(jnp.abs(s.at[1, 2].set(0)).max()) == 0.0
  np.testing.assert_allclose(heads.alps_scores(tuned, base, 2, 4, 2), s, rtol=1e-6)


def test_wasserstein_1d_by_hand():
  # Point masses at the two ends of [0, 1]: W1 = 1; equal logits: 0.
  a, b = jnp.asarray([50.0, 0.0, 0.0]), jnp.asarray([0.0, 0.0, 50.0])
  assert float(heads.wasserstein_1d(a, b)) == pytest.approx(1.0, abs=1e-6)
  assert float(heads.wasserstein_1d(a, a)) == 0.0


def test_gradient_scores_and_selection():
  params = nnx.state(_gqa_model(), nnx.Param)
  grads = jax.tree.map(jnp.zeros_like, params)
  assert float(jnp.abs(heads.gradient_scores(params, grads, 2, 4, 2)).max()) == 0.0
  g = grads["layers"][0]["attn"]["o_proj"]["kernel"]
  g[...] = g[...].at[3].set(1.0)  # only head 3's output slice has a gradient
  s = heads.gradient_scores(params, grads, 2, 4, 2)
  want = float(jnp.abs(params["layers"][0]["attn"]["o_proj"]["kernel"][...][3]).sum())
  assert float(s[0, 3]) == pytest.approx(want, rel=1e-5) and float(s.at[0, 3].set(0).max()) == 0
  scores = jnp.asarray([[0.1, 0.9, 0.3, 0.2], [0.8, 0.0, 0.7, 0.05]] * 15)  # 30 x 4 = 120 heads
  chosen = heads.select_heads(scores, 0.1)
  assert sum(len(h) for h in chosen.values()) == 12  # ceil(0.1 x 120), not 13
  assert chosen == {2 * i: (1,) for i in range(12)}  # the 0.9s, ties by position
  with pytest.raises(ValueError, match="fraction"):
    heads.select_heads(scores, 0.0)


def test_a_written_selection_is_what_train_heads_reads(tmp_path):
  selection = {0: (1, 3), 1: (0,)}
  path = heads.write_selection(str(tmp_path / "h.json"), selection, jnp.ones((2, 4)), method="alps")
  assert heads.parse_heads(path, 2, 4) == selection
  assert json.loads(open(path).read())["method"] == "alps"
