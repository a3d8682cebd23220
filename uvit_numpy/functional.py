"""The forward and backward passes of both models, as pure NumPy functions.

Each function is one idea, with the shapes it takes and returns in its docstring, in one glossary:
B batch, L image tokens, S text tokens, C channels, H x W grid, nh heads, hd head dim, K codebook
size, P patch size. Functions compute in the dtype of their input (float32 or float64) and never
promote it: constants are Python floats, so NEP 50 keeps float32 arrays float32.

Inputs are checked first; a wrong shape, rank or dtype raises a `ValueError` or `TypeError` that
names what was expected and what arrived.

**Backward passes, CS231n style.** A forward that has parameters or needs more than its input to
differentiate takes `return_cache=True` and then returns `(out, cache)`; `f_backward(dy, cache)`
sits right under it, takes the upstream gradient dy = dLoss/d out (shaped like out) and returns
the gradients of the inputs and parameters, in the order of the forward's arguments (None for an
absent parameter). Each docstring gives the formula. The timestep sinusoids take no gradient.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf, expit

from . import fast
from .checks import check_dim, check_floating, check_integer, check_range, check_rank


# --------------------------------------------------------------------------------------------------
# Linear maps and embeddings
# --------------------------------------------------------------------------------------------------
def linear(x, weight, bias=None, return_cache=False):
    """y = x W^T + b on the last axis.

    x: (..., in). weight: (out, in), as torch stores it. bias: (out,) or None. Returns (..., out).
    The leading axes are merged first, so that `@` is a single BLAS GEMM (NumPy passes the
    transposed view without a copy); on a 3-d or 4-d x, `@` would run one GEMM per leading index.
    """
    check_floating("linear: x", x)
    check_dim("linear: x", x, -1, weight.shape[1], "in_features")
    y = x.reshape(-1, x.shape[-1]) @ weight.T             # (rows, in) @ (in, out) -> (rows, out)
    y = y.reshape(x.shape[:-1] + (weight.shape[0],))      # (rows, out) -> (..., out)
    if bias is not None:
        y += bias                                         # in place: y is the product's own array
    return (y, (x, weight, bias is not None)) if return_cache else y


def linear_backward(dy, cache):
    """Gradients of `linear`. dy: (..., out). Returns (dx (..., in), dweight (out, in), dbias).

    With the leading axes flattened to M rows: dx = dy W, dW = dy^T x, db = sum of dy's rows (over
    every leading axis, not just the first).
    """
    x, weight, has_bias = cache
    dy2 = dy.reshape(-1, dy.shape[-1])                    # (..., out) -> (M, out)
    x2 = x.reshape(-1, x.shape[-1])                       # (..., in) -> (M, in)
    dx = (dy2 @ weight).reshape(x.shape)                  # (M, out) @ (out, in) -> (..., in)
    dweight = dy2.T @ x2                                  # (out, M) @ (M, in) -> (out, in)
    dbias = dy2.sum(axis=0) if has_bias else None         # (out,)
    return dx, dweight, dbias


def embedding(ids, weight, return_cache=False):
    """Row lookup: out[..., :] = weight[ids[...], :].

    ids: integer array of any shape with values in [0, V). weight: (V, C). Returns ids.shape + (C,).
    """
    check_integer("embedding: ids", ids)
    check_range("embedding: ids", ids, 0, weight.shape[0])
    out = weight[ids]                                     # (...) -> (..., C)
    return (out, (ids, weight.shape)) if return_cache else out


def embedding_backward(dy, cache):
    """Gradient of `embedding` w.r.t. its table (ids get none). dy: ids.shape + (C,).

    dW[v] = sum of dy over every position whose id is v: `np.add.at` accumulates repeated ids,
    where `dW[ids] += dy` would keep only one of them (buffered fancy indexing).
    """
    ids, (V, C) = cache
    dweight = np.zeros((V, C), dtype=dy.dtype)
    np.add.at(dweight, ids.reshape(-1), dy.reshape(-1, C))  # (N,), (N, C) -> (V, C)
    return dweight


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------
def layer_norm(x, weight=None, bias=None, eps=1e-5, return_cache=False):
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias.

    x: (..., C). weight, bias: (C,) or None. Returns an array shaped like x.
    Two-pass biased variance (mean of squared deviations), never E[x^2] - E[x]^2, as torch does.
    """
    check_floating("layer_norm: x", x)
    if weight is not None:
        check_dim("layer_norm: x", x, -1, weight.shape[0], "channels")
    mean = np.mean(x, axis=-1, keepdims=True)             # (..., 1)
    centred = x - mean                                    # (..., C)
    var = np.mean(centred * centred, axis=-1, keepdims=True)  # (..., 1), biased
    rstd = 1.0 / np.sqrt(var + eps)                       # (..., 1)
    xhat = centred * rstd
    y = xhat if weight is None else xhat * weight
    if bias is not None:
        y = y + bias if weight is None else np.add(y, bias, out=y)
    return (y, (xhat, rstd, weight, bias is not None)) if return_cache else y


def _sum_leading(a):
    """Sum over every axis but the last: (..., C) -> (C,)."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def layer_norm_backward(dy, cache):
    """Gradients of `layer_norm`. dy: (..., C). Returns (dx, dweight, dbias).

    With xhat = (x - mean) r, r = 1 / sqrt(var + eps) and g = dy * weight (means over C):
        dx = r (g - mean(g) - xhat mean(g xhat)),  dweight = sum dy xhat,  dbias = sum dy.
    Both subtracted terms matter; with an all-ones dy and a unit weight g is constant over C and
    the second vanishes (xhat has mean 0), which is why tests use a random dy.
    """
    xhat, rstd, weight, has_bias = cache
    g = dy if weight is None else dy * weight             # (..., C)
    mean_g = g.mean(axis=-1, keepdims=True)               # (..., 1)
    mean_gx = (g * xhat).mean(axis=-1, keepdims=True)     # (..., 1)
    dx = rstd * (g - mean_g - xhat * mean_gx)
    dweight = None if weight is None else _sum_leading(dy * xhat)
    dbias = _sum_leading(dy) if has_bias else None
    return dx, dweight, dbias


def rms_norm(x, weight=None, bias=None, eps=1e-6, return_cache=False):
    """Root-mean-square normalisation over the last axis (no mean is subtracted).

    x: (..., C). weight, bias: (C,) or None. Returns an array shaped like x.
    y = x / sqrt(mean(x**2) + eps) * weight + bias
    Half-precision input is reduced in float32 (as diffusers does, for stability); float32 and
    float64 are reduced in their own dtype (diffusers always reduces in float32, see the spec).
    """
    check_floating("rms_norm: x", x)
    if weight is not None:
        check_dim("rms_norm: x", x, -1, weight.shape[0], "channels")
    xr = x.astype(np.float32) if x.dtype == np.float16 else x
    ms = np.mean(xr * xr, axis=-1, keepdims=True)         # (..., 1)
    rms = np.sqrt(ms + eps)                               # (..., 1)
    xhat = (xr / rms).astype(x.dtype)
    y = xhat if weight is None else xhat * weight
    if bias is not None:
        y = y + bias
    return (y, (xhat, (1.0 / rms).astype(x.dtype), weight, bias is not None)) \
        if return_cache else y


def rms_norm_backward(dy, cache):
    """Gradients of `rms_norm`. dy: (..., C). Returns (dx, dweight, dbias).

    With xhat = x r, r = 1 / sqrt(mean(x^2) + eps) and g = dy * weight (or dy):
        dx = r (g - xhat mean(g xhat)),  dweight = sum dy xhat,  dbias = sum dy.
    Unlike LayerNorm there is no mean(g) term: no mean was subtracted in the forward.
    """
    xhat, rstd, weight, has_bias = cache
    g = dy if weight is None else dy * weight             # (..., C)
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dweight = None if weight is None else _sum_leading(dy * xhat)
    dbias = _sum_leading(dy) if has_bias else None
    return dx, dweight, dbias


def global_response_norm(x, gamma, beta, eps=1e-6, return_cache=False):
    """Global Response Normalisation of ConvNeXt-V2, channel-last.

    x: (B, H, W, C). gamma, beta: (1, 1, 1, C). Returns an array shaped like x.
    g[b, c] = ||x[b, :, :, c]||_2 over both spatial axes; n = g / (mean_c g + eps);
    y = gamma * (x * n) + beta + x. The eps sits outside the square root, added to the mean.
    """
    check_floating("global_response_norm: x", x)
    check_rank("global_response_norm: x", x, 4, "(B, H, W, C)")
    check_dim("global_response_norm: x", x, -1, gamma.shape[-1], "channels")
    g = np.sqrt(np.sum(x * x, axis=(1, 2), keepdims=True))  # (B, 1, 1, C)
    m = np.mean(g, axis=-1, keepdims=True) + eps            # (B, 1, 1, 1)
    n = g / m                                               # (B, 1, 1, C)
    y = gamma * (x * n) + beta + x
    return (y, (x, g, m, n, gamma)) if return_cache else y


def global_response_norm_backward(dy, cache):
    """Gradients of `global_response_norm`. dy: (B, H, W, C). Returns (dx, dgamma, dbeta), the
    parameter gradients shaped (1, 1, 1, C) like the parameters.

    With a = sum_hw dy gamma x (the gradient reaching n), m = mean_c g + eps and n = g / m:
        dL/dg_c = a_c / m - sum_c' a_c' g_c' / (C m^2)     (m couples every channel)
        dx = dy (1 + gamma n) + dL/dg x / g                (x / g = d||x|| / dx; 0 where g = 0)
        dgamma = sum_bhw dy x n,   dbeta = sum_bhw dy.
    """
    x, g, m, n, gamma = cache
    C = x.shape[-1]
    a = np.sum(dy * gamma * x, axis=(1, 2), keepdims=True)           # (B, 1, 1, C)
    dg = a / m - np.sum(a * g, axis=-1, keepdims=True) / (C * m * m)  # (B, 1, 1, C)
    safe_g = np.where(g > 0, g, 1.0)
    dx = dy * (1.0 + gamma * n) + np.where(g > 0, dg / safe_g, 0.0) * x
    dgamma = np.sum(dy * x * n, axis=(0, 1, 2), keepdims=True)       # (1, 1, 1, C)
    dbeta = np.sum(dy, axis=(0, 1, 2), keepdims=True)                # (1, 1, 1, C)
    return dx.astype(dy.dtype, copy=False), dgamma, dbeta


def adaptive_modulation(x, scale, shift, return_cache=False):
    """FiLM-style modulation: x * (1 + scale) + shift, one (scale, shift) per sample.

    x: (B, ..., C), e.g. (B, L, C) tokens or (B, H, W, C) pixels. scale, shift: (B, C).
    Returns an array shaped like x. aMUSEd's adaptive norms and ConvNeXt blocks apply it with
    (scale, shift) = Linear(silu(cond)), scale first.
    """
    check_floating("adaptive_modulation: x", x)
    B, C = x.shape[0], x.shape[-1]
    if scale.shape != (B, C) or shift.shape != (B, C):
        raise ValueError(f"adaptive_modulation: expected scale and shift of shape {(B, C)}, got "
                         f"{tuple(scale.shape)} and {tuple(shift.shape)}")
    shape = (B,) + (1,) * (x.ndim - 2) + (C,)
    y = x * (1.0 + scale.reshape(shape))                  # (B, C) -> (B, 1.., C), broadcast
    y += shift.reshape(shape)                            # (B, C) -> (B, 1.., C)
    return (y, (x, scale)) if return_cache else y


def adaptive_modulation_backward(dy, cache):
    """Gradients of `adaptive_modulation`: (dx, dscale (B, C), dshift (B, C)).

    dx = dy (1 + scale); scale and shift were broadcast over every position of a sample, so their
    gradients sum over those positions: dscale = sum dy x, dshift = sum dy.
    """
    x, scale = cache
    B, C = scale.shape
    shape = (B,) + (1,) * (x.ndim - 2) + (C,)
    positions = tuple(range(1, x.ndim - 1))               # every axis between B and C
    dx = dy * (1.0 + scale.reshape(shape))
    return dx, np.sum(dy * x, axis=positions), np.sum(dy, axis=positions)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, return_cache=False):
    """GroupNorm: the C channels are cut into `num_groups` groups of C/G consecutive channels, and
    every (sample, group) is normalised over its channels and all its positions together.

    x: (B, C, *) with any number of trailing position axes, (B, C, H, W) or (B, C, L).
    weight, bias: (C,) or None (a per-channel affine, as torch's `affine=True`). Returns x's shape.
    y = (x - mean) / sqrt(var + eps) * weight + bias, mean and var over each group's C/G channels
    x positions. Two-pass biased variance (the mean of squared deviations), eps inside the root,
    as torch does. G = 1 is a LayerNorm over (C, *); G = C an InstanceNorm.
    """
    check_floating("group_norm: x", x)
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected x shaped (B, C, ...), got shape {x.shape}")
    B, C = x.shape[:2]
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: expected a num_groups that divides the {C} channels, "
                         f"got {num_groups!r}")
    if weight is not None:
        check_dim("group_norm: x", x, 1, weight.shape[0], "channels")
    xg = x.reshape(B, num_groups, -1)                     # (B, C, *) -> (B, G, C/G * positions)
    mean = xg.mean(axis=-1, keepdims=True)                # (B, G, 1)
    centred = xg - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)  # (B, G, 1), biased
    rstd = 1.0 / np.sqrt(var + eps)                       # (B, G, 1)
    xhat = (centred * rstd).reshape(x.shape)              # (B, G, C/G * positions) -> (B, C, *)
    per_channel = (C,) + (1,) * (x.ndim - 2)              # (C,) -> (C, 1, ...): broadcast over *
    y = xhat if weight is None else xhat * weight.reshape(per_channel)
    if bias is not None:
        y = y + bias.reshape(per_channel)
    return (y, (xhat, rstd, weight, bias is not None, num_groups)) if return_cache else y


def group_norm_backward(dy, cache):
    """Gradients of `group_norm`. dy: (B, C, *). Returns (dx, dweight, dbias).

    LayerNorm's formula, group by group: with xhat = (x - mean) r, r = 1 / sqrt(var + eps) and
    g = dy * weight (the weight broadcast over positions), means over each group's elements,
        dx = r (g - mean(g) - xhat mean(g xhat)),
    and per channel, summed over the batch and every position:
        dweight = sum dy xhat,  dbias = sum dy.
    """
    xhat, rstd, weight, has_bias, G = cache
    B, C = dy.shape[:2]
    per_channel = (C,) + (1,) * (dy.ndim - 2)
    g = dy if weight is None else dy * weight.reshape(per_channel)  # (B, C, *)
    gg = g.reshape(B, G, -1)                              # (B, C, *) -> (B, G, n)
    xg = xhat.reshape(B, G, -1)                           # (B, C, *) -> (B, G, n)
    mean_g = gg.mean(axis=-1, keepdims=True)              # (B, G, 1)
    mean_gx = (gg * xg).mean(axis=-1, keepdims=True)      # (B, G, 1)
    dx = (rstd * (gg - mean_g - xg * mean_gx)).reshape(dy.shape)  # (B, G, n) -> (B, C, *)
    axes = (0,) + tuple(range(2, dy.ndim))                # every axis but the channels
    dweight = None if weight is None else (dy * xhat).sum(axis=axes)  # (C,)
    dbias = dy.sum(axis=axes) if has_bias else None       # (C,)
    return dx, dweight, dbias


# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------
def silu(x):
    """x * sigmoid(x) = x / (1 + exp(-x)). Same shape as x.

    The formula step by step in one new buffer (the same roundings as writing it in one line,
    which makes three temporaries: on a VQ-GAN's 256 x 256 x 128 activations those cost more
    than the arithmetic)."""
    check_floating("silu: x", x)
    out = np.negative(x)                                  # -x
    np.exp(out, out=out)                                  # exp(-x)
    out += 1.0                                            # 1 + exp(-x)
    return np.divide(x, out, out=out)                     # x / (1 + exp(-x))


def silu_backward(dy, x):
    """Gradient of `silu` at x: dy * s (1 + x (1 - s)), s = sigmoid(x) (product rule: not just s).

    The sigmoid is scipy's `expit`, which does not overflow for large negative x.
    """
    s = expit(x)
    return dy * (s * (1.0 + x * (1.0 - s)))


def relu(x):
    """max(x, 0), elementwise. Same shape as x."""
    check_floating("relu: x", x)
    return np.maximum(x, 0.0)


def relu_backward(dy, x):
    """Gradient of `relu` at x: dy where x > 0, else 0 (the subgradient 0 at x = 0, as torch)."""
    return np.where(x > 0, dy, 0.0).astype(dy.dtype, copy=False)


def gelu(x, approximate="none"):
    """Gaussian error linear unit. Same shape as x.

    approximate="none": the exact form 0.5 x (1 + erf(x / sqrt 2)), with `scipy.special.erf`
    (correct to double precision, and it keeps float32 input in float32).
    approximate="tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch's option.
    float32 input of the exact form takes the package's one speed kernel, `fast.gelu_float32`
    (the same formula with an erf good to 1.5e-7, about float32's resolution; scipy's float32 erf
    would cost as much as all the other non-GEMM work of a forward pass). float64 never does.
    """
    check_floating("gelu: x", x)
    if approximate == "none" and x.dtype == np.float32:
        return fast.gelu_float32(x)
    if approximate == "none":
        return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + np.tanh(inner))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(dy, x, approximate="none"):
    """Gradient of `gelu` at x. dy, x: the same shape.

    exact:  d/dx [x Phi(x)] = Phi(x) + x phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2,
            phi(x) = exp(-x^2 / 2) / sqrt(2 pi) (the same erf as the forward; float32 through
            `fast.gelu_grad_float32`, as the forward);
    tanh:   with t = tanh(sqrt(2/pi) (x + 0.044715 x^3)),
            (1 + t) / 2 + x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2  (1 - t^2, not 1/cosh^2,
            which overflows).
    """
    if approximate == "none" and x.dtype == np.float32:
        return fast.gelu_grad_float32(x, dy.astype(np.float32, copy=False))
    if approximate == "none":
        cdf = 0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))
        pdf = np.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return dy * (cdf + x * pdf)
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        t = np.tanh(c * (x + 0.044715 * x * x * x))
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x))
    raise ValueError(f"gelu_backward: approximate must be 'none' or 'tanh', got {approximate!r}")


def quick_gelu(x):
    """CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x). Same shape as x.

    OpenAI trained CLIP with it (transformers' `quick_gelu`); it differs from the exact GELU by up
    to ~0.02, so a CLIP checkpoint must run with the activation it was trained with.
    The sigmoid is scipy's `expit` (no overflow for large negative x; float32 stays float32).
    """
    check_floating("quick_gelu: x", x)
    return x * expit(1.702 * x)


def quick_gelu_backward(dy, x):
    """Gradient of `quick_gelu` at x: dy * (s + 1.702 x s (1 - s)), s = sigmoid(1.702 x)
    (the product rule; the chain rule brings the 1.702)."""
    s = expit(1.702 * x)
    return dy * (s + 1.702 * x * s * (1.0 - s))


def geglu(x):
    """Gated GELU: split the last axis in halves (value, gate) and return value * gelu(gate).

    x: (..., 2F). Returns (..., F). The first half is the value, the second half the gate, as in
    diffusers' `GEGLU`. (float32: the fast kernel multiplies by the value inside its blocks, which
    saves a pass over memory and gives the same numbers.)
    """
    check_floating("geglu: x", x)
    if x.shape[-1] % 2:
        raise ValueError(f"geglu: expected an even last axis, got shape {x.shape}")
    value, gate = np.split(x, 2, axis=-1)                 # (..., 2F) -> 2 x (..., F)
    if x.dtype == np.float32:
        return fast.gelu_float32(gate, value)
    return value * gelu(gate)


def geglu_backward(dy, x):
    """Gradient of `geglu` at x (..., 2F). dy: (..., F). Returns dx (..., 2F) = [d value, d gate]:
    d value = dy gelu(gate), d gate = dy value gelu'(gate), concatenated in the forward's order."""
    value, gate = np.split(x, 2, axis=-1)                 # (..., 2F) -> 2 x (..., F)
    dvalue = dy * gelu(gate)
    dgate = gelu_backward(dy * value, gate)
    return np.concatenate([dvalue, dgate], axis=-1)       # 2 x (..., F) -> (..., 2F)


def softmax(x, axis=-1, inplace=False):
    """Numerically stable softmax: exp(x - max) / sum(exp(x - max)).

    Subtracting the max changes nothing mathematically but keeps exp() from overflowing on large
    logits (exp(1000) is inf in float64). Same shape as x. The normalisation multiplies by
    1 / sum (one division per row, not per value). With `inplace=True` the result is written
    into x itself (attention's scores, a fresh array nobody else holds, are the case).
    """
    check_floating("softmax: x", x)
    if inplace:
        z = x
        z -= np.max(z, axis=axis, keepdims=True)
    else:
        z = x - np.max(x, axis=axis, keepdims=True)
    np.exp(z, out=z)
    z *= 1.0 / np.sum(z, axis=axis, keepdims=True)
    return z


def softmax_backward(dy, p, axis=-1):
    """Gradient of `softmax` given its output p: dx = p (dy - sum(dy p)), sums along `axis`.

    This is the Jacobian diag(p) - p p^T applied to dy, without forming it; p (1 - p) alone
    would be only its diagonal.
    """
    return p * (dy - np.sum(dy * p, axis=axis, keepdims=True))


def dropout(x, p, training, rng, return_cache=False):
    """Inverted dropout: in training keep each value with probability 1 - p and scale by 1/(1-p).

    x: any shape. In eval (training=False) or with p == 0 it returns x unchanged. The mask is
    drawn from `rng`, an `np.random.Generator`, so a seed reproduces it.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: expected p in [0, 1), got {p}")
    if not training or p == 0.0:
        return (x, (None, p)) if return_cache else x
    keep = rng.random(x.shape) >= p
    y = np.where(keep, x / (1.0 - p), 0.0).astype(x.dtype)
    return (y, (keep, p)) if return_cache else y


def dropout_backward(dy, cache):
    """Gradient of `dropout` with the forward's own mask: dy / (1 - p) where kept, else 0."""
    keep, p = cache
    if keep is None:
        return dy
    return np.where(keep, dy / (1.0 - p), 0.0).astype(dy.dtype)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------
def causal_mask(L, S=None):
    """The causal mask: (L, S) booleans, True where query i may attend to key j, i.e. j <= i.

    Lower-triangular and aligned at the top-left corner, as torch's `is_causal=True` (S defaults
    to L). In a causal text encoder (CLIP) token i sees only tokens 0..i, so the features of every
    token up to the end-of-text token do not depend on the padding that follows it.
    """
    S = L if S is None else S
    return np.tril(np.ones((L, S), dtype=bool))          # (L, S), row i True up to column i


def attention_weights(q, k, scale=None, return_cache=False, is_causal=False):
    """The attention weights P = softmax(scale q k^T) over the keys.

    q: (B, nh, L, hd). k: (B, nh, S, hd). scale defaults to 1/sqrt(hd). Returns (B, nh, L, S),
    each row summing to 1. The scores are a fresh product, so the scale and the softmax work on
    them in place (no second (L, S) array per head). A caller that has already scaled q passes
    scale=1.0 (aMUSEd's `Attention` does: q has L x hd values, the scores L x S).
    is_causal: scores where `causal_mask(L, S)` is False are set to -inf before the softmax, so
    those weights are exactly 0 (torch's `is_causal=True`); every row keeps key 0.
    """
    for name, t in (("q", q), ("k", k)):
        check_floating(f"attention_weights: {name}", t)
        check_rank(f"attention_weights: {name}", t, 4, "(B, nh, tokens, hd)")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError("attention_weights: expected q (B, nh, L, hd) and k (B, nh, S, hd), got "
                         f"q {q.shape}, k {k.shape}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = q @ k.swapaxes(-1, -2)                       # (B, nh, L, hd) @ (B, nh, hd, S)
    if scale != 1.0:
        scores *= scale
    if is_causal:
        scores[..., ~causal_mask(q.shape[-2], k.shape[-2])] = -np.inf
    weights = softmax(scores, axis=-1, inplace=True)      # (B, nh, L, S)
    return (weights, (q, k, weights, scale)) if return_cache else weights


def attention_weights_backward(dweights, cache, rowsum=None):
    """Gradients of `attention_weights`. dweights: (B, nh, L, S). Returns (dq, dk).

    With S = scale q k^T and P = softmax(S): dS = P (dP - rowsum(dP P)) (the softmax's
    backward), then dq = scale dS k and dk = scale dS^T q; the scale multiplies dS once.
    `rowsum` (B, nh, L, 1): rowsum(dP P) when the caller has it more cheaply (see
    `scaled_dot_product_attention_backward`). A causal forward needs nothing more: its masked
    weights are exactly 0, so dS is 0 there and no gradient crosses the mask.
    """
    q, k, weights, scale = cache
    if rowsum is None:
        dscores = softmax_backward(dweights, weights)     # (B, nh, L, S)
    else:
        dscores = weights * (dweights - rowsum)           # the same formula, rowsum given
    if scale != 1.0:
        dscores *= scale
    dq = dscores @ k                                      # (B, nh, L, S) @ (B, nh, S, hd)
    dk = dscores.swapaxes(-1, -2) @ q                     # (B, nh, S, L) @ (B, nh, L, hd)
    return dq, dk


def scaled_dot_product_attention(q, k, v, scale=None, return_weights=False,
                                 return_cache=False, is_causal=False):
    """softmax(q k^T * scale) v over the last two axes: `attention_weights`, then P v.

    q: (B, nh, L, hd). k, v: (B, nh, S, hd). scale defaults to 1/sqrt(hd).
    is_causal: scores where `causal_mask(L, S)` is False are set to -inf before the softmax, so
    those weights are exactly 0 (torch's `is_causal=True`).
    Returns (B, nh, L, hd), and the attention weights (B, nh, L, S) if `return_weights`.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_floating(f"scaled_dot_product_attention: {name}", t)
        check_rank(f"scaled_dot_product_attention: {name}", t, 4, "(B, nh, tokens, hd)")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError("scaled_dot_product_attention: expected q (B, nh, L, hd) and k, v "
                         f"(B, nh, S, hd), got q {q.shape}, k {k.shape}, v {v.shape}")
    weights, wcache = attention_weights(q, k, scale, return_cache=True,
                                        is_causal=is_causal)  # (B, nh, L, S)
    out = weights @ v                                     # (B, nh, L, S) @ (B, nh, S, hd)
    result = (out, weights) if return_weights else out
    return (result, (wcache, v)) if return_cache else result


def scaled_dot_product_attention_backward(dout, cache):
    """Gradients of `scaled_dot_product_attention`. dout: (B, nh, L, hd). Returns (dq, dk, dv).

    With O = P v: dv = P^T dO and dP = dO v^T, then `attention_weights_backward` takes dP back
    to q and k. The softmax's rowsum(dP P) equals rowsum(dO O) (FlashAttention's identity: both
    are sum_s P_s dO . v_s), which sums hd columns instead of S.
    """
    wcache, v = cache
    weights = wcache[2]                                   # P, (B, nh, L, S)
    out = weights @ v                                     # O, (B, nh, L, hd)
    dv = weights.swapaxes(-1, -2) @ dout                  # (B, nh, S, L) @ (B, nh, L, hd)
    dweights = dout @ v.swapaxes(-1, -2)                  # (B, nh, L, hd) @ (B, nh, hd, S)
    rowsum = np.sum(dout * out, axis=-1, keepdims=True)   # (B, nh, L, 1)
    dq, dk = attention_weights_backward(dweights, wcache, rowsum)
    return dq, dk, dv


def split_heads(x, heads):
    """(B, L, nh*hd) -> (B, nh, L, hd): head r owns channels [r*hd, (r+1)*hd)."""
    B, L, I = x.shape
    return x.reshape(B, L, heads, I // heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, nh, L, hd) -> (B, L, nh*hd), the inverse of `split_heads`."""
    B, nh, L, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, L, nh * hd)


def split_heads_backward(dy):
    """Gradient of `split_heads`: dy (B, nh, L, hd) goes back through the inverse, `merge_heads`."""
    return merge_heads(dy)


def merge_heads_backward(dy, heads):
    """Gradient of `merge_heads`: dy (B, L, nh*hd) goes back through `split_heads`."""
    return split_heads(dy, heads)


# --------------------------------------------------------------------------------------------------
# Convolutions (NCHW, weights as torch stores them)
# --------------------------------------------------------------------------------------------------
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1, return_cache=False):
    """2-D cross-correlation (no kernel flip) with zero padding, as `torch.nn.functional.conv2d`.

    x: (B, C, H, W). weight: (O, C/groups, kh, kw). bias: (O,) or None.
    Returns (B, O, Ho, Wo) with Ho = (H + 2 ph - kh) // sh + 1 (likewise Wo).
    im2col: every output pixel sees a (C/groups, kh, kw) window; the windows are a strided view of
    the padded input, and one contraction per group multiplies them with the kernels. The common
    case, stride 1 without groups, takes `_conv2d_row_taps` instead: the same sums, computed
    without copying every window (the backward uses the window view either way).
    """
    check_floating("conv2d: x", x)
    check_rank("conv2d: x", x, 4, "(B, C, H, W)")
    B, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    if C != Cg * groups:
        raise ValueError(f"conv2d: expected {Cg * groups} input channels ({Cg} per group x "
                         f"{groups} groups), got {C} (x shape {x.shape})")
    if H + 2 * ph < kh or W + 2 * pw < kw:
        raise ValueError(f"conv2d: padded input {H + 2 * ph}x{W + 2 * pw} is smaller than the "
                         f"{kh}x{kw} kernel")
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))                 # (B, C, H+2ph, W+2pw)
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # (B, C, Ho, Wo, kh, kw)
    Ho, Wo = win.shape[2], win.shape[3]
    win = win.reshape(B, groups, Cg, Ho, Wo, kh, kw)                     # split channels by group
    if groups == 1 and (sh, sw) == (1, 1):
        y = _conv2d_row_taps(xp, weight, Ho, Wo)                         # (B, O, Ho, Wo)
    else:
        w = weight.reshape(groups, O // groups, Cg, kh, kw)              # (g, O/g, Cg, kh, kw)
        y = np.einsum("bgchwij,gocij->bgohw", win, w, optimize=True)     # (B, g, O/g, Ho, Wo)
        y = y.reshape(B, O, Ho, Wo)
    y = y if bias is None else y + bias[:, None, None]
    cache = (x.shape, win, weight, bias is not None, (sh, sw), (ph, pw), groups)
    return (y, cache) if return_cache else y


def _conv2d_row_taps(xp, weight, Ho, Wo):
    """A stride-1 convolution of the padded input xp (B, C, Hp, Wp) as kh matrix products, without
    an im2col copy (which would hold kh kw copies of the input: 300 MB for one 3x3 convolution of
    aMUSEd's VQ-GAN at 256 x 256 x 128, and copying it cost more time than the products).

    The kw column shifts of xp are stacked along the channels: cols[b, (c, j), r, x] =
    xp[b, c, r, x + j], (B, C kw, Hp Wo), kw copies. Row tap i needs rows i .. i + Ho - 1 of every
    shift, which in the flattened (Hp Wo) axis is the contiguous column window
    [i Wo, (i + Ho) Wo): a view that BLAS reads in place. So
        y = sum_i weight[:, :, i, :] (O, C kw) @ cols[:, :, i Wo:(i + Ho) Wo]   (B, O, Ho Wo).
    Returns (B, O, Ho, Wo).
    """
    B, C, Hp, Wp = xp.shape
    O, _, kh, kw = weight.shape
    if kw == 1:
        cols = xp.reshape(B, C, Hp * Wp)                  # (B, C, Hp, Wp) -> (B, C, Hp Wp), Wp = Wo
    else:
        cols = np.empty((B, C, kw, Hp, Wo), dtype=xp.dtype)
        for j in range(kw):
            cols[:, :, j] = xp[:, :, :, j:j + Wo]         # column shift j
        cols = cols.reshape(B, C * kw, Hp * Wo)           # (B, C, kw, Hp, Wo) -> (B, C kw, Hp Wo)
    taps = weight.transpose(2, 0, 1, 3).reshape(kh, O, C * kw)  # (O, C, kh, kw) -> (kh, O, C kw)
    y = taps[0] @ cols[:, :, :Ho * Wo]                    # (B, O, Ho Wo)
    for i in range(1, kh):
        y += taps[i] @ cols[:, :, i * Wo:(i + Ho) * Wo]   # row tap i: a window, not a copy
    return y.reshape(B, O, Ho, Wo)                        # (B, O, Ho Wo) -> (B, O, Ho, Wo)


def conv2d_backward(dy, cache):
    """Gradients of `conv2d`. dy: (B, O, Ho, Wo). Returns (dx, dweight, dbias).

    dweight[o, c, i, j] = sum_{b, y, x} dy[b, o, y, x] window[b, c, y, x, i, j] (per group) and
    dbias = sum of dy over (B, Ho, Wo). dx is col2im: for each kernel tap (i, j) the products
    W[:, :, i, j]^T dy are **added** into the padded input at that tap's strided positions (the
    windows overlap, so one input pixel collects from several outputs); then the padding is cut.
    """
    x_shape, win, weight, has_bias, (sh, sw), (ph, pw), groups = cache
    B, C, H, W = x_shape
    O, Cg, kh, kw = weight.shape
    _, _, Ho, Wo = dy.shape
    dyg = dy.reshape(B, groups, O // groups, Ho, Wo)                     # split outputs by group
    w = weight.reshape(groups, O // groups, Cg, kh, kw)
    dw = np.einsum("bgohw,bgchwij->gocij", dyg, win, optimize=True)     # (g, O/g, Cg, kh, kw)
    dxp = np.zeros((B, groups, Cg, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            contrib = np.einsum("bgohw,goc->bgchw", dyg, w[..., i, j], optimize=True)
            dxp[..., i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += contrib
    dx = dxp.reshape(B, C, H + 2 * ph, W + 2 * pw)[:, :, ph:ph + H, pw:pw + W]  # cut the padding
    dbias = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw.reshape(weight.shape), dbias


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, return_cache=False):
    """2-D transposed convolution, as `torch.nn.functional.conv_transpose2d` (groups=1).

    x: (B, C, H, W). weight: (C, O, kh, kw) -- note in-channels first, unlike conv2d.
    Returns (B, O, (H-1) sh - 2 ph + kh, (W-1) sw - 2 pw + kw).
    Each input pixel scatters a (O, kh, kw) patch, weighted by its channels, into the output at
    stride s; overlapping patches add up. Padding crops the border of that full result.
    """
    check_floating("conv_transpose2d: x", x)
    check_rank("conv_transpose2d: x", x, 4, "(B, C, H, W)")
    B, C, H, W = x.shape
    Cw, O, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    if C != Cw:
        raise ValueError(f"conv_transpose2d: expected {Cw} input channels, got {C} "
                         f"(x shape {x.shape})")
    Hf, Wf = (H - 1) * sh + kh, (W - 1) * sw + kw                        # before cropping
    full = np.zeros((B, O, Hf, Wf), dtype=np.result_type(x, weight))
    for a in range(kh):
        for b in range(kw):
            contrib = np.einsum("bchw,co->bohw", x, weight[:, :, a, b], optimize=True)
            full[:, :, a:a + (H - 1) * sh + 1:sh, b:b + (W - 1) * sw + 1:sw] += contrib
    y = full[:, :, ph:Hf - ph, pw:Wf - pw]
    y = y if bias is None else y + bias[:, None, None]
    return (y, (x, weight, bias is not None, (sh, sw), (ph, pw))) if return_cache else y


def conv_transpose2d_backward(dy, cache):
    """Gradients of `conv_transpose2d`. dy: (B, O, Ho, Wo). Returns (dx, dweight, dbias).

    The transposed conv is the adjoint of a strided conv with the same weight, so its backward is
    that ordinary conv of dy (padded back to the uncropped size): per tap (a, b),
    dx[b, c, y, x] += sum_o W[c, o, a, b] dy_full[b, o, s y + a, s x + b] and
    dW[c, o, a, b] = sum_{b, y, x} x[b, c, y, x] dy_full[b, o, s y + a, s x + b].
    """
    x, weight, has_bias, (sh, sw), (ph, pw) = cache
    B, C, H, W = x.shape
    _, O, kh, kw = weight.shape
    Hf, Wf = (H - 1) * sh + kh, (W - 1) * sw + kw
    full = np.zeros((B, O, Hf, Wf), dtype=dy.dtype)
    full[:, :, ph:Hf - ph, pw:Wf - pw] = dy                             # undo the crop
    dx = np.zeros_like(x, dtype=dy.dtype)
    dw = np.zeros(weight.shape, dtype=dy.dtype)
    for a in range(kh):
        for b in range(kw):
            part = full[:, :, a:a + (H - 1) * sh + 1:sh, b:b + (W - 1) * sw + 1:sw]  # (B, O, H, W)
            dx += np.einsum("bohw,co->bchw", part, weight[:, :, a, b], optimize=True)
            dw[:, :, a, b] = np.einsum("bchw,bohw->co", x, part, optimize=True)
    dbias = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, dbias


def pad2d(x, pad):
    """Zero padding of the last two axes, with torch's `F.pad` order: pad = (left, right, top,
    bottom). x: (..., H, W). Returns (..., top + H + bottom, left + W + right).

    The VAE's `Downsample2D` pads (0, 1, 0, 1), one zero column on the right and one zero row at
    the bottom, before a stride-2 3x3 conv without padding: an asymmetric padding that a conv's
    own (symmetric) `padding` cannot express.
    """
    check_floating("pad2d: x", x)
    if x.ndim < 2:
        raise ValueError(f"pad2d: expected x with at least 2 axes (..., H, W), got {x.shape}")
    left, right, top, bottom = pad
    widths = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(x, widths)                              # (..., H, W) -> (..., H', W')


def pad2d_backward(dy, pad):
    """Gradient of `pad2d`: dy (..., H', W') cropped back to (..., H, W); the padded zeros were
    constants, so their gradient is dropped."""
    left, right, top, bottom = pad
    H, W = dy.shape[-2] - top - bottom, dy.shape[-1] - left - right
    return dy[..., top:top + H, left:left + W]


def upsample_nearest2d(x, scale_factor=2):
    """Nearest-neighbour up-sampling by an integer factor s, as `F.interpolate(x, scale_factor=s,
    mode="nearest")`: output pixel (i, j) copies input pixel (i // s, j // s).

    x: (B, C, H, W). Returns (B, C, s H, s W). Each input pixel becomes an s x s block.
    """
    check_floating("upsample_nearest2d: x", x)
    check_rank("upsample_nearest2d: x", x, 4, "(B, C, H, W)")
    if not isinstance(scale_factor, (int, np.integer)) or scale_factor < 1:
        raise ValueError(f"upsample_nearest2d: expected a positive integer scale_factor, "
                         f"got {scale_factor!r}")
    s = int(scale_factor)
    return x.repeat(s, axis=2).repeat(s, axis=3)          # (B, C, H, W) -> (B, C, sH, sW)


def upsample_nearest2d_backward(dy, scale_factor=2):
    """Gradient of `upsample_nearest2d`: each input pixel was copied into an s x s block, so its
    gradient is the **sum** of dy over that block (not the mean).
    dy: (B, C, sH, sW) -> (B, C, H, W).
    """
    s = int(scale_factor)
    B, C, Hs, Ws = dy.shape
    blocks = dy.reshape(B, C, Hs // s, s, Ws // s, s)     # (B, C, H, s, W, s)
    return blocks.sum(axis=(3, 5))                        # (B, C, H, W)


def avg_pool2d(x, kernel_size=2):
    """Average pooling over non-overlapping k x k windows (stride k, no padding), as
    `F.avg_pool2d(x, k, k)`: a trailing row or column that does not fill a window is dropped.

    x: (B, C, H, W). Returns (B, C, H // k, W // k).
    """
    check_floating("avg_pool2d: x", x)
    check_rank("avg_pool2d: x", x, 4, "(B, C, H, W)")
    k = int(kernel_size)
    B, C, H, W = x.shape
    if H < k or W < k:
        raise ValueError(f"avg_pool2d: input {H}x{W} is smaller than the {k}x{k} window")
    h, w = H // k, W // k
    windows = x[:, :, :h * k, :w * k].reshape(B, C, h, k, w, k)  # (B, C, h, k, w, k)
    return windows.mean(axis=(3, 5))                      # (B, C, h, w)


def avg_pool2d_backward(dy, x_shape, kernel_size=2):
    """Gradient of `avg_pool2d`: every pixel of a window gets 1/k^2 of the window's gradient;
    pixels of a dropped trailing row or column get 0. dy: (B, C, h, w) -> x_shape (B, C, H, W)."""
    k = int(kernel_size)
    H, W = x_shape[2:]
    share = dy * (1.0 / (k * k))
    d = share.repeat(k, axis=2).repeat(k, axis=3)         # (B, C, h, w) -> (B, C, hk, wk)
    return np.pad(d, ((0, 0), (0, 0), (0, H - d.shape[2]), (0, W - d.shape[3])))


# --------------------------------------------------------------------------------------------------
# Convolutions on channel-last maps (B, H, W, C), as aMUSEd's blocks use them
# --------------------------------------------------------------------------------------------------
# The weights keep torch's layout; each function is the special case of `conv2d` (or
# `conv_transpose2d`) that one geometry reduces to: a per-pixel linear map, nine shifted
# multiply-adds, or one GEMM over non-overlapping patches.
def conv1x1(x, weight, bias=None, return_cache=False):
    """A 1x1 convolution on a channel-last map: a per-pixel linear map.

    x: (B, H, W, C) (any leading axes). weight: (O, C, 1, 1). bias: (O,) or None.
    Returns (B, H, W, O) = `linear(x, weight[:, :, 0, 0], bias)`.
    """
    check_floating("conv1x1: x", x)
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(f"conv1x1: expected a (O, C, 1, 1) weight, got {tuple(weight.shape)}")
    return linear(x, weight[:, :, 0, 0], bias, return_cache)  # (O, C, 1, 1) -> (O, C)


def conv1x1_backward(dy, cache):
    """Gradients of `conv1x1`: `linear_backward`, the weight's gradient as (O, C, 1, 1)."""
    dx, dweight, dbias = linear_backward(dy, cache)
    return dx, dweight[:, :, None, None], dbias


def conv1x1_to_channels_first(x, weight, bias=None, return_cache=False):
    """A 1x1 convolution from a channel-last map to a channel-first one.

    x: (B, H, W, C). weight: (O, C, 1, 1). bias: (O,) or None. Returns (B, O, H, W), computed
    per sample as W x_b^T (O, C) @ (C, L), so a large output (aMUSEd's logits over 8,192 codes)
    is written once, in its final layout, instead of produced channel-last and transposed.
    """
    check_floating("conv1x1_to_channels_first: x", x)
    check_rank("conv1x1_to_channels_first: x", x, 4, "(B, H, W, C)")
    B, H, W, C = x.shape
    check_dim("conv1x1_to_channels_first: x", x, -1, weight.shape[1], "channels")
    h = x.reshape(B, H * W, C)                            # (B, H, W, C) -> (B, L, C)
    w = weight[:, :, 0, 0]                                # (O, C, 1, 1) -> (O, C)
    y = w @ h.transpose(0, 2, 1)                          # (O, C) @ (B, C, L) -> (B, O, L)
    if bias is not None:
        y += bias[:, None]
    y = y.reshape(B, -1, H, W)                            # (B, O, L) -> (B, O, H, W)
    return (y, (h, w, (B, H, W, C), bias is not None)) if return_cache else y


def conv1x1_to_channels_first_backward(dy, cache):
    """Gradients of `conv1x1_to_channels_first`. dy: (B, O, H, W). Returns (dx (B, H, W, C),
    dweight (O, C, 1, 1), dbias): with y_b = W h_b^T, dW = sum_b dy_b h_b, dh = dy^T W."""
    h, w, (B, H, W, C), has_bias = cache
    dl = dy.reshape(B, -1, H * W)                         # (B, O, H, W) -> (B, O, L)
    dweight = np.einsum("bol,blc->oc", dl, h, optimize=True)
    dbias = dl.sum(axis=(0, 2)) if has_bias else None
    dx = (dl.transpose(0, 2, 1) @ w).reshape(B, H, W, C)  # (B, L, O) @ (O, C) -> (B, H, W, C)
    return dx, dweight[:, :, None, None], dbias


def depthwise_conv3x3(x, weight, bias=None, return_cache=False):
    """3x3 depthwise convolution, zero padding 1, channel-last: each channel has its own kernel.

    x: (B, H, W, C). weight: (C, 1, 3, 3) as torch stores it. bias: (C,) or None.
    Returns (B, H, W, C):
    y[b, i, j, c] = bias[c] + sum_{a, d in 0..2} weight[c, 0, a, d] x[b, i + a - 1, j + d - 1, c]
    (a cross-correlation, no kernel flip), computed as nine shifted multiply-adds.
    """
    check_floating("depthwise_conv3x3: x", x)
    check_rank("depthwise_conv3x3: x", x, 4, "(B, H, W, C)")
    B, H, W, C = x.shape
    if weight.shape != (C, 1, 3, 3):
        raise ValueError(f"depthwise_conv3x3: expected weight (C, 1, 3, 3) = {(C, 1, 3, 3)}, "
                         f"got {tuple(weight.shape)}")
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))      # (B, H+2, W+2, C)
    k = weight[:, 0].transpose(1, 2, 0)                   # (C, 3, 3) -> (3, 3, C)
    y = xp[:, 0:H, 0:W] * k[0, 0]
    for a in range(3):
        for d in range(3):
            if a or d:
                y += xp[:, a:a + H, d:d + W] * k[a, d]
    if bias is not None:
        y += bias
    return (y, (xp, weight, bias is not None)) if return_cache else y


def depthwise_conv3x3_backward(dy, cache):
    """Gradients of `depthwise_conv3x3`. dy: (B, H, W, C). Returns (dx, dweight (C, 1, 3, 3),
    dbias (C,) or None).

    Per tap (a, d): dweight[c, 0, a, d] = sum_{b, i, j} dy[b, i, j, c] xpad[b, i + a, j + d, c] (no
    sum over channels: each channel has its own kernel), and dy * k[a, d] is added into the padded
    input at the tap's offset; the padding is cut off at the end.
    """
    xp, weight, has_bias = cache
    B, H, W, C = dy.shape
    k = weight[:, 0].transpose(1, 2, 0)                   # (C, 3, 3) -> (3, 3, C)
    dk = np.empty((3, 3, C), dtype=dy.dtype)
    dxp = np.zeros_like(xp, dtype=dy.dtype)               # (B, H+2, W+2, C)
    for a in range(3):
        for d in range(3):
            dk[a, d] = np.einsum("bijc,bijc->c", dy, xp[:, a:a + H, d:d + W])
            dxp[:, a:a + H, d:d + W] += dy * k[a, d]
    dweight = dk.transpose(2, 0, 1)[:, None]              # (3, 3, C) -> (C, 1, 3, 3)
    dbias = dy.sum(axis=(0, 1, 2)) if has_bias else None
    return dxp[:, 1:H + 1, 1:W + 1], dweight, dbias


def downsample_2x2(x, weight, bias=None, return_cache=False):
    """A 2x2, stride-2 convolution without padding, channel-last, as one GEMM.

    x: (B, H, W, C). weight: (O, C, 2, 2) as torch stores it. bias: (O,) or None.
    Returns (B, H // 2, W // 2, O): like the convolution, an odd last row or column is not used.
    Each output pixel sees one non-overlapping 2x2 patch, so the convolution is a reshape into
    patches followed by a single matrix product.
    """
    check_floating("downsample_2x2: x", x)
    check_rank("downsample_2x2: x", x, 4, "(B, H, W, C)")
    B, H, W, C = x.shape
    O = weight.shape[0]
    if weight.shape != (O, C, 2, 2):
        raise ValueError(f"downsample_2x2: expected weight (O, C, 2, 2) with C = {C}, "
                         f"got {tuple(weight.shape)}")
    h, w = H // 2, W // 2
    patches = x[:, :2 * h, :2 * w]                        # an odd last row/column is not read
    patches = patches.reshape(B, h, 2, w, 2, C)           # (B, h, a, w, d, C)
    patches = patches.transpose(0, 1, 3, 2, 4, 5)         # (B, h, w, a, d, C)
    patches = patches.reshape(B, h, w, 4 * C)             # (B, h, w, (a, d, C))
    wmat = weight.transpose(0, 2, 3, 1).reshape(O, 4 * C)  # (O, C, a, d) -> (O, (a, d, C))
    y, lin_cache = linear(patches, wmat, bias, return_cache=True)  # (B, h, w, O)
    return (y, ((H, W), lin_cache)) if return_cache else y


def downsample_2x2_backward(dy, cache):
    """Gradients of `downsample_2x2`. dy: (B, h, w, O). Returns (dx (B, H, W, C), dweight
    (O, C, 2, 2), dbias): the linear's backward, then the patches put back in place (the
    patches do not overlap, so this is a pure rearrangement); an unread odd edge gets zeros."""
    (H, W), lin_cache = cache
    dpatches, dwmat, dbias = linear_backward(dy, lin_cache)   # (B, h, w, 4C), (O, 4C)
    B, h, w, O = dy.shape
    C = dpatches.shape[-1] // 4
    d = dpatches.reshape(B, h, w, 2, 2, C)                # (B, h, w, a, d, C)
    d = d.transpose(0, 1, 3, 2, 4, 5).reshape(B, 2 * h, 2 * w, C)  # (B, 2h, 2w, C)
    dx = np.pad(d, ((0, 0), (0, H - 2 * h), (0, W - 2 * w), (0, 0)))  # zeros for the odd edge
    dweight = dwmat.reshape(O, 2, 2, C).transpose(0, 3, 1, 2)  # (O, (a, d, C)) -> (O, C, a, d)
    return dx, dweight, dbias


def upsample_2x2(x, weight, bias=None, return_cache=False):
    """The 2x2, stride-2 transposed convolution of aMUSEd's `Upsample2D`, channel-last, as one GEMM.

    x: (B, H, W, C). weight: (C, O, 2, 2) -- in-channels first, as torch stores transposed convs.
    bias: (O,) or None. Returns (B, 2H, 2W, O):
    y[b, 2i + a, 2j + d, o] = bias[o] + sum_c x[b, i, j, c] weight[c, o, a, d].
    The 2x2 output patches of different input pixels do not overlap, so this is one product to
    (O, a, d) per pixel followed by a pixel shuffle.
    """
    check_floating("upsample_2x2: x", x)
    check_rank("upsample_2x2: x", x, 4, "(B, H, W, C)")
    B, H, W, C = x.shape
    O = weight.shape[1]
    if weight.shape != (C, O, 2, 2):
        raise ValueError(f"upsample_2x2: expected weight (C, O, 2, 2) with C = {C}, "
                         f"got {tuple(weight.shape)}")
    wmat = weight.transpose(0, 2, 3, 1).reshape(C, 4 * O)  # (C, O, a, d) -> (C, (a, d, O))
    y = x @ wmat                                          # (B, H, W, (a, d, O))
    y = y.reshape(B, H, W, 2, 2, O)                       # (B, H, W, a, d, O)
    y = y.transpose(0, 1, 3, 2, 4, 5)                     # (B, H, a, W, d, O)
    y = y.reshape(B, 2 * H, 2 * W, O)                     # (B, 2H, 2W, O)
    y = y if bias is None else y + bias
    return (y, (x, wmat, bias is not None)) if return_cache else y


def upsample_2x2_backward(dy, cache):
    """Gradients of `upsample_2x2`. dy: (B, 2H, 2W, O). Returns (dx (B, H, W, C), dweight
    (C, O, 2, 2), dbias): the pixel shuffle undone, then the product's backward,
    dx = dY W^T and dW = x^T dY on the (B H W) rows."""
    x, wmat, has_bias = cache
    B, H, W, C = x.shape
    O = dy.shape[-1]
    d = dy.reshape(B, H, 2, W, 2, O)                      # (B, H, a, W, d, O)
    d = d.transpose(0, 1, 3, 2, 4, 5).reshape(B * H * W, 4 * O)  # (B H W, (a, d, O))
    dx = (d @ wmat.T).reshape(B, H, W, C)                 # (rows, 4O) @ (4O, C)
    dwmat = x.reshape(-1, C).T @ d                        # (C, rows) @ (rows, 4O)
    dweight = dwmat.reshape(C, 2, 2, O).transpose(0, 3, 1, 2)  # (C, (a, d, O)) -> (C, O, a, d)
    dbias = dy.sum(axis=(0, 1, 2)) if has_bias else None
    return dx, dweight, dbias


def conv2d_channels_last(x, weight, bias=None, stride=1, padding=0, groups=1,
                         return_cache=False):
    """`conv2d` on a channel-last map, by transposing to (B, C, H, W) and back.

    x: (B, H, W, C). Returns (B, Ho, Wo, O). The general case, for geometries none of the
    functions above covers.
    """
    check_rank("conv2d_channels_last: x", x, 4, "(B, H, W, C)")
    y, cache = conv2d(x.transpose(0, 3, 1, 2), weight, bias, stride, padding, groups,
                      return_cache=True)                  # (B, H, W, C) -> (B, C, H, W)
    y = y.transpose(0, 2, 3, 1)                           # (B, O, Ho, Wo) -> (B, Ho, Wo, O)
    return (y, cache) if return_cache else y


def conv2d_channels_last_backward(dy, cache):
    """Gradients of `conv2d_channels_last`: `conv2d_backward` between the two transposes."""
    dx, dweight, dbias = conv2d_backward(dy.transpose(0, 3, 1, 2), cache)
    return dx.transpose(0, 2, 3, 1), dweight, dbias       # (B, C, H, W) -> (B, H, W, C)


def conv_transpose2d_channels_last(x, weight, bias=None, stride=1, padding=0,
                                   return_cache=False):
    """`conv_transpose2d` on a channel-last map, by transposing to (B, C, H, W) and back.
    x: (B, H, W, C). Returns (B, Ho, Wo, O)."""
    check_rank("conv_transpose2d_channels_last: x", x, 4, "(B, H, W, C)")
    y, cache = conv_transpose2d(x.transpose(0, 3, 1, 2), weight, bias, stride, padding,
                                return_cache=True)        # (B, H, W, C) -> (B, C, H, W)
    y = y.transpose(0, 2, 3, 1)                           # (B, O, Ho, Wo) -> (B, Ho, Wo, O)
    return (y, cache) if return_cache else y


def conv_transpose2d_channels_last_backward(dy, cache):
    """Gradients of `conv_transpose2d_channels_last`: the NCHW backward between transposes."""
    dx, dweight, dbias = conv_transpose2d_backward(dy.transpose(0, 3, 1, 2), cache)
    return dx.transpose(0, 2, 3, 1), dweight, dbias       # (B, C, H, W) -> (B, H, W, C)


# --------------------------------------------------------------------------------------------------
# Sinusoidal embeddings (time, position, micro-conditions)
# --------------------------------------------------------------------------------------------------
def get_timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False,
                           downscale_freq_shift=1.0, scale=1.0, max_period=10000):
    """Sinusoidal embedding of scalars, with every option of diffusers' function of this name.

    timesteps: (N,) floats or ints. Returns (N, embedding_dim) in timesteps' float dtype
    (float64 for integer input).
      f_k = exp(-ln(max_period) * k / (half - downscale_freq_shift)), k = 0 .. half-1,
      emb = [sin(scale * t f_k), cos(scale * t f_k)]  (cos first if flip_sin_to_cos),
    with one zero column appended when embedding_dim is odd.
    Precision: the sinusoid is formed in float64 and rounded to the input's dtype at the end. In
    float32 the argument t f_k near t = 1000 has an ulp of 6e-5, so a sinusoid computed in float32
    (as diffusers and the U-ViT code do) is only good to ~3e-5; ours is correctly rounded.
    """
    check_rank("get_timestep_embedding: timesteps", timesteps, 1, "(N,)")
    if not isinstance(embedding_dim, (int, np.integer)) or embedding_dim < 1:
        raise ValueError(f"get_timestep_embedding: expected a positive embedding_dim, "
                         f"got {embedding_dim!r}")
    out_dtype = timesteps.dtype if np.issubdtype(timesteps.dtype, np.floating) else np.float64
    t = timesteps.astype(np.float64)
    half = embedding_dim // 2
    exponent = -math.log(max_period) * np.arange(half, dtype=np.float64)  # (half,)
    exponent = exponent / (half - downscale_freq_shift)
    freqs = np.exp(exponent)                                           # (half,)
    args = scale * (t[:, None] * freqs[None, :])                       # (N, half)
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1)        # (N, 2*half)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)  # cos first
    if embedding_dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))                            # (N, embedding_dim)
    return emb.astype(out_dtype)


def timestep_embedding(timesteps, dim, max_period=10000):
    """The U-ViT paper's sinusoid: [cos(t f_k), sin(t f_k)], f_k = exp(-ln(max_period) k / half).

    timesteps: (N,). Returns (N, dim); a zero column is appended if dim is odd. It is the diffusers
    function with flip_sin_to_cos=True and downscale_freq_shift=0.
    """
    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True,
                                  downscale_freq_shift=0, max_period=max_period)


def micro_conditioning(micro_conds, batch, encode_dim, dtype=np.float32):
    """Sinusoidal features of aMUSEd's micro-conditions (width, height, crop x, crop y, score).

    micro_conds: B * M numbers, normally (B, M). Returns (B, M * encode_dim) in `dtype`:
    sample b's row is [phi(m_b0), ..., phi(m_b,M-1)], each phi = [cos(m f_k) ..., sin(m f_k) ...]
    with f_k = exp(-ln(10000) k / (encode_dim // 2)), cosines first. The sinusoid is formed in
    float64 and rounded once to `dtype` (diffusers forms it in float32: up to 3e-5 off for
    micro-conditions such as 512).
    """
    flat = np.asarray(micro_conds).reshape(-1).astype(np.float64)   # (B*M,), row-major
    emb = get_timestep_embedding(flat, encode_dim, flip_sin_to_cos=True,
                                 downscale_freq_shift=0)             # (B*M, encode_dim)
    return emb.reshape(batch, -1).astype(dtype)           # (B*M, d) -> (B, M*d)


def sincos_2d_position_embedding(grid_h, grid_w, dim, extras=0, base=10000):
    """Fixed 2-D sinusoidal position embeddings for a grid of patch tokens (the U-ViT paper's
    alternative to learned ones, its Fig. 2e): the sinusoids of the row i and of the column j of
    each patch, concatenated.

    Returns (1, extras + grid_h * grid_w, dim) float64: `extras` zero rows first (the time and
    label tokens, which are not on the grid), then the patches in row-major order, each
        [sin(i w_k), cos(i w_k) | sin(j w_k), cos(j w_k)],  w_k = base^(-k / (dim/4)), k < dim/4,
    so dim/2 channels describe the row and dim/2 the column. dim must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d_position_embedding: expected dim to be a multiple of 4 "
                         f"(sin and cos of the row and of the column), got {dim}")
    quarter = dim // 4
    omega = base ** (-np.arange(quarter, dtype=np.float64) / quarter)      # (dim/4,)

    def sincos(pos):                                                         # (n,) -> (n, dim/2)
        args = pos[:, None] * omega[None, :]                                 # (n, dim/4)
        return np.concatenate([np.sin(args), np.cos(args)], axis=1)

    i, j = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                       indexing="ij")                                        # (h, w) each
    table = np.concatenate([sincos(i.ravel()), sincos(j.ravel())], axis=1)   # (h*w, dim)
    table = np.concatenate([np.zeros((extras, dim)), table], axis=0)        # (extras + h*w, dim)
    return table[None]                                                       # (1, extras+h*w, dim)


# --------------------------------------------------------------------------------------------------
# Joining and splitting
# --------------------------------------------------------------------------------------------------
def concat_backward(dy, sizes, axis=-1):
    """Gradient of `np.concatenate` of pieces with these `sizes` along `axis`: dy split at the same
    offsets (the long skip's [x, skip], the token sequence [label, time, patches])."""
    return tuple(np.split(dy, np.cumsum(sizes)[:-1], axis=axis))


def split_backward(grads, shapes, axis=-1):
    """Gradient of a split into pieces of `shapes`: their gradients joined back along `axis`,
    zeros for a piece that received none (None), e.g. an unused chunk."""
    parts = [np.zeros(s, dtype=next(g for g in grads if g is not None).dtype) if g is None else g
             for g, s in zip(grads, shapes)]
    return np.concatenate(parts, axis=axis)


# --------------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------------
def patchify(x, patch_size):
    """Cut images into non-overlapping P x P patches, one token each.

    x: (B, C, H, W) with H, W multiples of P. Returns (B, (H/P)*(W/P), P*P*C): tokens in row-major
    patch order, each patch flattened as (p1, p2, C) -- the U-ViT paper's layout.
    """
    check_rank("patchify: x", x, 4, "(B, C, H, W)")
    B, C, H, W = x.shape
    P = patch_size
    if H % P or W % P:
        raise ValueError(f"patchify: expected H and W to be multiples of the patch size {P}, "
                         f"got {H}x{W}")
    x = x.reshape(B, C, H // P, P, W // P, P)            # (B, C, h, p1, w, p2)
    x = x.transpose(0, 2, 4, 3, 5, 1)                    # (B, h, w, p1, p2, C)
    return x.reshape(B, (H // P) * (W // P), P * P * C)  # (B, L, P*P*C)


def patchify_backward(dy, x_shape):
    """Gradient of `patchify`: a pure rearrangement, so dy (B, L, P*P*C) is put back in place by the
    inverse rearrangement, `unpatchify`. x_shape: the forward's (B, C, H, W)."""
    B, C, H, W = x_shape
    P = math.isqrt(dy.shape[-1] // C)
    return unpatchify(dy, C, grid=(H // P, W // P))


def unpatchify(x, channels, grid=None):
    """The inverse of `patchify`: (B, L, P*P*C) -> (B, C, h*P, w*P).

    grid: (h, w) token grid; default square, h = w = sqrt(L). P is inferred from P*P*C.
    """
    check_rank("unpatchify: x", x, 3, "(B, L, P*P*C)")
    B, L, D = x.shape
    if D % channels or math.isqrt(D // channels) ** 2 != D // channels:
        raise ValueError(f"unpatchify: expected the last axis to be P*P*{channels}, got {D}")
    P = math.isqrt(D // channels)
    if grid is None:
        h = w = math.isqrt(L)
        if h * w != L:
            raise ValueError(f"unpatchify: {L} tokens are not a square grid; pass grid=(h, w)")
    else:
        h, w = grid
        if h * w != L:
            raise ValueError(f"unpatchify: expected h*w = {L} tokens, got grid {grid}")
    x = x.reshape(B, h, w, P, P, channels)               # (B, h, w, p1, p2, C)
    x = x.transpose(0, 5, 1, 3, 2, 4)                    # (B, C, h, p1, w, p2)
    return x.reshape(B, channels, h * P, w * P)


def unpatchify_backward(dy, patch_size):
    """Gradient of `unpatchify`: dy (B, C, H, W) goes back through `patchify` -> (B, L, P*P*C)."""
    return patchify(dy, patch_size)


def tokens_to_grid(x, grid):
    """Tokens laid out as the image grid they came from, for a convolution over them.

    x: (B, L, D) with L = h * w tokens in row-major order; grid: (h, w). Returns (B, D, h, w).
    """
    check_rank("tokens_to_grid: x", x, 3, "(B, L, D)")
    B, L, D = x.shape
    h, w = grid
    if h * w != L:
        raise ValueError(f"tokens_to_grid: expected h*w = {L} tokens, got grid {grid}")
    return x.transpose(0, 2, 1).reshape(B, D, h, w)      # (B, L, D) -> (B, D, L) -> (B, D, h, w)


def grid_to_tokens(x):
    """The inverse of `tokens_to_grid`: (B, D, h, w) -> (B, h*w, D), row-major."""
    check_rank("grid_to_tokens: x", x, 4, "(B, D, h, w)")
    B, D, h, w = x.shape
    return x.reshape(B, D, h * w).transpose(0, 2, 1)     # (B, D, h, w) -> (B, D, L) -> (B, L, D)


def tokens_to_grid_backward(dy):
    """Gradient of `tokens_to_grid`: a pure rearrangement, undone by `grid_to_tokens`."""
    return grid_to_tokens(dy)


def grid_to_tokens_backward(dy, grid):
    """Gradient of `grid_to_tokens`: dy (B, L, D) goes back through `tokens_to_grid`."""
    return tokens_to_grid(dy, grid)


# --------------------------------------------------------------------------------------------------
# Vector quantisation (the VQ-GAN's codebook)
# --------------------------------------------------------------------------------------------------
def euclidean_distances(x, y):
    """All pairwise Euclidean distances, as `torch.cdist(x, y)` (p = 2) computes them.

    x: (N, C) vectors, y: (K, C) codes. Returns (N, K) with d[n, k] = ||x[n] - y[k]||.
    torch picks one of two routes, and so do we (the nearest code can depend on it when two
    distances are within rounding of each other):
    * N > 25 or K > 25: the matrix-product route. ||x - y||^2 = ||x||^2 - 2 x.y + ||y||^2 is one
      product of augmented rows, [-2 x, ||x||^2, 1] . [y, 1, ||y||^2]; cancellation can leave a
      tiny negative number, so it is clamped at 0 before the square root;
    * otherwise the direct route: sqrt(sum_c (x_c - y_c)^2).
    """
    check_floating("euclidean_distances: x", x)
    check_rank("euclidean_distances: x", x, 2, "(N, C)")
    check_rank("euclidean_distances: y", y, 2, "(K, C)")
    check_dim("euclidean_distances: x", x, 1, y.shape[1], "width (the codes' width)")
    N, K = x.shape[0], y.shape[0]
    if N > 25 or K > 25:
        x_norm = np.sum(x * x, axis=1, keepdims=True)     # (N, 1)
        y_norm = np.sum(y * y, axis=1, keepdims=True)     # (K, 1)
        x_aug = np.concatenate([-2.0 * x, x_norm, np.ones_like(x_norm)], axis=1)  # (N, C + 2)
        y_aug = np.concatenate([y, np.ones_like(y_norm), y_norm], axis=1)         # (K, C + 2)
        squared = x_aug @ y_aug.T                         # (N, C + 2) @ (C + 2, K) -> (N, K)
        return np.sqrt(np.maximum(squared, 0.0))
    diff = x[:, None, :] - y[None, :, :]                  # (N, 1, C) - (1, K, C) -> (N, K, C)
    return np.sqrt(np.sum(diff * diff, axis=-1))          # (N, K)


def nearest_code(z, codebook):
    """The index of the nearest code for every row: argmin_k ||z[n] - codebook[k]||.

    z: (N, C). codebook: (K, C). Returns (N,) int64. Distances as `euclidean_distances` (torch's
    `cdist`, as diffusers' `VectorQuantizer` computes them); a tie goes to the lowest index, as
    both `np.argmin` and `torch.argmin` resolve it. The search is not differentiable: no gradient
    flows through an argmin.
    """
    return np.argmin(euclidean_distances(z, codebook), axis=1).astype(np.int64)


def vq_loss(z, z_q, beta, legacy=True, return_cache=False):
    """The codebook and commitment terms of a VQ-VAE's loss. z, z_q: the same shape (the encoder's
    vectors and their nearest codes). Returns a 0-d array.

    With sg[.] a stop-gradient (torch's `.detach()`) and means over every element:
        legacy=True:  loss = mean((sg[z_q] - z)^2) + beta mean((z_q - sg[z])^2)
        legacy=False: loss = beta mean((sg[z_q] - z)^2) + mean((z_q - sg[z])^2)
    The paper's loss is the second one: the codebook term pulls codes towards the encoder's
    vectors with weight 1, the commitment term (weight beta) keeps the encoder near its codes.
    diffusers' default, legacy=True, keeps an old bug that swapped the two weights. The two terms
    have the same value, so loss = (1 + beta) mean((z_q - z)^2) either way: only where the
    gradient goes differs (see `vq_loss_backward`).
    """
    diff = z_q - z
    mse = np.mean(diff * diff)                            # both terms' value
    loss = (mse + beta * mse) if legacy else (beta * mse + mse)
    loss = np.asarray(loss, dtype=z.dtype)
    return (loss, (diff, beta, legacy)) if return_cache else loss


def vq_loss_backward(dloss, cache):
    """Gradients of `vq_loss`. dloss: the upstream gradient of the scalar loss (1.0 when it is the
    objective). Returns (dz, dz_q).

    With n = the number of elements and w_z, w_q the weights of the terms whose gradient reaches
    z and z_q (legacy: w_z = 1, w_q = beta; otherwise w_z = beta, w_q = 1):
        dz = dloss w_z 2 (z - z_q) / n,   dz_q = dloss w_q 2 (z_q - z) / n.
    """
    diff, beta, legacy = cache
    w_z, w_q = (1.0, beta) if legacy else (beta, 1.0)
    scale = float(dloss) * 2.0 / diff.size
    return (-w_z * scale) * diff, (w_q * scale) * diff


def straight_through(z, z_q):
    """The straight-through estimator's forward: z + sg[z_q - z] (sg = stop-gradient).

    Its value is z_q (up to one rounding: it is computed as z + (z_q - z), as diffusers does);
    its gradient is the identity to z and nothing to z_q. The decoder sees codes, and the
    encoder receives the decoder's gradient as if quantisation were not there.
    """
    return z + (z_q - z)


def straight_through_backward(dy):
    """Gradient of `straight_through`: (dz, dz_q) = (dy, None). The whole upstream gradient goes to
    z, unchanged; the codes get none along this path (only `vq_loss` moves them)."""
    return dy, None
