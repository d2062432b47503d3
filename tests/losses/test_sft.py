import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import compute_normalizers, registry, sft
from jaxpost.types import Batch


def _batch(seed=0, b=3, t=6, v=7):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, v, (b, t))
  mask = (rng.random((b, t)) > 0.3).astype(np.float32)
  batch = Batch(
    tokens=jnp.asarray(tokens, jnp.int32),
    targets=jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32),
    loss_mask=jnp.asarray(mask),
    segment_ids=jnp.ones((b, t), jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(t), (b, t)),
    roles=jnp.full((b, t), 3, jnp.int32),
  )
  logits = jnp.asarray(rng.normal(size=(b, t, v)) * 3, jnp.float32)
  return logits, batch


def _naive_ce(logits, targets, mask, eps=0.0):
  """Loop reference in float64."""
  logits = np.asarray(logits, np.float64)
  total, count = 0.0, 0.0
  for i in range(logits.shape[0]):
    for j in range(logits.shape[1]):
      if mask[i, j]:
        row = logits[i, j]
        logz = np.log(np.sum(np.exp(row - row.max()))) + row.max()
        logp = row - logz
        total += -(1 - eps) * logp[targets[i, j]] - eps * logp.mean()
        count += 1
  return total / count


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_matches_loop_reference(eps):
  logits, batch = _batch()
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  loss, metrics = sft.cross_entropy(logits, batch, norm=norm, label_smoothing=eps)
  ref = _naive_ce(logits, np.asarray(batch.targets), np.asarray(batch.loss_mask), eps)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  assert 0.0 <= float(metrics["token_accuracy"]) <= 1.0


def test_cross_entropy_golden_uniform():
  # Uniform logits over V=4: loss = log 4 exactly.
  batch = Batch.from_tokens(jnp.array([[1, 2, 3]]))
  logits = jnp.zeros((1, 3, 4))
  loss, _ = sft.cross_entropy(
    logits, batch, norm=compute_normalizers(batch.loss_mask, batch.segment_ids)
  )
  np.testing.assert_allclose(float(loss), np.log(4.0), rtol=1e-6)


def test_gradient_matches_softmax_minus_onehot():
  logits, batch = _batch(1)
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  g = jax.grad(lambda z: sft.cross_entropy(z, batch, norm=norm)[0])(logits)
  p = jax.nn.softmax(logits, -1)
  onehot = jax.nn.one_hot(batch.targets, logits.shape[-1])
  expected = (p - onehot) * batch.loss_mask[..., None] / float(norm.tokens)
  np.testing.assert_allclose(np.asarray(g), np.asarray(expected), atol=1e-6)


def test_masked_positions_get_zero_gradient_and_any_value():
  logits, batch = _batch(2)
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  g = jax.grad(lambda z: sft.cross_entropy(z, batch, norm=norm)[0])(logits)
  masked = np.asarray(batch.loss_mask) == 0
  assert np.all(np.asarray(g)[masked] == 0)
  poisoned = jnp.where(batch.loss_mask[..., None] > 0, logits, 1e6)
  np.testing.assert_allclose(
    float(sft.cross_entropy(poisoned, batch, norm=norm)[0]),
    float(sft.cross_entropy(logits, batch, norm=norm)[0]),
    rtol=1e-6,
  )


def test_bf16_logits_close_to_f32():
  logits, batch = _batch(3)
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  a = sft.cross_entropy(logits, batch, norm=norm)[0]
  b = sft.cross_entropy(logits.astype(jnp.bfloat16), batch, norm=norm)[0]
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(float(a), float(b), rtol=2e-2)


def test_registry_lookup_and_errors():
  assert registry.get("cross_entropy") is sft.cross_entropy
  assert "cross_entropy" in registry.names()
  with pytest.raises(KeyError, match="unknown loss"):
    registry.get("nope")
  with pytest.raises(ValueError, match="already registered"):
    registry.register("cross_entropy")(lambda *a, **k: None)


def test_token_accuracy_matches_argmax():
  logits, batch = _batch(4)
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  targets = jnp.where(
    jnp.arange(batch.targets.shape[1]) % 2 == 0, jnp.argmax(logits, -1), batch.targets
  )
  batch = batch.replace(targets=targets)
  _, metrics = sft.cross_entropy(logits, batch, norm=norm)
  correct = (np.argmax(np.asarray(logits), -1) == np.asarray(targets)) * np.asarray(batch.loss_mask)
  np.testing.assert_allclose(
    float(metrics["token_accuracy"]), correct.sum() / float(norm.tokens), rtol=1e-6
  )
