"""U-ViT, NumPy vs torch: every block and whole models in every option, float64 (rel <= 1e-10) and
float32 (rel <= 1e-5), batch 1 and 3, and the paper's CIFAR-10 model (slow, still run in CI).

The cases are the ones `python -m uvit_torch.parity` reports (uvit_torch/parity/uvit.py)."""

import numpy as np
import pytest

from tests.parity_params import assert_case_passes, case_params
from uvit_torch import parity
from uvit_torch.parity import uvit as parity_uvit

CASES = parity_uvit.cases()
PARAMS = case_params(CASES)
CIFAR10 = next(case for case in CASES if "cifar10" in case.name)


@pytest.mark.parametrize("case, dtype, batch", PARAMS)
def test_uvit_parity(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


@pytest.mark.slow
def test_cifar10_model_has_the_papers_size_in_both_packages():
    """The parity case's two models (cached from the test above) hold the paper's 44,255,328
    parameters under the same keys and shapes; then the cached weights are freed."""
    try:
        ours, theirs = CIFAR10.pair(np.dtype(np.float32))
        assert ours.num_parameters() == 44_255_328
        assert sum(p.numel() for p in theirs.parameters()) == 44_255_328
        theirs_sd = theirs.state_dict()
        assert list(ours.state_dict()) == list(theirs_sd)
        assert all(v.shape == tuple(theirs_sd[k].shape) for k, v in ours.state_dict().items())
    finally:
        CIFAR10.pair.cache_clear()


def test_float32_models_stay_float32():
    """A float32 model returns float32 (a float64 constant or sinusoid would silently promote)."""
    for case in CASES:
        if case.slow:
            continue
        ours, _, inputs = case.build(np.dtype(np.float32), 1)
        assert ours(*inputs).dtype == np.float32, case.name


def test_report_lists_the_uvit_cases(capsys):
    assert parity.main(["--only", "UViTText small"]) == 0
    out = capsys.readouterr().out
    assert "UViTText small (S=5, clip 24)" in out and "0 failed" in out
    names = [case.name for case in parity.all_cases()]
    assert "U-ViT Block(48, skip)" in names and CIFAR10.name in names
