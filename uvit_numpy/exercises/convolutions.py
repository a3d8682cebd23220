"""Exercises on convolutions: conv2d by im2col, the depthwise 3x3 of ConvNeXt and the 2x2 stride-2
transposed convolution of aMUSEd's upsampler.

Notebook: book/exercises/04_convolutions.ipynb.
"""

import math

import numpy as np

from .. import functional as F
from .catalogue import Case, Exercise, Mistake, register, rng_for

NOTEBOOK = "04_convolutions.ipynb"


def _flip(weight):
    return weight[:, :, ::-1, ::-1]


def _weights(rng, shape):
    fan_in = math.prod(shape[1:])
    return rng.standard_normal(shape) / math.sqrt(fan_in), 0.1 * rng.standard_normal(shape[0])


# --------------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------------
def conv2d(x, weight, bias, stride=1, padding=0):
    """x: (B, C, H, W), weight: (O, C, kh, kw), bias: (O,). Cross-correlation with zero padding,
    as torch's conv2d: (B, O, (H + 2p - kh) // s + 1, (W + 2p - kw) // s + 1)."""
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def _conv2d_cases():
    rng = rng_for("conv2d")
    return [
        Case("random, 3x3, padding 1 (B=2, C=3, H=5, W=6, O=4)",
             (rng.standard_normal((2, 3, 5, 6)), *_weights(rng, (4, 3, 3, 3))), {"padding": 1}),
        Case("batch 1, stride 2, odd sizes (B=1, C=2, H=7, W=5, O=3, k=3)",
             (rng.standard_normal((1, 2, 7, 5)), *_weights(rng, (3, 2, 3, 3))), {"stride": 2}),
        Case("non-square 2x3 kernel, padding 1 (B=2, C=2, H=4, W=4, O=2)",
             (rng.standard_normal((2, 2, 4, 4)), *_weights(rng, (2, 2, 2, 3))), {"padding": 1}),
        Case("1x1 kernel (B=1, C=4, H=3, W=2, O=5)",
             (rng.standard_normal((1, 4, 3, 2)), *_weights(rng, (5, 4, 1, 1)))),
    ]


register(Exercise(
    name="conv2d",
    summary="2-D convolution (cross-correlation) with stride and zero padding, by im2col",
    notebook=NOTEBOOK,
    reference=conv2d,
    make_cases=_conv2d_cases,
    mistakes=(
        Mistake("kernel_flipped",
                "deep-learning 'convolution' is a cross-correlation: the kernel is not flipped. "
                "Output (i, j) is sum over c, a, b of weight[o, c, a, b] * x[c, i*s + a, j*s + b].",
                lambda x, w, b, stride=1, padding=0: F.conv2d(x, _flip(w), b, stride, padding)),
        Mistake("padding_ignored",
                "pad H and W with `padding` zeros on both sides before sliding the window "
                "(np.pad on axes 2 and 3 only).",
                lambda x, w, b, stride=1, padding=0: F.conv2d(x, w, b, stride, 0)),
        Mistake("stride_ignored",
                "move the window `stride` pixels at a time: Ho = (H + 2p - kh) // stride + 1.",
                lambda x, w, b, stride=1, padding=0: F.conv2d(x, w, b, 1, padding)),
        Mistake("bias_missing",
                "add the bias, one value per output channel: y + bias[:, None, None].",
                lambda x, w, b, stride=1, padding=0: F.conv2d(x, w, None, stride, padding)),
    ),
))


# --------------------------------------------------------------------------------------------------
# depthwise_conv2d
# --------------------------------------------------------------------------------------------------
def depthwise_conv2d(x, weight, bias, padding=1):
    """x: (B, C, H, W), weight: (C, 1, k, k), bias: (C,). Channel c is filtered by its own kernel
    weight[c, 0] (groups = C), stride 1, zero padding. Returns (B, C, H + 2p - k + 1, ...)."""
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])


def _depthwise_channels_mixed(x, weight, bias, padding=1):
    C = x.shape[1]
    full = np.repeat(weight, C, axis=1)                  # (C, 1, k, k) -> (C, C, k, k)
    return F.conv2d(x, full, bias, padding=padding)


def _depthwise_cases():
    rng = rng_for("depthwise_conv2d")
    return [
        Case("random 3x3 (B=2, C=3, H=4, W=5)",
             (rng.standard_normal((2, 3, 4, 5)), *_weights(rng, (3, 1, 3, 3)))),
        Case("batch 1, one row, odd width (B=1, C=2, H=1, W=3)",
             (rng.standard_normal((1, 2, 1, 3)), *_weights(rng, (2, 1, 3, 3)))),
        Case("5x5 kernel, padding 2 (B=1, C=4, H=6, W=3)",
             (rng.standard_normal((1, 4, 6, 3)), *_weights(rng, (4, 1, 5, 5))), {"padding": 2}),
    ]


register(Exercise(
    name="depthwise_conv2d",
    summary="the depthwise (groups = C) convolution: each channel filtered by its own kernel",
    notebook=NOTEBOOK,
    reference=depthwise_conv2d,
    make_cases=_depthwise_cases,
    mistakes=(
        Mistake("channels_mixed",
                "depthwise means output channel c sees only input channel c: nothing is summed "
                "over channels. You applied each kernel to the sum of all channels.",
                _depthwise_channels_mixed),
        Mistake("kernel_flipped",
                "no kernel flip: y[c, i, j] = sum over a, b of weight[c, 0, a, b] * "
                "x_padded[c, i + a, j + b].",
                lambda x, w, b, padding=1: F.conv2d(x, _flip(w), b, padding=padding,
                                                    groups=x.shape[1])),
        Mistake("padding_ignored",
                "pad H and W with `padding` zeros on both sides, so a 3x3 kernel with padding 1 "
                "keeps the size.",
                lambda x, w, b, padding=1: F.conv2d(x, w, b, padding=0, groups=x.shape[1])),
        Mistake("bias_missing",
                "add the bias, one value per channel.",
                lambda x, w, b, padding=1: F.conv2d(x, w, None, padding=padding,
                                                    groups=x.shape[1])),
    ),
))


# --------------------------------------------------------------------------------------------------
# conv_transpose2x2
# --------------------------------------------------------------------------------------------------
def conv_transpose2x2(x, weight, bias):
    """x: (B, C, H, W), weight: (C, O, 2, 2) (in-channels first), bias: (O,). The 2x2 stride-2
    transposed convolution: input pixel (i, j) writes x[:, i, j] @ weight[:, :, a, b] at output
    pixel (2i + a, 2j + b). Returns (B, O, 2H, 2W)."""
    return F.conv_transpose2d(x, weight, bias, stride=2)


def _tiled(x, weight, bias):
    B, _, H, W = x.shape
    O = weight.shape[1]
    y = np.einsum("nchw,coab->noahbw", x, weight)        # (B, O, 2, H, 2, W): tiles, not pixels
    return y.reshape(B, O, 2 * H, 2 * W) + bias[:, None, None]


def _convt_cases():
    rng = rng_for("conv_transpose2x2")

    def w(C, O):
        return rng.standard_normal((C, O, 2, 2)) / math.sqrt(C), 0.1 * rng.standard_normal(O)
    return [
        Case("random (B=2, C=3, O=2, H=3, W=4)", (rng.standard_normal((2, 3, 3, 4)), *w(3, 2))),
        Case("batch 1, one row (B=1, C=4, O=4, H=1, W=2)",
             (rng.standard_normal((1, 4, 1, 2)), *w(4, 4))),
        Case("square, C = O (B=1, C=2, O=2, H=3, W=3)",
             (rng.standard_normal((1, 2, 3, 3)), *w(2, 2))),
    ]


register(Exercise(
    name="conv_transpose2x2",
    summary="the 2x2 stride-2 transposed convolution that doubles H and W (weights (C, O, 2, 2))",
    notebook=NOTEBOOK,
    reference=conv_transpose2x2,
    make_cases=_convt_cases,
    mistakes=(
        Mistake("weight_axes_swapped",
                "transposed-convolution weights are stored (in, out, kh, kw), the reverse of "
                "Conv2d's (out, in, kh, kw): contract the input channels with weight axis 0.",
                lambda x, w, b: F.conv_transpose2d(x, w.transpose(1, 0, 2, 3), b, stride=2)),
        Mistake("kernel_transposed",
                "kernel row a goes to output row 2i + a and kernel column b to output column "
                "2j + b; your kernel is transposed (rows and columns swapped).",
                lambda x, w, b: F.conv_transpose2d(x, w.transpose(0, 1, 3, 2), b, stride=2)),
        Mistake("kernel_flipped",
                "no flip: pixel (i, j) writes weight[:, :, a, b] at (2i + a, 2j + b), a, b in "
                "{0, 1}.",
                lambda x, w, b: F.conv_transpose2d(x, _flip(w), b, stride=2)),
        Mistake("blocks_tiled",
                "interleave: the 2x2 block from input pixel (i, j) lands at rows 2i, 2i + 1 and "
                "columns 2j, 2j + 1. You placed four shifted copies of the image side by side "
                "(reshape (B, O, H, 2, W, 2), not (B, O, 2, H, 2, W)).",
                _tiled),
        Mistake("bias_missing",
                "add the bias, one value per output channel.",
                lambda x, w, b: F.conv_transpose2d(x, w, None, stride=2)),
    ),
))
