"""Online batch selection (jaxpost/selection.py): UDS's pieces against hand values, the
selection rule against a naive reference, the train step on the kept rows, and a
resumed UDS run (the queue checkpointed) equal to the uninterrupted one."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpost import config_lib, selection, train
from jaxpost.types import Batch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes"))
from tiny_configs import sft_tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("subprocess_env")  # runs share compiled programs


def test_rank_one_logits_have_nuclear_norm_equal_to_frobenius():
  rng = np.random.default_rng(0)
  z = np.stack([np.outer(rng.standard_normal(12), rng.standard_normal(40)) for _ in range(3)])
  got = np.asarray(selection.nuclear_norm(jnp.asarray(z, jnp.float32)))
  np.testing.assert_allclose(got, np.linalg.norm(z.reshape(3, -1), axis=1), rtol=1e-5)
  # and in general it is the sum of singular values (numpy's SVD as the reference)
  w = rng.standard_normal((2, 12, 40)).astype(np.float32)
  want = [np.linalg.svd(m, compute_uv=False).sum() for m in w]
  np.testing.assert_allclose(np.asarray(selection.nuclear_norm(jnp.asarray(w))), want, rtol=1e-5)


def _queue(size, dim):
  return selection.Queue(jnp.zeros((size, dim)), jnp.zeros((), jnp.int32))


def test_an_empty_queue_gives_zero_diversity_then_the_mean_distance_to_what_it_holds():
  e = jnp.asarray([[0.0, 0.0], [3.0, 4.0]])
  q = _queue(4, 2)
  np.testing.assert_array_equal(np.asarray(selection.diversity(e, q)), [0.0, 0.0])
  q = selection.push(q, jnp.asarray([[3.0, 0.0], [0.0, 4.0]]))
  # row 0: distances 3 and 4; row 1: 4 and 3 (the two empty slots do not count)
  np.testing.assert_allclose(np.asarray(selection.diversity(e, q)), [3.5, 3.5])


def test_the_queue_is_fifo_and_wraps_around():
  q = _queue(3, 1)
  for v in range(5):  # 0 1 2 fill it; 3 overwrites 0, 4 overwrites 1
    q = selection.push(q, jnp.asarray([[float(v)]]))
  assert int(q.count) == 5
  np.testing.assert_array_equal(np.asarray(q.items)[:, 0], [3.0, 4.0, 2.0])
  q = selection.push(q, jnp.asarray([[5.0], [6.0]]))  # several at once, in order
  np.testing.assert_array_equal(np.asarray(q.items)[:, 0], [6.0, 4.0, 5.0])


def _ratios(z, r1, r2):
  e = np.asarray(selection.jl_embed(jnp.asarray(z, jnp.float32), r1, r2, seed=3))
  flat = z.reshape(len(z), -1)
  n = len(z)
  return [
    np.linalg.norm(e[i] - e[j]) / np.linalg.norm(flat[i] - flat[j])
    for i in range(n)
    for j in range(i + 1, n)
  ]


def test_the_jl_projection_keeps_pairwise_distances():
  """Stated ratios: within 10% on Gaussian rows (64 x 512 to 8 x 128), within 40% on
  rank-4 rows plus noise (logit-like: the 8 kept token rows see less of them)."""
  rng = np.random.default_rng(0)
  r = _ratios(rng.standard_normal((12, 64, 512)), 8, 128)
  assert 0.9 < min(r) and max(r) < 1.1
  low = rng.standard_normal((12, 64, 4)) @ rng.standard_normal((4, 512))
  r = _ratios(low + 0.1 * rng.standard_normal((12, 64, 512)), 8, 128)
  assert 0.6 < min(r) and max(r) < 1.4
  # Smaller axes than r1 / r2 are kept whole (exact up to the unitary DFT and the scale).
  small = rng.standard_normal((4, 6, 16))
  np.testing.assert_allclose(_ratios(small, 8, 128), 1.0, rtol=1e-5)


def _naive_choose(score, eligible, emb, alpha, pool, keep, queue_len):
  """Group by group: scores plus alpha x mean distance to the queue so far, top keep."""
  queue, kept, ok = [], [], []
  for g in range(len(score) // pool):
    rows = range(g * pool, (g + 1) * pool)
    s = []
    for i in rows:
      d = np.mean([np.linalg.norm(emb[i] - q) for q in queue]) if queue else 0.0
      s.append(score[i] + alpha * d if eligible[i] else -np.inf)
    top = list(np.argsort(-np.asarray(s), kind="stable")[:keep])
    for t in top:
      kept.append(g * pool + t)
      ok.append(eligible[g * pool + t])
      queue = (queue + [emb[g * pool + t]])[-queue_len:]
  return kept, ok


def test_choose_matches_the_group_by_group_reference():
  rng = np.random.default_rng(1)
  b, pool, keep, dim = 12, 4, 2, 5
  score = rng.standard_normal(b).astype(np.float32)
  emb = rng.standard_normal((b, dim)).astype(np.float32)
  eligible = rng.random(b) > 0.25
  rows = selection.RowScores(jnp.asarray(score), jnp.asarray(eligible), jnp.asarray(emb), 0.7)
  index, ok, q, _ = selection.choose(rows, _queue(3, dim), pool, keep)
  kept, want_ok = _naive_choose(score, eligible, emb, 0.7, pool, keep, 3)
  for g in range(b // pool):  # top_k's order within a group is by score
    assert sorted(np.asarray(index)[g * keep : (g + 1) * keep]) == sorted(
      kept[g * keep : (g + 1) * keep]
    )
  assert sorted(np.asarray(ok).tolist()) == sorted(want_ok)
  assert int(q.count) == 6
  # without embeddings (random, max_loss, fit): no queue, plain top keep per group
  plain = selection.RowScores(jnp.asarray(score), jnp.ones(b, bool))
  index, _, state, _ = selection.choose(plain, None, pool, keep)
  assert state is None
  want = [g * pool + i for g in range(3) for i in np.argsort(-score[g * pool : (g + 1) * pool])[:2]]
  assert sorted(np.asarray(index).tolist()) == sorted(want)


@pytest.fixture(scope="module")
def tiny_model(random_decoder):

  from jaxpost import models

  model = random_decoder(models.named_config("tiny", vocab_size=32))
  graphdef, params, rest = train.split_model(model)
  return graphdef, params, rest


def _batch(b=8, t=16, vocab=32, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, (b, t), dtype=np.int32)
  lengths = rng.integers(6, t + 1, b)
  seg = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  mask = seg.astype(np.float32)
  mask[:, :3] = 0.0
  return Batch(
    tokens=jnp.asarray(tokens), targets=jnp.asarray(np.roll(tokens, -1, 1) * seg),
    loss_mask=jnp.asarray(mask), segment_ids=jnp.asarray(seg),
    positions=jnp.asarray(np.broadcast_to(np.arange(t), (b, t)).astype(np.int32)),
    roles=jnp.asarray(seg * 2),
  )  # fmt: skip


def _row_nll_reference(graphdef, params, rest, batch):
  from flax import nnx

  model = nnx.merge(graphdef, params, rest)
  logits = np.asarray(model(batch.tokens, positions=batch.positions, segment_ids=batch.segment_ids),
                      np.float64)  # fmt: skip
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, np.asarray(batch.targets)[..., None], -1)[..., 0]
  m = np.asarray(batch.loss_mask)
  return (nll * m).sum(1) / np.maximum(m.sum(1), 1)


def test_max_loss_and_fit_keep_the_rows_a_naive_reference_picks(tiny_model):
  from jaxpost.scoring import make_scorer

  graphdef, params, rest = tiny_model
  batch = _batch()
  nll = _row_nll_reference(graphdef, params, rest, batch)
  scorer = make_scorer(graphdef)
  key = jax.random.key(0)
  sel = selection.make_select("max_loss", {}, pool=4, keep=2, scorer=scorer)
  kept, state, metrics = sel(params, {"rest": rest}, batch, None, key)
  want = [g * 4 + i for g in range(2) for i in np.argsort(-nll[g * 4 : (g + 1) * 4])[:2]]
  picked = [int(np.where((np.asarray(batch.tokens) == np.asarray(r)).all(1))[0][0])
            for r in kept.tokens]  # fmt: skip
  assert sorted(picked) == sorted(want) and state is None
  np.testing.assert_allclose(float(metrics["select/score"]), nll[want].mean(), rtol=1e-4)
  # fit: a band holding only some rows; a kept row outside it is not trained on
  lo, hi = np.sort(nll)[2], np.sort(nll)[5]
  sel = selection.make_select("fit", {"min_nll": float(lo), "max_nll": float(hi)}, pool=4,
                              keep=2, scorer=scorer)  # fmt: skip
  kept, _, metrics = sel(params, {"rest": rest}, batch, None, key)
  for row, m in zip(np.asarray(kept.tokens), np.asarray(kept.loss_mask), strict=True):
    i = int(np.where((np.asarray(batch.tokens) == row).all(1))[0][0])
    inside = lo <= nll[i] <= hi
    assert (m.sum() > 0) == inside
  in_band = (nll >= lo) & (nll <= hi)
  want = sum(min(2, in_band[g * 4 : (g + 1) * 4].sum()) for g in range(2)) / 4
  assert float(metrics["select/eligible"]) == pytest.approx(want)


def test_the_step_trains_on_the_kept_rows_only(tiny_model):
  """A selecting step's loss and update equal a plain step on the rows it kept."""
  from jaxpost.scoring import make_scorer

  graphdef, params, rest = tiny_model
  batch = _batch(seed=2)
  obj = train.objective_for("cross_entropy", graphdef)
  opt = optax.sgd(0.1)
  sel = selection.make_select("uds", {"queue": 4}, pool=4, keep=1, scorer=make_scorer(graphdef))
  state = train.init_train_state(params, opt, 0, select_state=selection.init_state(
    "uds", {"queue": 4}, seq_len=16, vocab=32))  # fmt: skip
  step = train.make_train_step(obj, opt, select=sel, donate=False)
  new, m = step(state, batch, {"rest": rest})
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), train.SELECT_SALT)
  kept, queue, _ = sel(params, {"rest": rest}, batch, state.select_state, key)
  assert kept.tokens.shape == (2, 16) and int(new.select_state.count) == 2
  np.testing.assert_allclose(np.asarray(new.select_state.items), np.asarray(queue.items),
                             atol=1e-4)  # fmt: skip
  plain, pm = train.make_train_step(obj, opt, donate=False)(
    train.init_train_state(params, opt, 0), kept, {"rest": rest}
  )
  np.testing.assert_allclose(float(m["train/loss"]), float(pm["train/loss"]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(plain.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  # a state without a selector keeps its four items (old checkpoints restore)
  paths = [jax.tree_util.keystr(p[:1]) for p, _ in jax.tree_util.tree_flatten_with_path(
    train.init_train_state(params, optax.adam(1e-3), 0))[0]]  # fmt: skip
  assert sorted(set(paths)) == [".opt_state", ".params", ".rng", ".step"]


def _uds(**overrides):
  return sft_tiny(**{
    "data.pack": False, "data.batch_size": 32, "select.name": "uds", "select.uds.queue": 6,
    "train.steps": 4, "train.checkpoint_every": 2, **overrides,
  })  # fmt: skip


def test_a_resumed_uds_run_equals_the_uninterrupted_one(tmp_path):
  """The queue is checkpointed: stopped at step 2 (16 pushes into 6 slots: wrapped) and
  resumed, the run ends with the same parameters and queue, on 8 devices."""
  from jaxpost import checkpoint
  from jaxpost.recipes import sft

  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  sft.run(_uds(), whole)
  sft.run(_uds(**{"train.stop_at": 2}), parts)
  assert checkpoint.latest_state_tree(parts)["step"] == 2
  sft.run(_uds(), parts)
  a, b = checkpoint.latest_state_tree(whole), checkpoint.latest_state_tree(parts)
  assert int(np.asarray(a["select_state"]["count"])) == 4 * 8  # 8 groups of 4, keep 1
  np.testing.assert_array_equal(np.asarray(a["select_state"]["items"]),
                                np.asarray(b["select_state"]["items"]))  # fmt: skip
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"select.keep": 5}, "select.keep=5 > select.pool=4"),
    ({"select.pool": 3}, "not a multiple of select.pool=3"),
    ({"select.fit.min_nll": 3.0, "select.fit.max_nll": 1.0, "select.name": "fit"}, "min_nll"),
    ({"select.uds.alpha": -1.0}, "select.uds.alpha"),
  ],
)
def test_bad_selection_configs_are_refused(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_uds(**overrides))
