"""Every core op: NumPy vs torch, float64 (rel <= 1e-10) and float32 (rel <= 1e-5), batch 1 and 3.

The cases are the ones `python -m uvit_torch.parity` reports (uvit_torch/parity/core.py)."""

import numpy as np
import pytest

from tests.parity_params import assert_case_passes, case_params
from uvit_torch import parity
from uvit_torch.parity import core as parity_core

CASES = parity_core.cases()
PARAMS = case_params(CASES)


@pytest.mark.parametrize("case, dtype, batch", PARAMS)
def test_core_op_parity(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


def test_outputs_keep_the_input_dtype():
    """float32 stays float32 end to end (a float64 constant would silently promote)."""
    for case in CASES:
        ours, _, inputs = case.build(np.dtype(np.float32), 1)
        out = ours(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        assert out.dtype == np.float32, f"{case.name}: float32 input gave {out.dtype}"


def test_parity_report_prints_a_table_and_exits_zero(capsys):
    assert parity.main(["--only", "Linear"]) == 0
    out = capsys.readouterr().out
    assert "max rel" in out and "Linear(33, 17)" in out and "0 failed" in out


def test_parity_report_exits_nonzero_on_a_failure(monkeypatch, capsys):
    """A deliberately wrong pair (exact vs tanh GELU) must be reported as FAIL with exit code 1."""
    import torch

    import uvit_numpy.functional as NF
    wrong = parity.Case("wrong gelu", lambda dtype, batch: (
        lambda x: NF.gelu(x, "tanh"), lambda x: torch.nn.functional.gelu(x),
        (np.linspace(-4, 4, 50 * batch).reshape(batch, 50).astype(dtype),)))
    monkeypatch.setattr(parity, "all_cases", lambda: [wrong])
    assert parity.main([]) == 1
    assert "FAIL" in capsys.readouterr().out
