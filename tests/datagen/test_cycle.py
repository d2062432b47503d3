"""Cycle-Instruct's data pieces (jaxpost/datagen/cycle.py): the corpus split and Cycle-Filt."""

import math

import numpy as np
import pytest

from jaxpost.data import tasks
from jaxpost.datagen import cycle


def test_split_corpus_by_question_mark():
  q, a = cycle.split_corpus(["What is 2+2?", "  ", "It is 4.", "Why? Because.", "x"])
  assert q == ["What is 2+2?", "Why? Because."] and a == ["It is 4.", "x"]


def test_the_task_corpus_never_pairs_a_question_with_its_answer():
  corpus = cycle.task_corpus({"mul2x2": 1.0}, 50, seed=3)
  q, a = cycle.split_corpus(corpus)
  assert len(q) == len(a) == 50
  prompts = {x.removeprefix("What is ").removesuffix("?") for x in q}
  mix = tasks.mixture({"mul2x2": 1.0}, "train", 3)
  answered = {mix.problem_at(50 + i).prompt for i in range(50)}
  assert not prompts & answered
  assert corpus != sorted(corpus)  # shuffled, questions and answers interleaved


def test_kmeans_recovers_separated_clusters():
  rng = np.random.default_rng(0)
  centres = np.array([[0, 0], [10, 0], [0, 10]], float)
  x = np.concatenate([c + 0.3 * rng.standard_normal((40, 2)) for c in centres])
  labels = cycle.kmeans(x, 3, seed=1)
  for block in range(3):
    assert len(set(labels[block * 40 : (block + 1) * 40])) == 1
  assert len(set(labels)) == 3
  np.testing.assert_array_equal(labels, cycle.kmeans(x, 3, seed=1))  # seeded


@pytest.mark.parametrize("sizes", [(20, 40, 7), (1, 100, 21), (19,)])
def test_cycle_filter_drops_ceil_five_percent_per_cluster_the_farthest(sizes):
  rng = np.random.default_rng(len(sizes))
  clusters = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)])
  perm = rng.permutation(len(clusters))
  clusters = clusters[perm]
  d = rng.random(len(clusters))
  keep = cycle.cycle_filter(d, clusters)
  for i, s in enumerate(sizes):
    members = np.flatnonzero(clusters == i)
    dropped = members[~keep[members]]
    assert len(dropped) == math.ceil(0.05 * s)
    kept = members[keep[members]]
    if len(kept) and len(dropped):
      assert d[dropped].min() >= d[kept].max()
  assert keep.sum() == len(clusters) - sum(math.ceil(0.05 * s) for s in sizes)
  with pytest.raises(ValueError, match="distances"):
    cycle.cycle_filter(d[:-1], clusters)
