"""PEFT-format adapters load with ``peft`` onto the ``transformers`` base and give our
logits (f32, 1e-4); needs the ``interop`` extra (torch, transformers, peft)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import models, peft
from jaxpost.models import hf
from jaxpost.peft import export, lora

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft_hf = pytest.importorskip("peft")

EVERYTHING = r"(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj|lm_head)$"


def _model():
  cfg = models.named_config(
    "tiny", vocab_size=61, n_layers=2, d_model=32, mlp_dim=48, n_heads=4, n_kv_heads=2,
    head_dim=8, tie_embeddings=False,
  )  # fmt: skip
  return models.Decoder(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_loads_our_adapter_onto_the_transformers_base(tmp_path, rslora):
  model = _model()
  hf.save_model(model, str(tmp_path / "base"))
  peft.add_lora(model, peft.LoRASettings(targets=EVERYTHING, rank=4, alpha=8.0, rslora=rslora))
  rng = np.random.default_rng(0)
  for a in lora.adapters_of(model)["default"].values():  # a trained adapter: B != 0
    a.b[...] = jnp.asarray(rng.normal(0, 0.3, a.b[...].shape), jnp.float32)
  export.save_adapter(model, str(tmp_path / "adapter"), base_model=str(tmp_path / "base"))
  config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert config["r"] == 4 and len(config["target_modules"]) == 2 * 7 + 1

  tokens = np.random.default_rng(1).integers(0, 61, (2, 11))
  ours = np.asarray(model(jnp.asarray(tokens, jnp.int32)))
  base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))
  wrapped = peft_hf.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
  with torch.no_grad():
    theirs = wrapped(torch.as_tensor(tokens)).logits.numpy()
  assert np.max(np.abs(theirs - ours)) < 1e-4
  assert np.max(np.abs(ours - np.asarray(_model()(jnp.asarray(tokens, jnp.int32))))) > 1e-2


def test_an_adapter_name_the_model_lacks_is_an_error(tmp_path):
  model = _model()
  peft.add_lora(model, peft.LoRASettings(rank=2))
  with pytest.raises(ValueError, match="no adapter 'other'"):
    export.save_adapter(model, str(tmp_path / "a"), name="other")


def test_a_model_with_adapters_is_not_exported_as_if_it_had_none(tmp_path):
  model = _model()
  peft.add_lora(model, peft.LoRASettings(rank=2))
  with pytest.raises(ValueError, match="merge them first"):
    hf.save_model(model, str(tmp_path / "x"))
  hf.save_model(peft.merge_lora(model), str(tmp_path / "y"))  # merged: fine
