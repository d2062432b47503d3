"""LfU (losses/lfu.py) on a real 2-block decoder through the train step's objective (the
``model`` family): the card's tests (sft_distill_detect.md, 11)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_decoder

from jaxpost import scoring
from jaxpost.losses import compute_normalizers, lfu
from jaxpost.losses.head import target_stats


def _run(name, **hparams):
  return tiny_decoder.loss_and_grads(name, hparams)


def _close(a, b, rtol=1e-5, atol=1e-7):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def test_alpha_zero_is_sft():
  loss, metrics, g = _run("lfu", alpha=0.0)
  loss_ce, _, g_ce = _run("cross_entropy")
  assert loss == pytest.approx(loss_ce, rel=1e-6)
  assert "consistency" not in metrics
  _close(g, g_ce)


def test_the_ascent_step_raises_the_sft_loss_and_the_term_is_positive():
  _, metrics, _ = _run("lfu")
  assert metrics["ascent_gain"] > 0  # the undesirable direction is an ascent
  assert metrics["consistency"] > 0


def test_the_clean_target_gets_no_gradient_from_the_consistency_term():
  """The loss's gradient == grad L_SFT + lambda grad L_cons with the clean streams and the
  steering computed beforehand as constants: nothing flows through sg(h) or d."""
  graphdef, params, rest = tiny_decoder.model()
  batch = tiny_decoder.batch()
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  scorer = scoring.make_scorer(graphdef, lm_head="fused_xla")
  weight, alpha = 5.0, 0.1
  _, metrics, g = _run("lfu", weight=weight, alpha=alpha)

  mask = batch.loss_mask
  view = scoring.ModelView(scorer, (params, rest))
  _, hidden = view.forward(batch)
  hidden = [jax.lax.stop_gradient(h) for h in hidden]

  def per_row(steer):
    out, _ = view.forward(batch, steer=steer)
    return jnp.sum(-target_stats(out, batch.targets, mask).logp, axis=1)

  steer = jax.jit(lambda: lfu.ascent_direction(per_row, (4, 2, 32), alpha))()
  # each row's step has length alpha
  np.testing.assert_allclose(np.sqrt(np.sum(np.asarray(steer) ** 2, axis=(1, 2))), alpha, rtol=1e-5)

  def reference(p):
    v = scoring.ModelView(scorer, (p, rest))
    out, _ = v.forward(batch)
    sft = jnp.sum(-target_stats(out, batch.targets, mask).logp * mask) / norm.tokens
    _, steered = v.forward(batch, steer=steer)
    gap = sum(jnp.sum(jnp.square(h - s), -1) for h, s in zip(hidden, steered, strict=True))
    cons = jnp.sum(gap / 2 * mask) / norm.tokens
    return sft + weight * cons, cons

  (_, cons), g_ref = jax.jit(jax.value_and_grad(reference, has_aux=True))(params)
  assert metrics["consistency"] == pytest.approx(float(cons), rel=1e-5)
  _close(g, g_ref, rtol=1e-4, atol=1e-6)
