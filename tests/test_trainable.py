"""Trainable subsets: whole parameters split off, slices masked in the optimiser, and a run
that trains a subset on top of another run's weights (the rest stays bit-identical)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import config_dict

from jaxpost import config_lib, models, optim, train
from jaxpost.recipes import sft
from jaxpost.types import ROLE_ANSWER, Batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("subprocess_env")


def _model(seed=0):
  cfg = models.named_config(
    "tiny", vocab_size=29, n_layers=2, d_model=16, mlp_dim=32, n_heads=2, n_kv_heads=1, head_dim=8
  )
  return models.Decoder(cfg, rngs=nnx.Rngs(seed))


def _batch():
  tokens = np.random.default_rng(0).integers(1, 29, (2, 8)).astype(np.int32)
  return Batch(
    tokens=jnp.asarray(tokens),
    targets=jnp.asarray(np.roll(tokens, -1, axis=1)),
    loss_mask=jnp.ones((2, 8), jnp.float32),
    segment_ids=jnp.ones((2, 8), jnp.int32),
    positions=jnp.asarray(np.tile(np.arange(8, dtype=np.int32), (2, 1))),
    roles=jnp.full((2, 8), ROLE_ANSWER, jnp.int32),
  )


def _optim_config(**kw):
  c = config_dict.ConfigDict(
    dict(
      name="adamw",
      lr=1e-2,
      warmup_steps=0,
      decay="constant",
      final_lr_frac=1.0,
      weight_decay=0.1,  # moves every trained entry, even one with a zero gradient
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      grad_clip=1.0,
    )
  )
  c.update(kw)
  return c


def _leaves(tree):
  return dict(zip(train.param_paths(tree), jax.tree.leaves(tree), strict=True))


def test_split_trains_only_matching_parameters():
  graphdef, params, rest = train.split_model(_model(), train.trainable_filter(r"attn\.q_proj"))
  trained = set(train.param_paths(params))
  assert trained and all("attn.q_proj" in p for p in trained)
  assert all("attn.q_proj" not in p for p in train.param_paths(rest))
  optimizer, _ = optim.make_optimizer(_optim_config(), 10)
  state = train.init_train_state(params, optimizer, 0)
  before_rest = jax.tree.map(np.asarray, rest)
  step = train.make_train_step(
    train.objective_for("cross_entropy", graphdef), optimizer, donate=False
  )
  for _ in range(3):
    state, m = step(state, _batch(), {"rest": rest})
  assert float(m["train/grad_norm"]) > 0
  moved = [
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True)
  ]
  assert all(moved)
  for a, b in zip(jax.tree.leaves(rest), jax.tree.leaves(before_rest), strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)
  # Only the trained subset has optimizer state (Adam moments of q_proj alone).
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
  n_q = sum(x.size for x in jax.tree.leaves(params))
  assert n_opt <= 2 * n_q + 8


def test_trainable_filter_errors_and_paths():
  graphdef, params, rest = train.split_model(_model(), train.trainable_filter("nothing_matches"))
  assert not jax.tree.leaves(params)
  paths = train.param_paths(nnx.state(_model(), nnx.Param))
  assert "layers.0.attn.q_proj.kernel" in paths and "embed" in paths


def test_optimizer_mask_freezes_slices_bit_identically():
  """A per-entry mask (head 0 of every q_proj trains, head 1 does not): frozen entries
  are bit-identical after AdamW steps with weight decay, trained ones all move."""
  graphdef, params, rest = train.split_model(_model())

  def trainable(p):
    def mask(path, leaf):
      if "q_proj" in jax.tree_util.keystr(path) and leaf.ndim == 3:  # kernel [D, H, E]
        return jnp.broadcast_to((jnp.arange(leaf.shape[1]) == 0)[None, :, None], leaf.shape)
      return False

    return jax.tree_util.tree_map_with_path(mask, p)

  optimizer, _ = optim.make_optimizer(_optim_config(), 10, trainable=trainable)
  state = train.init_train_state(params, optimizer, 0)
  step = train.make_train_step(
    train.objective_for("cross_entropy", graphdef), optimizer, donate=False
  )
  for _ in range(3):
    state, _ = step(state, _batch(), {"rest": rest})
  new, old = _leaves(state.params), _leaves(params)
  n_q = 0
  for path, x in new.items():
    x, x0 = np.asarray(x), np.asarray(old[path])
    if "q_proj.kernel" in path:
      n_q += 1
      np.testing.assert_array_equal(x[:, 1], x0[:, 1])  # frozen head
      assert np.all(x[:, 0] != x0[:, 0])  # every trained entry moved
    else:
      assert x.tobytes() == x0.tobytes(), path  # whole frozen leaf
  assert n_q == 2


def _sft_config(workdir_init="", trainable="", steps=2):
  c = config_lib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
  c.tokenizer.train_examples = 2000
  c.data.batch_size = 8
  c.data.seq_len = 64
  c.train.steps = steps
  c.train.log_every = 1
  c.train.checkpoint_every = 100
  c.train.progress = False
  c.train.async_checkpoint = False
  c.eval.every = 0
  c.eval.num_examples = 4
  c.eval.batch_size = 4
  c.eval.max_new_tokens = 4
  c.train.init_from = workdir_init
  c.train.trainable = trainable
  return c


def _saved_params(workdir):
  from jaxpost import checkpoint

  return checkpoint.saved_params(workdir)


def test_subset_run_from_another_run_keeps_the_rest_bit_identical(tmp_path):
  """Run B starts from run A's weights and trains attention only: B's checkpoint holds
  only attention, those moved, and B's frozen weights are A's bit for bit."""
  a_dir, b_dir = str(tmp_path / "a"), str(tmp_path / "b")
  sft.run(_sft_config(), a_dir)
  b_result = sft.run(_sft_config(a_dir, trainable=r"\.attn\."), b_dir)
  assert b_result["step"] == 2
  a, b = _saved_params(a_dir), _saved_params(b_dir)
  assert set(b) == {p for p in a if ".attn." in p}
  assert all(not np.array_equal(b[p], a[p]) for p in b)
  # The frozen rest is what B built from A: rebuild it the way the recipe does.
  from jaxpost.recipes import common

  c = _sft_config(a_dir, trainable=r"\.attn\.")
  tok = common.load_tokenizer(c, b_dir)
  model = common.build_model(c, tok.vocab_size)
  _, _, rest = train.split_model(model, train.trainable_filter(c.train.trainable))
  for path, x in _leaves(rest).items():
    assert np.asarray(x).tobytes() == a[path].tobytes(), path
  rows = [r for r in _read(b_dir) if "model/trainable_params" in r]
  assert rows and rows[0]["model/trainable_params"] < rows[0]["model/params"]


def _read(workdir):
  from jaxpost import metrics

  return metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))


def test_bad_trainable_and_init_from_fail_before_work(tmp_path):
  c = _sft_config(trainable="(")
  with pytest.raises(config_lib.ConfigError, match="train.trainable"):
    config_lib.validate(c)
  c = _sft_config(str(tmp_path / "nowhere"))
  with pytest.raises(config_lib.ConfigError, match="train.init_from"):
    config_lib.validate(c)
  c = _sft_config(trainable="no_such_parameter")
  with pytest.raises(config_lib.ConfigError, match="matches no parameter"):
    sft.run(c, str(tmp_path / "run"))


def test_sgd_update_of_a_zero_gradient_is_zero():
  """The mask's guarantee in the simplest case: optax's update is exactly 0 where masked."""
  params = {"w": jnp.arange(4.0)}
  opt = optim.mask_updates(lambda p: {"w": jnp.array([True, False, True, False])})
  updates, _ = opt.update({"w": jnp.ones(4)}, opt.init(params), params)
  np.testing.assert_array_equal(updates["w"], [1.0, 0.0, 1.0, 0.0])
  with pytest.raises(ValueError, match="needs params"):
    opt.update({"w": jnp.ones(4)}, opt.init(params))
  assert isinstance(optax.chain(opt), optax.GradientTransformation)
