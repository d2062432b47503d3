"""Sorted fine-tuning (losses/sorted.py) on a real 3-block decoder, through the train
step's objective (the ``layers`` family): the card's tests (more_cards.md, 2)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tiny_decoder

from jaxpost import train

N_LAYERS = 3


def _loss_and_grads(name, hparams=None, lm_head="fused_xla"):
  return tiny_decoder.loss_and_grads(name, hparams, lm_head=lm_head, n_layers=N_LAYERS)


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
