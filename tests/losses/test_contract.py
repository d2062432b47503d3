"""The loss contract (losses/registry.py), checked for every registered loss by name.

Nothing here names a loss: the cases come from ``LOSSES.names()``, so a loss is tested
by being registered (as optax's alias tests do). Each family in ``_FAMILIES`` builds the
inputs its contract takes: for "token" logits f32[B, T, V] or a ``FusedHead`` and a
packed ``Batch`` (prompt / think / answer roles, masked prompt and padding targets);
for "policy" log-probs f32[B, T], entropy and a ``Rollout``; for "distill" the token
family's inputs twice, the student's and a teacher's (logits, or two fused heads).
Every loss, at its default hyperparameters, must

  * run under ``jax.jit`` and return an f32[] loss and a dict of f32[] metrics;
  * take bf16 model outputs (f32 loss, close to the f32 result);
  * ignore fully masked rows: an all-masked batch gives loss, metrics and gradient
    exactly 0 even with garbage at the masked slots, and appending a masked row changes
    nothing for the other rows;
  * be additive over row micro-batches under the full batch's normalisers;
  * give the same loss and gradient with rows sharded over 8 devices (in a subprocess
    with 8 fake CPU devices: this file run as a script).

Masked slots of the model outputs hold large garbage in every batch, so a leak shows.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import LOSSES, compute_normalizers
from jaxpost.losses.head import FusedHead, LayerHeads
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK, Batch, Rollout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Target roles of each row, one string per packed segment: p = prompt target (masked),
# t = think, a = answer (counted); the rest of the row is padding (segment 0). Row 2
# holds a prompt-only segment, which is not a sequence of the normalisers.
_LAYOUT = (
  ("ppttta", "pta"),
  ("pttttaaa",),
  ("pp", "ptaa", "pta"),
  ("ptttaaaaaa",),
  ("pa", "ptta"),
  ("ppppttaa",),
  ("ta", "pttaa"),
  ("pttaa", "pta"),
)
B, T, V, D = len(_LAYOUT), 10, 13, 6
_ROLE = {"p": ROLE_PROMPT, "t": ROLE_THINK, "a": ROLE_ANSWER}

# Leaves of the model outputs shared by all rows (not split, sharded or concatenated),
# and every parameter of the model family's model (keys "param/<path>").
_SHARED = frozenset({"weight", "teacher_weight"})


def _shared(key: str) -> bool:
  return key in _SHARED or key.startswith("param/")


def _layout(layout=_LAYOUT, t=T):
  """(roles, segment_ids, positions, turn_ids, loss_mask) as NumPy [len(layout), t]."""
  b = len(layout)
  roles, seg, pos, turns = (np.zeros((b, t), np.int32) for _ in range(4))
  for i, segments in enumerate(layout):
    col = 0
    for s, spec in enumerate(segments, start=1):
      for j, ch in enumerate(spec):
        roles[i, col], seg[i, col], pos[i, col] = _ROLE[ch], s, j
        # Two turns per segment (think, answer), numbered uniquely within the row.
        turns[i, col] = {"p": 0, "t": 2 * s - 1, "a": 2 * s}[ch]
        col += 1
  mask = np.isin(roles, (ROLE_THINK, ROLE_ANSWER)).astype(np.float32)
  return roles, seg, pos, turns, mask


def _token_batch(rng, layout=_LAYOUT) -> Batch:
  roles, seg, pos, _, mask = _layout(layout)
  b = len(layout)
  return Batch(
    tokens=jnp.asarray(rng.integers(0, V, (b, T)), jnp.int32),
    targets=jnp.asarray(rng.integers(0, V, (b, T)), jnp.int32),
    loss_mask=jnp.asarray(mask),
    segment_ids=jnp.asarray(seg),
    positions=jnp.asarray(pos),
    roles=jnp.asarray(roles),
  )


def _garbage(rng, shape, kind: str) -> np.ndarray:
  """What masked slots of the model outputs hold: large finite values, or NaN / +-inf."""
  if kind == "large":
    return rng.choice([-3e4, 3e4], size=shape) + rng.normal(size=shape)
  return rng.choice([np.nan, np.inf, -np.inf], size=shape)


def _bf16_exact(x: np.ndarray) -> jax.Array:
  """f32 values that bf16 represents exactly, so the f32 and bf16 runs see one input."""
  return jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)


def _poison(x: np.ndarray, mask: np.ndarray, rng, garbage: str) -> np.ndarray:
  m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)) > 0
  return np.where(m, x, _garbage(rng, x.shape, garbage))


class _TokenFamily:
  """``loss(outputs: f32[B, T, V] | FusedHead, batch, *, norm)``."""

  kinds = ("logits", "fused")

  def make(self, kind: str, seed: int, garbage: str = "large", layout=_LAYOUT):
    rng = np.random.default_rng(seed)
    batch = _token_batch(rng, layout)
    mask = np.asarray(batch.loss_mask)
    if kind == "logits":
      z = rng.normal(size=(len(layout), T, V)) * 2.0
      return {"logits": _bf16_exact(_poison(z, mask, rng, garbage))}, batch
    h = rng.normal(size=(len(layout), T, D))
    w = rng.normal(size=(D, V)) / np.sqrt(D) * 2.0
    return {"hidden": _bf16_exact(_poison(h, mask, rng, garbage)), "weight": _bf16_exact(w)}, batch

  def call(self, fn, kind, x, batch, norm):
    outputs = x["logits"] if kind == "logits" else FusedHead(x["hidden"], x["weight"], "xla", 0)
    return fn(outputs, batch, norm=norm)

  def masked(self, batch: Batch) -> Batch:
    return batch.replace(loss_mask=jnp.zeros_like(batch.loss_mask))


class _PolicyFamily:
  """``loss(logp: f32[B, T], rollout, *, norm, entropy)``."""

  kinds = ("logp",)

  def make(self, kind: str, seed: int, garbage: str = "large", layout=_LAYOUT):
    rng = np.random.default_rng(seed)
    batch = _token_batch(rng, layout)
    _, seg, _, turns, mask = _layout(layout)
    b = len(layout)
    old = -rng.uniform(0.2, 3.0, (b, T))
    # Per-row spread of log pi_theta - log pi_old: inside GSPO's 3e-4 clip range, inside
    # PPO's, and far outside, so every preset has clipped and unclipped tokens.
    spread = np.array([1e-5, 0.05, 0.4, 1e-5, 0.1, 0.4, 1e-5, 0.05])[np.arange(b) % 8]
    logp = old + rng.normal(size=(b, T)) * spread[:, None]
    seq_adv = rng.normal(size=(b, T))  # one advantage per (row, segment)
    adv = np.take_along_axis(seq_adv, seg, axis=1)
    junk = lambda y: np.where(mask > 0, y, _garbage(rng, y.shape, "nan"))
    rollout = Rollout(
      batch=batch,
      advantages=jnp.asarray(adv, jnp.float32),  # nonzero on masked slots too
      old_logp=jnp.asarray(junk(old), jnp.float32),
      sampler_logp=jnp.asarray(junk(old + rng.normal(size=(b, T)) * 0.1), jnp.float32),
      ref_logp=jnp.asarray(junk(old + rng.normal(size=(b, T)) * 0.2), jnp.float32),
      group_ids=jnp.asarray(np.arange(b) // 2, jnp.int32),
      turn_ids=jnp.asarray(turns),
    )
    big = {"large": 1e30}.get(garbage)
    poison = (
      (lambda y: np.where(mask > 0, y, rng.choice([-big, big], size=y.shape)))
      if big
      else (lambda y: _poison(y, mask, rng, garbage))
    )
    x = {
      "logp": _bf16_exact(poison(logp)),
      "entropy": _bf16_exact(poison(rng.uniform(0.1, 2.0, (b, T)))),
    }
    return x, rollout

  def call(self, fn, kind, x, rollout, norm):
    return fn(x["logp"], rollout, norm=norm, entropy=x["entropy"])

  def masked(self, rollout: Rollout) -> Rollout:
    batch = rollout.batch
    return rollout.replace(batch=batch.replace(loss_mask=jnp.zeros_like(batch.loss_mask)))


class _DistillFamily(_TokenFamily):
  """``loss(outputs, teacher, batch, *, norm)``: student and teacher, both logits or both
  fused heads (the teacher's hidden width differs from the student's)."""

  def make(self, kind: str, seed: int, garbage: str = "large", layout=_LAYOUT):
    x, batch = super().make(kind, seed, garbage, layout)
    rng = np.random.default_rng(seed + 1000)
    mask = np.asarray(batch.loss_mask)
    b = len(layout)
    if kind == "logits":
      z = rng.normal(size=(b, T, V)) * 2.0
      return {**x, "teacher_logits": _bf16_exact(_poison(z, mask, rng, garbage))}, batch
    h = rng.normal(size=(b, T, D + 2))
    w = rng.normal(size=(D + 2, V)) / np.sqrt(D + 2) * 2.0
    teacher = {
      "teacher_hidden": _bf16_exact(_poison(h, mask, rng, garbage)),
      "teacher_weight": _bf16_exact(w),
    }
    return {**x, **teacher}, batch

  def call(self, fn, kind, x, batch, norm):
    if kind == "logits":
      return fn(x["logits"], x["teacher_logits"], batch, norm=norm)
    student = FusedHead(x["hidden"], x["weight"], "xla", 0)
    teacher = FusedHead(x["teacher_hidden"], x["teacher_weight"], "xla", 0)
    return fn(student, teacher, batch, norm=norm)


class _LayersFamily(_TokenFamily):
  """``loss(layers: LayerHeads, batch, *, norm)``: every layer's normalised hidden state
  [B, T, L, D] and the shared head, fused or materialised."""

  def make(self, kind: str, seed: int, garbage: str = "large", layout=_LAYOUT):
    rng = np.random.default_rng(seed)
    batch = _token_batch(rng, layout)
    mask = np.asarray(batch.loss_mask)
    h = rng.normal(size=(len(layout), T, _LAYERS, D))
    w = rng.normal(size=(D, V)) / np.sqrt(D) * 2.0
    return {"hidden": _bf16_exact(_poison(h, mask, rng, garbage)), "weight": _bf16_exact(w)}, batch

  def call(self, fn, kind, x, batch, norm):
    implementation = None if kind == "logits" else "xla"
    return fn(LayerHeads(x["hidden"], x["weight"], implementation, 0), batch, norm=norm)


_LAYERS = 3


class _ModelFamily:
  """``loss(model: ModelView, batch, *, norm)``: a real 2-block decoder whose parameters
  are the differentiated inputs (keys "param/<path>", shared by all rows); its head
  materialised or fused."""

  kinds = ("logits", "fused")

  @functools.cached_property
  def _parts(self):
    from flax import nnx

    from jaxpost import models, train

    cfg = models.named_config(
      "tiny", vocab_size=V, n_layers=2, d_model=8, mlp_dim=16, n_heads=2, n_kv_heads=1, head_dim=4
    )
    graphdef, params, rest = train.split_model(models.Decoder(cfg, rngs=nnx.Rngs(0)))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = ["param/" + jax.tree_util.keystr(p) for p, _ in leaves]
    return graphdef, rest, treedef, keys, [v for _, v in leaves]

  def make(self, kind: str, seed: int, garbage: str = "large", layout=_LAYOUT):
    rng = np.random.default_rng(seed)
    _, _, _, keys, values = self._parts
    x = {k: _bf16_exact(np.asarray(v, np.float32)) for k, v in zip(keys, values, strict=True)}
    return x, _token_batch(rng, layout)

  def call(self, fn, kind, x, batch, norm):
    from jaxpost import scoring

    graphdef, rest, treedef, keys, _ = self._parts
    params = jax.tree_util.tree_unflatten(treedef, [x[k] for k in keys])
    lm_head = "logits" if kind == "logits" else "fused_xla"
    view = scoring.ModelView(scoring.make_scorer(graphdef, lm_head=lm_head), (params, rest))
    return fn(view, batch, norm=norm)

  def masked(self, batch: Batch) -> Batch:
    return batch.replace(loss_mask=jnp.zeros_like(batch.loss_mask))


class _StatefulFamily(_DistillFamily):
  """``loss(outputs, reference, batch, state, *, norm, step, total_steps)``: the model's
  and a frozen reference's outputs, rows that say their example (``example_ids``), and a
  state from the loss's ``init_state`` with random values (fixed per test, not
  differentiated); the next state is the loss's business (tests/losses/test_discft.py).
  Layouts here are groups of two rows (``hparams``)."""

  hparams = {"negatives": 1}
  examples = 5  # ids repeat: two rows of a batch may be one example's

  def make(self, kind: str, seed: int, garbage: str = "large", layout=_LAYOUT):
    x, batch = super().make(kind, seed, garbage, layout)
    ids = np.random.default_rng(seed + 2000).integers(0, self.examples, len(layout))
    return x, batch.replace(example_ids=jnp.asarray(np.repeat(ids[::2], 2)[: len(layout)]))

  def state(self, fn) -> dict:
    """The bound loss's initial state (its entry found by function: presets share one)."""
    from jaxpost.losses import init_state

    name = next(
      n
      for n in LOSSES.names("stateful")
      if getattr(LOSSES.get(n), "func", LOSSES.get(n)) is fn.func
    )
    state = init_state(name, self.hparams, self.examples)
    rng = np.random.default_rng(11)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), state)

  def call(self, fn, kind, x, batch, norm):
    if kind == "logits":
      outputs, reference = x["logits"], x["teacher_logits"]
    else:
      outputs = FusedHead(x["hidden"], x["weight"], "xla", 0)
      reference = FusedHead(x["teacher_hidden"], x["teacher_weight"], "xla", 0)
    state = self.state(fn)
    loss, metrics, _ = fn(outputs, reference, batch, state, norm=norm, step=3, total_steps=10)
    return loss, metrics


# Loss family -> how the contract test builds its inputs. A family registered in
# LOSSES without an entry here fails test_every_family_has_a_contract_case.
_FAMILIES = {
  "token": _TokenFamily(),
  "policy": _PolicyFamily(),
  "distill": _DistillFamily(),
  "layers": _LayersFamily(),
  "model": _ModelFamily(),
  "stateful": _StatefulFamily(),
}


def _cases() -> list[tuple[str, str]]:
  """(loss name, input kind) for every registered loss and its family's input kinds."""
  out = []
  for name in LOSSES.names():
    family = _FAMILIES.get(LOSSES.family(name))
    out.extend((name, kind) for kind in (family.kinds if family else ("missing",)))
  return out


CASES = _cases()
IDS = [f"{n}-{k}" for n, k in CASES]


def _family(name: str):
  return _FAMILIES[LOSSES.family(name)]


@functools.cache
def _loss_and_grad(name: str, kind: str):
  """Jitted ``(x, data, norm) -> ((loss, metrics), dloss/dx)`` at default hparams."""
  family = _family(name)
  fn = LOSSES.bind(name, getattr(family, "hparams", {}))
  return jax.jit(
    jax.value_and_grad(lambda x, data, norm: family.call(fn, kind, x, data, norm), has_aux=True)
  )


def _norm(data):
  tb = data.token_batch
  return compute_normalizers(tb.loss_mask, tb.segment_ids)


def _run(name, kind, x, data, norm=None):
  norm = _norm(data) if norm is None else norm
  (loss, metrics), grads = _loss_and_grad(name, kind)(x, data, norm)
  return loss, metrics, grads


def _rows(x, data, sl):
  xs = {k: v if _shared(k) else v[sl] for k, v in x.items()}
  return xs, jax.tree.map(lambda a: a[sl], data)


def _concat_rows(a, b):
  return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def _mask_of(data) -> np.ndarray:
  return np.asarray(data.token_batch.loss_mask)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


def _assert_tree_close(a, b, rtol, atol, what):
  a, b = _np(a), _np(b)
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for path, u in jax.tree_util.tree_leaves_with_path(a):
    v = functools.reduce(lambda t, k: t[k.key], path, b)
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol, err_msg=f"{what}{path}")


# ----------------------------------------------------------------------------------------
# The registry side of the contract.


def test_every_family_has_a_contract_case():
  """Adding a loss family without teaching this file how to call it fails here."""
  assert set(_FAMILIES) == set(LOSSES.families), (
    f"families {sorted(set(LOSSES.families) - set(_FAMILIES))} have no contract inputs"
  )
  for family in LOSSES.families:
    assert LOSSES.names(family), f"family {family!r} has no registered loss"
  assert sorted({n for n, _ in CASES}) == LOSSES.names()
  assert all(k != "missing" for _, k in CASES)


@pytest.mark.parametrize("name", LOSSES.names())
def test_default_hparams_are_valid_and_exclude_contract_args(name):
  hparams = LOSSES.hparams(name)
  assert not {"norm", "entropy"} & set(hparams), "contract arguments are not hyperparameters"
  assert LOSSES.validate_hparams(name, hparams) == hparams
  assert dict(LOSSES.hparams_config(name)) == hparams


# ----------------------------------------------------------------------------------------
# Per-loss contract, parameterised over every registered name.


@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_jit_returns_f32_scalars_and_masks_gradients(name, kind):
  x, data = _family(name).make(kind, seed=0)
  loss, metrics, grads = _run(name, kind, x, data)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  assert np.isfinite(float(loss))
  assert isinstance(metrics, dict)
  for k, m in metrics.items():
    assert m.dtype == jnp.float32 and m.shape == (), k
    assert np.isfinite(float(m)), k
  mask = _mask_of(data)
  for k, g in grads.items():
    g = np.asarray(g)
    assert g.dtype == np.float32 and g.shape == x[k].shape, k
    assert np.all(np.isfinite(g)), k
    if not _shared(k):
      # Masked slots hold +-3e4 (or +-1e30) garbage; their gradient is exactly 0.
      assert np.all(g[mask == 0] == 0), k
  # A real gradient, so the equalities below are not 0 == 0.
  main = next((k for k in x if not _shared(k)), None)
  if main is None:  # the model family: its parameters
    assert sum(np.count_nonzero(np.asarray(g)) for g in grads.values()) > len(grads)
  else:
    assert np.count_nonzero(np.asarray(grads[main])[mask > 0]) > mask.sum() / 4


@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_bf16_outputs_give_f32_loss_close_to_f32(name, kind):
  x, data = _family(name).make(kind, seed=1)
  loss, metrics, grads = _run(name, kind, x, data)
  x16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), x)  # same values (_bf16_exact)
  loss16, metrics16, grads16 = _run(name, kind, x16, data)
  assert loss16.dtype == jnp.float32 and loss16.shape == ()
  for k, m in metrics16.items():
    assert m.dtype == jnp.float32 and m.shape == (), k
  # Loose: bf16 matmuls on the fused path; the logits and log-prob paths upcast first.
  np.testing.assert_allclose(float(loss16), float(loss), rtol=2e-2, atol=2e-2)
  for k in metrics:
    np.testing.assert_allclose(float(metrics16[k]), float(metrics[k]), rtol=2e-2, atol=2e-2)
  for k, g in grads.items():
    g16 = np.asarray(grads16[k].astype(jnp.float32))
    assert grads16[k].dtype == jnp.bfloat16 and np.all(np.isfinite(g16)), k
    scale = np.abs(np.asarray(g)).max()
    np.testing.assert_allclose(g16, np.asarray(g), rtol=0, atol=5e-2 * scale, err_msg=k)


def _check_all_masked(name, kind, garbage):
  family = _family(name)
  x, data = family.make(kind, seed=2, garbage=garbage)
  data = family.masked(data)
  # Every slot is masked now: put garbage in all of them, not only the original ones.
  rng = np.random.default_rng(3)
  x = {
    k: v if _shared(k) else jnp.asarray(_garbage(rng, v.shape, garbage), v.dtype)
    for k, v in x.items()
  }
  loss, metrics, grads = _run(name, kind, x, data)
  assert float(loss) == 0.0
  for k, m in metrics.items():
    assert float(m) == 0.0, k
  for k, g in grads.items():
    g = np.asarray(g)
    assert np.all(g == 0), f"{k}: {np.count_nonzero(np.isnan(g))} NaN of {g.size}"


@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_all_masked_batch_gives_exact_zeros_with_large_garbage(name, kind):
  _check_all_masked(name, kind, "large")


# Known limit (measured, not hidden): on the materialised-logits path NaN/inf logits at
# masked slots give NaN gradients there (0 * NaN in log-softmax's backward). Masking the
# [B, T, V] logits first fixes it but cost 25% of the head's forward + backward on
# XLA:CPU (0.073 -> 0.092 s at 32 x 64 x 8192), and a model's logits at padding are
# finite; finite garbage gives exactly 0 (tests above). The fused head is NaN-safe.
# Not strict: a loss that masks its logits first (the distill family inside the
# divergence, the pair losses) passes here, and may.
_NAN_LOGITS = pytest.mark.xfail(
  strict=False,
  reason="materialised logits: NaN/inf at masked slots give NaN gradients (see comment)",
)
NAN_CASES = [
  pytest.param(n, k, id=f"{n}-{k}", marks=_NAN_LOGITS if k == "logits" else ()) for n, k in CASES
]


@pytest.mark.parametrize("name,kind", NAN_CASES)
def test_all_masked_batch_gives_exact_zeros_with_nan_garbage(name, kind):
  _check_all_masked(name, kind, "nan")


@pytest.mark.parametrize("name,kind", NAN_CASES)
def test_nan_garbage_at_masked_slots_changes_nothing(name, kind):
  family = _family(name)
  x, data = family.make(kind, seed=4, garbage="large")
  xn, datan = family.make(kind, seed=4, garbage="nan")  # same values on the mask
  loss, metrics, grads = _run(name, kind, x, data)
  loss_n, metrics_n, grads_n = _run(name, kind, xn, datan)
  np.testing.assert_allclose(float(loss_n), float(loss), rtol=1e-6)
  _assert_tree_close(metrics_n, metrics, 1e-6, 1e-7, "metrics")
  _assert_tree_close(grads_n, grads, 1e-6, 1e-7, "grads")


@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_appending_a_masked_row_changes_nothing(name, kind):
  family = _family(name)
  x, data = family.make(kind, seed=5)
  half = B // 2
  x, data = _rows(x, data, slice(0, half))
  # One prompt-only row (a segment with no counted token), garbage in its outputs.
  x_row, data_row = family.make(kind, seed=6, layout=(("pppppppppp",),))
  x_more = {k: v if _shared(k) else jnp.concatenate([v, x_row[k]]) for k, v in x.items()}
  data_more = _concat_rows(data, data_row)
  assert float(_mask_of(data_more)[half:].sum()) == 0.0
  norm, norm_more = _norm(data), _norm(data_more)
  assert float(norm_more.tokens) == float(norm.tokens)
  assert float(norm_more.sequences) == float(norm.sequences)

  loss, metrics, grads = _run(name, kind, x, data)
  loss_m, metrics_m, grads_m = _run(name, kind, x_more, data_more)
  np.testing.assert_allclose(float(loss_m), float(loss), rtol=1e-6, atol=0)
  _assert_tree_close(metrics_m, metrics, 1e-6, 0, "metrics")
  for k, g in grads.items():
    gm = np.asarray(grads_m[k])
    if _shared(k):
      np.testing.assert_allclose(gm, np.asarray(g), rtol=1e-6, atol=1e-9, err_msg=k)
    else:
      # atol: a longer batch re-chunks the fused op's rows (sums in another order).
      np.testing.assert_allclose(gm[:half], np.asarray(g), rtol=1e-6, atol=1e-9, err_msg=k)
      assert np.all(gm[half:] == 0), k


@pytest.mark.parametrize("name,kind", CASES, ids=IDS)
def test_microbatches_add_up_to_the_full_batch(name, kind):
  x, data = _family(name).make(kind, seed=7)
  norm = _norm(data)  # global normalisers, shared by the pieces
  loss, metrics, grads = _run(name, kind, x, data, norm)
  half = B // 2
  pieces = [_run(name, kind, *_rows(x, data, sl), norm) for sl in (slice(0, half), slice(half, B))]
  (l1, m1, g1), (l2, m2, g2) = pieces
  np.testing.assert_allclose(float(l1 + l2), float(loss), rtol=1e-5, atol=1e-7)
  _assert_tree_close(jax.tree.map(jnp.add, m1, m2), metrics, 1e-5, 1e-7, "metrics")
  summed = {k: g1[k] + g2[k] if _shared(k) else jnp.concatenate([g1[k], g2[k]]) for k in grads}
  _assert_tree_close(summed, grads, 1e-5, 1e-7, "grads")
  # Neither half is trivial.
  assert float(_mask_of(data)[:half].sum()) > 0 and float(_mask_of(data)[half:].sum()) > 0


# ----------------------------------------------------------------------------------------
# 8 devices == 1: run in a fresh process with 8 fake CPU devices (the count is fixed at
# backend start). The worker is this file run as a script; it iterates the registry.


def test_rows_sharded_over_8_devices_equal_one_device():
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
  }
  proc = subprocess.run(
    [sys.executable, os.path.abspath(__file__), "--sharded"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  assert result["cases"] == [list(c) for c in CASES]


def _sharded_worker() -> None:
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  assert jax.device_count() == 8, jax.devices()
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  checked = []
  for name, kind in _cases():
    x, data = _family(name).make(kind, seed=8)
    norm = _norm(data)
    loss, metrics, grads = _run(name, kind, x, data, norm)
    xs = {k: jax.device_put(v, replicated if _shared(k) else rows) for k, v in x.items()}
    data_s = jax.device_put(data, rows)
    norm_s = jax.device_put(norm, replicated)
    main = next((k for k in x if not _shared(k)), None)
    assert main is None or len(xs[main].sharding.device_set) == 8
    assert len(data_s.token_batch.loss_mask.sharding.device_set) == 8
    loss_s, metrics_s, grads_s = _run(name, kind, xs, data_s, norm_s)
    where = f"{name}-{kind}: "
    np.testing.assert_allclose(float(loss_s), float(loss), rtol=1e-5, atol=1e-7, err_msg=where)
    _assert_tree_close(metrics_s, metrics, 1e-5, 1e-7, where + "metrics")
    _assert_tree_close(grads_s, grads, 1e-5, 1e-7, where + "grads")
    checked.append([name, kind])
  print(json.dumps({"devices": jax.device_count(), "cases": checked}))


if __name__ == "__main__" and sys.argv[1:] == ["--sharded"]:
  _sharded_worker()
