"""The parity harness itself: `compare` measures what it claims, and NaN never passes."""

import numpy as np
import pytest

from uvit_torch.parity.harness import assert_close, compare


def test_compare_reports_relative_error_to_the_output_size():
    theirs = np.array([[1.0, -4.0], [2.0, 0.5]])
    ours = theirs.copy()
    ours[1, 0] += 0.02
    result = compare("x", ours, theirs)
    assert result.max_abs == pytest.approx(0.02)
    assert result.max_rel == pytest.approx(0.02 / 4.0)
    assert result.worst_index == (1, 0)
    assert result.ours_value == pytest.approx(2.02) and result.theirs_value == 2.0


def test_nan_is_a_failure():
    result = compare("x", np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert not result.passed(1e-3)


def test_shape_mismatch_raises():
    with pytest.raises(AssertionError, match="shapes differ"):
        compare("x", np.zeros((2, 3)), np.zeros((3, 2)))


def test_assert_close_names_the_worst_entry():
    with pytest.raises(AssertionError, match=r"at \(2,\)"):
        assert_close("v", np.array([0.5, 0.5, 0.9]), np.full(3, 0.5), 1e-6)
