"""Checkpointer: TrainState round trip, keep-N, abstract restore targets, missing checkpoints."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpost import checkpoint, models, train
from jaxpost.types import ROLE_ANSWER, Batch


@functools.cache
def _parts():
  cfg = models.named_config(
    "tiny", vocab_size=29, n_layers=1, d_model=16, mlp_dim=32, n_heads=2, n_kv_heads=1, head_dim=8
  )
  graphdef, params, rest = train.split_model(models.Decoder(cfg, rngs=nnx.Rngs(0)))
  return graphdef, params, rest


def _optimizer():
  return optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=0.01)


@functools.cache
def _trained_state(steps=2, seed=3):
  """A TrainState with non-trivial optimizer moments, step count and RNG (never donated)."""
  graphdef, params, rest = _parts()
  optimizer = _optimizer()
  state = train.init_train_state(params, optimizer, seed)
  step = train.make_train_step(
    train.objective_for("cross_entropy", graphdef), optimizer, donate=False
  )
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 29, (2, 8)).astype(np.int32)
  batch = Batch(
    tokens=jnp.asarray(tokens),
    targets=jnp.asarray(np.roll(tokens, -1, axis=1)),
    loss_mask=jnp.ones((2, 8), jnp.float32),
    segment_ids=jnp.ones((2, 8), jnp.int32),
    positions=jnp.asarray(np.tile(np.arange(8, dtype=np.int32), (2, 1))),
    roles=jnp.full((2, 8), ROLE_ANSWER, jnp.int32),
  )
  for _ in range(steps):
    state, _ = step(state, batch, {"rest": rest})
  return state


def _fresh_state(seed=0):
  _, params, _ = _parts()
  return train.init_train_state(params, _optimizer(), seed)


def _assert_trees_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_train_state(tmp_path, async_save):
  state = _trained_state()
  assert int(state.step) == 2
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=3, async_save=async_save)
  assert ckpt.latest_step() is None
  ckpt.save(2, state, {"next_index": 17, "dataset_size": None})
  ckpt.close()

  # A fresh Checkpointer (as a resumed process would make) restores into a different
  # (freshly initialised) state of the same structure.
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=3, async_save=async_save)
  assert ckpt.latest_step() == 2
  like = _fresh_state()
  assert not np.array_equal(np.asarray(like.rng), np.asarray(state.rng))
  restored, data = ckpt.restore(None, like=like)
  ckpt.close()
  assert isinstance(restored, train.TrainState)
  assert data == {"next_index": 17, "dataset_size": None}
  _assert_trees_equal(restored, state)
  # The optimizer state really is non-trivial (Adam moments after two updates).
  mu = jax.tree.leaves(restored.opt_state[0].mu)
  assert any(np.abs(np.asarray(m)).max() > 0 for m in mu)


def test_keep_n_deletes_old_steps(tmp_path):
  state = _fresh_state()
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2, async_save=True)
  for step in (1, 2, 3, 4):
    ckpt.save(step, state, {"next_index": step})
  ckpt.wait()
  assert ckpt.all_steps() == [3, 4]
  assert ckpt.latest_step() == 4
  ckpt.close()
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3", "4"]
  # An older kept step can still be restored explicitly.
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  _, data = ckpt.restore(3, like=state)
  ckpt.close()
  assert data == {"next_index": 3}


def test_restore_into_abstract_state(tmp_path):
  state = _trained_state()
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, async_save=False)
  ckpt.save(2, state, {"next_index": 5})
  abstract = jax.eval_shape(lambda: _fresh_state())
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  restored, data = ckpt.restore(2, like=abstract)
  ckpt.close()
  assert data == {"next_index": 5}
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
  _assert_trees_equal(restored, state)


def test_missing_checkpoint_raises(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / "empty"), keep=1)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore(None, like=_fresh_state())
  with pytest.raises(FileNotFoundError):
    ckpt.restore(7, like=_fresh_state())
  ckpt.close()


def test_params_saved_on_8_devices_load_in_a_1_device_process(tmp_path):
  """train.init_from (and merges) read a run saved on another topology: params of an
  8-device run load in a process with one device."""
  import subprocess
  import sys

  mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  w = jax.device_put(jnp.arange(16.0).reshape(8, 2), spec)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  ckpt.save(1, {"params": {"w": w}}, {}, force=True)
  ckpt.close()
  code = (
    "import jax, jax.numpy as jnp, numpy as np\n"
    "from jaxpost import checkpoint\n"
    "assert jax.device_count() == 1\n"
    f"p, kept = checkpoint.load_params({str(tmp_path / 'run')!r}, {{'w': jnp.zeros((8, 2))}})\n"
    "assert kept == [] and np.array_equal(np.asarray(p['w']), np.arange(16.0).reshape(8, 2))\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
