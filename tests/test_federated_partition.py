"""Client partitions: disjoint, covering, and as skewed as their scheme says."""

import numpy as np
import pytest

from jaxpost.federated import partition

LEVELS = ["add3"] * 60 + ["mul2x2"] * 30 + ["expr2"] * 10


def _check_partition(parts, n):
  everything = np.concatenate(parts)
  assert sorted(everything.tolist()) == list(range(n))  # disjoint and covering


@pytest.mark.parametrize("scheme", partition.SCHEMES)
def test_every_scheme_partitions_the_pool(scheme):
  parts = partition.partition(LEVELS, 4, scheme, alpha=5.0, seed=3)
  assert len(parts) == 4
  _check_partition(parts, len(LEVELS))
  again = partition.partition(LEVELS, 4, scheme, alpha=5.0, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))  # seeded


def test_iid_sizes_differ_by_at_most_one_and_level_gives_each_client_its_levels():
  sizes = [len(p) for p in partition.partition(LEVELS, 3, "iid")]
  assert max(sizes) - min(sizes) <= 1
  counts = partition.level_counts(LEVELS, partition.partition(LEVELS, 3, "level"))
  assert counts == [{"add3": 60}, {"expr2": 10}, {"mul2x2": 30}]  # sorted level names dealt
  # More clients than levels: a level is cut evenly among its clients.
  counts = partition.level_counts(LEVELS, partition.partition(LEVELS, 6, "level"))
  assert counts[0] == counts[3] == {"add3": 30}
  # Fewer: a client holds several.
  assert partition.level_counts(LEVELS, partition.partition(LEVELS, 2, "level"))[0] == {
    "add3": 60,
    "mul2x2": 30,
  }


def test_dirichlet_skew_grows_as_alpha_shrinks():
  levels = ["a"] * 500 + ["b"] * 500

  def skew(alpha):  # mean over clients of the majority level's share
    out = []
    for seed in range(5):
      parts = partition.partition(levels, 4, "dirichlet", alpha=alpha, seed=seed)
      out += [max(c.values()) / sum(c.values()) for c in partition.level_counts(levels, parts)]
    return np.mean(out)

  assert skew(0.1) > 0.8 > 0.6 > skew(100.0)


def test_bad_partitions_are_refused():
  with pytest.raises(ValueError, match="got no example"):
    partition.partition(["a"] + ["b"] * 5, 4, "level")  # one "a" for clients 0 and 2
  with pytest.raises(ValueError, match="cannot fill"):
    partition.partition(["a"] * 3, 4, "iid")
  with pytest.raises(ValueError, match="scheme"):
    partition.partition(LEVELS, 2, "by_length")
  with pytest.raises(ValueError, match="alpha"):
    partition.partition(LEVELS, 2, "dirichlet", alpha=0.0)
