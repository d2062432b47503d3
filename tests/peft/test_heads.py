"""Head-sparse tuning: selections, the GQA policies and the masks' slices."""

import json

import jax
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
