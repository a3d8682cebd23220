"""U-ViT's bad input: a clear ValueError/TypeError naming expected and received values, in both
packages, raised before any arithmetic."""

import numpy as np
import pytest
import torch

from uvit_numpy import uvit as NU
from uvit_torch import uvit as TU
from uvit_torch.parity.uvit import SMALL, TEXT

UNCOND = SMALL                                   # 8x8, P=2, 3 channels
COND = dict(SMALL, num_classes=10)


def f32(*shape):
    return np.zeros(shape, np.float32)


def t(*values):
    return np.array(values, np.float32)


IMG = f32(2, 3, 8, 8)
CTX = f32(2, 5, 24)
TEXT_IMG = f32(2, 4, 8, 8)

CASES = [
    # (id, model kwargs, forward args, exception, message pattern)
    ("side not a multiple of the patch", UNCOND, (f32(2, 3, 7, 8), t(1, 2)), ValueError,
     r"UViT: x: expected height and width that are multiples of the patch size 2, got 7x8"),
    ("side not img_size", UNCOND, (f32(2, 3, 16, 16), t(1, 2)), ValueError,
     r"UViT: x: expected a 8x8 input \(img_size=8.*got 16x16"),
    ("non-square image", UNCOND, (f32(2, 3, 8, 10), t(1, 2)), ValueError,
     r"expected a 8x8 input .*got 8x10"),
    ("wrong channel count", UNCOND, (f32(2, 4, 8, 8), t(1, 2)), ValueError,
     r"UViT: x: expected channels \(in_chans\) 3 on axis 1, got 4 \(shape \(2, 4, 8, 8\)\)"),
    ("image rank", UNCOND, (f32(3, 8, 8), t(1, 2)), ValueError,
     r"UViT: x: expected a 4-d array \(B, C, H, W\), got shape \(3, 8, 8\)"),
    ("integer image", UNCOND, (np.zeros((2, 3, 8, 8), np.int64), t(1, 2)), TypeError,
     r"UViT: x: expected a floating-point array, got dtype int64"),
    ("timesteps batch disagrees", UNCOND, (IMG, t(1, 2, 3)), ValueError,
     r"UViT: timesteps: expected batch size 2, got 3"),
    ("timesteps 2-d", UNCOND, (IMG, np.zeros((2, 1), np.float32)), ValueError,
     r"UViT: timesteps: expected a 1-d array \(B,\), got shape \(2, 1\)"),
    ("timesteps scalar", UNCOND, (IMG, np.float32(3.0)), ValueError,
     r"UViT: timesteps: expected a 1-d array \(B,\), got shape \(\)"),
    ("timesteps bool", UNCOND, (IMG, np.array([True, False])), TypeError,
     r"UViT: timesteps: expected float or integer times, got dtype bool"),
    ("labels out of range", COND, (IMG, t(1, 2), np.array([3, 10])), ValueError,
     r"UViT: y: expected values in \[0, 10\), got values in \[3, 10\]"),
    ("negative labels", COND, (IMG, t(1, 2), np.array([-1, 4])), ValueError,
     r"UViT: y: expected values in \[0, 10\), got values in \[-1, 4\]"),
    ("labels to an unconditional model", UNCOND, (IMG, t(1, 2), np.array([0, 1])), ValueError,
     r"UViT: y: this model is unconditional \(num_classes=-1\) and takes no labels, got labels "
     r"of shape \(2,\)"),
    ("labels missing", COND, (IMG, t(1, 2)), ValueError,
     r"UViT: y: this model is class-conditional: expected \(B,\) = \(2,\) integer labels in "
     r"\[0, 10\), got None"),
    ("float labels", COND, (IMG, t(1, 2), np.array([1.0, 2.0])), TypeError,
     r"UViT: y: expected an integer array, got dtype float64"),
    ("labels batch disagrees", COND, (IMG, t(1, 2), np.array([1, 2, 3])), ValueError,
     r"UViT: y: expected batch size 2, got 3"),
    ("context missing", TEXT, (TEXT_IMG, t(1, 2)), ValueError,
     r"UViTText: context: expected text features of shape \(B, S, clip_dim\) = \(2, 5, 24\), "
     r"got None"),
    ("context token count", TEXT, (TEXT_IMG, t(1, 2), f32(2, 6, 24)), ValueError,
     r"UViTText: context: expected text tokens \(num_clip_token\) 5 on axis 1, got 6"),
    ("context width", TEXT, (TEXT_IMG, t(1, 2), f32(2, 5, 16)), ValueError,
     r"UViTText: context: expected features \(clip_dim\) 24 on axis 2, got 16"),
    ("context batch", TEXT, (TEXT_IMG, t(1, 2), f32(3, 5, 24)), ValueError,
     r"UViTText: context: expected batch size 2, got 3"),
    ("context int", TEXT, (TEXT_IMG, t(1, 2), np.zeros((2, 5, 24), np.int32)), TypeError,
     r"UViTText: context: expected a floating-point array, got dtype int32"),
    ("text image channels", TEXT, (IMG, t(1, 2), CTX), ValueError,
     r"UViTText: x: expected channels \(in_chans\) 4 on axis 1, got 3"),
]


def build(package, kwargs):
    cls = ((TU if package == "torch" else NU).UViTText if "clip_dim" in kwargs
           else (TU if package == "torch" else NU).UViT)
    return cls(**kwargs)


def to_backend(package, args):
    if package == "numpy":
        return args
    return tuple(torch.from_numpy(np.asarray(a)) if isinstance(a, (np.ndarray, np.generic))
                 else a for a in args)


@pytest.mark.parametrize("package", ["numpy", "torch"])
@pytest.mark.parametrize("case_id, kwargs, args, exc, pattern", CASES,
                         ids=[c[0] for c in CASES])
def test_forward_rejects_bad_input(package, case_id, kwargs, args, exc, pattern):
    model = build(package, kwargs)
    with pytest.raises(exc, match=pattern):
        model(*to_backend(package, args))


@pytest.mark.parametrize("package", ["numpy", "torch"])
def test_checks_come_before_any_arithmetic(package, monkeypatch):
    """A bad label is reported even though the patch embedding would run first."""
    model = build(package, COND)
    calls = []
    monkeypatch.setattr(model.patch_embed, "forward", lambda x: calls.append(x))
    with pytest.raises(ValueError, match=r"expected values in \[0, 10\)"):
        model(*to_backend(package, (IMG, t(1, 2), np.array([0, 11]))))
    assert calls == []


@pytest.mark.parametrize("lib", [NU, TU])
def test_bad_constructor_arguments(lib):
    with pytest.raises(ValueError, match=r"expected img_size to be a multiple of patch_size 4, "
                                         r"got 30"):
        lib.UViT(img_size=30, patch_size=4, embed_dim=16, depth=2, num_heads=2)
    with pytest.raises(ValueError, match=r"expected embed_dim to be a multiple of num_heads 3, "
                                         r"got 16"):
        lib.UViTText(img_size=8, patch_size=2, embed_dim=16, depth=2, num_heads=3)


@pytest.mark.parametrize("lib", [NU, TU])
def test_block_skip_mismatches(lib):
    to = (lambda a: a) if lib is NU else torch.from_numpy
    x = to(np.zeros((1, 3, 8)))
    with_skip = lib.Block(8, 2, skip=True, **({"dtype": np.float64} if lib is NU else
                                               {"dtype": torch.float64}))
    without = lib.Block(8, 2, **({"dtype": np.float64} if lib is NU else
                                 {"dtype": torch.float64}))
    with pytest.raises(ValueError, match=r"Block: this block has a skip_linear and expects a "
                                         r"skip of shape \(1, 3, 8\), got None"):
        with_skip(x)
    with pytest.raises(ValueError, match=r"Block: this block has no skip_linear \(skip=False\) "
                                         r"and takes no skip, got one of shape \(1, 3, 8\)"):
        without(x, x)
    with pytest.raises(ValueError, match=r"long_skip: expected a skip shaped like x "
                                         r"\(1, 3, 8\), got \(1, 4, 8\)"):
        with_skip(x, to(np.zeros((1, 4, 8))))


@pytest.mark.parametrize("lib", [NU, TU])
def test_patch_embed_rejects_a_side_that_is_not_a_multiple(lib):
    pe = lib.PatchEmbed(4, 3, 8)
    x = np.zeros((1, 3, 8, 6), np.float32)
    with pytest.raises(ValueError, match=r"PatchEmbed: expected height and width that are "
                                         r"multiples of the patch size 4, got 8x6"):
        pe(x if lib is NU else torch.from_numpy(x))
