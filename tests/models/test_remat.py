"""model.remat: the same gradients, less kept activation memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpost import models


def _loss_and_grad(remat: bool, tokens):
  config = models.named_config(
    "tiny", vocab_size=64, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16,
    mlp_dim=256, remat=remat,
  )  # fmt: skip
  model = models.create_model(config, 0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    m = nnx.merge(graphdef, p, rest)
    logits = m(tokens)
    return jnp.mean(
      jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0]
    )

  fn = jax.jit(jax.value_and_grad(loss))
  temp = fn.lower(params).compile().memory_analysis().temp_size_in_bytes
  value, grad = fn(params)
  return value, grad, temp


def test_remat_gives_the_same_loss_and_gradient_with_less_temporary_memory():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 128)), jnp.int32)
  v0, g0, t0 = _loss_and_grad(False, tokens)
  v1, g1, t1 = _loss_and_grad(True, tokens)
  np.testing.assert_allclose(float(v0), float(v1), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
  # Less kept for the backward pass (XLA:CPU's buffer assignment shows a few percent at
  # this size; the saving grows with depth and sequence length on accelerators).
  assert t1 < t0, (t0, t1)


def test_remat_is_not_an_architecture_property():
  base = models.named_config("tiny", vocab_size=64)
  assert dataclasses.replace(base, remat=True).remat and not base.remat


def test_a_remat_model_merged_outside_the_gradient_can_be_read_inside_it():
  # A teacher: merged in the jitted step, called inside the student's jax.grad (its
  # variables belong to the outer trace; remat must not write them back).
  config = models.named_config("tiny", vocab_size=64, n_layers=2, remat=True)
  graphdef, params, rest = nnx.split(models.create_model(config, 0), nnx.Param, ...)
  tokens = jnp.zeros((1, 8), jnp.int32)

  @jax.jit
  def grad(p, teacher_params):
    teacher = nnx.merge(graphdef, teacher_params, rest)
    return jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(tokens) * teacher(tokens)))(p)

  plain = dataclasses.replace(config, remat=False)
  g_plain, _, _ = nnx.split(models.create_model(plain, 0), nnx.Param, ...)
  teacher_logits = nnx.merge(g_plain, params, rest)(tokens)
  student = lambda p: nnx.merge(g_plain, p, rest)(tokens)  # noqa: E731
  expected = jax.grad(lambda p: jnp.sum(student(p) * teacher_logits))(params)
  for a, b in zip(jax.tree.leaves(grad(params, params)), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
