"""Cycle-Instruct's data pieces (Shen et al. 2025): the raw corpus split and Cycle-Filt.

Cycle-Instruct builds instruction data with no seed pairs: a raw corpus is split into
question-like and answer-like paragraphs, and two models from one base, question ->
answer and answer -> question, train on each other's outputs with the original text
always on the gold side. This module holds the parts that are not training:

  split_corpus   the card's heuristic: a paragraph with a "?" is a question, any other
                 an answer (blank ones dropped)
  task_corpus    an unpaired raw corpus from the embedded tasks: questions of one set of
                 problems, worked answers of another (no question has its answer);
                 ``task_problems`` says which problem each paragraph is (diagnostics and
                 the ALL-SFT reference, never the cycle), ``rewrite_question`` is the
                 fixed rewrite "What is X?" -> X
  kmeans         seeded Lloyd's k-means (k-means++ start) over embeddings
  cycle_filter   Cycle-Filt: within each cluster of the gold side, drop the ceil(5%)
                 pairs whose reconstruction is farthest from the original

The cycle itself, the two LoRA models trained on each other's outputs, is the
``cycle_instruct`` recipe (``jaxpost/recipes/cycle_instruct.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jaxpost.data import tasks, template


def split_corpus(paragraphs: Sequence[str]) -> tuple[list[str], list[str]]:
  """(questions, answers): paragraphs containing "?" and the others, in order."""
  questions, answers = [], []
  for p in paragraphs:
    text = p.strip()
    if text:
      (questions if "?" in text else answers).append(text)
  return questions, answers


def task_corpus(levels: dict[str, float], n: int, seed: int = 0) -> list[str]:
  """2n paragraphs, shuffled: "What is {prompt}?" for training problems 0 .. n-1 and the
  worked responses of problems n .. 2n-1 (so the two sides never pair up)."""
  mixture = tasks.mixture(levels, "train", seed)
  out = [question_paragraph(mixture.problem_at(i)) for i in range(n)]
  out += [template.render_response(mixture.problem_at(n + i).example) for i in range(n)]
  return [out[i] for i in np.random.default_rng(seed).permutation(len(out))]


def question_paragraph(problem) -> str:
  """A task problem as a corpus question: "What is {prompt}?"."""
  return f"What is {problem.prompt}?"


def task_problems(levels: dict[str, float], n: int, seed: int = 0) -> dict:
  """{paragraph: Problem} for every paragraph of ``task_corpus(levels, n, seed)``."""
  mixture = tasks.mixture(levels, "train", seed)
  out = {question_paragraph(mixture.problem_at(i)): mixture.problem_at(i) for i in range(n)}
  for i in range(n, 2 * n):
    p = mixture.problem_at(i)
    out[template.render_response(p.example)] = p
  return out


def rewrite_question(text: str) -> str:
  """The task corpus's fixed rewrite: "What is X?" -> X (other text unchanged)."""
  text = text.strip()
  if text.startswith("What is ") and text.endswith("?"):
    return text[len("What is ") : -1].strip()
  return text


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 50) -> np.ndarray:
  """i64[N]: the cluster of each row of ``x`` [N, D] after Lloyd's iterations from a
  k-means++ start (k is capped at N; an emptied cluster takes the farthest point)."""
  x = np.asarray(x, np.float64)
  n = len(x)
  k = min(k, n)
  rng = np.random.default_rng(seed)
  centres = [x[rng.integers(n)]]
  for _ in range(1, k):
    d2 = np.min(((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), 1)
    total = d2.sum()
    centres.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
  centres = np.asarray(centres)
  labels = np.zeros(n, np.int64)
  for _ in range(iters):
    d2 = ((x[:, None] - centres[None]) ** 2).sum(-1)
    new = np.argmin(d2, 1)
    for c in range(k):
      members = new == c
      if members.any():
        centres[c] = x[members].mean(0)
      else:  # the point farthest from its centre starts the empty cluster
        far = int(np.argmax(d2[np.arange(n), new]))
        centres[c], new[far] = x[far], c
    if np.array_equal(new, labels):
      break
    labels = new
  return labels


def cycle_filter(distances: Sequence[float], clusters: Sequence[int], frac: float = 0.05):
  """bool[N] keep mask: in each cluster, the ceil(frac x size) largest reconstruction
  distances are dropped (ties: the later pair first), every other pair kept."""
  d = np.asarray(distances, np.float64)
  c = np.asarray(clusters)
  if d.shape != c.shape:
    raise ValueError(f"{d.shape} distances for {c.shape} cluster labels")
  if not 0 <= frac <= 1:
    raise ValueError(f"frac must be in [0, 1], got {frac}")
  keep = np.ones(len(d), bool)
  for label in np.unique(c):
    members = np.flatnonzero(c == label)
    drop = math.ceil(frac * len(members) - 1e-9)
    order = members[np.lexsort((-members, -d[members]))]  # largest distance first
    keep[order[:drop]] = False
  return keep
