"""``python -m jaxpost.merge --config=configs/merge.py:tiny --out=DIR``: merge jaxpost
runs (or ``zoo:`` models) or Hugging Face directories by any method of
``jaxpost.merging.methods`` and write a run directory (``train.init_from`` /
``load_run`` read it) or a Hugging Face directory.

Sources are loaded whole: a run that trained adapters or a subset is rebuilt over its
own start and its adapters are merged in (``peft.merge_lora``), so every source is a
full model. They must share the architecture; two explicit exceptions:
  vocabularies of different sizes (padded embeddings): ``merge.vocab="shortest"`` merges
    the first min(V) rows and writes that size; "error" (default) refuses;
  a tied LM head beside an untied one: ``merge.untie=True`` gives the tied models an
    LM head equal to their embedding's transpose first; otherwise refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
from flax import nnx

from jaxpost.merging import methods
from jaxpost.merging.average import MERGED_FILE, average

FORMATS = ("run", "hf")


def _is_hf(ref: str) -> bool:
  return os.path.isfile(os.path.join(ref, "config.json"))


def load_source(ref: str):
  """(model with adapters merged, tokenizer source, recorded flat config or None)."""
  from jaxpost import peft, workdir, zoo
  from jaxpost.data import generated
  from jaxpost.models import hf

  if _is_hf(ref):
    return hf.load_model(ref), ref, None
  model, _, _ = generated.load_run(ref)
  path = zoo.resolve(ref)
  return peft.merge_lora(model), path, workdir.recorded_config(path)


def _untie(model):
  from jaxpost.models import decoder

  c = model.config
  head = decoder.Linear(
    (c.d_model,), (c.vocab_size,), ("embed",), ("vocab",), use_bias=False,
    param_dtype=c.jnp_param_dtype, dtype=c.jnp_dtype, rngs=nnx.Rngs(0),
  )  # fmt: skip
  head.kernel[...] = model.embed[...].T
  model.lm_head = nnx.data(head)
  model.config = dataclasses.replace(c, tie_embeddings=False)
  return model


def _align(models: list, vocab: str, untie: bool) -> list:
  """Same architecture, or the explicit fixes of the module doc."""
  ties = {m.config.tie_embeddings for m in models}
  if len(ties) > 1:
    if not untie:
      raise ValueError("the models differ in tying the LM head to the embedding: set "
                       "merge.untie=True to give the tied ones their own head first")  # fmt: skip
    models = [_untie(m) if m.config.tie_embeddings else m for m in models]
  sizes = {m.config.vocab_size for m in models}
  if len(sizes) > 1:
    if vocab != "shortest":
      raise ValueError(f"vocabulary sizes differ ({sorted(sizes)}): set merge.vocab='shortest' "
                       "to merge the common rows (padding rows dropped)")  # fmt: skip
    v = min(sizes)
    for m in models:
      m.embed.set_value(m.embed[...][:v])  # a new shape: the value, not its entries
      if m.lm_head is not None:
        m.lm_head.kernel.set_value(m.lm_head.kernel[...][:, :v])
      m.config = dataclasses.replace(m.config, vocab_size=v)
  configs = {dataclasses.replace(m.config, remat=False) for m in models}
  if len(configs) > 1:
    raise ValueError(f"the models' architectures differ: {configs}")
  return models


def merge_params(method: str, trees: list, base, settings) -> object:
  """Dispatches ``method`` (``methods.METHODS``) over parameter trees."""
  s = settings
  weights = list(s.weights) or None
  if method == "linear":
    return average(trees, weights)
  if method == "slerp":
    if len(trees) != 2:
      raise ValueError("slerp merges exactly 2 models")
    return methods.slerp(trees[0], trees[1], s.t)
  if method == "bai":
    if len(trees) != 2 or base is None:
      raise ValueError("bai merges 2 models (instruct, distill) and merge.base (pretrained)")
    return methods.bai(trees[0], trees[1], base, w=s.w, v=s.v)
  if base is None:
    raise ValueError(f"{method} needs merge.base (the models' common start)")
  if method == "task_arithmetic":
    return methods.task_arithmetic(base, trees, weights=weights, scale=s.scale)
  if method == "ties":
    return methods.ties(base, trees, density=s.density, weights=weights, scale=s.scale)
  if method == "dare":
    return methods.dare(base, trees, density=s.density, key=jax.random.key(s.seed),
                        weights=weights, scale=s.scale, then=s.dare_then)  # fmt: skip
  if method == "breadcrumbs":
    return methods.breadcrumbs(base, trees, density=s.density, outliers=s.outliers,
                               weights=weights, scale=s.scale)  # fmt: skip
  if method == "model_stock":
    return methods.model_stock(base, trees)
  raise ValueError(f"merge.method={method!r}; expected one of {methods.METHODS}")


def run(settings, out: str) -> str:
  """Merges ``settings.models`` (the ``merge`` config section) into ``out``."""
  from jaxpost import checkpoint
  from jaxpost.models import hf

  s = settings
  if s.format not in FORMATS:
    raise ValueError(f"merge.format={s.format!r}; expected one of {FORMATS}")
  refs = [r.strip() for r in s.models.split(",") if r.strip()]
  if not refs:
    raise ValueError("merge.models is empty")
  if os.path.exists(out) and os.listdir(out):  # before any model is loaded
    raise ValueError(f"{out!r} is not empty")
  loaded = [load_source(r) for r in refs + ([s.base] if s.base else [])]
  models = _align([m for m, _, _ in loaded], s.vocab, s.untie)
  trees = [nnx.state(m, nnx.Param) for m in models]
  base = trees.pop() if s.base else None
  merged = merge_params(s.method, trees, base, s)
  model = models[0]
  nnx.update(model, merged)
  os.makedirs(out, exist_ok=True)
  first_tok, first_config = loaded[0][1], loaded[0][2]
  if s.format == "hf":
    from jaxpost.data.tokenizer import HFTokenizer

    tok = HFTokenizer.load(first_tok) if _is_hf(first_tok) else None
    hf.save_model(model, out, tokenizer=tok)
  else:
    ckpt = checkpoint.Checkpointer(os.path.join(out, "checkpoints"), keep=1, async_save=False)
    ckpt.save(0, {"params": nnx.state(model, nnx.Param)}, {"merged_from": refs}, force=True)
    ckpt.close()
    _write_identity(out, first_tok, first_config)
  with open(os.path.join(out, MERGED_FILE), "w", encoding="utf-8") as f:
    json.dump({"models": refs, "base": s.base, "method": s.method,
               "settings": s.to_dict()}, f, indent=1)  # fmt: skip
  return out


def _write_identity(out: str, source: str, recorded: dict | None) -> None:
  """run.json and tokenizer of the merged run: the first source's model description,
  as a run whose checkpoint holds every parameter (no adapters, no start to chain)."""
  from jaxpost import workdir
  from jaxpost.recipes import common

  if recorded is None:  # an HF source: a run that builds it from the directory
    recorded = {"recipe": "sft", "model.hf_dir": source}
  elif not (recorded.get("tokenizer.path") or recorded.get("model.gguf")):
    shutil.copyfile(common.run_tokenizer(source), os.path.join(out, "tokenizer.model"))
  flat = {**recorded, "lora.rank": 0, "train.init_from": "", "train.trainable": "",
          "train.heads": ""}  # fmt: skip
  with open(os.path.join(out, workdir.IDENTITY_FILE), "w", encoding="utf-8") as f:
    json.dump({"config": flat, "merged": True}, f, indent=1)
