"""The forward passes of both models, as pure NumPy functions.

Each function is one idea, with the shapes it takes and returns in its docstring, in one glossary:
B batch, L image tokens, S text tokens, C channels, H x W grid, nh heads, hd head dim, K codebook
size, P patch size. Functions compute in the dtype of their input (float32 or float64) and never
promote it: constants are Python floats, so NEP 50 keeps float32 arrays float32.

Inputs are checked first; a wrong shape, rank or dtype raises a `ValueError` or `TypeError` that
names what was expected and what arrived.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf

from .checks import check_dim, check_floating, check_integer, check_range, check_rank


# --------------------------------------------------------------------------------------------------
# Linear maps and embeddings
# --------------------------------------------------------------------------------------------------
def linear(x, weight, bias=None):
    """y = x W^T + b on the last axis.

    x: (..., in). weight: (out, in), as torch stores it. bias: (out,) or None. Returns (..., out).
    The leading axes are merged first, so that `@` is a single BLAS GEMM (NumPy passes the
    transposed view without a copy); on a 3-d or 4-d x, `@` would run one GEMM per leading index.
    """
    check_floating("linear: x", x)
    check_dim("linear: x", x, -1, weight.shape[1], "in_features")
    y = x.reshape(-1, x.shape[-1]) @ weight.T             # (rows, in) @ (in, out) -> (rows, out)
    y = y.reshape(x.shape[:-1] + (weight.shape[0],))      # (rows, out) -> (..., out)
    return y if bias is None else y + bias


def embedding(ids, weight):
    """Row lookup: out[..., :] = weight[ids[...], :].

    ids: integer array of any shape with values in [0, V). weight: (V, C). Returns ids.shape + (C,).
    """
    check_integer("embedding: ids", ids)
    check_range("embedding: ids", ids, 0, weight.shape[0])
    return weight[ids]                                    # (...) -> (..., C)


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------
def layer_norm(x, weight=None, bias=None, eps=1e-5):
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
    y = centred / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(x, weight=None, bias=None, eps=1e-6):
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
    y = (xr / np.sqrt(ms + eps)).astype(x.dtype)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def global_response_norm(x, gamma, beta, eps=1e-6):
    """Global Response Normalisation of ConvNeXt-V2, channel-last.

    x: (B, H, W, C). gamma, beta: (1, 1, 1, C). Returns an array shaped like x.
    g[b, c] = ||x[b, :, :, c]||_2 over both spatial axes; n = g / (mean_c g + eps);
    y = gamma * (x * n) + beta + x. The eps sits outside the square root, added to the mean.
    """
    check_floating("global_response_norm: x", x)
    check_rank("global_response_norm: x", x, 4, "(B, H, W, C)")
    check_dim("global_response_norm: x", x, -1, gamma.shape[-1], "channels")
    g = np.sqrt(np.sum(x * x, axis=(1, 2), keepdims=True))  # (B, 1, 1, C)
    n = g / (np.mean(g, axis=-1, keepdims=True) + eps)      # (B, 1, 1, C)
    return gamma * (x * n) + beta + x


# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------
def silu(x):
    """x * sigmoid(x) = x / (1 + exp(-x)). Same shape as x."""
    check_floating("silu: x", x)
    return x / (1.0 + np.exp(-x))


def gelu(x, approximate="none"):
    """Gaussian error linear unit. Same shape as x.

    approximate="none": the exact form 0.5 x (1 + erf(x / sqrt 2)), with `scipy.special.erf`
    (correct to double precision, and it keeps float32 input in float32).
    approximate="tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch's option.
    """
    check_floating("gelu: x", x)
    if approximate == "none":
        return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + np.tanh(inner))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def geglu(x):
    """Gated GELU: split the last axis in halves (value, gate) and return value * gelu(gate).

    x: (..., 2F). Returns (..., F). The first half is the value, the second half the gate, as in
    diffusers' `GEGLU`.
    """
    check_floating("geglu: x", x)
    if x.shape[-1] % 2:
        raise ValueError(f"geglu: expected an even last axis, got shape {x.shape}")
    value, gate = np.split(x, 2, axis=-1)                 # (..., 2F) -> 2 x (..., F)
    return value * gelu(gate)


def softmax(x, axis=-1):
    """Numerically stable softmax: exp(x - max) / sum(exp(x - max)).

    Subtracting the max changes nothing mathematically but keeps exp() from overflowing on large
    logits (exp(1000) is inf in float64). Same shape as x.
    """
    check_floating("softmax: x", x)
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def dropout(x, p, training, rng):
    """Inverted dropout: in training keep each value with probability 1 - p and scale by 1/(1-p).

    x: any shape. In eval (training=False) or with p == 0 it returns x unchanged. The mask is
    drawn from `rng`, an `np.random.Generator`, so a seed reproduces it.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: expected p in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    keep = rng.random(x.shape) >= p
    return np.where(keep, x / (1.0 - p), 0.0).astype(x.dtype)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------
def scaled_dot_product_attention(q, k, v, scale=None, return_weights=False):
    """softmax(q k^T * scale) v over the last two axes.

    q: (B, nh, L, hd). k, v: (B, nh, S, hd). scale defaults to 1/sqrt(hd).
    Returns (B, nh, L, hd), and the attention weights (B, nh, L, S) if `return_weights`.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_floating(f"scaled_dot_product_attention: {name}", t)
        check_rank(f"scaled_dot_product_attention: {name}", t, 4, "(B, nh, tokens, hd)")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError("scaled_dot_product_attention: expected q (B, nh, L, hd) and k, v "
                         f"(B, nh, S, hd), got q {q.shape}, k {k.shape}, v {v.shape}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.swapaxes(-1, -2)) * scale             # (B, nh, L, hd) @ (B, nh, hd, S)
    weights = softmax(scores, axis=-1)                    # (B, nh, L, S)
    out = weights @ v                                     # (B, nh, L, S) @ (B, nh, S, hd)
    return (out, weights) if return_weights else out


def split_heads(x, heads):
    """(B, L, nh*hd) -> (B, nh, L, hd): head r owns channels [r*hd, (r+1)*hd)."""
    B, L, I = x.shape
    return x.reshape(B, L, heads, I // heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, nh, L, hd) -> (B, L, nh*hd), the inverse of `split_heads`."""
    B, nh, L, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, L, nh * hd)


# --------------------------------------------------------------------------------------------------
# Convolutions (NCHW, weights as torch stores them)
# --------------------------------------------------------------------------------------------------
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1):
    """2-D cross-correlation (no kernel flip) with zero padding, as `torch.nn.functional.conv2d`.

    x: (B, C, H, W). weight: (O, C/groups, kh, kw). bias: (O,) or None.
    Returns (B, O, Ho, Wo) with Ho = (H + 2 ph - kh) // sh + 1 (likewise Wo).
    im2col: every output pixel sees a (C/groups, kh, kw) window; the windows are a strided view of
    the padded input, and one contraction per group multiplies them with the kernels.
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
    w = weight.reshape(groups, O // groups, Cg, kh, kw)                  # (g, O/g, Cg, kh, kw)
    y = np.einsum("bgchwij,gocij->bgohw", win, w, optimize=True)         # (B, g, O/g, Ho, Wo)
    y = y.reshape(B, O, Ho, Wo)
    return y if bias is None else y + bias[:, None, None]


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
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
    return y if bias is None else y + bias[:, None, None]


# --------------------------------------------------------------------------------------------------
# Timestep embeddings
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
