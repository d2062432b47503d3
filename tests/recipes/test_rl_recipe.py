"""The RL recipe: its update step (micro-batches, 8 devices), scoring, host logic, end to end."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tiny_configs import train_records  # tests/recipes

from jaxpost import config_lib, models, scoring, sharding, train
from jaxpost.data import pipeline, tasks, template
from jaxpost.losses import advantages
from jaxpost.recipes import rl
from jaxpost.rewards import token as token_rewards
from jaxpost.rollout import batching, sampler
from jaxpost.rollout import groups as groups_lib
from jaxpost.types import ROLE_THINK, Batch, Rollout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V, B, T = 32, 16, 12  # vocab, rows, columns of the hand-made rollouts

# A persistent compilation cache for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("subprocess_env")


def _config(variant="tiny", **overrides):
  """configs/grpo.py:<variant>; overrides are 'section.key': value."""
  c = config_lib.load_config(os.path.join(REPO, f"configs/grpo.py:{variant}"))
  c.train.progress = False
  for field, value in overrides.items():
    config_lib.set_field(c, field, value)
  return c


def _score_fn(graphdef, **options):
  """Jitted (params, rest, batch) -> (logp, entropy) of a scorer with ``options``."""
  fn = scoring.jit_logp(scoring.make_scorer(graphdef, **options))
  return lambda params, rest, batch: fn((params, rest), batch)


def _tiny_model(seed=0):
  """The tiny architecture, narrowed further so that each test compiles in seconds."""
  config = models.named_config(
    "tiny", vocab_size=V, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64
  )
  return train.split_model(models.create_model(config, seed))


def _rollout(seed=0) -> Rollout:
  """B rows of prompt (3 tokens) + completion (random length), random advantages/logps."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(4, T, size=B)
  tokens = rng.integers(1, V, size=(B, T)).astype(np.int32)
  real = np.arange(T)[None] < lengths[:, None]
  batch = Batch.from_tokens(np.where(real, tokens, 0), real.astype(np.int32))
  completion = (np.arange(T)[None] >= 2) & (np.asarray(batch.loss_mask) > 0)
  batch = batch.replace(loss_mask=jnp.asarray(completion, jnp.float32))
  mask = completion.astype(np.float32)
  adv = np.repeat(rng.normal(size=B // 4), 4)  # groups of 4 rows share an advantage
  return Rollout(
    batch=batch,
    advantages=jnp.asarray(adv[:, None] * mask, jnp.float32),
    old_logp=jnp.asarray(-2.0 - 0.3 * rng.random((B, T)), jnp.float32) * mask,
    sampler_logp=jnp.asarray(-2.0 - 0.3 * rng.random((B, T)), jnp.float32) * mask,
    ref_logp=jnp.asarray(-2.0 - 0.3 * rng.random((B, T)), jnp.float32) * mask,
    group_ids=jnp.asarray(np.repeat(np.arange(B // 4), 4), jnp.int32),
    turn_ids=jnp.asarray(mask, jnp.int32),
  )


# Hyperparameters that exercise the KL, entropy, IS-correction and MinPRO paths at once.
_HPARAMS = dict(
  kl_coef=0.1, entropy_coef=0.01, is_level="token", prefix="min_exclusive", dual_clip=True
)


def _step(microbatches, loss="grpo", hparams=_HPARAMS, lm_head="logits"):
  graphdef, params, rest = _tiny_model()
  # SGD: the update is linear in the gradient, so comparing parameters compares gradients
  # (Adam's first step, ~lr * sign(g), would amplify float noise in near-zero entries).
  optimizer = optax.sgd(0.5)
  state = train.init_train_state(params, optimizer, 0)
  objective = train.objective_for(loss, graphdef, hparams, temperature=0.7, lm_head=lm_head)
  step = train.make_train_step(objective, optimizer, microbatches=microbatches, donate=False)
  return state, rest, step


def _assert_close(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_micro_batched_update_equals_full_batch():
  rollout = _rollout()
  state, rest, full = _step(1)
  new_full, m_full = full(state, rollout, {"rest": rest})
  _, _, split = _step(4)
  new_split, m_split = split(state, rollout, {"rest": rest})
  assert float(m_full["train/grad_norm"]) > 1e-3  # a real update, not a zero gradient
  assert float(m_full["train/kl"]) > 0 and float(m_full["train/entropy"]) > 0
  for k in m_full:
    np.testing.assert_allclose(m_split[k], m_full[k], rtol=2e-5, atol=1e-6, err_msg=k)
  _assert_close(new_split.params, new_full.params, rtol=1e-5, atol=1e-6)
  # And the update moved the parameters.
  moved = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(new_full.params), jax.tree.leaves(state.params), strict=True)
  )
  assert moved > 1e-5


def test_sharded_update_on_8_devices_equals_single_device():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  rollout = _rollout(seed=1)
  state, rest, step = _step(2, loss="dapo", hparams={"entropy_coef": 0.01})
  single, m_single = step(state, rollout, {"rest": rest})

  c = _config()
  c.mesh.data = 8
  mesh = sharding.make_mesh(c)
  s_state = sharding.shard_train_state(state, mesh, sharding.DEFAULT_RULES)
  s_rest = sharding.shard_tree(rest, mesh, sharding.DEFAULT_RULES)
  s_rollout = sharding.shard_batch(jax.device_get(rollout), mesh)
  assert len(s_rollout.advantages.sharding.device_set) == 8
  sharded, m_sharded = step(s_state, s_rollout, {"rest": s_rest})
  for k in m_single:
    np.testing.assert_allclose(m_sharded[k], m_single[k], rtol=2e-5, atol=1e-6, err_msg=k)
  _assert_close(sharded.params, single.params, rtol=1e-5, atol=1e-6)


def test_fused_head_update_equals_logits_update():
  rollout = _rollout(seed=2)
  state, rest, step = _step(1)
  ref, m_ref = step(state, rollout, {"rest": rest})
  _, _, fused = _step(1, lm_head="fused_xla")
  out, m_out = fused(state, rollout, {"rest": rest})
  for k in m_ref:
    np.testing.assert_allclose(m_out[k], m_ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
  _assert_close(out.params, ref.params, rtol=1e-4, atol=1e-5)


def test_trainer_scores_what_the_sampler_recorded():
  """old_logp == the sampler's log_softmax(logits / T): the PPO ratio starts at 1."""
  graphdef, params, rest = _tiny_model(seed=3)
  state = nnx.merge_state(params, rest)
  gen = sampler.make_generate_fn(graphdef, max_new_tokens=6, eos_id=-1, temperature=0.7)
  prompts = [[3, 4, 5], [6, 7], [8]]
  tokens, mask, out = sampler.generate_groups(gen, state, prompts, 2, jax.random.key(0))
  laid = batching.rollout_batch(tokens, mask, out)
  score = _score_fn(graphdef, temperature=0.7, lm_head="logits", chunk_size=0)
  logp, entropy = score(params, rest, laid.batch)
  on = laid.batch.loss_mask > 0
  assert on.sum() == 6 * 6
  np.testing.assert_allclose(np.asarray(logp)[on], laid.sampler_logp[on], atol=2e-5)
  # At temperature 0.7 the scores differ from the temperature-1 ones: the test can fail.
  logp1, _ = _score_fn(graphdef, temperature=1.0, lm_head="logits", chunk_size=0)(
    params, rest, laid.batch
  )
  assert np.max(np.abs(np.asarray(logp1)[on] - laid.sampler_logp[on])) > 1e-2
  assert np.all(np.asarray(entropy)[on] > 0)


def _rollout_of(laid, logp, group_size: int, seed: int = 0) -> Rollout:
  """A Rollout over sampled rows: random advantages, pi_old / pi_ref off ``logp`` so the
  ratio is not 1 (the clip matters) and the KL is not 0."""
  on = laid.batch.loss_mask > 0
  rng = np.random.default_rng(seed)
  return Rollout(
    batch=laid.batch,
    advantages=(rng.normal(size=on.shape) * on).astype(np.float32),
    old_logp=np.asarray(logp) - 0.05 * on,
    sampler_logp=laid.sampler_logp,
    ref_logp=np.asarray(logp) + 0.1 * on,
    group_ids=np.repeat(np.arange(on.shape[0] // group_size, dtype=np.int32), group_size),
    turn_ids=on.astype(np.int32),
  )


def _assert_same_updates(graphdef, params, rest, rollout, variants, tol, **head):
  """One SGD step of the grpo loss per variant of ``policy_objective``'s options (plus
  ``microbatches``); all give the first one's metrics and parameters."""
  optimizer = optax.sgd(0.5)
  train_state = train.init_train_state(params, optimizer, 0)
  results = []
  for variant in variants:
    options = {**head, **variant}
    microbatches = options.pop("microbatches", 1)
    objective = train.objective_for("grpo", graphdef, _HPARAMS, **options)
    step = train.make_train_step(objective, optimizer, microbatches=microbatches, donate=False)
    results.append(step(train_state, jax.tree.map(jnp.asarray, rollout), {"rest": rest}))
  (a, m_a), *others = results
  assert float(m_a["train/grad_norm"]) > 1e-3
  for b, m_b in others:
    for k in m_a:
      np.testing.assert_allclose(m_b[k], m_a[k], rtol=tol[0], atol=tol[1], err_msg=k)
    _assert_close(b.params, a.params, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("lm_head", ["logits", "fused_xla"])
def test_completion_window_scores_and_updates_like_the_full_head(lm_head):
  """The LM head on the completion window only: same logp/entropy on the loss mask,
  zeros elsewhere, and the same policy update, for prompts of different lengths."""
  graphdef, params, rest = _tiny_model(seed=4)
  gen = sampler.make_generate_fn(graphdef, max_new_tokens=6, eos_id=-1, temperature=1.5)
  prompts = [[3, 4, 5, 6, 7], [6, 7], [8], [9, 10, 11]]
  state = nnx.merge_state(params, rest)
  tokens, mask, out = sampler.generate_groups(gen, state, prompts, 2, jax.random.key(1))
  laid = batching.rollout_batch(tokens, mask, out)
  on = laid.batch.loss_mask > 0
  assert len(set(laid.prompt_lengths.tolist())) > 1  # completions start at different columns
  head = dict(temperature=1.5, lm_head=lm_head, chunk_size=0)
  full = _score_fn(graphdef, **head)(params, rest, laid.batch)
  windowed = _score_fn(graphdef, window=6, **head)(params, rest, laid.batch)
  for a, b in zip(full, windowed, strict=True):
    np.testing.assert_allclose(np.asarray(b)[on], np.asarray(a)[on], rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(b)[~on] == 0)

  rollout = _rollout_of(laid, full[0], group_size=2)
  variants = ({"window": 0}, {"window": 6})
  _assert_same_updates(graphdef, params, rest, rollout, variants, (2e-5, 1e-6), **head)


@pytest.mark.parametrize("lm_head", ["logits", "fused_xla"])
def test_shared_prompt_forward_scores_and_updates_like_every_row(lm_head):
  """Each group's prompt run once (group_size=G) == every row running its own prompt:
  same logp/entropy, same update, with prompts of different lengths, rows that stopped
  early, and a micro-batched update of whole groups."""
  g = 3
  graphdef, params, rest = _tiny_model(seed=5)
  state = nnx.merge_state(params, rest)
  prompts = [[3, 4, 5, 6, 7], [6, 7], [8], [9, 10, 11]]
  free = sampler.make_generate_fn(graphdef, max_new_tokens=6, eos_id=-1, temperature=1.5)
  _, _, out = sampler.generate_groups(free, state, prompts, g, jax.random.key(2))
  eos = int(np.asarray(out.tokens)[0, 2])  # row 0 stops at step 2, others at random
  gen = sampler.make_generate_fn(graphdef, max_new_tokens=6, eos_id=eos, temperature=1.5)
  tokens, mask, out = sampler.generate_groups(gen, state, prompts, g, jax.random.key(2))
  laid = batching.rollout_batch(tokens, mask, out)
  lengths = np.asarray(out.lengths)
  assert lengths.min() < 6 and lengths.max() == 6  # early stops and full rows
  groups_lib.check_prompt_groups(laid.batch, g, window=6)
  on = laid.batch.loss_mask > 0
  head = dict(temperature=1.5, lm_head=lm_head, chunk_size=0, window=6)
  per_row = _score_fn(graphdef, **head)(params, rest, laid.batch)
  shared = _score_fn(graphdef, group_size=g, **head)(params, rest, laid.batch)
  for a, b in zip(per_row, shared, strict=True):
    np.testing.assert_allclose(np.asarray(b)[on], np.asarray(a)[on], rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(b)))  # padding attends to nothing: still finite
  # The shared forward really ran the groups' first prompts (a wrong prompt would not match).
  np.testing.assert_allclose(np.asarray(shared[0])[on], laid.sampler_logp[on], atol=2e-5)

  rollout = _rollout_of(laid, per_row[0], group_size=g)
  variants = ({"group_size": 1}, {"group_size": g, "microbatches": 2})  # whole groups
  _assert_same_updates(graphdef, params, rest, rollout, variants, (1e-4, 1e-5), **head)


def test_shared_prompt_update_on_8_devices_equals_single_device():
  """Groups of 2 rows over 8 devices (one row each): the prompt pass and its cache
  copies cross devices, and the update is still the single-device one."""
  g = 2
  graphdef, params, rest = _tiny_model(seed=7)
  gen = sampler.make_generate_fn(graphdef, max_new_tokens=5, eos_id=-1, temperature=1.5)
  prompts = [[3, 4, 5], [6, 7], [8], [9, 10, 11, 12]]
  state = nnx.merge_state(params, rest)
  tokens, mask, out = sampler.generate_groups(gen, state, prompts, g, jax.random.key(3))
  laid = batching.rollout_batch(tokens, mask, out)
  rollout = _rollout_of(laid, laid.sampler_logp, group_size=g, seed=1)
  optimizer = optax.sgd(0.5)
  objective = train.objective_for(
    "grpo",
    graphdef,
    _HPARAMS,
    temperature=1.5,
    lm_head="logits",
    window=5,
    group_size=g,
  )
  step = train.make_train_step(objective, optimizer, donate=False)
  train_state = train.init_train_state(params, optimizer, 0)
  single, m_single = step(train_state, jax.tree.map(jnp.asarray, rollout), {"rest": rest})

  c = _config()
  c.mesh.data = 8
  mesh = sharding.make_mesh(c)
  s_state = sharding.shard_train_state(train_state, mesh, sharding.DEFAULT_RULES)
  s_rest = sharding.shard_tree(rest, mesh, sharding.DEFAULT_RULES)
  s_rollout = sharding.shard_batch(rollout, mesh)
  sharded, m_sharded = step(s_state, s_rollout, {"rest": s_rest})
  assert float(m_single["train/grad_norm"]) > 1e-3
  for k in m_single:
    np.testing.assert_allclose(m_sharded[k], m_single[k], rtol=2e-5, atol=1e-6, err_msg=k)
  _assert_close(sharded.params, single.params, rtol=1e-5, atol=1e-6)


def test_check_prompt_groups_rejects_mixed_groups():
  graphdef, params, rest = _tiny_model(seed=6)
  gen = sampler.make_generate_fn(graphdef, max_new_tokens=4, eos_id=-1, temperature=1.0)
  state = nnx.merge_state(params, rest)
  tokens, mask, out = sampler.generate_groups(gen, state, [[3, 4], [5]], 2, jax.random.key(0))
  batch = batching.rollout_batch(tokens, mask, out).batch
  groups_lib.check_prompt_groups(batch, 2, window=4)
  swapped = jax.tree.map(lambda x: np.asarray(x)[[0, 2, 1, 3]], batch)  # groups mixed
  with pytest.raises(ValueError, match=r"groups \[0, 1\] do not share one prompt"):
    groups_lib.check_prompt_groups(swapped, 2, window=4)
  with pytest.raises(ValueError, match="do not split into groups of 3"):
    groups_lib.check_prompt_groups(batch, 3, window=4)
  with pytest.raises(ValueError, match="does not fit"):
    groups_lib.check_prompt_groups(batch, 2, window=5)


def test_sample_groups_tags_roles_as_the_sft_template(tmp_path):
  """A sampled completion in the template's format gets the roles SFT gives the same
  tokens (think block = ROLE_THINK, answer + EOS = ROLE_ANSWER), and its reward."""
  c = _config()
  tok = pipeline.prepare_tokenizer(c, str(tmp_path))
  problem = tasks.Problem("add3", "123+456", "3+6=9,2+5=7,1+4=5", "579")
  right = template.encode_example(tok, template.Example(problem.prompt, problem.thinking, "579"))
  wrong = template.encode_example(tok, template.Example(problem.prompt, "", "578"))
  n_prompt = len(template.encode_prompt(tok, problem.prompt))
  completions = [e.tokens[n_prompt:] for e in (right, wrong)]
  n = max(map(len, completions))

  def generate_fn(state, tokens, mask, keys, *, group_size):
    assert group_size == 2 and tokens.shape[0] == 2
    out = np.zeros((2, n), np.int32)
    for row, ids in enumerate(completions):
      out[row, : len(ids)] = ids
    return sampler.GenerateOutput(
      tokens=out,
      lengths=np.asarray([len(x) for x in completions], np.int32),
      logp=np.zeros((2, n), np.float32),
      filtered_logp=np.zeros((2, n), np.float32),
      stopped=np.ones(2, bool),
    )

  spec = rl.reward_spec(c)
  groups, _ = groups_lib.sample_groups(
    generate_fn, None, tok, [problem], 2, jax.random.key(0), spec, timeout_s=None
  )
  np.testing.assert_array_equal(groups.rewards, [1.0, 0.0])
  for row, enc in enumerate((right, wrong)):
    on = groups.batch.loss_mask[row] > 0
    # Target j is token j + 1: the completion targets' roles are the tokens' SFT roles.
    np.testing.assert_array_equal(groups.batch.roles[row][on], enc.roles[n_prompt:])
    assert np.sum(groups.batch.roles[row] == ROLE_THINK) > 0


def test_loss_hparams_are_the_presets_and_resolve_dr_grpo_c():
  c = _config()
  assert c.loss.dapo.clip_eps_high == 0.28 and c.loss.gspo.ratio == "sequence"  # presets
  assert config_lib.load_config("configs/grpo.py:qwen2.5-0.5b").loss.grpo.kl_coef == 0.04
  c = _config(
    **{"loss.name": "dr_grpo", "loss.dr_grpo.clip_eps_high": 0.28, "rl.max_new_tokens": 16}
  )
  h = rl.loss_hparams(c, rows_per_update=8)
  assert h["clip_eps_high"] == 0.28
  assert h["agg_constant"] == 8 * 16  # (1/G) sum_i sum_t / L_max per group of the update
  c.loss.dr_grpo.agg_constant = 5.0
  assert rl.loss_hparams(c, 8)["agg_constant"] == 5.0
  c.loss.dr_grpo.agg_constant = 0.0
  c.loss.dr_grpo.agg = "token_mean"
  assert rl.loss_hparams(c, 8)["agg_constant"] == 0.0  # only seq_mean_token_sum_norm uses C


def test_kl_in_the_reward_by_hand():
  """The kl_penalty token reward (mode "outcome") shapes the sequence reward: r - beta sum KL."""
  old = np.array([[-1.0, -2.0, 0.0]], np.float32)
  ref = np.array([[-1.5, -1.0, 9.0]], np.float32)
  mask = np.array([[1.0, 1.0, 0.0]], np.float32)
  groups = dataclasses.replace(
    _fake_groups(np.ones((1, 1)), 0), batch=Batch.from_tokens(np.zeros((1, 3), np.int32))
  )
  groups = dataclasses.replace(groups, batch=groups.batch.replace(loss_mask=mask))
  scores = {"old_logp": old, "ref_logp": ref}
  for estimator, kl_sum in (("k1", -0.5), ("k2", 0.125 + 0.5)):
    # k1 = old - ref = 0.5 and -1.0 (the masked 9.0 never counts); k2 = d^2 / 2.
    spec = token_rewards.make_spec((("kl_penalty", 0.1),), {"kl_penalty": {"estimator": estimator}})
    by_mode, _ = token_rewards.score(spec, groups, scores)
    assert set(by_mode) == {"outcome"}
    _, _, shaped = advantages.combine(
      np.array([1.0]), by_mode, mask, estimator="grpo", group_size=1
    )
    np.testing.assert_allclose(shaped, [1.0 - 0.1 * kl_sum], rtol=1e-6)
  assert token_rewards.needs(spec) == {"old_logp", "ref_logp"}
  with pytest.raises(ValueError, match="needs scores"):
    token_rewards.score(spec, groups, {"old_logp": old, "ref_logp": None})


def _fake_groups(rewards_pg: np.ndarray, start: int) -> groups_lib.Groups:
  """Groups of P prompts x G rows whose tokens record (prompt index, sample)."""
  p, g = rewards_pg.shape
  tokens = np.zeros((p * g, 4), np.int32)
  tokens[:, 0] = np.repeat(np.arange(start, start + p), g)
  tokens[:, 1] = np.tile(np.arange(g), p)
  batch = Batch.from_tokens(tokens)
  batch = jax.tree.map(np.asarray, batch)
  rows = p * g
  return groups_lib.Groups(
    batch=batch,
    sampler_logp=np.zeros((rows, 4), np.float32),
    raw_logp=np.zeros((rows, 4), np.float32),
    rewards=rewards_pg.reshape(-1).astype(np.float32),
    correct=rewards_pg.reshape(-1) > 0,
    truncated=np.zeros(rows, bool),
    lengths=np.full(rows, 3, np.int32),
    completions=[""] * rows,
    problems=[tasks.Problem("add3", str(start + i), "", "0") for i in range(p)],
  )


def test_dynamic_sampling_keeps_informative_groups_and_refills():
  # Round 0: prompts 0..2, only prompt 1 informative; round 1: prompts 3..5, 3 and 5 are.
  rounds = [
    np.array([[1, 1], [0, 1], [0, 0]], np.float32),
    np.array([[1, 0], [1, 1], [0, 1]], np.float32),
  ]

  def sample_round(k, problems):
    assert [int(q.prompt) for q in problems] == [3 * k, 3 * k + 1, 3 * k + 2]
    return _fake_groups(rounds[k], 3 * k), {"reward/mean": float(rounds[k].mean())}

  def problem_at(i):
    return tasks.Problem("add3", str(i), "", "0")

  groups, ms, n_rounds, filled, nxt = groups_lib.collect_groups(
    sample_round, problem_at, 0, 3, 2, dynamic=True, max_rounds=4
  )
  assert (n_rounds, filled, nxt, len(ms)) == (2, 0, 6, 2)
  assert [q.prompt for q in groups.problems] == ["1", "3", "5"]
  np.testing.assert_array_equal(groups.batch.tokens[:, 0], [1, 1, 3, 3, 5, 5])
  np.testing.assert_array_equal(groups.batch.tokens[:, 1], [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(groups.rewards, [0, 1, 1, 0, 0, 1])

  # One round only: one informative group, two filled from the dropped ones.
  groups, _, n_rounds, filled, nxt = groups_lib.collect_groups(
    sample_round, problem_at, 0, 3, 2, dynamic=True, max_rounds=1
  )
  assert (n_rounds, filled, nxt) == (1, 2, 3)
  assert [q.prompt for q in groups.problems] == ["1", "0", "2"]

  # Without dynamic sampling the first round is used as drawn.
  groups, _, n_rounds, filled, _ = groups_lib.collect_groups(
    sample_round, problem_at, 0, 3, 2, dynamic=False, max_rounds=4
  )
  assert (n_rounds, filled) == (1, 0)
  np.testing.assert_array_equal(groups.rewards, rounds[0].reshape(-1))


class _CharTokenizer:
  """One token per character (ids are code points): step ends are easy to place by hand."""

  eos_id = 1

  def decode(self, ids):
    return "".join(chr(i) for i in ids)


def test_step_token_rewards_by_hand():
  completions = ["<think>2*3=6,6+1=8</think>8", "<think>2*3=6,6+1=7</think>7"]
  g = len(completions)
  rows = [[ord(ch) for ch in "Q"] + [ord(ch) for ch in text] for text in completions]
  t = max(map(len, rows)) + 1
  tokens = np.zeros((g, t), np.int32)
  mask = np.zeros((g, t), np.int32)
  for i, row in enumerate(rows):
    tokens[i, : len(row)] = row
    mask[i, : len(row)] = 1
  batch = jax.tree.map(np.asarray, Batch.from_tokens(tokens, mask))
  batch = batch.replace(loss_mask=batch.loss_mask * (np.arange(t)[None] >= 0))  # all targets
  groups = dataclasses.replace(
    _fake_groups(np.zeros((1, g)), 0), batch=batch, completions=completions
  )
  out = token_rewards.step_correctness(groups, {}, tokenizer=_CharTokenizer())
  # Steps: "2*3=6" right in both rows; "6+1=8" wrong, "6+1=7" right -> raw [1, 0, 1, 1],
  # z-scored: mean 0.75, std sqrt(3)/4.
  z_right, z_wrong = 0.25 / (np.sqrt(3) / 4), -0.75 / (np.sqrt(3) / 4)
  # Target column j predicts token j + 1; "Q<think>2*3=6" ends at token 12 -> column 11.
  end1, end2 = len("Q<think>2*3=6") - 2, len("Q<think>2*3=6,6+1=8") - 2
  expected = np.zeros((g, t), np.float32)
  expected[0, end1], expected[0, end2] = z_right, z_wrong
  expected[1, end1], expected[1, end2] = z_right, z_right
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("loss.name", "cross_entropy", "not a policy loss"),
    ("rl.advantage", "ppo", "rl.advantage"),
    ("loss.grpo.ratio", "tok", "loss.grpo.ratio='tok': must be one of"),
    ("loss.grpo.agg", "mean", "loss.grpo.agg='mean': must be one of"),
    ("loss.grpo.is_level", "row", "loss.grpo.is_level='row': must be one of"),
    ("loss.grpo.prefix", "min", "loss.grpo.prefix='min': must be one of"),
    ("loss.grpo.kl_estimator", "k4", "loss.grpo.kl_estimator='k4': must be one of"),
    ("loss.grpo.kl_coef", -0.5, "loss.grpo.kl_coef=-0.5: must be a finite number >= 0"),
    ("reward.token_terms", (("nope", 1.0),), "reward"),
    ("reward.kl_penalty.estimator", "k9", "reward"),
    ("rl.reference", "/nonexistent/run", "rl.reference"),
    ("rl.temperature", 0.0, "temperature"),
    ("rl.old_logp", "trainer", "rl.old_logp"),
    ("rl.minibatches", 3, "rl.minibatches=3"),
    ("train.microbatches", 4, "rl.shared_prompt"),
    ("rl.max_new_tokens", 256, "rl.max_new_tokens"),
    ("train.init_from", "/nonexistent/sft", "train.init_from"),
    ("reward.terms", (("nope", 1.0),), "reward"),
    ("reward.workers", 0, "reward.workers=0: must be an int >= 1"),
    ("reward.budget_s", -1.0, "reward.budget_s=-1.0: must be a finite number >= 0"),
    ("reward.timeout_s", float("nan"), "reward.timeout_s=nan"),
    ("data.source", "jsonl", "data.source"),
  ],
)
def test_validate_names_the_rl_field(field, value, match):
  c = _config()
  config_lib.validate(c)
  config_lib.set_field(c, field, value)
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_policy_loss_in_the_sft_recipe_is_rejected():
  c = config_lib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
  c.loss.name = "grpo"
  with pytest.raises(config_lib.ConfigError, match="recipe='rl'"):
    config_lib.validate(c)


def test_shipped_variants_validate():
  for variant in ("tiny", "quickstart", "qwen2.5-0.5b"):
    c = config_lib.load_config(os.path.join(REPO, f"configs/grpo.py:{variant}"))
    assert c.recipe == "rl"
    config_lib.validate(c)


def _run_config(**overrides):
  """A random tiny model whose reward varies (a length penalty), so updates are non-zero."""
  return _config(
    **{
      "reward.terms": (("length", 1.0),),
      "rl.samples_per_prompt": 4,
      "rl.prompts_per_step": 2,
      "rl.max_new_tokens": 12,
      "rl.temperature": 2.0,
      "eval.num_examples": 4,
      "eval.batch_size": 4,
      "eval.max_new_tokens": 4,
      **overrides,
    }
  )


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
  full = str(tmp_path / "full")
  res_full = rl.run(_run_config(), full)  # checkpoints at RL steps 2 and 4
  # A run that stopped at step 2: the full run's workdir as it was then.
  parts = str(tmp_path / "parts")
  shutil.copytree(full, parts)
  shutil.rmtree(os.path.join(parts, "checkpoints", "4"))
  with open(os.path.join(parts, "metrics.jsonl")) as f:
    kept = [line for line in f if json.loads(line)["step"] <= 2]
  with open(os.path.join(parts, "metrics.jsonl"), "w") as f:
    f.writelines(kept)
  res_parts = rl.run(_run_config(), parts)
  a, b = train_records(full), train_records(parts)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  assert any(a[s]["train/grad_norm"] > 0 for s in (3, 4))  # the resumed steps did update
  for s in (3, 4):
    for k in ("train/loss", "rl/reward_mean", "rl/len_mean", "train/grad_norm"):
      assert a[s][k] == pytest.approx(b[s][k], rel=1e-5, abs=1e-7), (s, k)
  assert res_full["step"] == res_parts["step"] == 4
  for k in ("rl/zero_adv_group_frac", "rl/logp_mismatch_p99", "train/clip_frac_low"):
    assert k in res_full


def test_teacher_log_ratio_is_a_direct_token_advantage_by_hand():
  old = np.array([[-1.0, -2.0, 0.0]], np.float32)
  teacher = np.array([[-0.5, -3.0, 7.0]], np.float32)
  mask = np.array([[1.0, 1.0, 0.0]], np.float32)
  groups = dataclasses.replace(
    _fake_groups(np.ones((1, 2)), 0), batch=Batch.from_tokens(np.zeros((2, 3), np.int32))
  )
  groups = dataclasses.replace(groups, batch=groups.batch.replace(loss_mask=np.tile(mask, (2, 1))))
  scores = {"old_logp": np.tile(old, (2, 1)), "teacher_logp": np.tile(teacher, (2, 1))}
  spec = token_rewards.make_spec((("teacher_log_ratio", 2.0),), {})
  by_mode, metrics = token_rewards.score(spec, groups, scores)
  token_adv, seq_adv, _ = advantages.combine(
    np.array([1.0, 0.0]), by_mode, np.tile(mask, (2, 1)), estimator="grpo", group_size=2
  )
  # Per token 2 * (teacher - old) on the mask, added to the group advantage as it is.
  direct = 2.0 * np.array([0.5, -1.0, 0.0])
  np.testing.assert_allclose(
    np.asarray(token_adv) - np.asarray(seq_adv)[:, None] * mask, np.tile(direct, (2, 1)), rtol=1e-6
  )
  assert metrics["reward/teacher_log_ratio"] == pytest.approx(-0.5)


def test_on_policy_distillation_from_a_teacher_of_another_size(tmp_path, random_decoder):
  """A token reward that reads teacher_logp makes the recipe load the teacher (here a wider,
  deeper model from a Hugging Face dir) and score it with its own graph."""
  from jaxpost.models import hf

  teacher_dir = str(tmp_path / "teacher")
  teacher = models.named_config(
    "tiny",
    vocab_size=80,
    d_model=48,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    head_dim=12,
    mlp_dim=96,
    max_seq_len=256,
  )
  hf.save_model(random_decoder(teacher, seed=3), teacher_dir)
  c = _run_config(
    **{
      "train.steps": 1,
      "eval.every": 0,
      "reward.token_terms": (("teacher_log_ratio", 1.0),),
      "teacher.hf_dir": teacher_dir,
    }
  )
  with pytest.raises(config_lib.ConfigError, match="teacher.init_from"):
    bad = _run_config(**{"reward.token_terms": (("teacher_log_ratio", 1.0),)})
    config_lib.validate(bad)
  result = rl.run(c, str(tmp_path / "run"))
  assert np.isfinite(result["train/loss"]) and result["train/grad_norm"] > 0
  # A random teacher disagrees with the policy: the log-ratio reward is far from 0.
  assert result["reward/teacher_log_ratio"] < -1.0


def test_sampler_old_logp_gives_the_recomputed_update(tmp_path):
  """rl.old_logp=sampler: pi_old from the sampler's records instead of a forward pass.

  They agree to float noise (tests/rollout), so the one update per batch is the same:
  same loss, ratio 1, no clipping; only the mismatch quantiles (which need the trainer's
  forward) are gone. A misaligned stand-in would move the ratio far from 1."""
  runs = {}
  for mode in ("recompute", "sampler"):
    # The entropy bonus makes the gradient non-zero even if every group ties.
    c = _run_config(
      **{"train.steps": 1, "rl.old_logp": mode, "eval.every": 0, "loss.grpo.entropy_coef": 0.01}
    )
    rl.run(c, str(tmp_path / mode))
    runs[mode] = train_records(str(tmp_path / mode))[1]
  a, b = runs["recompute"], runs["sampler"]
  assert a["train/grad_norm"] > 0
  for k in ("train/loss", "train/grad_norm", "rl/reward_mean"):
    assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
  assert b["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
  assert b["train/clip_frac_low"] == b["train/clip_frac_high"] == 0.0
  assert "rl/logp_mismatch_p99" in a and "rl/logp_mismatch_p99" not in b


def test_cli_smoke_with_dynamic_sampling_and_options(tmp_path, run_cli):
  """The CLI on one device: DAPO with dynamic sampling, KL in the reward, minibatches."""
  workdir = tmp_path / "run"
  proc = run_cli(
    "--config=configs/grpo.py:tiny",
    f"--workdir={workdir}",
    "--config.train.progress=False",
    "--config.train.steps=2",
    "--config.loss.name=dapo",
    "--config.rl.dynamic_sampling=True",
    "--config.rl.max_sample_rounds=2",
    "--config.reward.token_terms=(('kl_penalty', 0.01), ('step_correctness', 0.5))",
    "--config.reward.kl_penalty.estimator=k1",
    "--config.rl.minibatches=2",
    "--config.rl.temperature=2.0",
    "--config.eval.max_new_tokens=4",
    "--config.eval.num_examples=4",
    "--config.eval.batch_size=4",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "held-out exact-match accuracy" in proc.stdout
  records = train_records(str(workdir))
  assert sorted(records) == [1, 2]
  for r in records.values():
    assert 1 <= r["rl/sample_rounds"] <= 2
    assert np.isfinite(r["train/loss"])
    # KL in the reward, not the loss: the sampling policy's KL makes rewards differ.
    assert "train/kl" not in r
  with open(workdir / "metrics.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.isdir(workdir / "checkpoints")
