"""The shared train step: micro-batching, packing and optimisation invariances."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpost import models, train
from jaxpost.data import packing
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, Batch


@functools.cache
def _model_parts(seed=0):
  cfg = models.named_config(
    "tiny", vocab_size=37, n_layers=2, d_model=32, mlp_dim=64, n_heads=4, n_kv_heads=2, head_dim=8
  )
  return train.split_model(models.Decoder(cfg, rngs=nnx.Rngs(seed)))


def _objective():
  graphdef, _, _ = _model_parts()
  return train.objective_for("cross_entropy", graphdef)


def _source(seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(4, 12, 64)

  def source(i):
    n = int(lengths[i])
    tokens = np.random.default_rng([seed, i]).integers(1, 37, n).astype(np.int32)
    roles = np.array([ROLE_PROMPT] * 2 + [ROLE_ANSWER] * (n - 2), np.int32)
    return tokens, roles

  return source


def _batch(pack, b=8, t=24, seed=0):
  arrays, _, _ = packing.pack_batch(_source(seed), 0, batch_size=b, seq_len=t, pack=pack)
  return Batch(**{k: jnp.asarray(v) for k, v in arrays.items()})


def _loss_and_grad(batch, microbatches=1):
  _, params, rest = _model_parts()
  return _compiled_loss_and_grad(microbatches)(params, rest, batch)


@functools.cache
def _compiled_loss_and_grad(microbatches):
  """Jitted: op-by-op dispatch of the forward and backward took ~50 s of the suite."""
  objective = _objective()

  def loss_and_grad(params, rest, batch):
    loss, _, grads, _ = train.accumulate_grads(
      objective, params, {"rest": rest}, batch, microbatches
    )
    return loss, grads

  return jax.jit(loss_and_grad)


def _assert_trees_close(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_packed_equals_unpacked():
  """Packing examples into shared rows changes neither loss nor gradient."""
  packed = _batch(pack=True, b=4, t=40)
  n_examples = int(sum(packed.segment_ids.max(axis=1)))
  unpacked = _batch(pack=False, b=n_examples, t=40)
  assert packed.tokens.shape[0] < unpacked.tokens.shape[0]
  lp, gp = _loss_and_grad(packed)
  lu, gu = _loss_and_grad(unpacked)
  np.testing.assert_allclose(float(lp), float(lu), rtol=1e-5)
  _assert_trees_close(gp, gu, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("microbatches", [2, 4])
def test_grad_accumulation_equals_full_batch(microbatches):
  batch = _batch(pack=True)
  l1, g1 = _loss_and_grad(batch, 1)
  lm, gm = _loss_and_grad(batch, microbatches)
  np.testing.assert_allclose(float(l1), float(lm), rtol=1e-5)
  _assert_trees_close(g1, gm, rtol=1e-4, atol=1e-7)


def test_microbatches_must_divide_batch():
  with pytest.raises(ValueError, match="not divisible"):
    _loss_and_grad(_batch(pack=True, b=6), 4)


def test_train_step_decreases_loss_and_counts_steps():
  _, params, rest = _model_parts()
  opt = optax.adam(1e-2)
  state = train.init_train_state(params, opt, 0)
  step = train.make_train_step(_objective(), opt, microbatches=2, donate=False)
  batch = _batch(pack=True)
  losses = []
  for _ in range(15):
    state, m = step(state, batch, {"rest": rest})
    losses.append(float(m["train/loss"]))
  assert int(state.step) == 15
  assert losses[-1] < 0.5 * losses[0]
  assert {"train/loss", "train/grad_norm", "train/tokens", "train/token_accuracy"} <= set(m)
  assert float(m["train/tokens"]) == float(batch.loss_mask.sum())


def test_step_is_deterministic():
  _, params, rest = _model_parts()
  opt = optax.adamw(1e-3)
  step = train.make_train_step(_objective(), opt, donate=False)
  batch = _batch(pack=True)
  outs = []
  for _ in range(2):
    state = train.init_train_state(params, opt, 0)
    for _ in range(3):
      state, _ = step(state, batch, {"rest": rest})
    outs.append(state.params)
  _assert_trees_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize(
  "lm_head,hparams",
  [
    # z-loss differentiates lse: the general per-token-cotangent path.
    ("fused_xla", {"label_smoothing": 0.1, "z_loss": 1e-3}),
    ("fused_pallas", {"label_smoothing": 0.1, "z_loss": 1e-3}),
    # Linear reductions: the gradient-in-forward path.
    ("fused_xla", {"reduction": "sequence_mean", "label_smoothing": 0.1}),
    ("fused_pallas", {}),
  ],
)
def test_fused_lm_head_equals_full_logits(lm_head, hparams):
  """The kernels.lm_head switch changes memory, never the loss, metrics or gradients."""
  graphdef, params, rest = _model_parts()
  batch = _batch(pack=True, b=4, t=16)
  full = train.objective_for("cross_entropy", graphdef, hparams)
  fused = train.objective_for("cross_entropy", graphdef, hparams, lm_head=lm_head, chunk_size=24)
  loss, metrics, grads, _ = train.accumulate_grads(full, params, {"rest": rest}, batch, 2)
  loss_f, metrics_f, grads_f, _ = train.accumulate_grads(fused, params, {"rest": rest}, batch, 2)
  np.testing.assert_allclose(loss_f, loss, rtol=1e-5)
  for k in metrics:
    np.testing.assert_allclose(metrics_f[k], metrics[k], rtol=1e-5, atol=1e-6)
  _assert_trees_close(grads_f, grads, rtol=1e-4, atol=1e-6)


def test_unknown_lm_head_raises():
  graphdef, _, _ = _model_parts()
  with pytest.raises(ValueError, match="lm_head"):
    train.objective_for("cross_entropy", graphdef, lm_head="fast")


def test_frozen_teacher_of_another_size_is_an_argument_not_a_constant():
  """A teacher with another width and depth rides in ``frozen``: the step reads it through
  its own scorer, never updates it, and a new teacher state needs no recompilation."""
  from jaxpost import scoring
  from jaxpost.losses import reduce

  graphdef, params, rest = _model_parts()
  t_cfg = models.named_config(
    "tiny", vocab_size=37, n_layers=1, d_model=48, mlp_dim=32, n_heads=2, n_kv_heads=1, head_dim=8
  )
  t_graph, t_params, t_rest = train.split_model(models.Decoder(t_cfg, rngs=nnx.Rngs(5)))
  student, teacher = scoring.make_scorer(graphdef), scoring.make_scorer(t_graph)

  traces = []  # appended when jit traces the objective, i.e. when the step (re)compiles

  def objective(p, frozen, batch, norm):
    traces.append(1)
    s_logp = jax.nn.log_softmax(student.outputs((p, frozen["rest"]), batch))
    t_logp = jax.nn.log_softmax(teacher.outputs(frozen["teacher"], batch))
    # Forward KL(teacher || student) per token, masked and normalised globally.
    kl = jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)
    return reduce.token_mean(kl, batch.loss_mask, norm), {}

  opt = optax.sgd(0.1)
  step = train.make_train_step(objective, opt, donate=False)
  state = train.init_train_state(params, opt, 0)
  batch = _batch(pack=True)
  frozen = {"rest": rest, "teacher": (t_params, t_rest)}
  losses = []
  for _ in range(3):
    state, m = step(state, batch, frozen)
    losses.append(float(m["train/loss"]))
  assert losses[-1] < losses[0]  # the student moves towards the teacher
  other = jax.tree.map(lambda x: x * 0.5, t_params)
  _, m_other = step(state, batch, {"rest": rest, "teacher": (other, t_rest)})
  assert float(m_other["train/loss"]) != losses[-1]  # the teacher is read, not baked in
  assert len(traces) == 1  # and swapping it did not retrace (so not recompile)


def _poisoned(objective):
  """The objective, but NaN for a batch whose first token is 0 (a marker)."""

  def poisoned(params, frozen, batch, norm):
    loss, metrics = objective(params, frozen, batch, norm)
    return jnp.where(batch.token_batch.tokens[0, 0] == 0, jnp.nan, loss), metrics

  return poisoned


def test_nonfinite_step_leaves_the_state_untouched():
  """A NaN loss (hence NaN gradient) is skipped whole: params, Adam moments, step; the
  next finite step is exactly the step the run would have taken without the bad batch."""
  _, params, rest = _model_parts()
  opt = optax.adamw(1e-2)
  step = train.make_train_step(_poisoned(_objective()), opt, donate=False)
  good = _batch(pack=True)
  bad = good.replace(tokens=good.tokens.at[0, 0].set(0))
  frozen = {"rest": rest}
  start, _ = step(train.init_train_state(params, opt, 0), good, frozen)  # Adam moments set
  after_bad, m = step(start, bad, frozen)
  assert float(m["train/skipped_nonfinite"]) == 1.0 and np.isnan(float(m["train/loss"]))
  _assert_trees_close(after_bad, start, rtol=0, atol=0)  # every leaf, step and opt_state
  clean, m_clean = step(start, good, frozen)
  resumed, _ = step(after_bad, good, frozen)
  assert float(m_clean["train/skipped_nonfinite"]) == 0.0
  assert int(clean.step) == int(start.step) + 1
  _assert_trees_close(resumed, clean, rtol=0, atol=0)


def test_nonfinite_update_in_a_scan_skips_only_that_update():
  """make_update: of U updates over one batch, a non-finite one is skipped alone."""
  _, params, rest = _model_parts()
  opt = optax.adam(1e-2)
  good = _batch(pack=True)
  batch = good.replace(tokens=good.tokens.at[4, 0].set(0))  # rows 4.. hold the marker
  update = train.make_update(_poisoned(_objective()), opt, donate=False)
  order = jnp.asarray([[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]], jnp.int32)
  state, m = update(train.init_train_state(params, opt, 0), batch, {"rest": rest}, order)
  np.testing.assert_array_equal(np.asarray(m["train/skipped_nonfinite"]), [0.0, 1.0, 0.0])
  assert int(state.step) == 2
  expected, _ = update(train.init_train_state(params, opt, 0), batch, {"rest": rest}, order[::2])
  _assert_trees_close(state, expected, rtol=0, atol=0)


def test_finite_step_is_exactly_the_optimizer_update():
  """The skip guard changes nothing on a finite step: params and optimizer state equal
  one plain optax update with the same gradient (up to the summation order of two
  separately compiled gradients)."""
  _, params, rest = _model_parts()
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
  state = train.init_train_state(params, opt, 0)
  batch = _batch(pack=True)
  new, _ = train.make_train_step(_objective(), opt, donate=False)(state, batch, {"rest": rest})
  _, grads = _loss_and_grad(batch)
  updates, opt_state = opt.update(grads, state.opt_state, state.params)
  _assert_trees_close(new.params, optax.apply_updates(state.params, updates), 1e-5, 1e-7)
  _assert_trees_close(new.opt_state, opt_state, 1e-5, 1e-9)
  assert int(new.step) == 1


def test_step_keeps_no_second_copy_of_the_optimizer_state():
  """Compiled temporary memory of a donated Adam step: the gradient computation's plus
  about one parameter-sized buffer (the gradient itself). A select of new vs old state
  for the skip guard made XLA copy every Adam moment first (+2x the parameters)."""
  cfg = models.named_config(
    "tiny", vocab_size=4096, n_layers=2, d_model=128, mlp_dim=256, n_heads=4, n_kv_heads=2,
    head_dim=32,
  )  # fmt: skip
  graphdef, params, rest = train.split_model(models.Decoder(cfg, rngs=nnx.Rngs(0)))
  objective = train.objective_for("cross_entropy", graphdef, lm_head="fused")
  opt = optax.adamw(1e-3)
  state = train.init_train_state(params, opt, 0)
  batch = Batch.from_tokens(jnp.zeros((2, 64), jnp.int32))
  frozen = {"rest": rest}
  step = train.make_train_step(objective, opt)
  step_temp = step.lower(state, batch, frozen).compile().memory_analysis().temp_size_in_bytes

  def grads(p):
    norm = train.compute_normalizers(batch.loss_mask, batch.segment_ids)
    return jax.grad(lambda p: objective(p, frozen, batch, norm)[0])(p)

  grad_temp = jax.jit(grads).lower(params).compile().memory_analysis().temp_size_in_bytes
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  assert step_temp <= grad_temp + 1.25 * param_bytes, (step_temp, grad_temp, param_bytes)


# ----------------------------------------------------------------------------------------
# A stateful loss (DiscFT): its state rides in the train state, through micro-batches.


def _stateful_parts(microbatches=1, teacher=True):
  graphdef, params, rest = _model_parts()
  from jaxpost.losses import LOSSES, init_state
  from jaxpost.scoring import make_scorer

  scorer = make_scorer(graphdef)
  objective = train.make_objective(
    "stateful", scorer, LOSSES.bind("discft", {"negatives": 1}), teacher=scorer, total_steps=4
  )
  opt = optax.sgd(0.5)
  state = train.init_train_state(params, opt, 0, init_state("discft", {"negatives": 1}, 6))
  step = train.make_train_step(objective, opt, microbatches=microbatches, donate=False)
  _, ref_params, _ = _model_parts(seed=1)
  return step, state, {"rest": rest, "teacher": (ref_params, rest)}


def _keyed_batch(ids):
  b = _batch(pack=False, b=8)
  return b.replace(example_ids=jnp.asarray(np.repeat(ids, 2), jnp.int32))


def test_stateful_loss_state_is_threaded_through_microbatches_and_steps():
  """Micro-batches of whole groups give the full batch's loss, gradient and next state
  (distinct ids); the step stores the state, and the next step reads it."""
  batch = _keyed_batch([4, 0, 5, 2])
  outs = []
  for mb in (1, 2):
    step, state, frozen = _stateful_parts(mb)
    one, m1 = step(state, batch, frozen)
    two, m2 = step(one, _keyed_batch([4, 1, 3, 5]), frozen)
    outs.append((one, two, m1, m2))
  (one, two, m1, m2), (one_mb, two_mb, m1_mb, m2_mb) = outs
  _assert_trees_close(one_mb, one, rtol=1e-5, atol=1e-6)
  _assert_trees_close(two_mb, two, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(m1_mb["train/loss"]), float(m1["train/loss"]), rtol=1e-5)
  u1, u2 = np.asarray(one.loss_state["u"]), np.asarray(two.loss_state["u"])
  assert np.all(u1[[0, 2, 4, 5]] != 0) and np.all(u1[[1, 3]] == 0)
  assert u2[0] == u1[0] and u2[2] == u1[2]  # not in the second batch
  assert u2[4] != u1[4] and u2[1] != 0  # updated from the stored value / set
  assert "train/next_loss_state" not in m1 and int(one.step) == 1


def test_stateful_state_is_kept_by_a_skipped_step_and_saved_by_orbax(tmp_path):
  from jaxpost import checkpoint

  step, state, frozen = _stateful_parts()
  one, _ = step(state, _keyed_batch([0, 1, 2, 3]), frozen)
  ref_params, rest = frozen["teacher"]  # a NaN reference: NaN u and loss, step skipped
  poisoned = {**frozen, "teacher": (jax.tree.map(lambda x: x * jnp.nan, ref_params), rest)}
  skipped, m = step(one, _keyed_batch([0, 1, 2, 3]), poisoned)
  assert float(m["train/skipped_nonfinite"]) == 1.0
  np.testing.assert_array_equal(np.asarray(skipped.loss_state["u"]), one.loss_state["u"])
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ckpt.save(1, one, {"next_index": 4})
  restored, data = ckpt.restore(None, like=state)
  _assert_trees_close(restored, one, rtol=0, atol=0)
  assert data["next_index"] == 4


def test_train_state_without_loss_state_keeps_the_checkpoint_layout(tmp_path):
  """No loss state: the pytree is (step, params, opt_state, rng) as before the field
  existed, so older checkpoints restore, and a stateful one has one more key."""
  from jaxpost import checkpoint

  _, params, _ = _model_parts()
  plain = train.init_train_state(params, optax.adam(0.1), 0)
  keys = {checkpoint.key_name(p[0]) for p, _ in jax.tree_util.tree_flatten_with_path(plain)[0]}
  assert keys == {"step", "params", "opt_state", "rng"}
  with_u = plain.replace(loss_state={"u": jnp.zeros(3)})
  keys = {checkpoint.key_name(p[0]) for p, _ in jax.tree_util.tree_flatten_with_path(with_u)[0]}
  assert keys == {"step", "params", "opt_state", "rng", "loss_state"}
  assert jax.tree.map(lambda x: x, with_u).loss_state is not None
