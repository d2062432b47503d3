"""F²C (losses/f2c.py): the card's tests and the whole loss against a naive reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost.losses import LOSSES, f2c, reduce
from jaxpost.losses.head import FusedHead
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK, Batch

K, C, T, V, A = 4, 3, 7, 6, 3  # formats, choices, row length, vocabulary, answer tokens


def _batch(problems: int, rng, answer_len=A, targets=None) -> Batch:
  """``problems`` groups of K*C rows: 2 prompt tokens, 1 think tag, then the answer."""
  b = problems * K * C
  roles = np.zeros((b, T), np.int32)
  roles[:, :2], roles[:, 2] = ROLE_PROMPT, ROLE_THINK
  roles[:, 3 : 3 + answer_len] = ROLE_ANSWER
  if targets is None:
    targets = rng.integers(0, V, (b, T))
  return Batch(
    tokens=jnp.zeros((b, T), jnp.int32),
    targets=jnp.asarray(targets, jnp.int32),
    loss_mask=jnp.asarray(roles >= ROLE_THINK, jnp.float32),
    segment_ids=jnp.ones((b, T), jnp.int32),
    positions=jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (b, T)),
    roles=jnp.asarray(roles),
  )


def _norm(batch: Batch) -> reduce.Normalizers:
  return reduce.Normalizers(tokens=jnp.sum(batch.loss_mask), sequences=jnp.float32(batch.shape[0]))


HP = dict(formats=K, choices=C, cce_weight=0.7, tau=1.0, top_k=3, w_min=0.1, w_max=0.9)
HP.update(w_temperature=2.0, beta_jsd=0.3)


@functools.cache
def _compiled(hp: tuple, grad: bool):
  def loss(x, batch, norm):
    return f2c.f2c(x, batch, norm=norm, **dict(hp))

  return jax.jit(jax.grad(lambda *a: loss(*a)[0]) if grad else loss)


def _loss(logits, batch, **over):
  return _compiled(tuple(sorted({**HP, **over}.items())), False)(logits, batch, _norm(batch))


def _grad(logits, batch, **over):
  """d loss / d logits."""
  return _compiled(tuple(sorted({**HP, **over}.items())), True)(logits, batch, _norm(batch))


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(p_log, q_log):
  return float(np.sum(np.exp(p_log) * (p_log - q_log)))


def _reference(logits, batch, hp) -> float:
  """The card, one problem at a time, in loops (float64)."""
  logits = np.asarray(logits, np.float64)
  roles, targets = np.asarray(batch.roles), np.asarray(batch.targets)
  lsm = _log_softmax(logits)
  group, total = K * C, 0.0
  problems = batch.shape[0] // group
  for e in range(problems):
    rows = [[e * group + k * C + c for c in range(C)] for k in range(K)]
    pos = [[np.flatnonzero(roles[r] == ROLE_ANSWER) for r in row] for row in rows]
    ell = np.array(
      [
        [np.mean(lsm[r, p, targets[r, p]]) for r, p in zip(row, ps, strict=True)]
        for row, ps in zip(rows, pos, strict=True)
      ]
    )
    preds = ell.argmax(1)
    counts = np.bincount(preds, minlength=C)
    if counts.max() * 2 <= K:
      continue
    cons = int(counts.argmax())
    cce = -ell[:, cons].mean()
    loss = hp["cce_weight"] * cce
    margins = ell[:, cons] - np.delete(ell, cons, axis=1).max(1)
    voters = [k for k in range(K) if preds[k] == cons]
    strong = len(voters) == K and np.median(margins) >= hp["tau"]
    n_t = min(hp["top_k"], len(voters) - 1)
    if not strong and n_t >= 2 and K - n_t >= 1:
      teachers = sorted(voters, key=lambda k: -margins[k])[:n_t]
      students = [k for k in range(K) if k not in teachers]
      dists = [lsm[rows[k][cons], pos[k][cons]] for k in range(K)]  # [A, V] each
      mix = np.log(np.mean([np.exp(dists[k]) for k in teachers], axis=0))
      flip = np.mean([_kl(mix[a], dists[s][a]) for s in students for a in range(A)])
      jsd = np.mean([_kl(dists[t][a], mix[a]) for t in teachers for a in range(A)])
      delta = ell[teachers, cons].mean() - ell[students, cons].mean()
      sig = 1.0 / (1.0 + np.exp(-delta / hp["w_temperature"]))
      w = hp["w_min"] + (hp["w_max"] - hp["w_min"]) * sig
      loss += w * flip + hp["beta_jsd"] * jsd
    total += loss
  return total / problems


def test_consensus_is_a_strict_majority():
  cons, ok = f2c.consensus(jnp.array([[0, 0, 1], [0, 1, 1], [2, 2, 2]]), 3)
  np.testing.assert_array_equal(cons[ok], [0, 1, 2])
  assert bool(ok.all())
  _, ok = f2c.consensus(jnp.array([[0, 1]]), 2)  # a tie: no consensus
  assert not bool(ok[0])
  _, ok = f2c.consensus(jnp.array([[0, 0, 1, 1]]), 2)  # half is not a majority
  assert not bool(ok[0])


def test_teachers_are_the_top_voters_by_margin():
  preds = jnp.array([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]])
  cons = jnp.zeros(4, jnp.int32)
  margins = jnp.array(
    [[3.0, 1.0, 2.0, -1.0], [5.0, 4.0, 3.0, 2.0], [0.1, 0.2, 0.3, 0.4], [1.0, 2.0, -1, -1]]
  )
  teachers, applies = f2c.select_teachers(preds, cons, margins, tau=1.0, top_k=2)
  np.testing.assert_array_equal(
    np.asarray(teachers),
    [
      [True, False, True, False],  # top 2 of 3 voters by margin; the rest are students
      [False] * 4,  # unanimous, median margin 3.5 >= tau: "strong", no alignment
      [False, False, True, True],  # unanimous but weak: top 2 teach the other 2
      [False] * 4,  # 2 voters leave 1 teacher: too few
    ],
  )
  np.testing.assert_array_equal(np.asarray(applies), [True, False, True, False])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_the_card_computed_by_hand(seed):
  rng = np.random.default_rng(seed)
  batch = _batch(6, rng)
  # Shared per-choice logits plus format noise: consensus, splits and unanimity all occur.
  base = rng.normal(size=(6, 1, C, T, V)) * 2.0
  logits = base + rng.normal(size=(6, K, C, T, V)) * 1.5
  logits = jnp.asarray(logits.reshape(6 * K * C, T, V), jnp.float32)
  loss, metrics = _loss(logits, batch)
  np.testing.assert_allclose(float(loss), _reference(logits, batch, HP), rtol=2e-5)
  assert 0 < float(metrics["aligned"]) <= float(metrics["consensus"]) <= 1


def test_the_flip_term_is_zero_when_students_equal_the_teacher_mixture():
  rng = np.random.default_rng(3)
  batch = _batch(2, rng, targets=np.tile(rng.integers(0, V, (1, T)), (2 * K * C, 1)))
  # Every format gives one choice the same distributions, so formats agree but only weakly
  # (tau above the margin): the alignment term applies and is exactly 0.
  per_choice = rng.normal(size=(1, 1, C, T, V)) * 0.1
  logits = jnp.asarray(np.broadcast_to(per_choice, (2, K, C, T, V)).reshape(-1, T, V))
  _, m = _loss(logits, batch, tau=50.0)
  assert float(m["aligned"]) == 1.0
  assert abs(float(m["flip_kl"])) < 1e-6 and abs(float(m["jsd"])) < 1e-6

  grad = _grad(logits, batch, tau=50.0, cce_weight=0.0, beta_jsd=0.0)  # the flip term's
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-7)


def test_the_weight_stays_within_its_bounds():
  rng = np.random.default_rng(4)
  batch = _batch(8, rng)
  for scale in (0.1, 3.0, 30.0):  # small to huge likelihood gaps between formats
    logits = jnp.asarray(rng.normal(size=(8 * K * C, T, V)) * scale, jnp.float32)
    _, m = _loss(logits, batch, top_k=2)
    if float(m["aligned"]) > 0:
      mean_w = float(m["flip_weight"]) / float(m["aligned"])
      assert HP["w_min"] - 1e-6 <= mean_w <= HP["w_max"] + 1e-6


def test_teachers_get_no_gradient_from_the_flip_term():
  rng = np.random.default_rng(5)
  batch = _batch(1, rng)
  logits = rng.normal(size=(K, C, T, V))
  targets = np.asarray(batch.targets).reshape(K, C, T)
  for k in range(3):  # formats 0-2 lean to choice 0, by different margins
    for t in range(T):
      logits[k, 0, t, targets[k, 0, t]] += 3.0 + 2 * k
  logits = jnp.asarray(logits.reshape(K * C, T, V), jnp.float32)
  ell = np.asarray(_ell(logits, batch)).reshape(K, C)
  cons, ok = f2c.consensus(jnp.asarray(ell.argmax(1))[None], C)
  assert bool(ok[0])

  flip_grad = _grad(logits, batch, tau=50.0, cce_weight=0.0, beta_jsd=0.0, top_k=2)
  g = np.abs(np.asarray(flip_grad)).sum(axis=(1, 2)).reshape(K, C)
  cons = int(cons[0])
  others = [c for c in range(C) if c != cons]
  assert np.all(g[:, others] == 0)  # only the consensus rows are aligned
  margins = ell[:, cons] - ell[:, others].max(1)
  voters = np.flatnonzero(ell.argmax(1) == cons)
  teachers = voters[np.argsort(-margins[voters])][:2]
  assert np.all(g[teachers, cons] == 0) and np.all(np.delete(g[:, cons], teachers) > 0)


def _ell(logits, batch):
  lsm = jax.nn.log_softmax(logits)
  lp = jnp.take_along_axis(lsm, batch.targets[..., None], -1)[..., 0]
  on = batch.roles == ROLE_ANSWER
  return jnp.sum(lp * on, 1) / jnp.sum(on, 1)


def test_no_consensus_no_loss_and_cce_alone_is_mean_consensus_nll():
  rng = np.random.default_rng(6)
  batch = _batch(1, rng)
  # Format k prefers choice k % C: 4 formats over 3 choices split 2-1-1, no majority.
  logits = np.zeros((K, C, T, V), np.float32)
  targets = np.asarray(batch.targets).reshape(K, C, T)
  for k in range(K):
    for t in range(T):
      logits[k, k % C, t, targets[k, k % C, t]] = 5.0
  loss, m = _loss(jnp.asarray(logits.reshape(-1, T, V)), batch)
  assert float(loss) == 0.0 and float(m["consensus"]) == 0.0
  # Everyone prefers choice 1: CCE = mean over formats of -l[k, 1].
  logits = np.zeros((K, C, T, V), np.float32)
  for k in range(K):
    for t in range(T):
      logits[k, 1, t, targets[k, 1, t]] = 2.0 + k
  x = jnp.asarray(logits.reshape(-1, T, V))
  loss, m = _loss(x, batch, w_min=0.0, w_max=0.0, beta_jsd=0.0, cce_weight=1.0)
  ell = np.asarray(_ell(x, batch)).reshape(K, C)
  np.testing.assert_allclose(float(loss), -ell[:, 1].mean(), rtol=1e-5)
  assert float(m["agreement"]) == 1.0


def test_fused_head_equals_logits():
  rng = np.random.default_rng(7)
  batch = _batch(2, rng)
  hidden = jnp.asarray(rng.normal(size=(2 * K * C, T, 5)), jnp.float32)
  weight = jnp.asarray(rng.normal(size=(5, V)) * 1.5, jnp.float32)

  norm = _norm(batch)

  @jax.jit
  def both(h, w):
    def via(make):
      return jax.value_and_grad(
        lambda h, w: f2c.f2c(make(h, w), batch, norm=norm, **HP)[0], argnums=(0, 1)
      )(h, w)

    return via(lambda h, w: h @ w), via(FusedHead)

  (a, ga), (b, gb) = both(hidden, weight)
  np.testing.assert_allclose(float(b), float(a), rtol=1e-5)
  for x, y in zip(ga, gb, strict=True):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)


def test_bad_hyperparameters_fail_before_training():
  with pytest.raises(ValueError, match="w_min"):
    LOSSES.validate_hparams("f2c", {"w_min": 0.5, "w_max": 0.1})
  with pytest.raises(ValueError):
    LOSSES.validate_hparams("f2c", {"formats": 1})


def test_micro_batches_of_whole_groups_add_up_with_the_alignment_term_on():
  # The contract test's 4-row halves only fit 2 formats x 2 choices, where no problem
  # has the 2 teachers and a student the flip term needs; here it applies.
  rng = np.random.default_rng(8)
  batch = _batch(6, rng)
  base = rng.normal(size=(6, 1, C, T, V)) * 2.0
  logits = jnp.asarray((base + rng.normal(size=(6, K, C, T, V))).reshape(-1, T, V), jnp.float32)
  norm, hp = _norm(batch), {**HP, "tau": 50.0}  # no problem is "unanimous strong"
  loss = _compiled(tuple(sorted(hp.items())), False)
  full, m_full = loss(logits, batch, norm)
  assert float(m_full["aligned"]) > 0
  half = 3 * K * C
  parts = [
    loss(logits[sl], jax.tree.map(lambda x, sl=sl: x[sl], batch), norm)
    for sl in (slice(0, half), slice(half, None))
  ]
  np.testing.assert_allclose(float(parts[0][0] + parts[1][0]), float(full), rtol=1e-5)
  for k, v in m_full.items():
    np.testing.assert_allclose(float(parts[0][1][k] + parts[1][1][k]), float(v), rtol=1e-5)
