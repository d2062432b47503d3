"""LoRA adapters in the PEFT format, for ``peft.PeftModel.from_pretrained`` on the
``transformers`` base (``models.hf.save_model`` of the same decoder).

``save_adapter(model, out_dir)`` writes ``adapter_config.json`` and
``adapter_model.safetensors``: per adapted linear, ``lora_A.weight`` [r, in] and
``lora_B.weight`` [out, r] under the HF module name
(``base_model.model.model.layers.0.self_attn.q_proj``), the same flattening of our
multi-axis kernels that ``models.hf`` uses for the weights, so PEFT's
W x + (alpha / r) B A x equals ours.
"""

from __future__ import annotations

import json
import os

import numpy as np

from jaxpost.models import hf
from jaxpost.peft import lora

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_adapter(model, out_dir: str, *, name: str = "default", base_model: str = "") -> str:
  """Writes the adapter ``name`` of ``model`` in the PEFT format to ``out_dir``.

  Args:
    base_model: what PEFT records as ``base_model_name_or_path`` (an HF directory or
      hub name of the base; "" when the base is only a jaxpost run).
  """
  from safetensors.numpy import save_file

  found = lora.adapters_of(model)
  if name not in found:
    raise ValueError(f"the model has no adapter {name!r} (it has {sorted(found)})")
  adapters = found[name]
  ranks = {a.rank for a in adapters.values()}
  scales = {round(a.scale, 12) for a in adapters.values()}
  if len(ranks) != 1 or len(scales) != 1:
    raise ValueError(f"adapter {name!r}: PEFT needs one rank and scale, got {ranks} / {scales}")
  (rank,) = ranks
  specs = {s.ours: s for s in hf._param_specs(model.config, hf.default_architecture(model.config))}
  tensors, modules = {}, []
  for path, adapter in sorted(adapters.items()):
    spec = specs.get(path + ".kernel")
    if spec is None:
      raise ValueError(f"{path} has no Hugging Face weight to adapt")
    module = spec.hf.removesuffix(".weight")
    a = np.asarray(adapter.a[...], np.float32).reshape(-1, rank).T  # [r, in]
    b = np.asarray(adapter.b[...], np.float32).reshape(rank, -1).T  # [out, r]
    tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a)
    tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b)
    modules.append(module)
  scale = next(iter(adapters.values())).scale
  config = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": base_model or None,
    "r": rank,
    # PEFT's scale is lora_alpha / r: recording alpha = scale * r reproduces ours for
    # plain and rank-stabilised (alpha / sqrt(r)) adapters alike.
    "lora_alpha": scale * rank,
    "use_rslora": False,  # the scale is folded into lora_alpha above
    "target_modules": modules,  # full names: PEFT matches them exactly
    "lora_dropout": max((a.dropout for a in adapters.values()), default=0.0),
    "bias": "none",
    "fan_in_fan_out": False,
    "init_lora_weights": True,
    "modules_to_save": None,
  }
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS))
  with open(os.path.join(out_dir, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  return out_dir
