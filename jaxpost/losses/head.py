"""What a loss receives from the model: full logits, or the LM head's inputs for a fused op.

Losses are written once against ``target_stats`` (and, for distillation, the divergence
helpers that follow the same pattern). Given logits ``[B, T, V]`` they compute the
log-softmax in XLA as usual; given a ``FusedHead`` (final hidden states + LM-head
weight) they call ``pallas_kernels.fused_linear_divergence``, which never materialises
the ``[B*T, V]`` logits. Both give the same values and gradients (tested), so the
switch (``config.kernels.lm_head``) is a memory/speed choice, never a numerics one.
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp

from pallas_kernels.fused_linear_divergence import (
  TokenStats,
  TopK,
  fused_linear_divergence,
  fused_linear_divergence_sum,
)
from pallas_kernels.fused_linear_divergence.reference import token_divergence

# config.kernels.lm_head -> implementation of the fused op (None = full logits).
LM_HEADS = {"logits": None, "fused": "auto", "fused_xla": "xla", "fused_pallas": "pallas"}


@flax.struct.dataclass
class FusedHead:
  """The LM head's inputs, standing in for logits = hidden @ weight.

  Attributes:
    hidden: [B, T, D] final hidden states (after the final norm).
    weight: [D, V] LM-head matrix.
    implementation: fused-op path ("auto" picks XLA on CPU, Pallas on TPU/GPU).
    chunk_size: token rows per chunk (0 = the op's default).
  """

  hidden: jax.Array
  weight: jax.Array
  implementation: str = flax.struct.field(pytree_node=False, default="auto")
  chunk_size: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def vocab_size(self) -> int:
    return self.weight.shape[1]


@flax.struct.dataclass
class LayerHeads:
  """Every layer's exit through the shared final norm and LM head (``layers`` losses).

  Attributes:
    hidden: [B, T, L, D]: after block n (n = 0..L-1), the residual stream through the
      model's final norm; exit L-1 is the model's own output.
    weight: [D, V] the LM head.
    implementation: the fused op's path, or None for materialised logits.
    chunk_size: token rows per chunk of the fused op (0 = its default).
  """

  hidden: jax.Array
  weight: jax.Array
  implementation: str | None = flax.struct.field(pytree_node=False, default="auto")
  chunk_size: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def n_layers(self) -> int:
    return self.hidden.shape[2]

  def exit(self, layer: int) -> jax.Array | FusedHead:
    """What a token loss reads at exit ``layer`` (negative counts from the end): a
    ``FusedHead``, or f32 logits when the head is not fused."""
    h = self.hidden[:, :, layer]
    if self.implementation is None:
      return jnp.einsum("btd,dv->btv", h, self.weight, preferred_element_type=jnp.float32)
    return FusedHead(h, self.weight, self.implementation, self.chunk_size)


@flax.struct.dataclass
class TargetStats:
  """Per-token statistics of the target token, all f32[B, T].

  Attributes:
    nll: -(1 - eps) log p(y) - eps mean_v log p(v) (eps = label smoothing).
    logp: log p(y), unsmoothed (on the fused path with label smoothing: no gradient).
    logz: log-normaliser of the logits (differentiable, for z-loss).
    is_top: 1.0 where y is the model's top-1 token (ties count), no gradient.
    entropy: entropy of the model's next-token distribution.
  """

  nll: jax.Array
  logp: jax.Array
  logz: jax.Array
  is_top: jax.Array
  entropy: jax.Array


def target_stats(
  outputs: jax.Array | FusedHead,
  targets: jax.Array,
  mask: jax.Array,
  *,
  label_smoothing: float = 0.0,
) -> TargetStats:
  """Log-prob statistics of ``targets`` under the model, from logits or a fused head.

  Args:
    outputs: f32[B, T, V] logits or a ``FusedHead``.
    targets: i32[B, T] target ids.
    mask: [B, T] 1 where the target counts; other positions get zeros (and, on the
      fused path, no gradient), so callers must mask their reductions as usual.
    label_smoothing: eps of ``nll``.

  Returns:
    ``TargetStats``.
  """
  chex.assert_rank([targets, mask], 2)
  if isinstance(outputs, FusedHead):
    return _fused_target_stats(outputs, targets, mask, label_smoothing)
  chex.assert_rank(outputs, 3)
  on = mask > 0
  logits = outputs.astype(jnp.float32)
  # One max pass serves both the stable logsumexp and the top-1 check.
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
  shifted = logits - top[..., None]
  logz = top + jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  logp = picked - logz
  nll = -logp
  if label_smoothing:
    mean_logp = jnp.mean(logits, axis=-1) - logz
    nll = (1.0 - label_smoothing) * nll - label_smoothing * mean_logp
  probs = jnp.exp(logits - logz[..., None])
  entropy = logz - jnp.sum(probs * logits, axis=-1)
  stats = TargetStats(
    nll=nll,
    logp=logp,
    logz=logz,
    is_top=jax.lax.stop_gradient((picked >= top).astype(jnp.float32)),
    entropy=entropy,
  )
  return jax.tree.map(lambda x: jnp.where(on, x, 0.0), stats)


def reduced_nll(
  outputs: jax.Array | FusedHead,
  targets: jax.Array,
  mask: jax.Array,
  reduce_fn,
  *,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, TargetStats]:
  """``reduce_fn(nll)`` and the per-token statistics, for a *linear* ``reduce_fn``.

  With a ``FusedHead`` this takes the fused op's gradient-in-forward path: the
  reduction's per-token weights are known before the loss is computed (they are the
  gradient of the linear ``reduce_fn``), so each chunk's logits are built once instead
  of being recomputed in the backward pass. The statistics then carry no gradient;
  use ``target_stats`` when something non-linear in them (z-loss) is differentiated.

  Args:
    outputs: f32[B, T, V] logits or a ``FusedHead``.
    targets: i32[B, T].
    mask: [B, T] 1 where the target counts.
    reduce_fn: f32[B, T] -> f32[], linear (e.g. a masked token or sequence mean).
    label_smoothing: eps of the nll.

  Returns:
    (reduce_fn(nll) f32[], TargetStats).
  """
  if not isinstance(outputs, FusedHead):
    stats = target_stats(outputs, targets, mask, label_smoothing=label_smoothing)
    return reduce_fn(stats.nll), stats
  token_weights = jax.grad(reduce_fn)(jnp.zeros(targets.shape, jnp.float32))
  total, stats = _call_fused(
    outputs, targets, mask, label_smoothing, token_weights=token_weights.reshape(-1)
  )
  return total, _as_target_stats(stats, targets.shape, label_smoothing)


def _call_fused(head: FusedHead, targets, mask, label_smoothing, token_weights=None):
  b, t, d = head.hidden.shape
  kwargs = dict(
    kind="ce",
    labels=targets.reshape(b * t),
    mask=mask.reshape(b * t) > 0,
    label_smoothing=label_smoothing,
    implementation=None if head.implementation == "auto" else head.implementation,
    chunk_size=head.chunk_size or None,
  )
  hidden = head.hidden.reshape(b * t, d)
  if token_weights is None:
    return fused_linear_divergence(hidden, head.weight, **kwargs)
  return fused_linear_divergence_sum(hidden, head.weight, token_weights=token_weights, **kwargs)


def _fused_target_stats(head: FusedHead, targets, mask, label_smoothing) -> TargetStats:
  stats = _call_fused(head, targets, mask, label_smoothing)
  return _as_target_stats(stats, targets.shape, label_smoothing)


def _as_target_stats(stats: TokenStats, shape, label_smoothing) -> TargetStats:
  if label_smoothing:
    # The op differentiates only the smoothed loss; log p(y) is then a metric.
    logp = jax.lax.stop_gradient(stats.label_logit - stats.student_lse)
  else:
    logp = -stats.loss
  is_top = (stats.label_logit >= stats.student_max).astype(jnp.float32)
  return jax.tree.map(
    lambda x: x.reshape(shape),
    TargetStats(
      nll=stats.loss,
      logp=logp,
      logz=stats.student_lse,
      is_top=jax.lax.stop_gradient(is_top),
      entropy=stats.entropy,
    ),
  )


# ----------------------------------------------------------------------------------------
# Divergences from a teacher (distillation): the same two paths as ``target_stats``.


def vocab_size(outputs) -> int:
  """V of logits [..., V], a ``FusedHead`` or a ``TopK`` teacher (its k + tail: not a V)."""
  if isinstance(outputs, FusedHead):
    return outputs.vocab_size
  if isinstance(outputs, TopK):
    raise ValueError("a top-k teacher has no vocabulary axis")
  return outputs.shape[-1]


def first_tokens(outputs, n: int):
  """``outputs`` restricted to token ids [0, n): logits [..., :n] or the head's first n
  columns. Distillation between models whose embeddings are padded past the
  tokenizer's ids compares the distributions over the real ids only."""
  if isinstance(outputs, FusedHead):
    return outputs.replace(weight=outputs.weight[:, :n])
  return outputs[..., :n]


def divergence_stats(
  outputs: jax.Array | FusedHead,
  teacher: jax.Array | FusedHead | TopK,
  mask: jax.Array,
  *,
  kind: str,
  beta: float = 0.5,
  temperature: float = 1.0,
) -> TokenStats:
  """Per-token divergence of the model from a teacher, from logits or fused heads.

  Args:
    outputs: the student's f32[B, T, V] logits or a ``FusedHead``.
    teacher: the teacher's f32[B, T, V] logits, a ``FusedHead`` (its own hidden states
      and head; never materialised when ``outputs`` is fused too) or a ``TopK`` with
      [B, T, k] ids / log-probs (taken as given, no temperature). No gradient flows
      into the teacher.
    mask: [B, T] 1 where the token counts; other positions give 0 and no gradient.
    kind: fkl | rkl | jsd (``pallas_kernels.fused_linear_divergence.reference``).
    beta: the JSD's teacher weight (0 = fkl, 1 = rkl exactly).
    temperature: divides both models' logits (not a ``TopK``'s log-probs).

  Returns:
    ``TokenStats`` of f32[B, T] arrays (``loss`` is the divergence).
  """
  chex.assert_rank(mask, 2)
  rows, options = _divergence_call(outputs, teacher, mask, kind, beta, temperature)
  if options is None:  # materialised logits
    stats = token_divergence(*rows, kind=kind, beta=beta)
  else:
    stats = fused_linear_divergence(*rows, **options)
  return jax.tree.map(lambda x: x.reshape(mask.shape), stats)


def reduced_divergence(
  outputs: jax.Array | FusedHead,
  teacher: jax.Array | FusedHead | TopK,
  mask: jax.Array,
  reduce_fn,
  *,
  kind: str,
  beta: float = 0.5,
  temperature: float = 1.0,
) -> tuple[jax.Array, TokenStats]:
  """``reduce_fn(divergence)`` and the per-token statistics, for a *linear* ``reduce_fn``.

  The divergence counterpart of ``reduced_nll``: with a ``FusedHead`` the per-token
  weights (the gradient of ``reduce_fn``) go into the fused op, which forms the gradient
  in its forward pass (each chunk's logits built once); the statistics then carry no
  gradient. Arguments as ``divergence_stats``.
  """
  if not isinstance(outputs, FusedHead):
    stats = divergence_stats(outputs, teacher, mask, kind=kind, beta=beta, temperature=temperature)
    return reduce_fn(stats.loss), stats
  token_weights = jax.grad(reduce_fn)(jnp.zeros(mask.shape, jnp.float32)).reshape(-1)
  rows, options = _divergence_call(outputs, teacher, mask, kind, beta, temperature)
  total, stats = fused_linear_divergence_sum(*rows, token_weights=token_weights, **options)
  return total, jax.tree.map(lambda x: x.reshape(mask.shape), stats)


def _divergence_call(outputs, teacher, mask, kind, beta, temperature):
  """Row-major arguments for the fused op (FusedHead) or ``token_divergence`` (logits).

  Returns ((h, w) and keyword options, or the positional arguments of
  ``token_divergence`` and None).
  """
  n = mask.shape[0] * mask.shape[1]
  on = mask.reshape(n) > 0
  teacher = jax.lax.stop_gradient(teacher)
  if isinstance(teacher, TopK):
    rows = TopK(ids=teacher.ids.reshape(n, -1), logp=teacher.logp.reshape(n, -1))
  elif isinstance(teacher, FusedHead) and isinstance(outputs, FusedHead):
    rows = (teacher.hidden.reshape(n, -1), teacher.weight)  # never materialised
  else:  # the student's logits are materialised anyway (or the teacher gave logits)
    logits = logits_of(teacher) if isinstance(teacher, FusedHead) else teacher
    rows = logits.astype(jnp.float32).reshape(n, -1)
  if not isinstance(outputs, FusedHead):
    zs = outputs.astype(jnp.float32).reshape(n, -1) / temperature
    if not isinstance(rows, TopK):
      rows = rows / temperature
    return (zs, rows, None, on, None), None
  options = dict(
    kind=kind,
    teacher=rows,
    mask=on,
    beta=beta,
    temperature=temperature,
    implementation=None if outputs.implementation == "auto" else outputs.implementation,
    chunk_size=outputs.chunk_size or None,
  )
  return (outputs.hidden.reshape(n, -1), outputs.weight), options


def top_k_teacher(teacher: jax.Array | FusedHead, k: int, temperature: float = 1.0) -> TopK:
  """The teacher's k most likely tokens and their log-probs under softmax(z / T).

  What an offline teacher shard stores (the rest of the mass is the tail bucket of the
  divergence). Builds the teacher's [B, T, V] logits; no gradient.
  """
  logits = logits_of(teacher) if isinstance(teacher, FusedHead) else teacher
  logp = jax.nn.log_softmax(jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature)
  if not 0 < k <= logp.shape[-1]:
    raise ValueError(f"top_k must be in [1, {logp.shape[-1]}], got {k}")
  values, ids = jax.lax.top_k(logp, k)
  return TopK(ids=ids.astype(jnp.int32), logp=values)


def masked_logits(outputs: jax.Array | FusedHead, mask: jax.Array) -> jax.Array:
  """f32 [B, T, V] logits of logits or a ``FusedHead``, zero wherever ``mask`` is 0.

  For losses that read the whole distribution: masked slots may hold anything (NaN
  included), and zeroing them *before* any arithmetic keeps it out of every gradient.
  """
  on = mask[..., None] > 0
  if isinstance(outputs, FusedHead):
    return logits_of(outputs.replace(hidden=jnp.where(on, outputs.hidden, 0)))
  return jnp.where(on, outputs.astype(jnp.float32), 0.0)


def logits_of(head: FusedHead) -> jax.Array:
  """The [..., V] f32 logits a ``FusedHead`` stands for (materialised: only for losses
  that read the whole distribution in ways the fused op does not cover)."""
  return jnp.einsum("...d,dv->...v", head.hidden, head.weight, preferred_element_type=jnp.float32)
