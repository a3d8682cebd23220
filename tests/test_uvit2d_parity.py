"""UVit2DModel (aMUSEd), NumPy vs the torch port: every block and the whole model in the variants of
the issue (tiny config; use_bias; ln_elementwise_affine=False; with and without down/up sampling;
batch 1 and 3; non-square and odd grids; text lengths 1, 3, 7, 77; GRN and other constant
parameters perturbed), float64 (rel <= 1e-10) and float32 (rel <= 1e-5); and the full amused-256
config on random weights (slow, still run in CI).

The cases are the ones `python -m uvit_torch.parity` reports (uvit_torch/parity/uvit2d.py)."""

import numpy as np
import pytest
import torch

from tests.parity_params import assert_case_passes, case_params
from uvit_numpy import uvit2d as N
from uvit_torch import parity
from uvit_torch.parity import uvit2d as parity_uvit2d
from uvit_torch.parity.harness import assert_close, to_torch

CASES = [case for case in parity_uvit2d.cases("tiny") if not case.slow]
PARAMS = case_params(CASES)


@pytest.mark.parametrize("case, dtype, batch", PARAMS)
def test_uvit2d_parity(case, dtype, batch):
    assert_case_passes(case, dtype, batch)


def test_float32_stays_float32_in_every_block_and_model():
    """A float32 block or model returns float32: one float64 constant (or a float64 sinusoid
    concatenated into the conditioning) would silently promote everything after it."""
    for case in CASES:
        ours, _, inputs = case.build(np.dtype(np.float32), 1)
        out = ours(*inputs)
        assert out.dtype == np.float32, case.name


def test_cases_cover_every_block_class():
    names = " ".join(case.name for case in CASES)
    for cls in ("UVit2DConvEmbed", "TimestepEmbedding", "ConvNextBlock", "Attention",
                "SkipFFTransformerBlock", "AdaLayerNormContinuous", "FeedForward",
                "BasicTransformerBlock", "Downsample2D", "Upsample2D", "UVitBlock",
                "ConvMlmLayer", "UVit2DModel"):
        assert cls in names, cls


def test_block_cases_at_amused_sizes():
    """The same blocks at aMUSEd-256's sizes (`--config amused-256`), float32, batch 1: one conv
    block and one transformer layer, the two kinds the model repeats."""
    cases = {c.name: c for c in parity_uvit2d.cases("amused-256")}
    for name in ("ConvNextBlock", "BasicTransformerBlock ada_norm_continuous"):
        row = parity.run_case(cases[name], "float32", 1)
        assert row.passed, row.detail


@pytest.mark.slow
def test_amused_256_numpy_matches_the_torch_port_and_diffusers():
    """The full amused-256 config (603,537,664 parameters) on random weights, batch 1, 16 x 16
    tokens, 77 text tokens, float32: NumPy vs the torch port <= 1e-5, the torch port vs diffusers
    <= 1e-5. One copy of the weights (2.4 GB) is shared by the three models."""
    from diffusers import UVit2DModel as DiffusersUVit2DModel
    ours, port = parity_uvit2d.shared_pair("amused-256", np.float32)
    with torch.device("meta"):
        theirs = DiffusersUVit2DModel(**N.resolve_config("amused-256"))
    theirs.load_state_dict(port.state_dict(), assign=True)
    theirs.eval()
    try:
        assert ours.num_parameters() == 603_537_664
        assert sum(p.numel() for p in theirs.parameters()) == 603_537_664
        cfg = N.resolve_config("amused-256")
        inputs = parity_uvit2d.model_inputs(cfg, np.random.default_rng(256), 1, np.float32,
                                            (16, 16), 77)
        out = ours(*inputs)
        assert out.dtype == np.float32 and out.shape == (1, 8192, 16, 16)
        with torch.no_grad():
            out_port = port(*[to_torch(x) for x in inputs])
            out_diffusers = theirs(*[to_torch(x) for x in inputs])
        print(assert_close("amused-256 numpy vs torch port", out, out_port, 1e-5).report())
        print(assert_close("amused-256 torch port vs diffusers", out_port, out_diffusers,
                           1e-5).report())
    finally:
        del ours, port, theirs


def test_report_lists_the_uvit2d_cases(capsys):
    assert parity.main(["--only", "UVit2DConvEmbed", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "UVit2DConvEmbed" in out and "0 failed" in out
    names = [case.name for case in parity.all_cases()]
    assert "UVit2DModel tiny" in names and "UVit2DModel amused-256 (random weights)" in names
