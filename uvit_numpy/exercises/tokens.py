"""Exercises on turning images and times into tokens: patchify, unpatchify, the U-ViT sinusoid.

Notebook: book/exercises/01_patches_and_time.ipynb.
"""

import math

import numpy as np

from .. import functional as F
from .catalogue import Case, Exercise, Mistake, register, rng_for

NOTEBOOK = "01_patches_and_time.ipynb"


# --------------------------------------------------------------------------------------------------
# patchify
# --------------------------------------------------------------------------------------------------
def patchify(x, patch_size):
    """(B, C, H, W) -> (B, L, P*P*C), L = (H/P)(W/P) tokens in row-major patch order, each patch
    flattened as (p1, p2, C)."""
    return F.patchify(x, patch_size)


def _patchify_axes(order):
    """A patchify that moves the axes of (B, C, h, p1, w, p2) into `order` before flattening."""
    def wrong(x, patch_size):
        B, C, H, W = x.shape
        P = patch_size
        y = x.reshape(B, C, H // P, P, W // P, P)         # (B, C, h, p1, w, p2)
        y = y.transpose(order)
        return y.reshape(B, (H // P) * (W // P), P * P * C)
    return wrong


def _patchify_plain_reshape(x, patch_size):
    B, _, H, W = x.shape
    return x.reshape(B, (H // patch_size) * (W // patch_size), -1)


def _patchify_cases():
    rng = rng_for("patchify")
    return [
        Case("random (B=2, C=3, H=4, W=6, P=2)", (rng.standard_normal((2, 3, 4, 6)), 2)),
        Case("batch 1, odd sizes (B=1, C=2, H=9, W=3, P=3)",
             (rng.standard_normal((1, 2, 9, 3)), 3)),
        Case("one token (B=3, C=2, H=2, W=2, P=2)", (rng.standard_normal((3, 2, 2, 2)), 2)),
        Case("P=1: every pixel a token (B=1, C=5, H=3, W=2)",
             (rng.standard_normal((1, 5, 3, 2)), 1)),
    ]


register(Exercise(
    name="patchify",
    summary="cut (B, C, H, W) images into P x P patch tokens (B, L, P*P*C), U-ViT layout",
    notebook=NOTEBOOK,
    reference=patchify,
    make_cases=_patchify_cases,
    mistakes=(
        Mistake("channels_first_in_patch",
                "each token must list its patch as (p1, p2, C), channels fastest (the U-ViT "
                "layout); yours lists it as (C, p1, p2). Move the channel axis last before the "
                "final reshape.",
                _patchify_axes((0, 2, 4, 1, 3, 5))),
        Mistake("column_major_tokens",
                "the tokens must run over the patch grid row by row (token n = i * W/P + j); "
                "yours run down the columns first. Put the patch-row axis before the "
                "patch-column axis.",
                _patchify_axes((0, 4, 2, 3, 5, 1))),
        Mistake("p1_p2_swapped",
                "inside a patch, pixel rows come before pixel columns: (p1, p2, C). Yours has "
                "(p2, p1, C), a transposed patch.",
                _patchify_axes((0, 2, 4, 5, 3, 1))),
        Mistake("plain_reshape",
                "a plain reshape of (B, C, H, W) does not gather patches: split H into "
                "(H/P, P) and W into (W/P, P), transpose to (B, H/P, W/P, P, P, C), then "
                "reshape.",
                _patchify_plain_reshape),
    ),
))


# --------------------------------------------------------------------------------------------------
# unpatchify
# --------------------------------------------------------------------------------------------------
def unpatchify(x, channels):
    """(B, L, P*P*C) -> (B, C, H, W) for a square grid of L tokens: the inverse of patchify."""
    return F.unpatchify(x, channels)


def _unpatchify_axes(split, order):
    """An unpatchify that reads each token as the axes `split` and moves them by `order`."""
    def wrong(x, channels):
        B, L, D = x.shape
        h = math.isqrt(L)
        P = math.isqrt(D // channels)
        sizes = {"h": h, "w": h, "p1": P, "p2": P, "C": channels}
        y = x.reshape(B, *[sizes[a] for a in split])
        y = y.transpose(order)
        return y.reshape(B, channels, h * P, h * P)
    return wrong


def _unpatchify_plain_reshape(x, channels):
    B, L, D = x.shape
    side = math.isqrt(L * D // channels)
    return x.reshape(B, channels, side, side)


def _unpatchify_cases():
    rng = rng_for("unpatchify")
    return [
        Case("random (B=2, 2x2 grid, P=2, C=3)", (rng.standard_normal((2, 4, 12)), 3)),
        Case("batch 1, 3x3 grid, P=1, C=2", (rng.standard_normal((1, 9, 2)), 2)),
        Case("one token (B=1, P=3, C=2)", (rng.standard_normal((1, 1, 18)), 2)),
        Case("odd grid 3x3, P=2, C=1", (rng.standard_normal((2, 9, 4)), 1)),
    ]


register(Exercise(
    name="unpatchify",
    summary="put patch tokens (B, L, P*P*C) back into images (B, C, H, W): patchify's inverse",
    notebook=NOTEBOOK,
    reference=unpatchify,
    make_cases=_unpatchify_cases,
    mistakes=(
        Mistake("channels_first_in_patch",
                "each token holds its patch as (p1, p2, C), channels fastest; you read it as "
                "(C, p1, p2). Reshape to (B, h, w, P, P, C).",
                _unpatchify_axes(("h", "w", "C", "p1", "p2"), (0, 3, 1, 4, 2, 5))),
        Mistake("column_major_tokens",
                "token n sits at grid row n // w and column n % w (row-major); you filled the "
                "grid column by column.",
                _unpatchify_axes(("w", "h", "p1", "p2", "C"), (0, 5, 2, 3, 1, 4))),
        Mistake("p1_p2_swapped",
                "inside a token, pixel rows p1 come before pixel columns p2; your patches come "
                "out transposed.",
                _unpatchify_axes(("h", "w", "p2", "p1", "C"), (0, 5, 1, 4, 2, 3))),
        Mistake("plain_reshape",
                "a plain reshape to (B, C, H, W) scrambles the patches: reshape to "
                "(B, h, w, P, P, C), transpose to (B, C, h, P, w, P), then reshape.",
                _unpatchify_plain_reshape),
    ),
))


# --------------------------------------------------------------------------------------------------
# timestep_embedding
# --------------------------------------------------------------------------------------------------
def timestep_embedding(timesteps, dim, max_period=10000):
    """(N,) times -> (N, dim): [cos(t f_k), sin(t f_k)], f_k = exp(-ln(max_period) k / (dim//2)),
    a zero column appended when dim is odd."""
    return F.timestep_embedding(timesteps, dim, max_period=max_period)


def _sinusoid(timesteps, dim, max_period, denominator_shift=0.0, order="cos_sin",
              pad_odd=True):
    half = dim // 2
    k = np.arange(half, dtype=np.float64)
    freqs = np.exp(-math.log(max_period) * k / (half - denominator_shift))   # (half,)
    args = timesteps.astype(np.float64)[:, None] * freqs[None, :]          # (N, half)
    cos, sin = np.cos(args), np.sin(args)
    if order == "cos_sin":
        emb = np.concatenate([cos, sin], axis=-1)                          # (N, 2 half)
    elif order == "sin_cos":
        emb = np.concatenate([sin, cos], axis=-1)                          # (N, 2 half)
    else:
        emb = np.stack([cos, sin], axis=-1).reshape(len(timesteps), 2 * half)  # interleaved
    if dim % 2 and pad_odd:
        emb = np.pad(emb, ((0, 0), (0, 1)))                                # (N, dim)
    return emb


def _timestep_cases():
    rng = rng_for("timestep_embedding")
    return [
        Case("random times in [0, 1000), dim 8", (rng.uniform(0, 1000, 3), 8)),
        Case("batch 1, odd dim 7", (np.array([500.5]), 7)),
        Case("integer timesteps 0, 1, 999, dim 6", (np.array([0, 1, 999]), 6)),
        Case("max_period=100, dim 10", (rng.uniform(0, 50, 2), 10), {"max_period": 100}),
    ]


register(Exercise(
    name="timestep_embedding",
    summary="the U-ViT sinusoidal time embedding [cos(t f_k), sin(t f_k)] (cosines first)",
    notebook=NOTEBOOK,
    reference=timestep_embedding,
    make_cases=_timestep_cases,
    mistakes=(
        Mistake("sin_cos_swapped",
                "U-ViT puts the cosines first: [cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), "
                "...]. Yours has the sines first (that is diffusers' default, "
                "flip_sin_to_cos=False).",
                lambda t, dim, max_period=10000: _sinusoid(t, dim, max_period, order="sin_cos")),
        Mistake("interleaved",
                "all the cosines come first, then all the sines; yours interleaves them "
                "(cos, sin, cos, sin, ...).",
                lambda t, dim, max_period=10000: _sinusoid(t, dim, max_period,
                                                           order="interleaved")),
        Mistake("frequency_denominator",
                "the frequencies are f_k = exp(-ln(max_period) * k / half) with half = dim // 2; "
                "you divided by half - 1 (diffusers' downscale_freq_shift=1).",
                lambda t, dim, max_period=10000: _sinusoid(t, dim, max_period,
                                                           denominator_shift=1.0)),
        Mistake("max_period_ignored",
                "use the max_period argument in the frequencies; yours always uses 10000.",
                lambda t, dim, max_period=10000: _sinusoid(t, dim, 10000)),
        Mistake("odd_dim_not_padded",
                "for an odd dim, append one zero column so the output has exactly dim columns.",
                lambda t, dim, max_period=10000: _sinusoid(t, dim, max_period, pad_odd=False)),
    ),
))
