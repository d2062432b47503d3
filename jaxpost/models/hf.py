"""Hugging Face checkpoint import and export (Llama, Qwen2, Qwen3; safetensors only).

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``. Import builds the ``Decoder`` abstractly
(``nnx.eval_shape``) and fills each parameter straight from the files, so even a 1B
model is never randomly initialised first. Tensors are read and written with the
``safetensors`` NumPy API (bfloat16 as ``ml_dtypes.bfloat16``, supported since
safetensors 0.8); pickled PyTorch ``.bin`` files are never read.

Name mapping (HF -> ours; torch ``Linear`` weights are [out, in], our kernels [in, out]
with the head axes unflattened):

=============================================  ========================================
``model.embed_tokens.weight`` [V, D]           ``embed`` [V, D]
``model.layers.i.self_attn.q_proj.weight``     ``layers.i.attn.q_proj.kernel`` [D, H, E]
  [H*E, D] (k/v: [K*E, D])                       (k/v: [D, K, E])
``...self_attn.{q,k,v}_proj.bias`` [H*E]       ``...attn.{q,k,v}_proj.bias`` [H, E]
``...self_attn.o_proj.weight`` [D, H*E]        ``...attn.o_proj.kernel`` [H, E, D]
``...self_attn.{q,k}_norm.weight`` [E]         ``...attn.{q,k}_norm.weight`` [E]
``...mlp.{gate,up}_proj.weight`` [F, D]        ``...mlp.{gate,up}_proj.kernel`` [D, F]
``...mlp.down_proj.weight`` [D, F]             ``...mlp.down_proj.kernel`` [F, D]
``...input_layernorm.weight`` [D]              ``layers.i.input_norm.weight`` [D]
``...post_attention_layernorm.weight`` [D]     ``layers.i.post_attn_norm.weight`` [D]
``model.norm.weight`` [D]                      ``final_norm.weight`` [D]
``lm_head.weight`` [V, D] (absent when tied)   ``lm_head.kernel`` [D, V]
=============================================  ========================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxpost.models.config import ModelConfig, RopeScaling
from jaxpost.models.decoder import Decoder

PathLike = str | os.PathLike

# architecture name -> HF model_type.
ARCHITECTURES = {
  "LlamaForCausalLM": "llama",
  "Qwen2ForCausalLM": "qwen2",
  "Qwen3ForCausalLM": "qwen3",
}
_ARCH_OF_MODEL_TYPE = {v: k for k, v in ARCHITECTURES.items()}

CONFIG_NAME = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000

# Defaults of the transformers config classes for keys a config.json may leave out.
_DEFAULT_ROPE_THETA = 10000.0
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768, "qwen3": 32768}
_DEFAULT_RMS_EPS = 1e-6
_QWEN3_DEFAULT_HEAD_DIM = 128

# safetensors dtype tag -> NumPy dtype.
_TENSOR_DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
}
# HF config dtype name -> our default param dtype (float16 widens losslessly to float32).
_CONFIG_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float32"}


class HFCheckpointError(ValueError):
  """A checkpoint that cannot be mapped onto (or produced from) a ``Decoder``."""


# --------------------------------------------------------------------------- config mapping


def _architecture(hf: dict[str, Any]) -> str:
  """The supported architecture named by an HF config dict."""
  archs = hf.get("architectures")
  if archs:
    if not isinstance(archs, list) or len(archs) != 1:
      raise HFCheckpointError(f"expected one entry in config 'architectures', got {archs!r}")
    arch = archs[0]
  elif hf.get("model_type") in _ARCH_OF_MODEL_TYPE:
    arch = _ARCH_OF_MODEL_TYPE[hf["model_type"]]
  else:
    arch = f"<no architectures; model_type={hf.get('model_type')!r}>"
  if arch not in ARCHITECTURES:
    raise HFCheckpointError(
      f"unsupported architecture {arch!r}; supported: {sorted(ARCHITECTURES)}"
    )
  return arch


def _dtype_name(value: Any, what: str) -> str:
  try:
    name = jnp.dtype(value).name
  except TypeError as e:
    raise ValueError(f"{what} {value!r} is not a dtype") from e
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"{what} must be float32 or bfloat16, got {name}")
  return name


def _rope_from_hf(hf: dict[str, Any], max_positions: int) -> tuple[float, RopeScaling | None]:
  """(rope_theta, scaling) from legacy ``rope_theta``/``rope_scaling`` or ``rope_parameters``."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
    raise HFCheckpointError(f"unsupported (per-layer?) rope parameters {params!r}")
  theta = float(params.get("rope_theta", hf.get("rope_theta", _DEFAULT_ROPE_THETA)))
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial not in (None, 1, 1.0):
    raise HFCheckpointError(f"unsupported partial_rotary_factor {partial!r} (only 1.0)")
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type == "default":
    return theta, None
  if rope_type == "linear":
    return theta, RopeScaling("linear", factor=float(params["factor"]))
  original = params.get("original_max_position_embeddings") or max_positions
  if rope_type == "llama3":
    return theta, RopeScaling(
      "llama3",
      factor=float(params["factor"]),
      original_max_position_embeddings=int(original),
      low_freq_factor=float(params["low_freq_factor"]),
      high_freq_factor=float(params["high_freq_factor"]),
    )
  if rope_type == "yarn":
    factor = params.get("factor")
    optional = {k: params.get(k) for k in ("attention_factor", "mscale", "mscale_all_dim")}
    return theta, RopeScaling(
      "yarn",
      factor=float(factor if factor is not None else max_positions / original),
      original_max_position_embeddings=int(original),
      beta_fast=float(params.get("beta_fast") or 32.0),
      beta_slow=float(params.get("beta_slow") or 1.0),
      truncate=bool(params.get("truncate", True)),
      **{k: None if v is None else float(v) for k, v in optional.items()},
    )
  raise HFCheckpointError(
    f"unsupported rope type {rope_type!r}; supported: default, linear, llama3, yarn"
  )


def config_from_hf(
  hf: dict[str, Any], *, dtype: Any = None, param_dtype: Any = None
) -> ModelConfig:
  """Maps an HF ``config.json`` dict onto a ``ModelConfig``.

  Args:
    hf: the parsed config.json (transformers 4.x ``rope_scaling``/``torch_dtype`` or 5.x
      ``rope_parameters``/``dtype`` spelling).
    dtype: compute dtype ('float32' / 'bfloat16' or a jnp dtype); default param_dtype.
    param_dtype: parameter dtype; default the checkpoint's dtype (float16 -> float32,
      missing -> float32).

  Returns:
    The config of an equivalent ``Decoder``.

  Raises:
    HFCheckpointError: unsupported architecture or feature (sliding window, MLP bias,
      non-SiLU activation, partial RoPE, unsupported RoPE type), naming it.
  """
  arch = _architecture(hf)
  model_type = ARCHITECTURES[arch]
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise HFCheckpointError(f"unsupported hidden_act {act!r} (only silu)")
  if hf.get("mlp_bias"):
    raise HFCheckpointError("unsupported mlp_bias=true (MLP projections have no bias)")
  if model_type in ("qwen2", "qwen3"):
    layer_types = hf.get("layer_types") or []
    n_layers = hf.get("num_hidden_layers", 0)
    sliding = "sliding_attention" in layer_types or (
      hf.get("use_sliding_window")
      and hf.get("sliding_window") is not None
      and hf.get("max_window_layers", n_layers) < n_layers
    )
    if sliding:
      raise HFCheckpointError("unsupported sliding-window attention (use_sliding_window)")

  try:
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim is None:
      head_dim = _QWEN3_DEFAULT_HEAD_DIM if model_type == "qwen3" else hf["hidden_size"] // heads
    max_positions = hf.get("max_position_embeddings", _DEFAULT_MAX_POSITIONS[model_type])
    theta, scaling = _rope_from_hf(hf, max_positions)
    ckpt_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if ckpt_dtype not in _CONFIG_DTYPES:
      raise HFCheckpointError(f"unsupported checkpoint dtype {ckpt_dtype!r}")
    param_dtype = (
      _CONFIG_DTYPES[ckpt_dtype] if param_dtype is None else _dtype_name(param_dtype, "param_dtype")
    )
    dtype = param_dtype if dtype is None else _dtype_name(dtype, "dtype")
    return ModelConfig(
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      n_layers=hf["num_hidden_layers"],
      n_heads=heads,
      n_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=head_dim,
      mlp_dim=hf["intermediate_size"],
      rope_theta=theta,
      rope_scaling=scaling,
      max_seq_len=max_positions,
      norm_eps=float(hf.get("rms_norm_eps", _DEFAULT_RMS_EPS)),
      qk_norm=model_type == "qwen3",
      attn_bias=True if model_type == "qwen2" else bool(hf.get("attention_bias", False)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      param_dtype=param_dtype,
      dtype=dtype,
    )
  except KeyError as e:
    raise HFCheckpointError(f"config.json lacks required key {e.args[0]!r}") from None
  except HFCheckpointError:
    raise
  except (ValueError, TypeError) as e:
    raise HFCheckpointError(f"config.json does not describe a valid model: {e}") from e


def default_architecture(config: ModelConfig) -> str:
  """The HF architecture an export of ``config`` uses: Qwen3 with q/k norm, Qwen2 with
  q/k/v bias, else Llama."""
  if config.qk_norm:
    return "Qwen3ForCausalLM"
  if config.attn_bias:
    return "Qwen2ForCausalLM"
  return "LlamaForCausalLM"


def _check_architecture(config: ModelConfig, arch: str) -> None:
  if arch not in ARCHITECTURES:
    raise HFCheckpointError(
      f"unsupported architecture {arch!r}; supported: {sorted(ARCHITECTURES)}"
    )
  model_type = ARCHITECTURES[arch]
  if config.qk_norm != (model_type == "qwen3"):
    raise HFCheckpointError(f"{arch} {'needs' if model_type == 'qwen3' else 'has no'} q/k norm")
  if model_type == "qwen2" and not config.attn_bias:
    raise HFCheckpointError("Qwen2ForCausalLM always has q/k/v biases; the model has none")


def config_to_hf(
  config: ModelConfig,
  architecture: str | None = None,
  *,
  bos_token_id: int | None = None,
  eos_token_id: int | None = None,
  pad_token_id: int | None = None,
) -> dict[str, Any]:
  """The ``config.json`` dict transformers needs to build the same model.

  RoPE is written in the legacy ``rope_theta`` / ``rope_scaling`` form, which
  transformers 4.x reads directly and 5.x converts to ``rope_parameters``.
  """
  c = config
  arch = architecture or default_architecture(c)
  _check_architecture(c, arch)
  model_type = ARCHITECTURES[arch]
  out: dict[str, Any] = {
    "architectures": [arch],
    "model_type": model_type,
    "vocab_size": c.vocab_size,
    "hidden_size": c.d_model,
    "intermediate_size": c.mlp_dim,
    "num_hidden_layers": c.n_layers,
    "num_attention_heads": c.n_heads,
    "num_key_value_heads": c.n_kv_heads,
    "head_dim": c.head_dim,
    "hidden_act": "silu",
    "max_position_embeddings": c.max_seq_len,
    "rms_norm_eps": c.norm_eps,
    "rope_theta": c.rope_theta,
    "rope_scaling": None if c.rope_scaling is None else c.rope_scaling.to_dict(),
    "tie_word_embeddings": c.tie_embeddings,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": c.param_dtype,
    "bos_token_id": bos_token_id,
    "eos_token_id": eos_token_id,
    "pad_token_id": pad_token_id,
  }
  if model_type == "llama":
    out.update(attention_bias=c.attn_bias, mlp_bias=False)
  if model_type == "qwen3":
    out["attention_bias"] = c.attn_bias
  if model_type in ("qwen2", "qwen3"):
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layers)
  return out


# --------------------------------------------------------------------------- parameter mapping


@dataclasses.dataclass(frozen=True)
class _Spec:
  """One HF tensor and the ``Decoder`` parameter it fills.

  Attributes:
    hf: HF tensor name.
    ours: dotted path of our parameter, or None for an HF tensor we have no parameter for
      and that must be all zeros (o_proj bias of Llama/Qwen3 with attention_bias).
    hf_shape: shape of the HF tensor.
    shape: shape of our parameter.
    n_in: for a torch Linear weight, the number of leading input axes of our kernel
      (HF [out, in] = our kernel flattened to [in, out] and transposed); 0 = reshape only.
  """

  hf: str
  ours: str | None
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  n_in: int = 0

  def to_ours(self, w: np.ndarray) -> np.ndarray:
    if self.n_in:
      return w.T.reshape(self.shape)
    return w.reshape(self.shape)

  def to_hf(self, p: np.ndarray) -> np.ndarray:
    if self.n_in:
      return np.ascontiguousarray(p.reshape(self.hf_shape[1], self.hf_shape[0]).T)
    return np.ascontiguousarray(p.reshape(self.hf_shape))


def _param_specs(config: ModelConfig, arch: str) -> list[_Spec]:
  """Every HF tensor of ``arch`` with ``config``, in HF order."""
  c = config
  d, h, k, e, f, v = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
  specs = [_Spec("model.embed_tokens.weight", "embed", (v, d), (v, d))]

  def linear(hf: str, ours: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
    hf_shape = (math.prod(out_shape), math.prod(in_shape))
    specs.append(_Spec(hf, ours, hf_shape, (*in_shape, *out_shape), n_in=len(in_shape)))

  def vector(hf: str, ours: str | None, shape: tuple[int, ...]):
    specs.append(_Spec(hf, ours, (math.prod(shape),), shape))

  for i in range(c.n_layers):
    hf, ours = f"model.layers.{i}.", f"layers.{i}."
    heads = {"q": h, "k": k, "v": k}
    for p, n in heads.items():
      linear(f"{hf}self_attn.{p}_proj.weight", f"{ours}attn.{p}_proj.kernel", (d,), (n, e))
    if c.attn_bias:
      for p, n in heads.items():
        vector(f"{hf}self_attn.{p}_proj.bias", f"{ours}attn.{p}_proj.bias", (n, e))
    linear(f"{hf}self_attn.o_proj.weight", f"{ours}attn.o_proj.kernel", (h, e), (d,))
    if c.attn_bias and ARCHITECTURES[arch] != "qwen2":
      # Llama/Qwen3 attention_bias also biases o_proj; we carry it only when it is zero.
      vector(f"{hf}self_attn.o_proj.bias", None, (d,))
    if c.qk_norm:
      vector(f"{hf}self_attn.q_norm.weight", f"{ours}attn.q_norm.weight", (e,))
      vector(f"{hf}self_attn.k_norm.weight", f"{ours}attn.k_norm.weight", (e,))
    linear(f"{hf}mlp.gate_proj.weight", f"{ours}mlp.gate_proj.kernel", (d,), (f,))
    linear(f"{hf}mlp.up_proj.weight", f"{ours}mlp.up_proj.kernel", (d,), (f,))
    linear(f"{hf}mlp.down_proj.weight", f"{ours}mlp.down_proj.kernel", (f,), (d,))
    vector(f"{hf}input_layernorm.weight", f"{ours}input_norm.weight", (d,))
    vector(f"{hf}post_attention_layernorm.weight", f"{ours}post_attn_norm.weight", (d,))
  vector("model.norm.weight", "final_norm.weight", (d,))
  if not c.tie_embeddings:
    linear("lm_head.weight", "lm_head.kernel", (d,), (v,))
  return specs


def _ignorable(name: str, config: ModelConfig) -> bool:
  """HF tensors that carry no information for us: old RoPE buffers, a tied lm head."""
  return name.endswith(".rotary_emb.inv_freq") or (
    name == "lm_head.weight" and config.tie_embeddings
  )


# --------------------------------------------------------------------------- safetensors I/O


class _TensorReader:
  """Lazy name -> NumPy array access over one checkpoint's safetensors files."""

  def __init__(self, hf_dir: Path):
    self._stack = contextlib.ExitStack()
    self._handles: dict[Path, Any] = {}
    self.where: dict[str, Path] = {}
    self.dtypes: dict[str, str] = {}
    self.shapes: dict[str, tuple[int, ...]] = {}
    index = hf_dir / INDEX_FILE
    if index.is_file():
      weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
      if not isinstance(weight_map, dict):
        raise HFCheckpointError(f"{index} has no 'weight_map'")
      files = sorted(set(weight_map.values()))
    elif (hf_dir / SINGLE_FILE).is_file():
      files = [SINGLE_FILE]
    else:
      files = sorted(p.name for p in hf_dir.glob("*.safetensors"))
      if not files:
        raise FileNotFoundError(
          f"no safetensors checkpoint in {hf_dir} (PyTorch .bin files are not read: "
          "loading them means unpickling)"
        )
    for name in files:
      path = hf_dir / name
      if not path.is_file():
        raise FileNotFoundError(f"checkpoint shard {name} listed in {index} is missing")
      handle = self._stack.enter_context(safe_open(path, framework="numpy"))
      self._handles[path] = handle
      for key in handle.keys():
        if key in self.where:
          raise HFCheckpointError(f"tensor {key} is in both {self.where[key].name} and {name}")
        view = handle.get_slice(key)
        self.where[key] = path
        self.dtypes[key] = view.get_dtype()
        self.shapes[key] = tuple(view.get_shape())

  def __enter__(self) -> _TensorReader:
    return self

  def __exit__(self, *exc) -> None:
    self._stack.close()

  def get(self, name: str) -> np.ndarray:
    """The tensor ``name`` as a NumPy array (bfloat16 as ml_dtypes.bfloat16)."""
    tag = self.dtypes[name]
    if tag not in _TENSOR_DTYPES:
      raise HFCheckpointError(
        f"tensor {name} has unsupported dtype {tag}; supported: {sorted(_TENSOR_DTYPES)}"
      )
    value = self._handles[self.where[name]].get_tensor(name)
    if value.dtype != _TENSOR_DTYPES[tag]:  # e.g. a safetensors without bfloat16 support
      raise HFCheckpointError(f"tensor {name} ({tag}) was read as {value.dtype}")
    return value


def _read_config(hf_dir: Path) -> dict[str, Any]:
  path = hf_dir / CONFIG_NAME
  if not path.is_file():
    raise FileNotFoundError(f"{CONFIG_NAME} not found in {hf_dir}")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise HFCheckpointError(f"cannot parse {path}: {e}") from e


def _names(names: list[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --------------------------------------------------------------------------- import


def load_model(hf_dir: PathLike, *, dtype: Any = None, param_dtype: Any = None) -> Decoder:
  """Loads an HF Llama / Qwen2 / Qwen3 safetensors checkpoint as a ``Decoder``.

  Args:
    hf_dir: directory with ``config.json`` and ``model.safetensors`` (or shards and
      ``model.safetensors.index.json``).
    dtype: compute dtype, 'float32' / 'bfloat16' (or a jnp dtype); default param_dtype.
    param_dtype: parameter dtype; default the checkpoint's ``torch_dtype`` / ``dtype``
      (bfloat16 stays bfloat16; float16 and unspecified become float32).

  Returns:
    The model, its parameters on the default device.

  Raises:
    FileNotFoundError: no config.json or no safetensors files.
    HFCheckpointError: unsupported architecture or feature, or tensors that do not
      match the config: missing, unexpected, mis-shaped, or of an unsupported dtype
      (each error names the tensors).
  """
  hf_dir = Path(hf_dir)
  hf_config = _read_config(hf_dir)
  config = config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype)
  arch = _architecture(hf_config)
  specs = _param_specs(config, arch)
  by_ours = {s.ours: s for s in specs if s.ours is not None}
  np_dtype = np.dtype(config.jnp_param_dtype)

  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
  with _TensorReader(hf_dir) as reader:
    expected = {s.hf for s in specs}
    missing = [s.hf for s in specs if s.hf not in reader.where]
    if missing:
      raise HFCheckpointError(f"{arch} checkpoint {hf_dir} is missing tensors: {_names(missing)}")
    unexpected = sorted(n for n in reader.where if n not in expected and not _ignorable(n, config))
    if unexpected:
      raise HFCheckpointError(
        f"{arch} checkpoint {hf_dir} has unexpected tensors: {_names(unexpected)}"
      )
    bad = [
      f"{s.hf} {reader.shapes[s.hf]} (expected {s.hf_shape})"
      for s in specs
      if reader.shapes[s.hf] != s.hf_shape
    ]
    if bad:
      raise HFCheckpointError(
        f"tensor shapes do not match config.json in {hf_dir}: {_names(bad, 4)}"
      )
    for s in specs:
      if s.ours is None and np.any(reader.get(s.hf) != 0):
        raise HFCheckpointError(f"tensor {s.hf} is nonzero; o_proj biases are not supported")

    filled = []
    for path, var in nnx.to_flat_state(abstract):
      name = ".".join(map(str, path))
      spec = by_ours[name]  # KeyError here means the mapping above is incomplete
      value = spec.to_ours(reader.get(spec.hf)).astype(np_dtype)
      filled.append((path, var.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


def load_model_and_tokenizer(
  hf_dir: PathLike, *, dtype: Any = None, param_dtype: Any = None
) -> tuple[Decoder, Any]:
  """``load_model`` plus the directory's tokenizer.

  Returns:
    (model, tokenizer) where the tokenizer comes from ``jaxpost.data.tokenizer.
    load_tokenizer`` on ``tokenizer.json`` (or ``tokenizer.model``), or None when the
    directory has neither.
  """
  from jaxpost.data.tokenizer import load_tokenizer  # keeps models/ free of data/ at import

  hf_dir = Path(hf_dir)
  model = load_model(hf_dir, dtype=dtype, param_dtype=param_dtype)
  for name in ("tokenizer.json", "tokenizer.model"):
    if (hf_dir / name).is_file():
      return model, load_tokenizer(hf_dir / name)
  return model, None


# --------------------------------------------------------------------------- export


def _plan_shards(sizes: list[int], max_bytes: int) -> list[list[int]]:
  """Greedy in-order split of tensor indices into shards of at most ``max_bytes`` (a
  tensor larger than that gets a shard of its own)."""
  shards: list[list[int]] = [[]]
  used = 0
  for i, size in enumerate(sizes):
    if shards[-1] and used + size > max_bytes:
      shards.append([])
      used = 0
    shards[-1].append(i)
    used += size
  return shards


def _save_tokenizer(tokenizer: Any, out_dir: Path) -> dict[str, int | None]:
  """Writes the tokenizer files; returns the bos/eos/pad ids for config.json."""
  from jaxpost.data.tokenizer import HFTokenizer

  if isinstance(tokenizer, HFTokenizer):
    tokenizer.backend.save(str(out_dir / "tokenizer.json"))
    names = {}
    for kind in ("bos", "eos", "pad"):
      i = getattr(tokenizer, f"{kind}_id")
      if i is not None and i >= 0:
        names[f"{kind}_token"] = tokenizer.id_to_piece(i)
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", **names}
    if tokenizer.chat_template:
      tok_config["chat_template"] = tokenizer.chat_template
    if tokenizer.add_bos:
      tok_config["add_bos_token"] = True
    (out_dir / "tokenizer_config.json").write_text(
      json.dumps(tok_config, indent=2) + "\n", encoding="utf-8"
    )
    ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_id") for k in ("bos", "eos", "pad")}
    return {k: (v if v is not None and v >= 0 else None) for k, v in ids.items()}
  if hasattr(tokenizer, "save_pretrained"):  # a transformers tokenizer
    tokenizer.save_pretrained(str(out_dir))
    return {
      f"{k}_token_id": getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")
    }
  raise TypeError(
    f"cannot export a {type(tokenizer).__name__}: pass a jaxpost HFTokenizer or a "
    "transformers tokenizer"
  )


def save_model(
  model: Decoder,
  out_dir: PathLike,
  *,
  tokenizer: Any = None,
  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
  architecture: str | None = None,
) -> list[Path]:
  """Writes ``model`` as an HF checkpoint that ``AutoModelForCausalLM`` loads.

  Writes ``config.json``, the weights in the parameter dtype as ``model.safetensors``
  (or ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``
  when they exceed ``max_shard_bytes``), and, given a tokenizer, ``tokenizer.json`` and
  ``tokenizer_config.json`` (or whatever a transformers tokenizer's ``save_pretrained``
  writes). Weight files from an earlier export to the same directory are removed first.

  Args:
    model: the decoder.
    out_dir: output directory (created if needed).
    tokenizer: optional ``jaxpost.data.tokenizer.HFTokenizer`` or transformers
      tokenizer; its bos/eos/pad ids also go into config.json.
    max_shard_bytes: largest weight file (a single larger tensor gets its own file).
    architecture: HF architecture name; default ``default_architecture(model.config)``.

  Returns:
    The files written.
  """
  if max_shard_bytes <= 0:
    raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
  adapted = [".".join(map(str, p)) for p, m in nnx.iter_modules(model) if getattr(m, "lora", None)]
  if adapted:  # their updates would be silently lost: the export writes the kernels
    raise ValueError(
      f"the model carries LoRA adapters ({adapted[0]}, ...): merge them first "
      "(jaxpost.peft.merge_lora) or export the adapter (jaxpost.peft.export.save_adapter)"
    )
  c = model.config
  arch = architecture or default_architecture(c)
  _check_architecture(c, arch)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)

  params = {
    ".".join(map(str, path)): var.get_value()
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }
  specs = _param_specs(c, arch)
  mapped = {s.ours for s in specs}
  if set(params) - mapped:  # a Decoder parameter the mapping forgot
    raise HFCheckpointError(f"parameters without an HF name: {sorted(set(params) - mapped)}")
  np_dtype = np.dtype(c.jnp_param_dtype)

  def producer(spec: _Spec) -> Callable[[], np.ndarray]:
    if spec.ours is None:
      return lambda: np.zeros(spec.hf_shape, np_dtype)
    return lambda: spec.to_hf(np.asarray(jax.device_get(params[spec.ours])).astype(np_dtype))

  sizes = [math.prod(s.hf_shape) * np_dtype.itemsize for s in specs]
  shards = _plan_shards(sizes, max_shard_bytes)

  for stale in [out / SINGLE_FILE, out / INDEX_FILE, *out.glob("model-*-of-*.safetensors")]:
    stale.unlink(missing_ok=True)
  written = []
  weight_map = {}
  for n, members in enumerate(shards, start=1):
    name = SINGLE_FILE if len(shards) == 1 else f"model-{n:05d}-of-{len(shards):05d}.safetensors"
    tensors = {specs[i].hf: producer(specs[i])() for i in members}
    save_file(tensors, out / name, metadata={"format": "pt"})
    weight_map.update({k: name for k in tensors})
    written.append(out / name)
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    written.append(out / INDEX_FILE)

  token_ids = {} if tokenizer is None else _save_tokenizer(tokenizer, out)
  hf_config = config_to_hf(c, arch, **token_ids)
  (out / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
  written.append(out / CONFIG_NAME)
  return written
