"""Head-sparse tuning: only chosen attention heads' q / k / v / o slices train; which
heads, by how much a short proxy run moved them (``alps_scores``, ``select_heads``).

A selection is {layer: query heads}, written ``"0:1,3;2:0"`` (layer 0 heads 1 and 3,
layer 2 head 0), ``"*:0"`` (head 0 of every layer) or read from a JSON file
({"heads": {"0": [1, 3], ...}}, what P2D's head scoring writes). ``head_masks`` turns
it into the optimiser's per-entry masks (``optim.make_optimizer(trainable=...)``): a
query head's q slice ([D, h, E] of the kernel, its bias) and o slice ([h, E, D]); the
parameters that hold no chosen head are split off before the optimiser
(``head_filter``), so everything else is bit-identical after any number of steps.

Grouped-query attention: K key/value heads serve H query heads, G = H / K each (query
head h reads kv head h // G). Training a kv head changes every query head of its group,
so the kv policy is a choice (``kv``):
  "any"   a kv head trains when any query head of its group is chosen (default: the
          chosen heads' whole computation adapts);
  "all"   only when every query head of its group is chosen (no unchosen head's
          attention changes);
  "none"  k and v stay frozen (queries and outputs only).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp

KV_POLICIES = ("any", "all", "none")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def parse_heads(spec: str, n_layers: int, n_heads: int) -> dict[int, tuple[int, ...]]:
  """{layer: sorted query heads} from ``"0:1,3;2:0"``, ``"*:0"`` or a JSON file path."""
  if spec.endswith(".json") or os.path.isfile(spec):
    with open(spec, encoding="utf-8") as f:
      data = json.load(f)
    items = [(str(k), ",".join(map(str, v))) for k, v in data.get("heads", data).items()]
  else:
    items = []
    for part in (p.strip() for p in spec.split(";") if p.strip()):
      layer, sep, heads = part.partition(":")
      if not sep:
        raise ValueError(f"heads {part!r}: expected LAYER:H,H (e.g. 0:1,3)")
      items.append((layer.strip(), heads))
  out: dict[int, set[int]] = {}
  for layer, heads in items:
    layers = range(n_layers) if layer == "*" else [_index(layer, n_layers, "layer")]
    chosen = {_index(h, n_heads, "head") for h in heads.split(",") if h.strip()}
    for i in layers:
      out.setdefault(i, set()).update(chosen)
  if not any(out.values()):
    raise ValueError(f"heads {spec!r} choose no head")
  return {i: tuple(sorted(h)) for i, h in sorted(out.items()) if h}


def _index(text: str, n: int, what: str) -> int:
  try:
    i = int(text)
  except ValueError:
    raise ValueError(f"{what} {text!r} is not an integer") from None
  if not -n <= i < n:
    raise ValueError(f"{what} {i} out of range for {n}")
  return i % n


def kv_heads(query_heads, n_heads: int, n_kv_heads: int, kv: str = "any") -> tuple[int, ...]:
  """The kv heads that train with ``query_heads`` under the ``kv`` policy (module doc)."""
  if kv not in KV_POLICIES:
    raise ValueError(f"kv={kv!r}; expected one of {KV_POLICIES}")
  if kv == "none":
    return ()
  group = n_heads // n_kv_heads
  chosen = set(query_heads)
  members = {k: set(range(k * group, (k + 1) * group)) for k in range(n_kv_heads)}
  rule = (lambda m: m & chosen) if kv == "any" else (lambda m: m <= chosen)
  return tuple(k for k, m in members.items() if rule(m))


def head_filter(selection: Mapping[int, tuple[int, ...]], kv: str = "any") -> str:
  """A ``train.trainable_filter`` pattern of the projections holding a chosen head."""
  projections = "q_proj|o_proj" if kv == "none" else "|".join(PROJECTIONS)
  layers = "|".join(str(i) for i in sorted(selection))
  return rf"^layers\.({layers})\.attn\.({projections})\."


_PATH = re.compile(r"layers\.(\d+)\.attn\.([qkvo]_proj)\.(kernel|bias)")


def head_masks(selection: Mapping[int, tuple[int, ...]], n_heads: int, n_kv_heads: int,
               kv: str = "any"):  # fmt: skip
  """The optimiser's label function: params -> a bool mask per leaf (module doc)."""
  from jaxpost import train

  def masks(params):
    def mask(path, leaf):
      m = _PATH.fullmatch(train.path_name(path))
      if m is None or int(m.group(1)) not in selection:
        return False
      layer, proj, kind = int(m.group(1)), m.group(2), m.group(3)
      query = selection[layer]
      heads = query if proj in ("q_proj", "o_proj") else kv_heads(query, n_heads, n_kv_heads, kv)
      axis = 0 if proj == "o_proj" else (0 if kind == "bias" else 1)  # the head axis
      keep = jnp.isin(jnp.arange(leaf.shape[axis]), jnp.asarray(heads, jnp.int32))
      shape = [1] * leaf.ndim
      shape[axis] = leaf.shape[axis]
      return jnp.broadcast_to(keep.reshape(shape), leaf.shape)

    return jax.tree_util.tree_map_with_path(mask, params)

  return masks


# --- choosing heads ---------------------------------------------------------------------


def head_vectors(params, layer: int, n_heads: int, n_kv_heads: int) -> list[jax.Array]:
  """Per query head of ``layer``, the flattened [W_q^h; W_k^kv(h); W_v^kv(h)] (its kv
  head's slices under GQA), from a parameter state (``nnx.state(model, nnx.Param)``)."""
  attn = params["layers"][layer]["attn"]
  q, k, v = (attn[f"{p}_proj"]["kernel"][...] for p in "qkv")  # [D, H|K, E]
  group = n_heads // n_kv_heads
  return [
    jnp.concatenate([q[:, h].reshape(-1), k[:, h // group].reshape(-1),
                     v[:, h // group].reshape(-1)]).astype(jnp.float32)
    for h in range(n_heads)
  ]  # fmt: skip


def wasserstein_1d(a: jax.Array, b: jax.Array) -> jax.Array:
  """W1 between softmax(a) and softmax(b) as distributions on linspace(0, 1, n): the
  integral of |CDF_a - CDF_b| (ALPS' head score)."""
  n = a.shape[0]
  cdf = jnp.cumsum(jax.nn.softmax(a)) - jnp.cumsum(jax.nn.softmax(b))
  return jnp.sum(jnp.abs(cdf[:-1])) / max(n - 1, 1)


def alps_scores(base, tuned, n_layers: int, n_heads: int, n_kv_heads: int) -> jax.Array:
  """f32[L, H]: ALPS' score of every head, W1(softmax(vec theta_base^h),
  softmax(vec theta_tuned^h)) (``../shared/methods/sft_distill_detect.md`` section 2:
  the predecessor's formula; that P2D reuses it with its 100-sample proxy is likely,
  not confirmed). 0 for identical weights, symmetric in the two models."""
  rows = []
  for layer in range(n_layers):
    pairs = zip(head_vectors(base, layer, n_heads, n_kv_heads),
                head_vectors(tuned, layer, n_heads, n_kv_heads), strict=True)  # fmt: skip
    rows.append(jnp.stack([wasserstein_1d(a, b) for a, b in pairs]))
  return jnp.stack(rows)


def gradient_scores(params, grads, n_layers: int, n_heads: int, n_kv_heads: int) -> jax.Array:
  """f32[L, H]: the first-order (Taylor) importance sum |theta * dL/dtheta| over each
  head's q / k / v / o slices (its kv head's share of k and v: / group size): the
  gradient-based alternative to ALPS, from one accumulated gradient of the proxy data."""
  group = n_heads // n_kv_heads
  rows = []
  for layer in range(n_layers):
    a, g = params["layers"][layer]["attn"], grads["layers"][layer]["attn"]

    def taylor(p, axis, a=a, g=g):
      x = jnp.abs(a[p]["kernel"][...] * g[p]["kernel"][...]).astype(jnp.float32)
      return jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).sum(-1)

    q, o = taylor("q_proj", 1), taylor("o_proj", 0)
    kv = (taylor("k_proj", 1) + taylor("v_proj", 1)) / group
    rows.append(q + o + jnp.repeat(kv, group))
  return jnp.stack(rows)


def select_heads(scores, fraction: float) -> dict[int, tuple[int, ...]]:
  """The top ceil(fraction * L * H) heads by score (ties by position): {layer: heads}."""
  scores = jnp.asarray(scores)
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  n = math.ceil(round(fraction * scores.size, 9))  # round: 0.1 * 30 is 3.0000000000000004
  order = jnp.argsort(-scores.reshape(-1), stable=True)[:n]
  out: dict[int, list[int]] = {}
  for flat in sorted(int(i) for i in order):
    out.setdefault(flat // scores.shape[1], []).append(flat % scores.shape[1])
  return {layer: tuple(h) for layer, h in out.items()}


def write_selection(path: str, selection, scores=None, **meta) -> str:
  """The JSON ``train.heads`` reads: {"heads": {layer: [heads]}, "scores": [[...]], ...}."""
  data = {"heads": {str(k): list(v) for k, v in selection.items()}, **meta}
  if scores is not None:
    data["scores"] = [[float(x) for x in row] for row in jnp.asarray(scores)]
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
  return path
