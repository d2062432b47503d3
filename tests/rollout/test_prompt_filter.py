"""Offline prompt filtering (jaxpost/rollout/prompt_filter.py)."""

import json

import numpy as np
import pytest

from jaxpost.data import tasks
from jaxpost.rollout import prompt_filter


def _problem(i):
  return tasks.Problem("add3", str(i), "", "0")


def test_screen_keeps_the_band_and_fills_the_last_chunk():
  calls = []

  def score_prompts(problems):  # prompt i scores i / 10 on every sample
    calls.append([int(p.prompt) for p in problems])
    return np.repeat([[int(p.prompt) / 10] for p in problems], 3, axis=1)

  kept, means = prompt_filter.screen(
    score_prompts, _problem, candidates=7, chunk=3, low=0.2, high=0.5
  )
  assert calls == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]  # fixed chunk size: repeats fill
  np.testing.assert_allclose(means, np.arange(7) / 10)
  assert kept == [2, 3, 4, 5]
  stream = prompt_filter.filtered_stream(_problem, kept)
  assert [stream(i).prompt for i in range(6)] == ["2", "3", "4", "5", "2", "3"]
  with pytest.raises(ValueError, match="kept no prompt"):
    prompt_filter.filtered_stream(_problem, [])


def test_the_choice_is_recorded_and_reused(tmp_path):
  settings = {"reward": "rubric", "low": 0.1}
  screened = []

  def screen():
    screened.append(1)
    return [1, 4], np.asarray([0.0, 0.5, 0.0, 0.0, 0.5], np.float32)

  kept, _, fresh = prompt_filter.load_or_screen(str(tmp_path), screen, settings)
  assert (kept, fresh) == ([1, 4], True)
  kept, means, fresh = prompt_filter.load_or_screen(str(tmp_path), screen, settings)
  assert (kept, fresh, len(screened)) == ([1, 4], False, 1) and means[1] == 0.5
  record = json.loads((tmp_path / prompt_filter.FILE).read_text())
  assert record["settings"] == settings
  with pytest.raises(ValueError, match="fresh workdir"):
    prompt_filter.load_or_screen(str(tmp_path), screen, {**settings, "low": 0.2})
