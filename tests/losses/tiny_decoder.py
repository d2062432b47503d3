"""A small real decoder, its objective and a fixed batch: shared by the loss tests that
need a model (layers and model families)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import models, train
from jaxpost.losses import compute_normalizers
from jaxpost.types import ROLE_ANSWER, ROLE_PAD, ROLE_PROMPT, ROLE_THINK, Batch

P, TH, A, PAD = ROLE_PROMPT, ROLE_THINK, ROLE_ANSWER, ROLE_PAD


@functools.cache
def model(n_layers: int = 2):
  """(graphdef, params, rest) of a 32-wide decoder with ``n_layers`` blocks, vocabulary 37."""
  cfg = models.named_config(
    "tiny",
    vocab_size=37,
    n_layers=n_layers,
    d_model=32,
    mlp_dim=64,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
  )
  return train.split_model(models.Decoder(cfg, rngs=nnx.Rngs(0)))


def batch() -> Batch:
  """4 rows: 3 prompt targets, 5 think, 3 answer, 1 padding."""
  rng = np.random.default_rng(0)
  roles = np.array([[P] * 3 + [TH] * 5 + [A] * 3 + [PAD]] * 4, np.int32)
  tokens = rng.integers(1, 37, roles.shape)
  return Batch(
    tokens=jnp.asarray(tokens, jnp.int32),
    targets=jnp.asarray(np.roll(tokens, -1, axis=1), jnp.int32),
    loss_mask=jnp.asarray(np.isin(roles, (TH, A)), jnp.float32),
    segment_ids=jnp.asarray(roles != PAD, jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), roles.shape),
    roles=jnp.asarray(roles),
  )


@functools.cache
def _jitted(name, hparams, lm_head, n_layers):
  graphdef, _, _ = model(n_layers)
  objective = train.objective_for(name, graphdef, dict(hparams), lm_head=lm_head)

  def run(params, rest, batch):
    norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
    return jax.value_and_grad(lambda p: objective(p, {"rest": rest}, batch, norm), has_aux=True)(
      params
    )

  return jax.jit(run)


def loss_and_grads(name, hparams=None, *, lm_head="fused_xla", n_layers=2):
  """(loss, metrics, grads w.r.t. the params) of registered loss ``name`` on ``batch()``."""
  _, params, rest = model(n_layers)
  key = tuple(sorted((hparams or {}).items()))
  (loss, metrics), grads = _jitted(name, key, lm_head, n_layers)(params, rest, batch())
  return float(loss), {k: float(v) for k, v in metrics.items()}, grads
