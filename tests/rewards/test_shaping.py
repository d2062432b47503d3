import math

import numpy as np
import pytest

from jaxpost.rewards import registry, shaping
from jaxpost.rewards.registry import Sample


def _sample(completion: str = "<think>1+1=2</think>2", num_tokens: int = 5, **kw) -> Sample:
  return Sample(prompt="1+1", completion=completion, answer="2", num_tokens=num_tokens, **kw)


# ------------------------------------------------------------------------------ overlong


@pytest.mark.parametrize("n, expected", [(12288, 0.0), (14336, -0.5), (16384, -1.0), (20000, -1.0)])
def test_overlong_dapo_card_values(n, expected):
  # methods/rl.md section 1, test 5: L_max = 16384, L_cache = 4096.
  r = shaping.overlong(_sample(num_tokens=n), max_len=16384, cache_len=4096)
  assert r == pytest.approx(expected, abs=1e-12)


def test_overlong_boundaries_and_factor():
  f = lambda n, **kw: shaping.overlong(_sample(num_tokens=n), max_len=16, cache_len=4, **kw)
  assert f(0) == 0.0
  assert f(12) == 0.0  # last length without penalty: 16 - 4
  assert f(13) == pytest.approx(-0.25)  # (12 - 13) / 4
  assert f(15) == pytest.approx(-0.75)
  assert f(16) == pytest.approx(-1.0)
  assert f(17) == -1.0
  assert f(14, penalty_factor=0.5) == pytest.approx(-0.25)
  assert f(100, penalty_factor=0.5) == pytest.approx(-0.5)


def test_overlong_hard_cutoff_with_empty_cache():
  f = lambda n: shaping.overlong(_sample(num_tokens=n), max_len=16, cache_len=0)
  assert (f(15), f(16), f(17)) == (0.0, 0.0, -1.0)


@pytest.mark.parametrize("max_len, cache_len", [(16, 4), (20, 20), (7, 3), (5, 0)])
def test_overlong_matches_clip_reference(max_len, cache_len):
  # An independent form of the same function: -clip((n - start) / cache, 0, 1).
  n = np.arange(0, 2 * max_len + 3)
  start = max_len - cache_len
  if cache_len:
    ref = -np.clip((n - start) / cache_len, 0.0, 1.0)
  else:
    ref = -(n > max_len).astype(np.float64)
  got = [
    shaping.overlong(_sample(num_tokens=int(i)), max_len=max_len, cache_len=cache_len) for i in n
  ]
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
  "hparams",
  [
    {"max_len": 16, "cache_len": 17},
    {"max_len": 16, "cache_len": -1},
    {"max_len": 0, "cache_len": 0},
    {"max_len": 16, "cache_len": 4, "penalty_factor": -1.0},
    {"max_len": 16, "cache_len": 4, "penalty_factor": math.inf},
  ],
)
def test_overlong_check_rejects_bad_hparams(hparams):
  with pytest.raises(ValueError):
    registry.get_check("overlong")(**hparams)


def test_overlong_check_accepts_dapo_values():
  registry.get_check("overlong")(max_len=20480, cache_len=4096, penalty_factor=1.0)


# -------------------------------------------------------------------------- think_format


@pytest.mark.parametrize(
  "completion, ok",
  [
    ("<think>7+8+0=15</think>825", True),
    ("<think></think>825", True),  # empty reasoning is allowed
    ("<think>a</think> 825 ", True),
    ("825", False),  # no think block
    ("<think>a</think>", False),  # no answer
    ("<think>a</think>  \n", False),  # blank answer
    ("<think>a", False),  # unclosed
    ("a</think>825", False),  # unopened
    ("x<think>a</think>825", False),  # text before the block
    ("<think>a</think><think>b</think>825", False),  # two blocks
    ("", False),
  ],
)
def test_think_format_golden(completion, ok):
  assert shaping.think_format(_sample(completion)) == (1.0 if ok else 0.0)
  assert shaping.think_format(_sample(completion), ok=0.5, bad=-2.0) == (0.5 if ok else -2.0)


def test_think_format_judges_text_only():
  done = _sample("<think>a</think>8")
  cut = _sample("<think>a</think>8", truncated=True)
  assert shaping.think_format(done) == shaping.think_format(cut) == 1.0


# -------------------------------------------------------------------------------- length


def test_length_golden():
  assert shaping.length(_sample(num_tokens=30), norm_tokens=100) == pytest.approx(-0.3)
  assert shaping.length(_sample(num_tokens=30), norm_tokens=100, free_tokens=10) == pytest.approx(
    -0.2
  )
  assert shaping.length(_sample(num_tokens=5), norm_tokens=100, free_tokens=10) == 0.0
  assert shaping.length(_sample(num_tokens=0), norm_tokens=1) == 0.0


def test_length_is_non_increasing_in_tokens():
  r = [shaping.length(_sample(num_tokens=n), norm_tokens=7, free_tokens=3) for n in range(40)]
  assert all(a >= b for a, b in zip(r, r[1:], strict=False))
  assert r[0] == 0.0 and r[-1] < 0.0


@pytest.mark.parametrize("hparams", [{"norm_tokens": 0}, {"norm_tokens": 4, "free_tokens": -1}])
def test_length_check_rejects_bad_hparams(hparams):
  with pytest.raises(ValueError):
    registry.get_check("length")(**hparams)
