"""Parameter averaging (jaxpost.merging): the MoT card's properties and saved-run merges."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpost import checkpoint, merging


def _tree(seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {
    "layers": [{"w": jnp.asarray(rng.normal(size=(4, 3)), dtype)} for _ in range(2)],
    "embed": jnp.asarray(rng.normal(size=(5, 4)), dtype),
  }


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def test_identical_branches_merge_to_the_branch():
  t = _tree(0)
  for k in (1, 2, 4):  # powers of two: the mean of equal floats is exact
    got = merging.average([t] * k)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(got), _leaves(t), strict=True))
  got3 = merging.average([t] * 3)
  for a, b in zip(_leaves(got3), _leaves(t), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-7)


def test_the_mean_is_permutation_invariant_and_matches_numpy():
  trees = [_tree(s) for s in range(3)]
  a = merging.average(trees)
  b = merging.average(trees[::-1])
  want = [np.mean(xs, axis=0) for xs in zip(*map(_leaves, trees), strict=True)]
  for x, y, z in zip(_leaves(a), _leaves(b), want, strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(x, z, rtol=1e-6, atol=1e-7)


def test_weights_are_normalised_and_a_zero_weight_drops_a_branch():
  a, b = _tree(1), _tree(2)
  only_a = merging.average([a, b], weights=[3.0, 0.0])
  assert all(np.array_equal(x, y) for x, y in zip(_leaves(only_a), _leaves(a), strict=True))
  mix = merging.average([a, b], weights=[1.0, 3.0])
  for x, u, v in zip(_leaves(mix), _leaves(a), _leaves(b), strict=True):
    np.testing.assert_allclose(x, 0.25 * u + 0.75 * v, rtol=1e-6, atol=1e-7)


def test_dtype_and_structure_are_kept_and_bf16_accumulates_in_f32():
  trees = [_tree(s, jnp.bfloat16) for s in range(4)]
  got = merging.average(trees)
  assert jax.tree.structure(got) == jax.tree.structure(trees[0])
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(got))
  f32 = merging.average([jax.tree.map(lambda x: x.astype(jnp.float32), t) for t in trees])
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(f32), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y.astype(jnp.bfloat16)))  # one rounding


@pytest.mark.parametrize(
  "trees,weights,match",
  [
    ([], None, "at least one"),
    ([_tree(0), {"embed": _tree(1)["embed"]}], None, "structure"),
    ([_tree(0), {**_tree(1), "embed": jnp.zeros((5, 5))}], None, r"\['embed'\]"),
    ([_tree(0), _tree(1, jnp.bfloat16)], None, "bfloat16"),
    ([_tree(0), _tree(1)], [1.0, -1.0], "weights"),
    ([_tree(0), _tree(1)], [0.0, 0.0], "weights"),
    ([_tree(0), _tree(1)], [1.0], "weights"),
  ],
)
def test_mismatches_and_bad_weights_are_named(trees, weights, match):
  with pytest.raises(ValueError, match=match):
    merging.average(trees, weights)


def test_sharded_trees_average_to_the_same_sharding():
  devices = jax.devices()
  if len(devices) < 2:
    pytest.skip("needs several devices (the suite runs with 8 fake CPU devices)")
  mesh = jax.make_mesh((len(devices),), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  rng = np.random.default_rng(3)
  xs = [jax.device_put(jnp.asarray(rng.normal(size=(len(devices) * 2, 3))), spec) for _ in range(3)]
  got = jax.jit(merging.average)([{"w": x} for x in xs])["w"]
  assert got.sharding.is_equivalent_to(spec, 2)
  np.testing.assert_allclose(np.asarray(got), np.mean([np.asarray(x) for x in xs], 0), rtol=1e-6)


def test_merge_runs_writes_a_run_that_init_from_loads(tmp_path):
  from flax import nnx
  from recipes.tiny_configs import sft_tiny

  from jaxpost.recipes import common, sft

  runs = []
  for seed in (0, 1):
    d = str(tmp_path / f"branch{seed}")
    # Branches of one student share its tokenizer (seeds would train different ones).
    shared = {"tokenizer.path": runs[0]} if runs else {}
    sft.run(sft_tiny(**{"seed": seed, "train.steps": 2, **shared}), d)
    runs.append(d)
  out = merging.merge_runs(runs, str(tmp_path / "merged"), weights=[1.0, 1.0])
  with open(os.path.join(out, "merged.json")) as f:
    assert json.load(f) == {"runs": runs, "weights": [0.5, 0.5]}
  c = sft_tiny(**{"train.init_from": out})
  tok = common.load_tokenizer(c, str(tmp_path / "student"))
  model = common.build_model(c, tok.vocab_size)
  like = nnx.state(model, nnx.Param)
  loaded = [checkpoint.load_params(r, like)[0] for r in runs]
  want = merging.average(loaded)
  for x, y in zip(jax.tree.leaves(like), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="already holds"):
    merging.merge_runs(runs, out)
