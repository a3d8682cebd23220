"""Bad input gets a clear ValueError/TypeError naming expected and received values, in both
packages, before any work is done."""

import numpy as np
import pytest
import torch

import uvit_numpy as N
import uvit_numpy.functional as NF
import uvit_torch as T
import uvit_torch.functional as TF


def both(np_fn, torch_fn, *args):
    """Call the NumPy and the torch version with the same (NumPy) arguments."""
    targs = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args]
    return [lambda: np_fn(*args), lambda: torch_fn(*targs)]


def f32(*shape):
    return np.zeros(shape, dtype=np.float32)


CASES = [
    # (id, numpy module or fn, torch module or fn, args, exception, message pattern)
    ("linear in_features", N.Linear(5, 3), T.Linear(5, 3), (f32(2, 4),), ValueError,
     r"expected in_features 5 on axis -1, got 4"),
    ("linear int input", N.Linear(5, 3), T.Linear(5, 3), (np.zeros((2, 5), np.int64),), TypeError,
     r"expected a floating-point array, got dtype int64"),
    ("layer norm channels", N.LayerNorm(6), T.LayerNorm(6), (f32(2, 5),), ValueError,
     r"expected channels 6 on axis -1, got 5"),
    ("rms norm int input", N.RMSNorm(6, 1e-6), T.RMSNorm(6, 1e-6), (np.ones((2, 6), np.int32),),
     TypeError, r"expected a floating-point array, got dtype int32"),
    ("rms norm no-affine channels", N.RMSNorm(6, 1e-6, False), T.RMSNorm(6, 1e-6, False),
     (f32(2, 5),), ValueError, r"expected channels 6"),
    ("grn rank", N.GlobalResponseNorm(4), T.GlobalResponseNorm(4), (f32(2, 3, 4),), ValueError,
     r"expected a 4-d array \(B, H, W, C\), got shape \(2, 3, 4\)"),
    ("embedding out of range", N.Embedding(10, 4), T.Embedding(10, 4),
     (np.array([[0, 3, 10]]),), ValueError, r"expected values in \[0, 10\), got values in \[0, 10\]"),
    ("embedding negative", N.Embedding(10, 4), T.Embedding(10, 4), (np.array([-1, 2]),),
     ValueError, r"expected values in \[0, 10\), got values in \[-1, 2\]"),
    ("embedding float ids", N.Embedding(10, 4), T.Embedding(10, 4), (np.array([1.0, 2.0]),),
     TypeError, r"expected an integer array, got dtype float64"),
    ("conv channels", N.Conv2d(4, 6, 3, padding=1), T.Conv2d(4, 6, 3, padding=1), (f32(1, 5, 8, 8),),
     ValueError, r"expected 4 input channels .* got 5"),
    ("conv rank", N.Conv2d(4, 6, 3), T.Conv2d(4, 6, 3), (f32(4, 8, 8),), ValueError,
     r"expected a 4-d array \(B, C, H, W\), got shape \(4, 8, 8\)"),
    ("conv input smaller than kernel", N.Conv2d(4, 6, 3), T.Conv2d(4, 6, 3), (f32(1, 4, 2, 8),),
     ValueError, r"padded input 2x8 is smaller than the 3x3 kernel"),
    ("depthwise channels", N.Conv2d(6, 6, 3, groups=6), T.Conv2d(6, 6, 3, groups=6),
     (f32(1, 3, 5, 5),), ValueError, r"expected 6 input channels"),
    ("conv transpose channels", N.ConvTranspose2d(4, 2, 2, stride=2),
     T.ConvTranspose2d(4, 2, 2, stride=2), (f32(1, 3, 5, 5),), ValueError,
     r"expected 4 input channels, got 3"),
    ("attention rank", N.Attention(8, heads=2, dim_head=4), T.Attention(8, heads=2, dim_head=4),
     (f32(8, 8),), ValueError, r"expected a 3-d array \(B, L, C\), got shape \(8, 8\)"),
    ("attention width", N.Attention(8, heads=2, dim_head=4), T.Attention(8, heads=2, dim_head=4),
     (f32(1, 3, 7),), ValueError, r"expected in_features 8 on axis -1, got 7"),
    ("attention batch mismatch", N.Attention(8, 6, heads=2, dim_head=4),
     T.Attention(8, 6, heads=2, dim_head=4), (f32(2, 3, 8), f32(3, 5, 6)), ValueError,
     r"batch sizes disagree: hidden_states 2, encoder_hidden_states 3"),
    ("qkv attention width", N.QKVAttention(8, 2), T.QKVAttention(8, 2), (f32(1, 3, 6),),
     ValueError, r"expected in_features 8 on axis -1, got 6"),
    ("gelu int", N.GELU(), T.GELU(), (np.ones(3, np.int64),), TypeError,
     r"expected a floating-point array, got dtype int64"),
    ("patchify stride does not divide", lambda x: NF.patchify(x, 4), lambda x: TF.patchify(x, 4),
     (f32(1, 3, 8, 6),), ValueError, r"multiples of the patch size 4, got 8x6"),
    ("unpatchify bad width", lambda x: NF.unpatchify(x, 3), lambda x: TF.unpatchify(x, 3),
     (f32(1, 4, 10),), ValueError, r"expected the last axis to be P\*P\*3, got 10"),
    ("timesteps rank", lambda t: NF.get_timestep_embedding(t, 8),
     lambda t: TF.get_timestep_embedding(t, 8), (f32(2, 1),), ValueError,
     r"expected a 1-d array \(N,\), got shape \(2, 1\)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error_in_both_packages(case):
    _, np_fn, torch_fn, args, exc, pattern = case
    for side, call in zip(("numpy", "torch"), both(np_fn, torch_fn, *args)):
        with pytest.raises(exc, match=pattern):
            call()


def test_sdpa_message_names_all_shapes():
    with pytest.raises(ValueError, match=r"q \(1, 2, 3, 4\), k \(1, 2, 5, 4\), v \(1, 2, 5, 3\)"):
        NF.scaled_dot_product_attention(f32(1, 2, 3, 4), f32(1, 2, 5, 4), f32(1, 2, 5, 3))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"groups=3 must divide in_channels=4"):
        N.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match=r"expected p in \[0, 1\), got 1.5"):
        N.Dropout(1.5)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'fast'"):
        N.GELU("fast")
    with pytest.raises(TypeError, match="expected float16, float32 or float64, got int64"):
        N.Linear(3, 4, dtype=np.int64)
