"""Sorted fine-tuning (losses/sorted.py) on a real 3-block decoder, through the train
step's objective (the ``layers`` family): the card's tests (more_cards.md, 2)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost import models, train
from jaxpost.losses import compute_normalizers
from jaxpost.types import ROLE_ANSWER, ROLE_PAD, ROLE_PROMPT, ROLE_THINK, Batch

P, TH, A, PAD = ROLE_PROMPT, ROLE_THINK, ROLE_ANSWER, ROLE_PAD
N_LAYERS = 3


@functools.cache
def _model():
  cfg = models.named_config(
    "tiny",
    vocab_size=37,
    n_layers=N_LAYERS,
    d_model=32,
    mlp_dim=64,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
  )
  return train.split_model(models.Decoder(cfg, rngs=nnx.Rngs(0)))


def _batch():
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
def _jitted(name, hparams, lm_head):
  graphdef, _, _ = _model()
  objective = train.objective_for(name, graphdef, dict(hparams), lm_head=lm_head)

  def run(params, rest, batch):
    norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
    return jax.value_and_grad(lambda p: objective(p, {"rest": rest}, batch, norm), has_aux=True)(
      params
    )

  return jax.jit(run)


def _loss_and_grads(name, hparams=None, lm_head="fused_xla"):
  _, params, rest = _model()
  key = tuple(sorted((hparams or {}).items()))
  (loss, metrics), grads = _jitted(name, key, lm_head)(params, rest, _batch())
  return float(loss), metrics, grads


def _flat(grads) -> dict[str, np.ndarray]:
  return {train.path_name(p): np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)}


@pytest.mark.parametrize("lm_head", ["fused_xla", "logits"])
def test_the_last_exit_alone_is_cross_entropy(lm_head):
  loss, metrics, g = _loss_and_grads("sorted_ft", {"exits": (-1,)}, lm_head)
  loss_ce, _, g_ce = _loss_and_grads("cross_entropy", lm_head=lm_head)
  assert loss == pytest.approx(loss_ce, rel=1e-6)
  assert set(metrics) == {f"nll/exit{N_LAYERS}"}
  for k, v in _flat(g).items():
    np.testing.assert_allclose(v, _flat(g_ce)[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_an_exit_gives_no_gradient_to_the_blocks_above_it():
  _, _, g = _loss_and_grads("sorted_ft", {"exits": (0,)})
  flat = _flat(g)
  above = [k for k in flat if k.startswith(("layers.1.", "layers.2."))]
  assert above
  for k in above:
    assert np.all(flat[k] == 0), k
  below = [k for k in flat if k.startswith("layers.0.")]
  assert all(np.abs(flat[k]).max() > 0 for k in below)
  # the shared final norm and head train from the early exit too
  shared = [k for k in flat if not k.startswith("layers.")]
  assert shared and all(np.abs(flat[k]).max() > 0 for k in shared)


def test_the_sum_over_exits_is_the_sum_of_each_exit_with_its_weight():
  loss, metrics, g = _loss_and_grads("sorted_ft", {"exits": (0, 2), "exit_weights": (0.5, 2.0)})
  parts = [_loss_and_grads("sorted_ft", {"exits": (e,)}) for e in (0, 2)]
  assert loss == pytest.approx(0.5 * parts[0][0] + 2.0 * parts[1][0], rel=1e-6)
  flat, f0, f2 = _flat(g), _flat(parts[0][2]), _flat(parts[1][2])
  for k in flat:  # the head and norm receive the summed gradients of every exit
    np.testing.assert_allclose(flat[k], 0.5 * f0[k] + 2.0 * f2[k], rtol=1e-5, atol=1e-7)
  mean, _, _ = _loss_and_grads(
    "sorted_ft", {"exits": (0, 2), "exit_weights": (0.5, 2.0), "combine": "mean"}
  )
  assert mean == pytest.approx(loss / 2.5, rel=1e-6)
  every, metrics_all, _ = _loss_and_grads("sorted_ft")
  assert set(metrics_all) == {f"nll/exit{n}" for n in range(1, N_LAYERS + 1)}


def test_bad_exits_fail_before_any_work():
  from jaxpost.losses import LOSSES

  with pytest.raises(ValueError, match="one weight per exit"):
    LOSSES.bind("sorted_ft", {"exits": (0, 1), "exit_weights": (1.0,)})
  with pytest.raises(ValueError, match="out of range"):
    _loss_and_grads("sorted_ft", {"exits": (5,)})
