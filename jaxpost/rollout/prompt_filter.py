"""Offline prompt filtering: screen candidate prompts with the starting policy, keep those
whose mean score lies in a band, and train on them only.

Rubric Anchors (arXiv 2508.12790; methods card rl.md section 11) filters its training
data by rubric scores before RL: a prompt the policy already aces, or cannot touch,
teaches little. Here the starting policy samples ``samples`` completions of each of the
first ``candidates`` prompts of the stream, a reward (the rubric, or any registered one)
scores them, and the prompts whose mean score lies in [low, high] become the training
stream, cycled in order. The choice is written to the run directory
(``prompt_filter.json``) so a resumed run trains on the same prompts without screening
again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from jaxpost.data import tasks

FILE = "prompt_filter.json"


def screen(
  score_prompts: Callable[[list[tasks.Problem]], np.ndarray],
  problem_at: Callable[[int], tasks.Problem],
  *,
  candidates: int,
  chunk: int,
  low: float,
  high: float,
) -> tuple[list[int], np.ndarray]:
  """Indices of the candidates whose mean score is in [low, high], and every mean.

  Args:
    score_prompts: ``chunk`` problems -> f32[chunk, G] scores of G sampled completions.
    problem_at: prompt index -> problem.
    candidates: prompts screened, indices 0 .. candidates - 1.
    chunk: problems per ``score_prompts`` call (the last chunk is filled with repeats).
    low, high: the band of mean scores kept.
  """
  means = np.zeros(candidates, np.float32)
  for start in range(0, candidates, chunk):
    idx = [min(start + i, candidates - 1) for i in range(chunk)]
    scores = np.asarray(score_prompts([problem_at(i) for i in idx]))
    n = min(chunk, candidates - start)
    means[start : start + n] = scores[:n].mean(axis=1)
  kept = [i for i in range(candidates) if low <= means[i] <= high]
  return kept, means


def filtered_stream(
  problem_at: Callable[[int], tasks.Problem], kept: list[int]
) -> Callable[[int], tasks.Problem]:
  """Prompt i of the training stream: kept prompt i mod len(kept)."""
  if not kept:
    raise ValueError(
      "the prompt filter kept no prompt: widen rl.prompt_filter.low / high or screen more "
      "candidates"
    )
  return lambda i: problem_at(kept[i % len(kept)])


def load_or_screen(workdir: str, screen_fn: Callable[[], tuple[list[int], np.ndarray]], settings):
  """The kept indices recorded in ``workdir`` for these ``settings``, else ``screen_fn()``'s
  (recorded). Returns (kept, means, screened now)."""
  path = os.path.join(workdir, FILE)
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    if record["settings"] != settings:
      raise ValueError(
        f"{path} was screened with {record['settings']}, this run asks for {settings}: "
        "use a fresh workdir"
      )
    return record["kept"], np.asarray(record["means"], np.float32), False
  kept, means = screen_fn()
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"settings": settings, "kept": kept, "means": means.tolist()}, f)
  os.replace(tmp, path)
  return kept, means, True
