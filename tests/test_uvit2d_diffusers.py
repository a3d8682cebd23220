"""UVit2DModel, our torch port vs diffusers' own `UVit2DModel` and blocks, with diffusers' weights
loaded into ours; state-dict keys; diffusers folders read by both packages.

Tolerances (relative to the output size):
* float32, against stock diffusers: <= 1e-5;
* float64: diffusers keeps two float32 islands in a float64 model (RMSNorm's mean square and the
  micro-condition sinusoid), worth ~1e-7 of relative error on their own. The fixture
  `native_precision_diffusers` lifts them *inside these tests only* (monkeypatch) by computing
  both in the input's dtype with the same formulas, and then float64 must agree to <= 1e-10.
  That the patch changes precision and nothing else is itself checked: on float32 models it is
  bitwise a no-op.
"""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import diffusers.models.normalization as diffusers_normalization
import diffusers.models.unets.uvit_2d as diffusers_uvit_2d
from diffusers import UVit2DModel as DiffusersUVit2DModel

import uvit_numpy.uvit2d as N
import uvit_torch.uvit2d as T
from uvit_torch import parity
from uvit_torch.parity import uvit2d as parity_uvit2d
from uvit_torch.parity.harness import TOLERANCE, assert_close, compare, randomize_, to_torch

F32_CASES = parity_uvit2d.diffusers_cases("tiny", dtypes=("float32",))
F64_CASES = parity_uvit2d.diffusers_cases("tiny", dtypes=("float64",))


def _params(cases, dtype):
    return [pytest.param(case, batch, id=f"{case.name}-B{batch}")
            for case in cases for batch in case.batches]


# --------------------------------------------------------------------------------------------------
# Lifting diffusers' two float32 islands (tests only)
# --------------------------------------------------------------------------------------------------
def _rms_norm_in_input_dtype(self, hidden_states):
    """diffusers' RMSNorm with its mean square taken in the input's dtype (not float32)."""
    mean_square = (hidden_states * hidden_states).mean(-1, keepdim=True)
    out = hidden_states * torch.rsqrt(mean_square + self.eps)
    if self.weight is None:
        return out
    out = out * self.weight
    return out if self.bias is None else out + self.bias


def _sinusoid_in_input_dtype(timesteps, embedding_dim, flip_sin_to_cos=False,
                             downscale_freq_shift=1, scale=1, max_period=10000):
    """diffusers' get_timestep_embedding, formed in the dtype of `timesteps` (not float32)."""
    half = embedding_dim // 2
    k = torch.arange(half, dtype=timesteps.dtype)
    freqs = torch.exp(-math.log(max_period) * k / (half - downscale_freq_shift))
    args = scale * (timesteps[:, None] * freqs[None, :])
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    return torch.nn.functional.pad(emb, (0, embedding_dim % 2))


@pytest.fixture
def native_precision_diffusers(monkeypatch):
    monkeypatch.setattr(diffusers_normalization.RMSNorm, "forward", _rms_norm_in_input_dtype)
    monkeypatch.setattr(diffusers_uvit_2d, "get_timestep_embedding", _sinusoid_in_input_dtype)


# --------------------------------------------------------------------------------------------------
# Blocks and models, tiny config and its variants
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, batch", _params(F32_CASES, "float32"))
def test_float32_vs_stock_diffusers(case, batch):
    row = parity.run_case(case, "float32", batch)
    assert row.passed, f"{row.detail} exceeds 1e-05"


@pytest.mark.parametrize("case, batch", _params(F64_CASES, "float64"))
def test_float64_vs_diffusers_with_its_float32_islands_lifted(case, batch,
                                                             native_precision_diffusers):
    row = parity.run_case(case, "float64", batch)
    assert row.passed, f"{row.detail} exceeds 1e-10"


def _tiny_inputs(dtype, batch=2, grid=(4, 6)):
    cfg = N.resolve_config("tiny")
    return parity_uvit2d.model_inputs(cfg, np.random.default_rng(7), batch, dtype, grid, 7)


def test_stock_float64_diffusers_is_off_by_its_float32_islands_only():
    """Against stock diffusers, float64 agreement is limited to ~1e-7 (the islands): more than
    float64 rounding, far less than a real mistake."""
    ours, theirs = parity_uvit2d.diffusers_model_pair("tiny", np.float64)
    inputs = [to_torch(x) for x in _tiny_inputs(np.float64)]
    with torch.no_grad():
        result = compare("stock float64", ours(*inputs), theirs(*inputs))
    assert 1e-12 < result.max_rel < 1e-5, result.report()


def test_lifting_the_islands_is_a_no_op_in_float32(monkeypatch):
    """The patch changes only the precision of the two islands: float32 outputs are bitwise
    equal."""
    _, theirs = parity_uvit2d.diffusers_model_pair("tiny", np.float32)
    inputs = [to_torch(x) for x in _tiny_inputs(np.float32)]
    with torch.no_grad():
        stock = theirs(*inputs)
        monkeypatch.setattr(diffusers_normalization.RMSNorm, "forward", _rms_norm_in_input_dtype)
        monkeypatch.setattr(diffusers_uvit_2d, "get_timestep_embedding",
                            _sinusoid_in_input_dtype)
        patched = theirs(*inputs)
    assert torch.equal(stock, patched)


# --------------------------------------------------------------------------------------------------
# aMUSEd's sizes (2 of the 22 layers), aMUSEd-like micro-conditions
# --------------------------------------------------------------------------------------------------
AMUSED_2_LAYERS = dict(N.CONFIGS["amused-256"], num_hidden_layers=2)


def _amused_pair(dtype):
    """Diffusers' model at aMUSEd-256's sizes with 2 layers, and our port sharing its tensors."""
    torch.manual_seed(0)
    theirs = DiffusersUVit2DModel(**AMUSED_2_LAYERS).to(dtype).eval()
    randomize_(theirs, 0)
    with torch.device("meta"):
        ours = T.UVit2DModel(**AMUSED_2_LAYERS, dtype=dtype)
    ours.load_state_dict(theirs.state_dict(), assign=True)
    return ours.eval(), theirs


def _amused_inputs(dtype, side=16):
    rng = np.random.default_rng(512)
    ids = torch.from_numpy(rng.integers(0, 8256, size=(2, side, side)))
    ehs = torch.from_numpy(rng.standard_normal((2, 77, 768))).to(dtype)
    pooled = torch.from_numpy(rng.standard_normal((2, 768))).to(dtype)
    micro = torch.tensor([[256, 256, 0, 0, 6], [512, 512, 0, 0, 6]], dtype=dtype)
    return ids, ehs, pooled, micro


def test_amused_sizes_float32_vs_stock_diffusers():
    """At aMUSEd's sizes, with micro-conditions 256/512/6, our correctly rounded float32 sinusoid
    (diffusers' is up to 3e-5 off) still keeps the logits within 1e-5 of stock diffusers."""
    ours, theirs = _amused_pair(torch.float32)
    inputs = _amused_inputs(torch.float32)
    with torch.no_grad():
        result = assert_close("aMUSEd sizes, float32", ours(*inputs), theirs(*inputs), 1e-5)
    print(result.report())


def test_amused_sizes_float64_vs_diffusers_islands_lifted(native_precision_diffusers):
    """The same in float64 (on an 8 x 8 grid, to save time), islands lifted: <= 1e-10."""
    ours, theirs = _amused_pair(torch.float64)
    inputs = _amused_inputs(torch.float64, side=8)
    with torch.no_grad():
        result = assert_close("aMUSEd sizes, float64", ours(*inputs), theirs(*inputs), 1e-10)
    print(result.report())


# --------------------------------------------------------------------------------------------------
# State dicts: diffusers' keys and shapes, unchanged
# --------------------------------------------------------------------------------------------------
KEY_COUNTS = [({}, 122), ({"use_bias": True}, 212), ({"ln_elementwise_affine": False}, 105),
              ({"use_bias": True, "ln_elementwise_affine": False}, 193),
              ({"downsample": False, "upsample": False}, 118),
              ({"hidden_size": 32, "num_attention_heads": 2}, 118)]


@pytest.mark.parametrize("overrides, count", KEY_COUNTS, ids=[str(o) for o, _ in KEY_COUNTS])
def test_state_dict_keys_and_shapes_are_diffusers(overrides, count):
    cfg = N.resolve_config("tiny", **overrides)
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in DiffusersUVit2DModel(**cfg).state_dict().items()}
        port = {k: tuple(v.shape) for k, v in T.UVit2DModel(**cfg).state_dict().items()}
    ours = {k: v.shape for k, v in N.UVit2DModel(**cfg).state_dict().items()}
    assert port == theirs
    assert ours == theirs
    assert len(theirs) == count


def test_published_configs_have_diffusers_parameter_counts():
    """amused-256: 603,537,664 parameters; amused-512 adds the 2x2 down/up samplers."""
    for name, expected in (("amused-256", 603_537_664), ("amused-512", 608_257_792)):
        cfg = N.resolve_config(name)
        with torch.device("meta"):
            theirs = sum(p.numel() for p in DiffusersUVit2DModel(**cfg).parameters())
            ours = sum(p.numel() for p in T.UVit2DModel.from_config(name).parameters())
        assert ours == theirs == expected, name


# --------------------------------------------------------------------------------------------------
# diffusers folders
# --------------------------------------------------------------------------------------------------
def _saved_diffusers_model(tmp_path, dtype=torch.float32):
    torch.manual_seed(3)
    model = DiffusersUVit2DModel(**N.resolve_config("tiny")).to(dtype).eval()
    randomize_(model, 3)
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "pipeline").mkdir()
    model.save_pretrained(tmp_path / "pipeline" / "transformer")
    return model


@pytest.mark.parametrize("folder", ["model", "pipeline"])
def test_from_pretrained_round_trip(tmp_path, folder):
    """A diffusers model saved with `save_pretrained` (a model folder, or a pipeline's
    `transformer/`) loads into both of ours, and all three give the same logits."""
    theirs = _saved_diffusers_model(tmp_path)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert "_class_name" in config and "_diffusers_version" in config
    ours_np = N.UVit2DModel.from_pretrained(tmp_path / folder)
    ours_t = T.UVit2DModel.from_pretrained(tmp_path / folder)
    assert not ours_np.training and not ours_t.training
    inputs = _tiny_inputs(np.float32)
    with torch.no_grad():
        ref = theirs(*[to_torch(x) for x in inputs])
        out_t = ours_t(*[to_torch(x) for x in inputs])
    out_np = ours_np(*inputs)
    assert_close("numpy from_pretrained vs diffusers", out_np, ref, TOLERANCE[np.dtype("f4")])
    assert_close("torch from_pretrained vs diffusers", out_t, ref, TOLERANCE[np.dtype("f4")])


def test_from_pretrained_in_float64_matches_between_packages(tmp_path):
    _saved_diffusers_model(tmp_path)
    ours_np = N.UVit2DModel.from_pretrained(tmp_path / "model", dtype=np.float64)
    ours_t = T.UVit2DModel.from_pretrained(tmp_path / "model", dtype=torch.float64)
    inputs = _tiny_inputs(np.float64)
    with torch.no_grad():
        out_t = ours_t(*[to_torch(x) for x in inputs])
    assert_close("float64 from_pretrained", ours_np(*inputs), out_t, 1e-10)


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_our_save_pretrained_loads_in_diffusers(tmp_path, package):
    if package == "numpy":
        ours = N.UVit2DModel.from_config("tiny", rng=5).eval()
        run = ours
    else:
        torch.manual_seed(5)
        ours = T.UVit2DModel.from_config("tiny").eval()

        def run(*xs):
            with torch.no_grad():
                return ours(*[to_torch(x) for x in xs])
    ours.save_pretrained(tmp_path / "ours")
    theirs = DiffusersUVit2DModel.from_pretrained(tmp_path / "ours").eval()
    inputs = _tiny_inputs(np.float32)
    with torch.no_grad():
        ref = theirs(*[to_torch(x) for x in inputs])
    assert_close(f"{package} save_pretrained -> diffusers", run(*inputs), ref, 1e-5)
