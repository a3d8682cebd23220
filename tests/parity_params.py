"""Shared by the parity tests: one pytest parameter per (case, dtype, batch), and the assertion."""

import numpy as np
import pytest

from uvit_torch import parity
from uvit_torch.parity.harness import TOLERANCE


def case_params(cases):
    """`pytest.param(case, dtype, batch)` for every dtype and batch size each case lists; slow
    cases carry `pytest.mark.slow` (they still run)."""
    return [pytest.param(case, dtype, batch, id=f"{case.name}-{dtype}-B{batch}",
                         marks=[pytest.mark.slow] if case.slow else [])
            for case in cases for dtype in case.dtypes for batch in case.batches]


def assert_case_passes(case, dtype, batch):
    """Run the case on both sides; fail with the full comparison report above the tolerance."""
    row = parity.run_case(case, dtype, batch)
    tol = TOLERANCE[np.dtype(dtype)]
    assert row.passed and row.max_rel <= tol, f"{row.detail} exceeds {tol:.0e}"
    return row
