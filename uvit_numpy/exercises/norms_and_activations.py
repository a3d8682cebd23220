"""Exercises on normalisations and activations: LayerNorm, RMSNorm, GlobalResponseNorm, the exact
GELU and a numerically stable softmax.

Notebook: book/exercises/02_norms_and_activations.ipynb.
"""

import math

import numpy as np
from scipy.special import erf

from .. import functional as F
from .catalogue import Case, Exercise, Mistake, register, rng_for

NOTEBOOK = "02_norms_and_activations.ipynb"


# --------------------------------------------------------------------------------------------------
# layer_norm
# --------------------------------------------------------------------------------------------------
def layer_norm(x, weight, bias, eps=1e-5):
    """x: (..., C), weight, bias: (C,). (x - mean) / sqrt(var + eps) * weight + bias over the last
    axis, with the biased (divide by C) two-pass variance."""
    return F.layer_norm(x, weight, bias, eps=eps)


def _layer_norm_with(var_fn=None, eps_outside=False, centre=True, affine=True, axis=-1):
    """A LayerNorm with one step changed: the variance, where eps goes, centring, affine, axis."""
    def wrong(x, weight, bias, eps=1e-5):
        mean = np.mean(x, axis=axis, keepdims=True) if centre else 0.0
        if var_fn is not None:
            var = var_fn(x, axis)
        else:
            var = np.mean((x - mean) ** 2, axis=axis, keepdims=True)
        y = (x - mean) / (np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps))
        return y * weight + bias if affine else y
    return wrong


def _unbiased_var(x, axis):
    return np.var(x, axis=axis, keepdims=True, ddof=1)


def _one_pass_var(x, axis):
    mean = np.mean(x, axis=axis, keepdims=True)
    return np.mean(x * x, axis=axis, keepdims=True) - mean * mean


def _layer_norm_cases():
    rng = rng_for("layer_norm")

    def affine(C):
        return 1.0 + 0.3 * rng.standard_normal(C), 0.2 * rng.standard_normal(C)
    return [
        Case("random (B=2, L=5, C=7)", (rng.standard_normal((2, 5, 7)), *affine(7))),
        Case("batch 1, odd C (B=1, L=3, C=3)", (rng.standard_normal((1, 3, 3)), *affine(3))),
        Case("near-zero variance: values 100 + 1e-3 noise (B=2, L=3, C=6)",
             (100.0 + 1e-3 * rng.standard_normal((2, 3, 6)), *affine(6))),
        Case("eps=1e-2 on small values (B=2, C=5)",
             (0.05 * rng.standard_normal((2, 5)), *affine(5)), {"eps": 1e-2}),
    ]


register(Exercise(
    name="layer_norm",
    summary="LayerNorm over the last axis: biased two-pass variance, eps inside the sqrt",
    notebook=NOTEBOOK,
    reference=layer_norm,
    make_cases=_layer_norm_cases,
    mistakes=(
        Mistake("unbiased_variance",
                "LayerNorm uses the biased variance, the mean of the squared deviations "
                "(divide by C, not C - 1: np.var's default ddof=0, not ddof=1).",
                _layer_norm_with(var_fn=_unbiased_var)),
        Mistake("eps_outside_sqrt",
                "eps goes inside the square root: (x - mean) / sqrt(var + eps), not "
                "(x - mean) / (sqrt(var) + eps).",
                _layer_norm_with(eps_outside=True)),
        Mistake("one_pass_variance",
                "E[x^2] - E[x]^2 cancels catastrophically when the mean is large compared with "
                "the spread; compute the variance in two passes, as the mean of (x - mean)^2.",
                _layer_norm_with(var_fn=_one_pass_var)),
        Mistake("mean_not_subtracted",
                "LayerNorm subtracts the mean before dividing; without it you have an RMS norm.",
                _layer_norm_with(centre=False)),
        Mistake("affine_missing",
                "finish with the learned affine map: multiply by weight, then add bias.",
                _layer_norm_with(affine=False)),
        Mistake("wrong_axis",
                "normalise each token on its own, over the last axis (channels) only: "
                "axis=-1 with keepdims=True.",
                _layer_norm_with(axis=None)),
    ),
))


# --------------------------------------------------------------------------------------------------
# rms_norm
# --------------------------------------------------------------------------------------------------
def rms_norm(x, weight, eps=1e-6):
    """x: (..., C), weight: (C,). x / sqrt(mean(x^2) + eps) * weight over the last axis."""
    return F.rms_norm(x, weight, eps=eps)


def _rms_norm_with(centre=False, eps_outside=False, divisor=None, use_weight=True):
    def wrong(x, weight, eps=1e-6):
        C = x.shape[-1]
        if centre:
            x = x - np.mean(x, axis=-1, keepdims=True)
        n = C if divisor is None else divisor(C)
        ms = np.sum(x * x, axis=-1, keepdims=True) / n
        y = x / (np.sqrt(ms) + eps if eps_outside else np.sqrt(ms + eps))
        return y * weight if use_weight else y
    return wrong


def _rms_norm_cases():
    rng = rng_for("rms_norm")

    def w(C):
        return 1.0 + 0.3 * rng.standard_normal(C)
    return [
        Case("random (B=2, L=5, C=7)", (rng.standard_normal((2, 5, 7)), w(7))),
        Case("batch 1, odd C (B=1, L=3, C=5)", (rng.standard_normal((1, 3, 5)), w(5))),
        Case("near-zero input: values ~1e-4 (B=2, L=3, C=6)",
             (1e-4 * rng.standard_normal((2, 3, 6)), w(6))),
        Case("offset input, eps=1e-2 (B=2, C=4)",
             (3.0 + 0.1 * rng.standard_normal((2, 4)), w(4)), {"eps": 1e-2}),
    ]


register(Exercise(
    name="rms_norm",
    summary="RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight, no mean subtracted",
    notebook=NOTEBOOK,
    reference=rms_norm,
    make_cases=_rms_norm_cases,
    mistakes=(
        Mistake("mean_subtracted",
                "RMSNorm does not subtract the mean (that is LayerNorm): it divides x itself by "
                "its root mean square.",
                _rms_norm_with(centre=True)),
        Mistake("eps_outside_sqrt",
                "eps goes inside the square root: x / sqrt(mean(x^2) + eps), not "
                "x / (sqrt(mean(x^2)) + eps).",
                _rms_norm_with(eps_outside=True)),
        Mistake("unbiased_mean_square",
                "the mean square divides the sum of squares by C, not C - 1 (there is no "
                "'unbiased' correction here).",
                _rms_norm_with(divisor=lambda C: C - 1)),
        Mistake("sum_not_mean",
                "divide the sum of squares by C: it is the root of the *mean* square, not of "
                "the sum.",
                _rms_norm_with(divisor=lambda C: 1)),
        Mistake("weight_missing",
                "multiply by the learned weight (one per channel) at the end.",
                _rms_norm_with(use_weight=False)),
    ),
))


# --------------------------------------------------------------------------------------------------
# global_response_norm
# --------------------------------------------------------------------------------------------------
def global_response_norm(x, gamma, beta, eps=1e-6):
    """x: (B, H, W, C) channel-last, gamma, beta: (1, 1, 1, C). g = L2 norm over H and W per
    sample and channel; n = g / (mean_C g + eps); gamma * (x * n) + beta + x."""
    return F.global_response_norm(x, gamma, beta, eps=eps)


def _grn_with(norm_axes=(1, 2), mean_axis=-1, eps_inside=False, residual=True):
    def wrong(x, gamma, beta, eps=1e-6):
        sq = np.sum(x * x, axis=norm_axes, keepdims=True)
        g = np.sqrt(sq + eps) if eps_inside else np.sqrt(sq)
        n = g / (np.mean(g, axis=mean_axis, keepdims=True) + (0.0 if eps_inside else eps))
        y = gamma * (x * n) + beta
        return y + x if residual else y
    return wrong


def _grn_cases():
    rng = rng_for("global_response_norm")

    def params(C):
        return 0.5 * rng.standard_normal((1, 1, 1, C)), 0.3 * rng.standard_normal((1, 1, 1, C))
    return [
        Case("random (B=2, H=3, W=4, C=5)", (rng.standard_normal((2, 3, 4, 5)), *params(5))),
        Case("batch 1, odd sizes (B=1, H=1, W=3, C=7)",
             (rng.standard_normal((1, 1, 3, 7)), *params(7))),
        Case("near-zero input: values ~1e-6 (B=2, H=2, W=3, C=4)",
             (1e-6 * rng.standard_normal((2, 2, 3, 4)), *params(4))),
    ]


register(Exercise(
    name="global_response_norm",
    summary="ConvNeXt-V2's GlobalResponseNorm on channel-last maps (L2 over space, eps outside)",
    notebook=NOTEBOOK,
    reference=global_response_norm,
    make_cases=_grn_cases,
    mistakes=(
        Mistake("eps_inside_sqrt",
                "GRN adds eps outside the square root, to the channel mean of the norms: "
                "n = g / (mean_C(g) + eps) with g = sqrt(sum over H, W of x^2).",
                _grn_with(eps_inside=True)),
        Mistake("norm_over_channels",
                "the L2 norm runs over the spatial axes H and W (axes 1 and 2), giving one value "
                "per sample and channel; the mean then runs over channels.",
                _grn_with(norm_axes=-1, mean_axis=(1, 2))),
        Mistake("channel_first_axes",
                "x is channel-last (B, H, W, C): the spatial axes are 1 and 2 and the channels "
                "are the last axis, not (B, C, H, W).",
                _grn_with(norm_axes=(2, 3), mean_axis=1)),
        Mistake("batch_mixed",
                "each sample has its own norms: sum over H and W only, not over the batch.",
                _grn_with(norm_axes=(0, 1, 2))),
        Mistake("residual_missing",
                "GRN keeps a residual: gamma * (x * n) + beta + x (so it is the identity when "
                "gamma = beta = 0).",
                _grn_with(residual=False)),
    ),
))


# --------------------------------------------------------------------------------------------------
# gelu
# --------------------------------------------------------------------------------------------------
def gelu(x):
    """The exact GELU, 0.5 x (1 + erf(x / sqrt 2)). Same shape as x."""
    return F.gelu(x)


def _gelu_cases():
    rng = rng_for("gelu")
    special = np.array([[0.0, 1e-8, -1e-8, 0.5, -0.5, 3.0],
                        [-3.0, 6.0, -6.0, 12.0, -12.0, 40.0]])
    return [
        Case("random (3, 7)", (2.0 * rng.standard_normal((3, 7)),)),
        Case("batch 1, odd size (1, 5)", (rng.standard_normal((1, 5)),)),
        Case("zeros, tiny and large values (2, 6)", (special,)),
    ]


register(Exercise(
    name="gelu",
    summary="the exact (erf) GELU, 0.5 x (1 + erf(x / sqrt 2))",
    notebook=NOTEBOOK,
    reference=gelu,
    make_cases=_gelu_cases,
    mistakes=(
        Mistake("tanh_approximation",
                "this is the tanh approximation of GELU; both models use the exact form "
                "0.5 x (1 + erf(x / sqrt 2)) (scipy.special.erf or math.erf).",
                lambda x: F.gelu(x, approximate="tanh")),
        Mistake("sigmoid_approximation",
                "x * sigmoid(1.702 x) only approximates GELU; use the exact erf form.",
                lambda x: x / (1.0 + np.exp(-1.702 * x))),
        Mistake("erf_without_sqrt2",
                "the erf argument is x / sqrt(2): GELU uses the standard normal CDF "
                "Phi(x) = (1 + erf(x / sqrt 2)) / 2.",
                lambda x: 0.5 * x * (1.0 + erf(x))),
        Mistake("half_missing",
                "the factor 0.5 is missing: Phi(x) = 0.5 (1 + erf(x / sqrt 2)).",
                lambda x: x * (1.0 + erf(x / math.sqrt(2.0)))),
    ),
))


# --------------------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------------------
def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along `axis`. Same shape as x."""
    return F.softmax(x, axis=axis)


def _softmax_with(shift="row", fixed_axis=None, normalise=True):
    def wrong(x, axis=-1):
        ax = axis if fixed_axis is None else fixed_axis
        if shift == "row":
            z = x - np.max(x, axis=ax, keepdims=True)
        elif shift == "global":
            z = x - np.max(x)
        else:
            z = x
        e = np.exp(z)
        return e / np.sum(e, axis=ax, keepdims=True) if normalise else e
    return wrong


def _softmax_cases():
    rng = rng_for("softmax")
    offsets = np.array([[900.0], [0.0], [-900.0]])
    return [
        Case("random (3, 5), axis=-1", (rng.standard_normal((3, 5)),)),
        Case("axis=0 on (4, 3)", (rng.standard_normal((4, 3)),), {"axis": 0}),
        Case("batch 1, odd size (1, 7)", (rng.standard_normal((1, 7)),)),
        Case("large logits: values ~1000 (2, 6)", (1000.0 * rng.standard_normal((2, 6)),)),
        Case("rows at very different levels: +900, 0, -900 (3, 4)",
             (offsets + rng.standard_normal((3, 4)),)),
    ]


register(Exercise(
    name="softmax",
    summary="a numerically stable softmax along an axis (subtract the max before exp)",
    notebook=NOTEBOOK,
    reference=softmax,
    make_cases=_softmax_cases,
    mistakes=(
        Mistake("no_max_subtraction",
                "exp overflows on large logits (exp(710) is inf in float64, and inf / inf is "
                "NaN): subtract the maximum along `axis` before exp. It cancels in the ratio.",
                _softmax_with(shift=None)),
        Mistake("global_max",
                "subtract the maximum of each slice along `axis` (keepdims=True), not the "
                "maximum of the whole array: rows far below the global maximum underflow to "
                "0 / 0.",
                _softmax_with(shift="global")),
        Mistake("axis_ignored",
                "normalise along the `axis` argument; yours always uses the last axis.",
                _softmax_with(fixed_axis=-1)),
        Mistake("not_normalised",
                "divide by the sum of the exponentials along `axis`, so the weights add up to 1.",
                _softmax_with(normalise=False)),
    ),
))
