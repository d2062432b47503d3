"""MOTAB's monitor, adaptive boundary, backtrack and splice (jaxpost/rollout/motab.py)."""

import numpy as np
import pytest

from jaxpost.rollout import motab


def test_no_crossing_keeps_the_student_rollout_unchanged():
  student = np.array([[5, 6, 7, 1], [8, 9, 1, 0]], np.int32)
  lengths, stopped = np.array([4, 3]), np.array([True, True])
  values = np.array([[0.1, 0.2, 0.3, 0.1], [0.5, 0.2, 0.1, 99.0]])  # 99 is past the end
  crossing = motab.first_crossing(values, lengths, threshold=1.0)
  assert crossing.tolist() == [-1, -1]
  keep = motab.safe_length(crossing, student, "step", {6})
  teacher = np.full((2, 4), 3, np.int32)
  out = motab.splice(student, lengths, stopped, keep, teacher, np.array([4, 4]), stopped)
  np.testing.assert_array_equal(out.tokens, student)
  assert not out.from_teacher.any() and out.lengths.tolist() == [4, 3]


def test_a_crossing_keeps_the_safe_prefix_then_the_teacher_with_no_gap_or_overlap():
  # row 0 crosses at token 3; the separator (id 2) at index 1 ends its last whole step
  student = np.array([[4, 2, 5, 6, 7, 1], [4, 5, 6, 7, 8, 1]], np.int32)
  lengths, stopped = np.array([6, 6]), np.array([True, True])
  values = np.zeros((2, 6))
  values[0, 3] = 5.0
  values[1, 0] = 5.0  # row 1 crosses at its first token: nothing is safe
  crossing = motab.first_crossing(values, lengths, threshold=1.0)
  assert crossing.tolist() == [3, 0]
  assert motab.safe_length(crossing, student, "token", {2}).tolist() == [3, 0]
  keep = motab.safe_length(crossing, student, "step", {2})
  assert keep.tolist() == [2, 0]
  teacher = np.array([[30, 31, 1, 0, 0, 0], [40, 41, 42, 43, 44, 45]], np.int32)
  t_len, t_stop = np.array([3, 6]), np.array([True, False])
  out = motab.splice(student, lengths, stopped, keep, teacher, t_len, t_stop)
  # row 0: student [0, 2), teacher from index 2 on, contiguous
  np.testing.assert_array_equal(out.tokens[0], [4, 2, 30, 31, 1, 0])
  np.testing.assert_array_equal(out.from_teacher[0], [0, 0, 1, 1, 1, 0])
  assert out.lengths[0] == 5 and out.stopped[0]
  # row 1: all teacher, cut at the budget: not stopped
  np.testing.assert_array_equal(out.tokens[1], teacher[1])
  assert out.from_teacher[1].all() and out.lengths[1] == 6 and not out.stopped[1]
  for row in range(2):  # no gap, no overlap: student tokens then teacher tokens, no pad
    n = out.lengths[row]
    first_teacher = np.argmax(out.from_teacher[row]) if out.from_teacher[row].any() else n
    assert not out.from_teacher[row, :first_teacher].any()
    assert out.from_teacher[row, first_teacher:n].all()
    assert first_teacher == keep[row]


def test_boundary_is_mean_plus_k_std_over_steps_and_survives_a_restart():
  b = motab.Boundary(k=2.0, decay=0.5)
  v1 = np.array([1.0, 3.0])
  assert b.update(v1) == pytest.approx(2.0 + 2.0 * 1.0)
  v2 = np.array([5.0, 5.0])
  mean, sq = 0.5 * 2.0 + 0.5 * 5.0, 0.5 * 5.0 + 0.5 * 25.0
  assert b.update(v2) == pytest.approx(mean + 2.0 * np.sqrt(sq - mean**2))
  again = motab.Boundary(k=2.0, decay=0.5)
  again.restore(b.state())
  assert again.update(np.array([4.0])) == b.update(np.array([4.0]))
  assert motab.Boundary(fixed=7.0).update(v1) == 7.0
  assert motab.Boundary().update(np.array([])) == float("inf")  # nothing seen: never crosses


def test_monitors_and_bad_options():
  s, t = np.array([[-1.0, -2.0]]), np.array([[-3.0, -0.5]])
  np.testing.assert_allclose(motab.monitor("teacher_nll", s, t), [[3.0, 0.5]])
  np.testing.assert_allclose(motab.monitor("log_ratio", s, t), [[2.0, -1.5]])
  with pytest.raises(ValueError, match="unknown monitor"):
    motab.monitor("kl", s, t)
  with pytest.raises(ValueError, match="unknown granularity"):
    motab.safe_length(np.array([1]), np.zeros((1, 2)), "line", set())
