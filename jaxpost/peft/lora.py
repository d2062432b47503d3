"""LoRA adapters on the decoder's ``Linear``s, chosen by a pattern over their paths.

``add_lora(model, settings)`` gives each matching ``Linear`` a named adapter
(``models.decoder.LoRA``: y = x W + scale (x A) B, B = 0 at the start, so the model's
function is unchanged); ``adapter_filter`` is the nnx filter of the adapters' parameters
(the run trains those only: the base stays bit-identical and checkpoints hold the
adapters); ``merge_lora`` folds the enabled adapters into the kernels (W + scale A B)
for export or serving. Module paths read like ``layers.3.attn.q_proj``,
``layers.3.mlp.down_proj`` and ``lm_head``.

The update is computed from each linear's input, (x A) B, also inside the fused q/k/v
and gate/up matmuls, so no kernel-sized update is formed; the LM head's adapter is
added to its [D, V] matrix instead (``Decoder.lm_head_weight``), which every head path,
fused or materialised, reads. A tied LM head (the embedding's transpose) has no
``Linear`` of its own and takes no adapter.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import jax.numpy as jnp
from flax import nnx

from jaxpost.models.decoder import LORA_INITS, Decoder, Linear, LoRA

ATTENTION = r"attn\.(q|k|v|o)_proj$"
ALL_LINEAR = r"(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


@dataclasses.dataclass(frozen=True)
class LoRASettings:
  """One adapter: where it goes and its shape.

  Attributes:
    targets: regular expression searched in each ``Linear``'s dotted path
      (``ATTENTION``: q/k/v/o of every layer; ``ALL_LINEAR``: with the MLP; add
      ``|lm_head$`` for the head; ``layers\\.(0|1)\\.`` for some layers only).
    rank: r.
    alpha: scale = alpha / r (alpha / sqrt(r) with ``rslora``).
    rslora: rank-stabilised scaling.
    init: A's initialisation (``LORA_INITS``); B is zero.
    name: the adapter's name: a model may carry several (``set_enabled`` picks).
    dropout: dropout on the adapter's input in train steps (PEFT's ``lora_dropout``);
      the LM head's adapter, added to the head matrix, takes none.
  """

  targets: str = ATTENTION
  rank: int = 8
  alpha: float = 16.0
  rslora: bool = False
  init: str = "kaiming"
  name: str = "default"
  dropout: float = 0.0

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
    if self.init not in LORA_INITS:
      raise ValueError(f"LoRA init {self.init!r}; expected one of {LORA_INITS}")
    check_adapter_name(self.name)
    try:
      re.compile(self.targets)
    except re.error as e:
      raise ValueError(f"LoRA targets {self.targets!r}: not a regular expression ({e})") from None


def check_adapter_name(name: str) -> None:
  """Adapter names become path keys (``layers.0.attn.q_proj.lora.NAME.a``)."""
  if not re.fullmatch(r"[A-Za-z0-9_]+", name):
    raise ValueError(f"adapter name {name!r}: letters, digits and _ only")


def _linears(model: nnx.Module):
  for path, module in nnx.iter_modules(model):
    if isinstance(module, Linear):
      yield ".".join(map(str, path)), module


def lora_targets(model: nnx.Module, targets: str) -> list[str]:
  """The dotted paths of the ``Linear``s ``targets`` selects."""
  regex = re.compile(targets)
  return [path for path, _ in _linears(model) if regex.search(path)]


def add_lora(model: nnx.Module, settings: LoRASettings, *, seed: int = 0) -> list[str]:
  """Gives every ``Linear`` ``settings.targets`` selects an adapter named
  ``settings.name`` (in place); returns their paths. A's values are drawn from
  ``seed`` and the path, so adding adapters in another order gives the same ones."""
  regex = re.compile(settings.targets)
  hits = []
  for path, linear in _linears(model):
    if not regex.search(path):
      continue
    if linear.lora is not None and settings.name in linear.lora:
      raise ValueError(f"{path} already has an adapter named {settings.name!r}")
    kernel = linear.kernel[...]
    adapter = LoRA(
      kernel.shape[: linear.n_in],
      kernel.shape[linear.n_in :],
      linear.names,
      rank=settings.rank,
      alpha=settings.alpha,
      rslora=settings.rslora,
      init=settings.init,
      dropout=0.0 if path == "lm_head" else settings.dropout,
      param_dtype=kernel.dtype,
      rngs=nnx.Rngs(params=_path_seed(seed, settings.name, path)),
    )
    adapters = dict(linear.lora or {})
    adapters[settings.name] = adapter
    linear.lora = nnx.Dict(adapters)
    hits.append(path)
  if not hits:
    tied = isinstance(model, Decoder) and model.lm_head is None and "lm_head" in settings.targets
    why = " (this model ties its LM head to the embedding: the head takes no adapter)"
    paths = [p for p, _ in _linears(model)][:6]
    raise ValueError(
      f"LoRA targets {settings.targets!r} match no linear{why if tied else ''}; paths read "
      f"like {paths}"
    )
  return hits


def _path_seed(seed: int, name: str, path: str) -> int:
  return (seed * 1_000_003 + zlib.crc32(f"{name}:{path}".encode())) % (2**31)


def adapter_filter(name: str | None = None):
  """nnx filter: the parameters of every adapter (or of the one named ``name``)."""

  def match(path, value) -> bool:
    if not isinstance(value, nnx.Param):
      return False
    keys = [str(k) for k in path]
    if "lora" not in keys:
      return False
    return name is None or keys[keys.index("lora") + 1] == name

  return match


def set_enabled(model: nnx.Module, names: list[str] | tuple[str, ...] | None) -> None:
  """Enables the adapters named in ``names`` and disables the others (None: all on)."""
  for _, linear in _linears(model):
    for adapter_name, adapter in (linear.lora or {}).items():
      adapter.enabled = names is None or adapter_name in names


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Folds every enabled adapter into its kernel (W + scale A B, summed in f32) and
  removes all adapters, in place; returns the model (a plain decoder again)."""
  for _, linear in _linears(model):
    if linear.lora is None:
      continue
    linear.kernel[...] = linear.effective_kernel()
    linear.lora = None
  return model


def adapters_of(model: nnx.Module) -> dict[str, dict[str, LoRA]]:
  """{adapter name: {linear path: LoRA}}."""
  out: dict[str, dict[str, LoRA]] = {}
  for path, linear in _linears(model):
    for name, adapter in (linear.lora or {}).items():
      out.setdefault(name, {})[path] = adapter
  return out


def task_vector(model: nnx.Module, name: str = "default") -> dict:
  """{kernel path: scale A B} of adapter ``name``: its update as a task vector over the
  kernels, for the merging methods (``jaxpost.merging``: TIES / DARE of several
  adapters, then ``add_task_vector``). Averaging A and B separately is not this."""
  found = adapters_of(model)
  if name not in found:
    raise ValueError(f"the model has no adapter {name!r} (it has {sorted(found)})")
  return {f"{path}.kernel": a.kernel_delta() for path, a in found[name].items()}


def add_task_vector(model: nnx.Module, vector: dict) -> nnx.Module:
  """Adds a {kernel path: delta} task vector to the kernels, in place; returns the model."""
  linears = dict(_linears(model))
  for key, delta in vector.items():
    path = key.removesuffix(".kernel")
    if path not in linears:
      raise ValueError(f"{key}: no such linear in the model")
    kernel = linears[path].kernel
    kernel[...] = (kernel[...].astype(jnp.float32) + delta).astype(kernel[...].dtype)
  return model
