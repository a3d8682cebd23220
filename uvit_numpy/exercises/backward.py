"""Exercises on backward passes: the gradients of a linear layer, an embedding, LayerNorm, the
softmax, attention, the exact GELU and conv2d, from raw inputs and a random upstream gradient.

Each exercise takes the forward's inputs and the upstream gradient dy = dLoss/d out (shaped like
the forward's output) and returns the gradients of the inputs and parameters, in the order of the
forward's arguments. The references call the package's CS231n-style pairs
(`out, cache = F.f(..., return_cache=True)`, then `F.f_backward(dy, cache)`). The cases use random
upstream gradients, never all ones: an all-ones dy hides LayerNorm's and the softmax's terms, and
repeated ids, which hide nothing but catch `dW[ids] += dy`.

Notebook: book/exercises/06_backward.ipynb.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf

from .. import functional as F
from .catalogue import Case, Exercise, Mistake, register, rng_for

NOTEBOOK = "06_backward.ipynb"


def _sum_leading(a):
    """(..., C) -> (C,): the sum over every axis but the last."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


# --------------------------------------------------------------------------------------------------
# linear_backward
# --------------------------------------------------------------------------------------------------
def linear_backward(dy, x, weight):
    """Gradients of y = x W^T + b. dy: (..., out), x: (..., in), weight: (out, in).

    Returns (dx (..., in), dweight (out, in), dbias (out,)): dx = dy W, dW = dy^T x and db = the
    sum of dy, both over every leading axis.
    """
    bias = np.zeros(weight.shape[0], dtype=x.dtype)      # the bias's value does not matter
    _, cache = F.linear(x, weight, bias, return_cache=True)
    return F.linear_backward(dy, cache)


def _linear_with(bias_axis="all", weight_transposed=False, dx_transposed=False, batched=False):
    def wrong(dy, x, weight):
        dy2 = dy.reshape(-1, dy.shape[-1])                # (M, out)
        x2 = x.reshape(-1, x.shape[-1])                   # (M, in)
        dx = (dy2 @ (weight.T if dx_transposed else weight)).reshape(x.shape)
        if batched:                                       # one dW per leading index, not summed
            dweight = np.swapaxes(dy, -1, -2) @ x         # (..., out, in)
        else:
            dweight = dy2.T @ x2                          # (out, in)
        if weight_transposed:
            dweight = np.swapaxes(dweight, -1, -2)        # (in, out)
        dbias = dy.sum(axis=0) if bias_axis == "first" else dy2.sum(axis=0)
        return dx, dweight, dbias
    return wrong


def _linear_cases():
    rng = rng_for("linear_backward")

    def case(label, lead, n_in, n_out):
        x = rng.standard_normal((*lead, n_in))
        w = rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)
        return Case(label, (rng.standard_normal((*lead, n_out)), x, w))
    return [
        case("tokens (B=2, L=3, in=4, out=5)", (2, 3), 4, 5),
        case("a plain batch (N=4, in=3, out=2)", (4,), 3, 2),
        case("square weight, batch 1 (B=1, L=4, in=out=3)", (1, 4), 3, 3),
        case("four leading axes (2, 2, 3, in=2, out=3)", (2, 2, 3), 2, 3),
    ]


register(Exercise(
    name="linear_backward",
    summary="the gradients of a linear layer: dx = dy W, dW = dy^T x, db = sum of dy",
    notebook=NOTEBOOK,
    reference=linear_backward,
    make_cases=_linear_cases,
    mistakes=(
        Mistake("bias_summed_over_one_axis",
                "the bias is added to every row of every leading axis, so its gradient sums dy "
                "over all of them: dy.reshape(-1, out).sum(axis=0), not dy.sum(axis=0).",
                _linear_with(bias_axis="first")),
        Mistake("dweight_not_summed_over_batch",
                "the weight is shared by every token of every sample: flatten the leading axes "
                "(dy to (M, out), x to (M, in)) and take one product dy^T x, so dW is (out, in).",
                _linear_with(batched=True)),
        Mistake("dweight_transposed",
                "dW has the weight's shape (out, in): it is dy^T x, not x^T dy.",
                _linear_with(weight_transposed=True)),
        Mistake("dx_with_weight_transposed",
                "y = x W^T, so dx = dy W (out -> in): multiply by the weight itself, not by "
                "its transpose.",
                _linear_with(dx_transposed=True)),
    ),
))


# --------------------------------------------------------------------------------------------------
# embedding_backward
# --------------------------------------------------------------------------------------------------
def embedding_backward(dy, ids, num_embeddings):
    """Gradient of the lookup out = W[ids] with respect to the table W (num_embeddings, C).

    dy: ids.shape + (C,). Returns dW (num_embeddings, C): row v is the sum of dy over every
    position whose id is v (zero for ids that do not occur).
    """
    return F.embedding_backward(dy, (ids, (num_embeddings, dy.shape[-1])))


def _embedding_fancy_add(dy, ids, num_embeddings):
    dw = np.zeros((num_embeddings, dy.shape[-1]))
    dw[ids.reshape(-1)] += dy.reshape(-1, dy.shape[-1])  # buffered: a repeated id counts once
    return dw


def _embedding_rows_from_ids(dy, ids, num_embeddings):
    C = dy.shape[-1]
    dw = np.zeros((int(ids.max()) + 1, C))
    np.add.at(dw, ids.reshape(-1), dy.reshape(-1, C))
    return dw


def _embedding_mean(dy, ids, num_embeddings):
    C = dy.shape[-1]
    dw = np.zeros((num_embeddings, C))
    np.add.at(dw, ids.reshape(-1), dy.reshape(-1, C))
    counts = np.bincount(ids.reshape(-1), minlength=num_embeddings)
    return dw / np.maximum(counts, 1)[:, None]


def _embedding_cases():
    rng = rng_for("embedding_backward")
    return [
        Case("repeated ids (B=2, L=5, V=6, C=3)",
             (rng.standard_normal((2, 5, 3)), np.array([[1, 4, 1, 0, 4], [4, 2, 1, 1, 0]]), 6)),
        Case("a grid of ids, some never used (B=1, H=3, W=3, V=10, C=2)",
             (rng.standard_normal((1, 3, 3, 2)), rng.integers(0, 7, (1, 3, 3)), 10)),
        Case("one id everywhere (N=4, V=3, C=4)",
             (rng.standard_normal((4, 4)), np.array([2, 2, 2, 2]), 3)),
        Case("all ids distinct (N=5, V=5, C=2)",
             (rng.standard_normal((5, 2)), rng.permutation(5), 5)),
    ]


register(Exercise(
    name="embedding_backward",
    summary="the gradient of an embedding table: dy added into the rows of its ids (np.add.at)",
    notebook=NOTEBOOK,
    reference=embedding_backward,
    make_cases=_embedding_cases,
    mistakes=(
        Mistake("fancy_index_add",
                "`dW[ids] += dy` is buffered: when an id repeats, only one of its rows is "
                "added. Accumulate with np.add.at(dW, ids.ravel(), dy.reshape(-1, C)) (or a "
                "one-hot matrix product).",
                _embedding_fancy_add),
        Mistake("table_size_from_ids",
                "the table has num_embeddings rows whether or not every id occurs: "
                "np.zeros((num_embeddings, C)), not ids.max() + 1 rows.",
                _embedding_rows_from_ids),
        Mistake("averaged_not_summed",
                "each occurrence of an id adds its own gradient: sum dy over the positions, "
                "do not average them.",
                _embedding_mean),
    ),
))


# --------------------------------------------------------------------------------------------------
# layer_norm_backward
# --------------------------------------------------------------------------------------------------
def layer_norm_backward(dy, x, weight, eps=1e-5):
    """Gradients of y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis.

    dy, x: (..., C); weight: (C,). Returns (dx (..., C), dweight (C,), dbias (C,)). With
    xhat = (x - mean) r, r = 1 / sqrt(var + eps), g = dy * weight and means over C:
    dx = r (g - mean(g) - xhat mean(g xhat)), dweight = sum dy xhat, dbias = sum dy.
    """
    bias = np.zeros_like(weight)
    _, cache = F.layer_norm(x, weight, bias, eps=eps, return_cache=True)
    return F.layer_norm_backward(dy, cache)


def _layer_norm_with(mean_term=True, xhat_term=True, use_weight=True, dweight_of="xhat",
                     bias_axis="all"):
    def wrong(dy, x, weight, eps=1e-5):
        mean = x.mean(axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
        xhat = (x - mean) * r
        g = dy * weight if use_weight else dy
        dx = g.copy()
        if mean_term:
            dx = dx - g.mean(axis=-1, keepdims=True)
        if xhat_term:
            dx = dx - xhat * (g * xhat).mean(axis=-1, keepdims=True)
        dweight = _sum_leading(dy * (xhat if dweight_of == "xhat" else x))
        dbias = dy.sum(axis=0) if bias_axis == "first" else _sum_leading(dy)
        return r * dx, dweight, dbias
    return wrong


def _layer_norm_cases():
    rng = rng_for("layer_norm_backward")

    def case(label, shape, scale=1.0, offset=0.0, **kwargs):
        C = shape[-1]
        x = offset + scale * rng.standard_normal(shape)
        return Case(label, (rng.standard_normal(shape), x, 1.0 + 0.3 * rng.standard_normal(C)),
                    kwargs)
    return [
        case("random dy (B=2, L=3, C=5)", (2, 3, 5)),
        case("batch 1, odd C (B=1, L=2, C=3)", (1, 2, 3)),
        case("offset input, small spread (N=3, C=6)", (3, 6), scale=0.1, offset=5.0),
        case("eps=1e-2 on small values (N=2, C=4)", (2, 4), scale=0.05, eps=1e-2),
    ]


register(Exercise(
    name="layer_norm_backward",
    summary="LayerNorm's gradients: dx = r (g - mean(g) - xhat mean(g xhat)), dweight, dbias",
    notebook=NOTEBOOK,
    reference=layer_norm_backward,
    make_cases=_layer_norm_cases,
    mistakes=(
        Mistake("missing_xhat_term",
                "the variance depends on x too: dx = r (g - mean(g) - xhat * mean(g * xhat)); "
                "you left out the last term (it vanishes only when dy is all ones).",
                _layer_norm_with(xhat_term=False)),
        Mistake("missing_mean_term",
                "the mean depends on every x_c: dx = r (g - mean(g) - xhat * mean(g * xhat)); "
                "you left out mean(g).",
                _layer_norm_with(mean_term=False)),
        Mistake("weight_not_applied",
                "the normalised value is multiplied by the weight before the output, so the "
                "gradient reaching xhat is g = dy * weight, not dy.",
                _layer_norm_with(use_weight=False)),
        Mistake("dweight_of_x",
                "the weight multiplies xhat, the normalised input: dweight = sum of dy * xhat, "
                "not of dy * x.",
                _layer_norm_with(dweight_of="x")),
        Mistake("bias_summed_over_one_axis",
                "sum dy over every leading axis for dbias (and dweight): the result is (C,).",
                _layer_norm_with(bias_axis="first")),
    ),
))


# --------------------------------------------------------------------------------------------------
# softmax_backward
# --------------------------------------------------------------------------------------------------
def softmax_backward(dy, p, axis=-1):
    """Gradient of p = softmax(x) along `axis`, given the output p. dy, p: the same shape.

    dx = p (dy - sum(dy p)), the sum along `axis` (keepdims): the Jacobian diag(p) - p p^T
    applied to dy. Returns dx, shaped like p.
    """
    return F.softmax_backward(dy, p, axis=axis)


def _softmax_with(kind="right", fixed_axis=None):
    def wrong(dy, p, axis=-1):
        ax = axis if fixed_axis is None else fixed_axis
        if kind == "diagonal":
            return dy * p * (1.0 - p)
        if kind == "no_p":
            return dy - np.sum(dy * p, axis=ax, keepdims=True)
        if kind == "sum_without_p":
            return p * (dy - np.sum(dy, axis=ax, keepdims=True))
        return p * (dy - np.sum(dy * p, axis=ax, keepdims=True))
    return wrong


def _softmax_cases():
    rng = rng_for("softmax_backward")

    def case(label, shape, axis=-1, scale=1.0):
        p = F.softmax(scale * rng.standard_normal(shape), axis=axis)
        return Case(label, (rng.standard_normal(shape), p), {"axis": axis} if axis != -1 else {})
    return [
        case("random (N=3, K=5)", (3, 5)),
        case("axis=0 on (4, 3)", (4, 3), axis=0),
        case("batch 1, attention-shaped (B=1, nh=2, L=3, S=4)", (1, 2, 3, 4)),
        case("peaked rows: logits ~ 5 (N=2, K=6)", (2, 6), scale=5.0),
    ]


register(Exercise(
    name="softmax_backward",
    summary="the softmax's gradient from its output: dx = p (dy - sum(dy p))",
    notebook=NOTEBOOK,
    reference=softmax_backward,
    make_cases=_softmax_cases,
    mistakes=(
        Mistake("jacobian_diagonal_only",
                "p (1 - p) is only the diagonal of the softmax's Jacobian diag(p) - p p^T: every "
                "output depends on every input. dx = p * (dy - sum(dy * p, axis, keepdims)).",
                _softmax_with("diagonal")),
        Mistake("leading_p_missing",
                "multiply by p: dx = p * (dy - sum(dy * p)).",
                _softmax_with("no_p")),
        Mistake("sum_without_p",
                "the sum weighs dy by p: sum(dy * p) along the axis, not sum(dy).",
                _softmax_with("sum_without_p")),
        Mistake("axis_ignored",
                "sum along the `axis` argument (with keepdims=True); yours always uses the last "
                "axis.",
                _softmax_with(fixed_axis=-1)),
    ),
))


# --------------------------------------------------------------------------------------------------
# attention_backward
# --------------------------------------------------------------------------------------------------
def attention_backward(dout, q, k, v):
    """Gradients of O = softmax(q k^T / sqrt(hd)) v. q: (B, nh, L, hd), k, v: (B, nh, S, hd),
    dout: (B, nh, L, hd).

    Returns (dq, dk, dv), shaped like q, k, v. With P the weights and s = 1/sqrt(hd):
    dv = P^T dO, dP = dO v^T, dS = P (dP - rowsum(dP P)), dq = s dS k, dk = s dS^T q.
    """
    _, cache = F.scaled_dot_product_attention(q, k, v, return_cache=True)
    return F.scaled_dot_product_attention_backward(dout, cache)


def _attention_with(scale_grad=True, jacobian="full", dk_transposed=True, dv_transposed=True):
    def wrong(dout, q, k, v):
        s = 1.0 / math.sqrt(q.shape[-1])
        scores = (q @ np.swapaxes(k, -1, -2)) * s                  # (B, nh, L, S)
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        P = e / e.sum(axis=-1, keepdims=True)
        dv = (np.swapaxes(P, -1, -2) if dv_transposed else P) @ dout
        dP = dout @ np.swapaxes(v, -1, -2)                         # (B, nh, L, S)
        if jacobian == "full":
            dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))
        else:
            dS = P * (1.0 - P) * dP
        factor = s if scale_grad else 1.0
        dq = factor * (dS @ k)
        dk = factor * ((np.swapaxes(dS, -1, -2) if dk_transposed else dS) @ q)
        return dq, dk, dv
    return wrong


def _attention_cases():
    rng = rng_for("attention_backward")

    def case(label, B, nh, L, S, hd):
        q, k = rng.standard_normal((B, nh, L, hd)), rng.standard_normal((B, nh, S, hd))
        v, dout = rng.standard_normal((B, nh, S, hd)), rng.standard_normal((B, nh, L, hd))
        return Case(label, (dout, q, k, v))
    return [
        case("cross-attention shapes (B=2, nh=2, L=3, S=5, hd=4)", 2, 2, 3, 5, 4),
        case("self-attention (B=1, nh=3, L=S=4, hd=2)", 1, 3, 4, 4, 2),
        case("one query, batch 1 (B=1, nh=1, L=1, S=6, hd=3)", 1, 1, 1, 6, 3),
        case("wider heads (B=2, nh=1, L=S=3, hd=8)", 2, 1, 3, 3, 8),
    ]


register(Exercise(
    name="attention_backward",
    summary="scaled dot-product attention's gradients dq, dk, dv (the 1/sqrt(hd) in both dq, dk)",
    notebook=NOTEBOOK,
    reference=attention_backward,
    make_cases=_attention_cases,
    mistakes=(
        Mistake("missing_scale",
                "the scores are scaled, S = q k^T / sqrt(hd), so the gradient reaching q and k "
                "carries the same factor: dq = dS k / sqrt(hd), dk = dS^T q / sqrt(hd).",
                _attention_with(scale_grad=False)),
        Mistake("softmax_jacobian_diagonal",
                "the softmax mixes a whole row: dS = P * (dP - sum(dP * P, axis=-1, "
                "keepdims=True)), not P (1 - P) dP.",
                _attention_with(jacobian="diagonal")),
        Mistake("dk_not_transposed",
                "dk collects over the queries: dk = dS^T q / sqrt(hd), (S, L) @ (L, hd); "
                "transpose dS's last two axes.",
                _attention_with(dk_transposed=False)),
        Mistake("dv_not_transposed",
                "O = P v, so dv = P^T dO: transpose the weights' last two axes.",
                _attention_with(dv_transposed=False)),
    ),
))


# --------------------------------------------------------------------------------------------------
# gelu_backward
# --------------------------------------------------------------------------------------------------
def gelu_backward(dy, x):
    """Gradient of the exact GELU x Phi(x) at x. dy, x: the same shape. Returns dx:
    dy (Phi(x) + x phi(x)), Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    """
    return F.gelu_backward(dy, x)


def _phi_cdf(x):
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def _gelu_cases():
    rng = rng_for("gelu_backward")
    special = np.array([[0.0, 1e-8, -0.5, 0.5, 1.0, -1.0], [3.0, -3.0, 6.0, -6.0, 12.0, -40.0]])
    return [
        Case("random (3, 5)", (rng.standard_normal((3, 5)), 2.0 * rng.standard_normal((3, 5)))),
        Case("batch 1, odd size (1, 7)",
             (rng.standard_normal((1, 7)), rng.standard_normal((1, 7)))),
        Case("zeros, tiny and large values (2, 6)", (rng.standard_normal((2, 6)), special)),
    ]


register(Exercise(
    name="gelu_backward",
    summary="the exact GELU's derivative: dy (Phi(x) + x phi(x))",
    notebook=NOTEBOOK,
    reference=gelu_backward,
    make_cases=_gelu_cases,
    mistakes=(
        Mistake("missing_x_pdf_term",
                "gelu(x) = x Phi(x) is a product: its derivative is Phi(x) + x phi(x), with "
                "phi(x) = exp(-x^2/2) / sqrt(2 pi); you kept only Phi(x).",
                lambda dy, x: dy * _phi_cdf(x)),
        Mistake("tanh_derivative",
                "this is the derivative of the tanh approximation; the models use the exact "
                "GELU, whose derivative is Phi(x) + x phi(x) (erf and exp, no tanh).",
                lambda dy, x: F.gelu_backward(dy, x, approximate="tanh")),
        Mistake("pdf_not_normalised",
                "the normal density is phi(x) = exp(-x^2 / 2) / sqrt(2 pi): the 1 / sqrt(2 pi) "
                "is missing.",
                lambda dy, x: dy * (_phi_cdf(x) + x * np.exp(-0.5 * x * x))),
        Mistake("upstream_ignored",
                "multiply the local derivative by the upstream gradient dy (the chain rule).",
                lambda dy, x: _phi_cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)),
    ),
))


# --------------------------------------------------------------------------------------------------
# conv2d_backward
# --------------------------------------------------------------------------------------------------
def conv2d_backward(dy, x, weight, stride=1, padding=0):
    """Gradients of the cross-correlation y = conv2d(x, weight, bias, stride, padding).

    dy: (B, O, Ho, Wo), x: (B, C, H, W), weight: (O, C, kh, kw). Returns (dx (B, C, H, W),
    dweight (O, C, kh, kw), dbias (O,)).
    """
    bias = np.zeros(weight.shape[0], dtype=x.dtype)
    _, cache = F.conv2d(x, weight, bias, stride=stride, padding=padding, return_cache=True)
    return F.conv2d_backward(dy, cache)


def _conv_with(flip_dweight=False, flip_dx=False, overlap="add", crop=True, bias_axis="all"):
    def wrong(dy, x, weight, stride=1, padding=0):
        H, W = x.shape[2:]
        kh, kw = weight.shape[2:]
        Ho, Wo = dy.shape[2:]
        s, p = stride, padding
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))                  # (B, C, H+2p, W+2p)
        win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]  # (B,C,Ho,Wo,kh,kw)
        dw = np.einsum("bohw,bchwij->ocij", dy, win)
        if flip_dweight:
            dw = dw[:, :, ::-1, ::-1]
        w = weight[:, :, ::-1, ::-1] if flip_dx else weight
        dxp = np.zeros_like(xp)
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("bohw,oc->bchw", dy, w[:, :, i, j])
                region = (slice(None), slice(None), slice(i, i + s * (Ho - 1) + 1, s),
                          slice(j, j + s * (Wo - 1) + 1, s))
                if overlap == "add":
                    dxp[region] += contrib
                else:
                    dxp[region] = contrib                                  # overwrites
        dx = dxp[:, :, p:p + H, p:p + W] if crop else dxp
        db = dy.sum(axis=0) if bias_axis == "first" else dy.sum(axis=(0, 2, 3))
        return dx, dw, db
    return wrong


def _conv_cases():
    rng = rng_for("conv2d_backward")

    def case(label, B, C, H, W, O, kh, kw, stride=1, padding=0):
        x = rng.standard_normal((B, C, H, W))
        w = rng.standard_normal((O, C, kh, kw)) / math.sqrt(C * kh * kw)
        Ho, Wo = (H + 2 * padding - kh) // stride + 1, (W + 2 * padding - kw) // stride + 1
        kwargs = {k: v for k, v in (("stride", stride), ("padding", padding)) if v}
        return Case(label, (rng.standard_normal((B, O, Ho, Wo)), x, w), kwargs)
    return [
        case("3x3, padding 1 (B=2, C=2, H=4, W=5, O=3)", 2, 2, 4, 5, 3, 3, 3, padding=1),
        case("stride 2, batch 1, odd sizes (B=1, C=3, H=7, W=5, O=2, k=3)", 1, 3, 7, 5, 2, 3, 3,
             stride=2),
        case("non-square 2x3 kernel, no padding (B=2, C=1, H=4, W=6, O=2)", 2, 1, 4, 6, 2, 2, 3),
        case("1x1 kernel (B=1, C=4, H=3, W=2, O=3)", 1, 4, 3, 2, 3, 1, 1),
    ]


register(Exercise(
    name="conv2d_backward",
    summary="conv2d's gradients: dweight from the windows, dx by col2im (adding overlaps), dbias",
    notebook=NOTEBOOK,
    reference=conv2d_backward,
    make_cases=_conv_cases,
    mistakes=(
        Mistake("dweight_kernel_flipped",
                "the forward is a cross-correlation, so dweight[o, c, i, j] = sum of dy[b, o] "
                "times the window of x at tap (i, j), without flipping the kernel axes.",
                _conv_with(flip_dweight=True)),
        Mistake("dx_kernel_flipped",
                "in col2im, tap (i, j) of the kernel sends W[:, :, i, j]^T dy back to the input "
                "pixels it read, at offset (i, j): use the kernel as it is, not flipped (the "
                "flip belongs to the 'full convolution' way of writing the same thing).",
                _conv_with(flip_dx=True)),
        Mistake("dx_overlaps_not_added",
                "the windows overlap, so an input pixel collects gradient from several outputs: "
                "add (+=) each tap's contribution into dx, do not assign (=) it.",
                _conv_with(overlap="assign")),
        Mistake("padding_not_cut",
                "dx has the shape of x: compute it on the padded input, then cut the padding "
                "off (dxp[:, :, p:p + H, p:p + W]).",
                _conv_with(crop=False)),
        Mistake("bias_summed_over_one_axis",
                "each output channel's bias is added at every sample and pixel: "
                "dbias = dy.sum(axis=(0, 2, 3)).",
                _conv_with(bias_axis="first")),
    ),
))
