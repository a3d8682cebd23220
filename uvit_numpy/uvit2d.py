"""`UVit2DModel`, aMUSEd's transformer, in NumPy: every block, weight-compatible with diffusers.

The model predicts, for every position of a grid of VQ token ids (some of them the mask token),
logits over the `codebook_size` codes. It is conditioned on text (per-token CLIP features, attended
to; a pooled CLIP feature and a few "micro-conditions", added through adaptive norms). The pieces,
in the order the forward pass meets them:

    ids (B, H, W) --embed--> (B, H, W, C) --down_block--> --project_to_hidden--> (B, L, D)
      --transformer_layers x N--> --project_from_hidden--> (B, H, W, C) --up_block-->
      --mlm_layer--> logits (B, K, H, W)

Layout: the blocks work **channel-last**, (B, H, W, C), in both packages (diffusers uses
(B, C, H, W) between blocks; the numbers are the same, only the axis order differs). Only the
model's input ids (B, H, W) and output logits (B, K, H, W) follow diffusers exactly.

Class names, constructor arguments, defaults and parameter names are diffusers', so a state dict
moves between diffusers, `uvit_torch` and this package unchanged. Every module also takes `dtype`
(float32 by default, float64 for exact parity runs) and `rng` (a Generator or a seed).

Numerics, said aloud:
* every norm and sinusoid is computed in the model's dtype (diffusers computes RMSNorm's mean square
  and the micro-condition sinusoid in float32 even in a float64 model; we don't);
* GELU is the exact erf form. float64 uses `scipy.special.erf`; float32 uses the Abramowitz-Stegun
  7.1.26 rational approximation (|error| <= 1.5e-7, about float32's resolution near 1),
  evaluated in cache-sized blocks with in-place ufuncs (`fast.py`, the package's one speed
  trick): scipy's erf in float32 would cost about as much as all the other non-GEMM work of the
  forward together;
* every matmul goes through BLAS (`@`), and float32 stays float32 (Python-float constants only).

Helpers meant for the book and the exercises: `erf_float32`, `gelu`, `geglu`,
`adaptive_modulation`, `scale_shift`, `depthwise_conv3x3`, `downsample_2x2`, `upsample_2x2`,
`micro_conditioning`, `mask_schedule`, `gumbel_noise`, `masked_decoding_step` and `generate`.
Each differentiable one has its `*_backward` right below it, and every block has a `backward`
(see `module.Module`): the conditioning vector and the text features reach many blocks, and their
gradients are summed over all of them.
`Attention` and `GELU` are the foundation's layers with leaner forwards (scale folded into q and
an in-place softmax; the fast float32 GELU); every other block is a thin `Module` over these
functions.
"""

import math

import numpy as np

from . import functional as F
from .checks import (check_batch, check_dim, check_floating, check_integer, check_range,
                     check_rank, dtype_name, is_floating, is_integer)
from .fast import erf_float32, gelu_float32, gelu_grad_float32  # noqa: F401 (erf: for the book)
from . import layers
from .layers import (GEGLU, Conv2d, ConvTranspose2d, Dropout, Embedding, GlobalResponseNorm,
                     LayerNorm, Linear, RMSNorm, SiLU, TimestepEmbedding, to_module_dtype)
from .module import Module, ModuleList, as_rng

__all__ = [
    "CONFIGS", "CONFIG_DEFAULTS", "resolve_config", "check_model_inputs",
    "erf_float32", "gelu", "geglu", "adaptive_modulation", "scale_shift", "depthwise_conv3x3",
    "downsample_2x2", "upsample_2x2", "micro_conditioning", "mask_schedule", "masked_count",
    "decoding_temperatures", "gumbel_noise",
    "masked_decoding_step", "generate",
    "UVit2DModel", "UVit2DConvEmbed", "UVitBlock", "ConvNextBlock", "ConvMlmLayer",
    "SkipFFTransformerBlock", "BasicTransformerBlock", "Attention", "GELU", "FeedForward",
    "AdaLayerNormContinuous", "TimestepEmbedding", "Downsample2D", "Upsample2D",
]

# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------
# The constructor arguments of diffusers' `UVit2DModel` and their defaults.
CONFIG_DEFAULTS = {
    "hidden_size": 1024, "use_bias": False, "hidden_dropout": 0.0,
    "cond_embed_dim": 768, "micro_cond_encode_dim": 256, "micro_cond_embed_dim": 1280,
    "encoder_hidden_size": 768, "vocab_size": 8256, "codebook_size": 8192,
    "in_channels": 768, "block_out_channels": 768, "num_res_blocks": 3,
    "downsample": False, "upsample": False, "block_num_heads": 12,
    "num_hidden_layers": 22, "num_attention_heads": 16, "attention_dropout": 0.0,
    "intermediate_size": 2816, "layer_norm_eps": 1e-6, "ln_elementwise_affine": True,
    "sample_size": 64,
}

# The published aMUSEd transformers (amused/amused-256 and amused/amused-512 on the Hugging Face
# Hub). Both are 22 layers of width 1024 on a 768-channel conv stage; the 512 model halves its
# 32 x 32 token grid in the conv stage (downsample/upsample) so the transformer sees 16 x 16 tokens.
# `sample_size` is the token grid side (unused by the model). Dropout only acts in train mode.
# Provenance: amused-256 reproduces the spec's 603,537,664 parameters. The amused-512 entry
# (down/up-sampling on) and both dropout values were inferred from diffusers' conversion
# script and the aMUSEd paper, not checked against the Hub's config.json (no internet here).
CONFIGS = {
    "amused-256": {**CONFIG_DEFAULTS, "hidden_dropout": 0.1, "attention_dropout": 0.1,
                   "sample_size": 16},
    "amused-512": {**CONFIG_DEFAULTS, "hidden_dropout": 0.1, "attention_dropout": 0.1,
                   "downsample": True, "upsample": True, "sample_size": 32},
    # Small enough for tests, notebooks and exercises (spec section 5.1), with every optional piece
    # on: the kv_mapper (hidden_size != block_out_channels) and the down/up samplers.
    "tiny": {**CONFIG_DEFAULTS, "hidden_size": 64, "block_out_channels": 32, "in_channels": 16,
             "vocab_size": 40, "codebook_size": 32, "num_res_blocks": 2, "num_hidden_layers": 2,
             "num_attention_heads": 4, "block_num_heads": 2, "intermediate_size": 96,
             "cond_embed_dim": 24, "micro_cond_encode_dim": 8, "micro_cond_embed_dim": 40,
             "encoder_hidden_size": 24, "downsample": True, "upsample": True, "sample_size": 8},
}


def resolve_config(config=None, **overrides):
    """A complete `UVit2DModel` config dict from a name in `CONFIGS`, a dict, or None (defaults).

    Keys diffusers writes for itself (starting with `_`: `_class_name`, `_diffusers_version`, ...)
    are dropped; any other key the model does not know is a ValueError that names it. Missing keys
    take diffusers' defaults. `overrides` are applied last (e.g. `resolve_config("tiny",
    use_bias=True)`).
    """
    if config is None:
        config = {}
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"config: expected one of {sorted(CONFIGS)}, got {config!r}")
        config = CONFIGS[config]
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a name or a dict, got {type(config).__name__}")
    given = {k: v for k, v in {**config, **overrides}.items() if not str(k).startswith("_")}
    unknown = sorted(k for k in given if k not in CONFIG_DEFAULTS)
    if unknown:
        raise ValueError(f"config: unknown key(s) {unknown} for UVit2DModel; "
                         f"expected keys among {sorted(CONFIG_DEFAULTS)}")
    return {**CONFIG_DEFAULTS, **given}


def _size(x):
    """Number of elements of an array or a tensor (`.size` is a method on torch tensors)."""
    return math.prod(tuple(x.shape))


def check_model_inputs(config, input_ids, encoder_hidden_states, pooled_text_emb, micro_conds):
    """Check the four inputs of `UVit2DModel.forward` against `config`, before any work.

    Works on NumPy arrays and torch tensors alike (both packages call it). Returns (B, H, W).
    input_ids: (B, H, W) integers in [0, vocab_size); H and W even if `downsample`.
    encoder_hidden_states: (B, S, encoder_hidden_size) floats. pooled_text_emb: (B, cond_embed_dim).
    micro_conds: B * M numbers (normally (B, M)), with M * micro_cond_encode_dim ==
    micro_cond_embed_dim.
    """
    check_integer("UVit2DModel: input_ids", input_ids)
    check_rank("UVit2DModel: input_ids", input_ids, 3, "(B, H, W) of token ids")
    B, H, W = tuple(input_ids.shape)
    check_range("UVit2DModel: input_ids", input_ids, 0, config["vocab_size"])
    if config["downsample"] and (H % 2 or W % 2):
        raise ValueError(f"UVit2DModel: with downsample=True the token grid needs even sides, "
                         f"got H x W = {H} x {W}")
    check_floating("UVit2DModel: encoder_hidden_states", encoder_hidden_states)
    check_rank("UVit2DModel: encoder_hidden_states", encoder_hidden_states, 3, "(B, S, E)")
    check_dim("UVit2DModel: encoder_hidden_states", encoder_hidden_states, -1,
              config["encoder_hidden_size"], "width (encoder_hidden_size)")
    check_batch("UVit2DModel: encoder_hidden_states", encoder_hidden_states, B)
    check_floating("UVit2DModel: pooled_text_emb", pooled_text_emb)
    check_rank("UVit2DModel: pooled_text_emb", pooled_text_emb, 2, "(B, cond_embed_dim)")
    check_dim("UVit2DModel: pooled_text_emb", pooled_text_emb, -1, config["cond_embed_dim"],
              "width (cond_embed_dim)")
    check_batch("UVit2DModel: pooled_text_emb", pooled_text_emb, B)
    if not hasattr(micro_conds, "shape") or not (is_floating(micro_conds)
                                                 or is_integer(micro_conds)):
        got = dtype_name(micro_conds) if hasattr(micro_conds, "dtype") else type(micro_conds)
        raise TypeError(f"UVit2DModel: micro_conds: expected a numeric array, got {got}")
    enc, emb = config["micro_cond_encode_dim"], config["micro_cond_embed_dim"]
    if emb % enc:
        raise ValueError(f"UVit2DModel: micro_cond_embed_dim {emb} is not a multiple of "
                         f"micro_cond_encode_dim {enc}, so no number of micro_conds fills it")
    M = emb // enc
    if len(micro_conds.shape) >= 2 and micro_conds.shape[0] != B:
        raise ValueError(f"UVit2DModel: micro_conds: expected batch size {B}, got "
                         f"{micro_conds.shape[0]} (shape {tuple(micro_conds.shape)})")
    if _size(micro_conds) != B * M:
        raise ValueError(f"UVit2DModel: micro_conds: expected B x M = {B} x {M} = {B * M} values "
                         f"(M * micro_cond_encode_dim {enc} = micro_cond_embed_dim {emb}), got "
                         f"{_size(micro_conds)} (shape {tuple(micro_conds.shape)})")
    return B, H, W


# --------------------------------------------------------------------------------------------------
# Pure functions, one idea each
# --------------------------------------------------------------------------------------------------
def gelu(x):
    """Exact (erf) GELU, 0.5 x (1 + erf(x / sqrt 2)), in x's dtype. Same shape as x.

    float64 (and float16): `scipy.special.erf`, exact to double precision. float32: the
    A&S 7.1.26 erf (|error| <= 1.5e-7), evaluated block by block with in-place ufuncs so the
    temporaries stay in cache; this makes it about 6x cheaper than scipy's erf.
    """
    check_floating("gelu: x", x)
    if x.dtype != np.float32:
        return F.gelu(x)
    return gelu_float32(x.reshape(1, 1)).reshape(()) if x.ndim == 0 else gelu_float32(x)


def gelu_backward(dy, x):
    """Gradient of `gelu` at x: dy (Phi(x) + x phi(x)), Phi from the same erf as the forward
    (float32: `fast.gelu_grad_float32`; otherwise `functional.gelu_backward`)."""
    if x.dtype != np.float32:
        return F.gelu_backward(dy, x)
    return gelu_grad_float32(x, dy.astype(np.float32, copy=False))


def geglu(u):
    """Gated GELU as diffusers' `GEGLU`: value * gelu(gate), value the FIRST half of the last axis.

    u: (..., 2F). Returns (..., F).
    """
    check_floating("geglu: u", u)
    if u.shape[-1] % 2:
        raise ValueError(f"geglu: expected an even last axis, got shape {u.shape}")
    half = u.shape[-1] // 2
    value, gate = u[..., :half], u[..., half:]            # (..., 2F) -> 2 x (..., F)
    if u.dtype == np.float32:
        return gelu_float32(gate, value)
    return value * gelu(gate)


def geglu_backward(dy, u):
    """Gradient of `geglu` at u (..., 2F); dy: (..., F). Returns du = [dy gelu(gate),
    dy value gelu'(gate)], the value's half first, as in the forward."""
    half = u.shape[-1] // 2
    value, gate = u[..., :half], u[..., half:]            # (..., 2F) -> 2 x (..., F)
    return np.concatenate([dy * gelu(gate), gelu_backward(dy * value, gate)], axis=-1)


def scale_shift(cond, weight, bias=None, return_cache=False):
    """(scale, shift) from a conditioning vector, as diffusers' adaptive norms compute them.

    cond: (B, D). weight: (2C, D), bias: (2C,) or None. Returns two (B, C) arrays:
    [scale; shift] = Lin(silu(cond)), split on the last axis, **scale first**.
    """
    m, lin_cache = F.linear(F.silu(cond), weight, bias, return_cache=True)  # (B, 2C)
    C = m.shape[-1] // 2
    out = (m[:, :C], m[:, C:])                            # (B, 2C) -> 2 x (B, C)
    return (out, (cond, lin_cache)) if return_cache else out


def scale_shift_backward(dscale, dshift, cache):
    """Gradients of `scale_shift`: (dcond (B, D), dweight (2C, D), dbias (2C,) or None).

    The two (B, C) gradients are joined back in the forward's order (scale first) and run through
    the linear's and the SiLU's backward."""
    cond, lin_cache = cache
    dm = np.concatenate([dscale, dshift], axis=-1)        # 2 x (B, C) -> (B, 2C)
    ds, dweight, dbias = F.linear_backward(dm, lin_cache)
    return F.silu_backward(ds, cond), dweight, dbias


def adaptive_modulation(x, scale, shift, return_cache=False):
    """FiLM-style modulation: x * (1 + scale) + shift, one (scale, shift) per sample.

    x: (B, ..., C), e.g. (B, L, C) tokens or (B, H, W, C) pixels. scale, shift: (B, C).
    Returns an array shaped like x.
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
    """The 2x2, stride-2 convolution of aMUSEd's `Downsample2D`, channel-last, as one GEMM.

    x: (B, H, W, C). weight: (O, C, 2, 2) as torch stores it. bias: (O,) or None.
    Returns (B, ceil(H/2), ceil(W/2), O). Like diffusers (which pads one zero row at the bottom
    and one zero column on the right before the convolution), an odd side is zero-padded.
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
    x = np.pad(x, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))  # (B, 2h, 2w, C)
    h, w = (H + 1) // 2, (W + 1) // 2
    patches = x.reshape(B, h, 2, w, 2, C)                 # (B, h, a, w, d, C)
    patches = patches.transpose(0, 1, 3, 2, 4, 5)         # (B, h, w, a, d, C)
    patches = patches.reshape(B, h, w, 4 * C)             # (B, h, w, (a, d, C))
    wmat = weight.transpose(0, 2, 3, 1).reshape(O, 4 * C)  # (O, C, a, d) -> (O, (a, d, C))
    y, lin_cache = F.linear(patches, wmat, bias, return_cache=True)  # (B, h, w, O)
    return (y, ((H, W), lin_cache)) if return_cache else y


def downsample_2x2_backward(dy, cache):
    """Gradients of `downsample_2x2`. dy: (B, h, w, O). Returns (dx (B, H, W, C), dweight
    (O, C, 2, 2), dbias): the linear's backward, then the patches put back in place (the
    patches do not overlap, so this is a pure rearrangement) and the zero padding cut off."""
    (H, W), lin_cache = cache
    dpatches, dwmat, dbias = F.linear_backward(dy, lin_cache)   # (B, h, w, 4C), (O, 4C)
    B, h, w, _ = dy.shape
    O = dy.shape[-1]
    C = dpatches.shape[-1] // 4
    dx = dpatches.reshape(B, h, w, 2, 2, C)               # (B, h, w, a, d, C)
    dx = dx.transpose(0, 1, 3, 2, 4, 5)                   # (B, h, a, w, d, C)
    dx = dx.reshape(B, 2 * h, 2 * w, C)[:, :H, :W]        # cut the padding of an odd side
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


def micro_conditioning(micro_conds, batch, encode_dim, dtype=np.float32):
    """Sinusoidal features of aMUSEd's micro-conditions (width, height, crop x, crop y, score).

    micro_conds: B * M numbers, normally (B, M). Returns (B, M * encode_dim) in `dtype`:
    sample b's row is [phi(m_b0), ..., phi(m_b,M-1)], each phi = [cos(m f_k) ..., sin(m f_k) ...]
    with f_k = exp(-ln(10000) k / (encode_dim // 2)), cosines first. The sinusoid is formed in
    float64 and rounded once to `dtype` (diffusers forms it in float32: up to 3e-5 off for
    micro-conditions such as 512).
    """
    flat = np.asarray(micro_conds).reshape(-1).astype(np.float64)   # (B*M,), row-major
    emb = F.get_timestep_embedding(flat, encode_dim, flip_sin_to_cos=True,
                                   downscale_freq_shift=0)           # (B*M, encode_dim)
    return emb.reshape(batch, -1).astype(dtype)           # (B*M, d) -> (B, M*d)


def _linear_nhwc(x, conv):
    """A 1x1 `Conv2d` applied channel-last: a per-pixel linear map. x: (..., in) -> (..., out)."""
    return F.linear(x, conv.weight[:, :, 0, 0], conv.bias)  # weight (out, in, 1, 1) -> (out, in)


def _conv_nhwc(conv, x):
    """Any `Conv2d`/`ConvTranspose2d` module applied to channel-last x via its NCHW forward."""
    y = conv(x.transpose(0, 3, 1, 2))                     # (B, H, W, C) -> (B, C, H, W)
    return y.transpose(0, 2, 3, 1)                        # (B, O, h, w) -> (B, h, w, O)


def _conv_nhwc_backward(conv, dy):
    """The backward of `_conv_nhwc`: dy (B, h, w, O) -> dx (B, H, W, C) through the module."""
    dx = conv.backward(dy.transpose(0, 3, 1, 2))          # (B, h, w, O) -> (B, O, h, w)
    return dx.transpose(0, 2, 3, 1)                       # (B, C, H, W) -> (B, H, W, C)


def _accumulate_linear(module, dweight, dbias):
    """Add a functional backward's weight and bias gradients into a Linear/Conv2d module (a 1x1
    conv's (O, C) weight gradient is reshaped to (O, C, 1, 1))."""
    module.accumulate_grads(weight=dweight, bias=dbias)


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
class Attention(layers.Attention):
    """diffusers' `Attention` (the foundation's `layers.Attention`: same arguments and keys
    `to_q`, `to_k`, `to_v`, `to_out.0`) with a forward written for the model's hot loop.

    softmax(q k^T / sqrt(hd)) v per head, as `scaled_dot_product_attention`, with two savings that
    change only rounding: the scale multiplies q (L x hd values) rather than the scores (L x S),
    and the softmax runs in place on the scores, normalising by a multiply with 1 / sum.
    """

    def forward(self, hidden_states, encoder_hidden_states=None, return_weights=False):
        """hidden_states: (B, L, query_dim); encoder_hidden_states: (B, S, cross_attention_dim)
        or None (self-attention). Returns (B, L, query_dim) [and the weights (B, nh, L, S)]."""
        x = to_module_dtype("Attention: hidden_states", hidden_states, self.dtype)
        check_rank("Attention: hidden_states", x, 3, "(B, L, C)")
        ctx = x if encoder_hidden_states is None else to_module_dtype(
            "Attention: encoder_hidden_states", encoder_hidden_states, self.dtype)
        check_rank("Attention: encoder_hidden_states", ctx, 3, "(B, S, C)")
        check_batch("Attention: encoder_hidden_states", ctx, x.shape[0])
        q = self.to_q(x)                                  # (B, L, I), a fresh array
        q *= 1.0 / math.sqrt(self.dim_head)
        q = F.split_heads(q, self.heads)                  # (B, L, I) -> (B, nh, L, hd)
        k = F.split_heads(self.to_k(ctx), self.heads)     # (B, S, I) -> (B, nh, S, hd)
        v = F.split_heads(self.to_v(ctx), self.heads)     # (B, S, I) -> (B, nh, S, hd)
        w = q @ k.swapaxes(-1, -2)                        # (B, nh, L, hd) @ (B, nh, hd, S)
        w -= w.max(axis=-1, keepdims=True)                # the max goes first: exp cannot overflow
        np.exp(w, out=w)
        w *= 1.0 / w.sum(axis=-1, keepdims=True)          # (B, nh, L, S), rows sum to 1
        out = F.merge_heads(w @ v)                        # (B, nh, L, hd) -> (B, L, I)
        out = self.to_out[1](self.to_out[0](out))         # (B, L, query_dim)
        self._record(out, ((q, k, v, w, 1.0), encoder_hidden_states is None))
        return (out, w) if return_weights else out

    def backward(self, grad_out):
        """grad_out: (B, L, query_dim). Returns (d hidden_states, d encoder_hidden_states), the
        second None for self-attention (then dx sums the q, k and v paths). The scale was folded
        into q, so the core's backward runs with scale 1 and dq is scaled once at the end."""
        core, self_attention = self._recall(grad_out)
        d = self.to_out[0].backward(self.to_out[1].backward(grad_out))  # (B, L, I)
        dq, dk, dv = F.scaled_dot_product_attention_backward(
            F.merge_heads_backward(d, self.heads), core)               # 3 x (B, nh, tokens, hd)
        dq *= 1.0 / math.sqrt(self.dim_head)                           # through q *= 1/sqrt(hd)
        dx = self.to_q.backward(F.split_heads_backward(dq))
        dctx = (self.to_k.backward(F.split_heads_backward(dk))
                + self.to_v.backward(F.split_heads_backward(dv)))      # k and v share the input
        return (dx + dctx, None) if self_attention else (dx, dctx)


class GELU(layers.GELU):
    """`layers.GELU` (whose exact float32 form already runs through `fast.py`), under the name
    aMUSEd's ConvNeXt block uses."""


class AdaLayerNormContinuous(Module):
    """Adaptive norm: norm(x) * (1 + scale) + shift, with (scale, shift) = linear(silu(cond)).

    `linear` Linear(conditioning_embedding_dim, 2 embedding_dim, bias); `norm` is a LayerNorm
    (norm_type="layer_norm", with a bias iff `bias`) or an RMSNorm ("rms_norm").
    """

    def __init__(self, embedding_dim, conditioning_embedding_dim, elementwise_affine=True,
                 eps=1e-5, bias=True, norm_type="layer_norm", dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.silu = SiLU(dtype=dtype)
        self.linear = Linear(conditioning_embedding_dim, embedding_dim * 2, bias=bias,
                             dtype=dtype, rng=rng)
        if norm_type == "layer_norm":
            self.norm = LayerNorm(embedding_dim, eps, elementwise_affine, bias, dtype=dtype)
        elif norm_type == "rms_norm":
            self.norm = RMSNorm(embedding_dim, eps, elementwise_affine, dtype=dtype)
        else:
            raise ValueError(f"AdaLayerNormContinuous: norm_type must be 'layer_norm' or "
                             f"'rms_norm', got {norm_type!r}")

    def forward(self, x, conditioning_embedding):
        """x: (B, L, C); conditioning_embedding: (B, D). Returns (B, L, C)."""
        x = to_module_dtype("AdaLayerNormContinuous: x", x, self.dtype)
        cond = to_module_dtype("AdaLayerNormContinuous: conditioning_embedding",
                               conditioning_embedding, self.dtype)
        check_rank("AdaLayerNormContinuous: conditioning_embedding", cond, 2, "(B, D)")
        check_batch("AdaLayerNormContinuous: conditioning_embedding", cond, x.shape[0])
        (scale, shift), ss_cache = scale_shift(cond, self.linear.weight, self.linear.bias,
                                               return_cache=True)          # 2 x (B, C)
        out, am_cache = adaptive_modulation(self.norm(x), scale, shift, return_cache=True)
        return self._record(out, (ss_cache, am_cache))

    def backward(self, grad_out):
        """grad_out: (B, L, C). Returns (dx (B, L, C), d conditioning_embedding (B, D))."""
        ss_cache, am_cache = self._recall(grad_out)
        dn, dscale, dshift = adaptive_modulation_backward(grad_out, am_cache)
        dcond, dweight, dbias = scale_shift_backward(dscale, dshift, ss_cache)
        _accumulate_linear(self.linear, dweight, dbias)
        return self.norm.backward(dn), dcond


class FeedForward(Module):
    """diffusers' `FeedForward` with the GEGLU activation: net = [GEGLU, Dropout, Linear].

    `net.0.proj` Linear(dim, 2 inner_dim), `net.2` Linear(inner_dim, dim_out); biases iff `bias`.
    inner_dim defaults to dim * mult. Only activation_fn="geglu" (the one UVit2DModel uses) is
    implemented.
    """

    def __init__(self, dim, dim_out=None, mult=4, dropout=0.0, activation_fn="geglu",
                 final_dropout=False, inner_dim=None, bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        if activation_fn != "geglu":
            raise NotImplementedError(f"FeedForward: only activation_fn='geglu' is implemented, "
                                      f"got {activation_fn!r}")
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim if dim_out is None else dim_out
        layers = [GEGLU(dim, inner_dim, bias=bias, dtype=dtype, rng=rng),
                  Dropout(dropout, dtype=dtype, rng=rng),
                  Linear(inner_dim, dim_out, bias=bias, dtype=dtype, rng=rng)]
        if final_dropout:
            layers.append(Dropout(dropout, dtype=dtype, rng=rng))
        self.net = ModuleList(layers, dtype=dtype)

    def forward(self, hidden_states):
        """hidden_states: (..., dim) -> (..., dim_out)."""
        u = self.net[0].proj(hidden_states)               # (..., 2F)
        h = geglu(u)                                      # (..., 2F) -> (..., F)
        for module in list(self.net)[1:]:
            h = module(h)
        return self._record(h, u)

    def backward(self, grad_out):
        """grad_out: (..., dim_out) -> d hidden_states (..., dim)."""
        u = self._recall(grad_out)
        d = grad_out
        for module in reversed(list(self.net)[1:]):
            d = module.backward(d)
        return self.net[0].proj.backward(geglu_backward(d, u))


class SkipFFTransformerBlock(Module):
    """Two pre-norm cross-attentions to the same (mapped) text, and no feed-forward ("skip FF").

    kv_mapper Linear(kv_input_dim, dim) (only when kv_input_dim != dim; then silu comes first);
    norm1/norm2 RMSNorm(dim, 1e-6), always with a weight (they ignore the model's norm config);
    attn1/attn2 Attention(dim, cross_attention_dim, num_attention_heads, attention_head_dim).
    """

    def __init__(self, dim, num_attention_heads, attention_head_dim, kv_input_dim,
                 kv_input_dim_proj_use_bias, dropout=0.0, cross_attention_dim=None,
                 attention_bias=False, attention_out_bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.kv_mapper = (Linear(kv_input_dim, dim, kv_input_dim_proj_use_bias, dtype=dtype,
                                 rng=rng) if kv_input_dim != dim else None)
        attn = dict(query_dim=dim, cross_attention_dim=cross_attention_dim,
                    heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                    bias=attention_bias, out_bias=attention_out_bias, dtype=dtype, rng=rng)
        self.norm1 = RMSNorm(dim, 1e-06, dtype=dtype)
        self.attn1 = Attention(**attn)
        self.norm2 = RMSNorm(dim, 1e-06, dtype=dtype)
        self.attn2 = Attention(**attn)

    def forward(self, hidden_states, encoder_hidden_states):
        """hidden_states: (B, L, C); encoder_hidden_states: (B, S, kv_input_dim).
        Returns (B, L, C)."""
        x = to_module_dtype("SkipFFTransformerBlock: hidden_states", hidden_states, self.dtype)
        ctx = encoder_hidden_states
        if self.kv_mapper is not None:
            ctx = to_module_dtype("SkipFFTransformerBlock: encoder_hidden_states", ctx,
                                  self.dtype)
            mapped = self.kv_mapper(F.silu(ctx))          # (B, S, C)
        else:
            mapped = ctx
        x = x + self.attn1(self.norm1(x), mapped)
        x = x + self.attn2(self.norm2(x), mapped)
        return self._record(x, ctx)

    def backward(self, grad_out):
        """grad_out: (B, L, C). Returns (d hidden_states, d encoder_hidden_states). Both
        attentions read the same (mapped) text, so its two gradients are added."""
        ctx = self._recall(grad_out)
        d = grad_out
        da, dctx2 = self.attn2.backward(d)
        d = d + self.norm2.backward(da)                   # x + attn2(norm2(x), ctx)
        da, dctx1 = self.attn1.backward(d)
        d = d + self.norm1.backward(da)                   # x + attn1(norm1(x), ctx)
        dctx = dctx1 + dctx2
        if self.kv_mapper is not None:
            dctx = F.silu_backward(self.kv_mapper.backward(dctx), ctx)
        return d, dctx


class ConvNextBlock(Module):
    """ConvNeXt-V2 block with FiLM conditioning, channel-last.

    depthwise 3x3 -> RMSNorm -> Linear(C, 4C) -> GELU -> GRN -> Linear(4C, C) -> Dropout,
    plus the input (residual), then x * (1 + scale) + shift from cond_embeds_mapper(silu(c)).
    The modulation acts on the sum, residual included.
    """

    def __init__(self, channels, layer_norm_eps, ln_elementwise_affine, use_bias, hidden_dropout,
                 hidden_size, res_ffn_factor=4, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        inner = int(channels * res_ffn_factor)
        self.depthwise = Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels,
                                bias=use_bias, dtype=dtype, rng=rng)
        self.norm = RMSNorm(channels, layer_norm_eps, ln_elementwise_affine, dtype=dtype)
        self.channelwise_linear_1 = Linear(channels, inner, bias=use_bias, dtype=dtype, rng=rng)
        self.channelwise_act = GELU(dtype=dtype)
        self.channelwise_norm = GlobalResponseNorm(inner, dtype=dtype)
        self.channelwise_linear_2 = Linear(inner, channels, bias=use_bias, dtype=dtype, rng=rng)
        self.channelwise_dropout = Dropout(hidden_dropout, dtype=dtype, rng=rng)
        self.cond_embeds_mapper = Linear(hidden_size, channels * 2, use_bias, dtype=dtype, rng=rng)

    def forward(self, x, cond_embeds):
        """x: (B, H, W, C); cond_embeds: (B, hidden_size). Returns (B, H, W, C)."""
        x = to_module_dtype("ConvNextBlock: x", x, self.dtype)
        check_rank("ConvNextBlock: x", x, 4, "(B, H, W, C)")
        cond = to_module_dtype("ConvNextBlock: cond_embeds", cond_embeds, self.dtype)
        check_batch("ConvNextBlock: cond_embeds", cond, x.shape[0])
        h, dw_cache = depthwise_conv3x3(x, self.depthwise.weight, self.depthwise.bias,
                                        return_cache=True)  # (B, H, W, C)
        h = self.norm(h)
        h = self.channelwise_act(self.channelwise_linear_1(h))  # (B, H, W, 4C)
        h = self.channelwise_norm(h)
        h = self.channelwise_dropout(self.channelwise_linear_2(h))  # (B, H, W, C)
        h = h + x
        (scale, shift), ss_cache = scale_shift(cond, self.cond_embeds_mapper.weight,
                                               self.cond_embeds_mapper.bias,
                                               return_cache=True)  # 2 x (B, C)
        out, am_cache = adaptive_modulation(h, scale, shift, return_cache=True)
        return self._record(out, (dw_cache, ss_cache, am_cache))

    def backward(self, grad_out):
        """grad_out: (B, H, W, C). Returns (dx (B, H, W, C), d cond_embeds (B, hidden_size)).

        The modulation acted on the sum h + x, so its input gradient goes both to the residual
        (straight to x) and into the branch, whose backward ends at the depthwise conv.
        """
        dw_cache, ss_cache, am_cache = self._recall(grad_out)
        dsum, dscale, dshift = adaptive_modulation_backward(grad_out, am_cache)
        dcond, dweight, dbias = scale_shift_backward(dscale, dshift, ss_cache)
        _accumulate_linear(self.cond_embeds_mapper, dweight, dbias)
        d = self.channelwise_linear_2.backward(self.channelwise_dropout.backward(dsum))
        d = self.channelwise_linear_1.backward(
            self.channelwise_act.backward(self.channelwise_norm.backward(d)))
        dbranch, dweight, dbias = depthwise_conv3x3_backward(self.norm.backward(d), dw_cache)
        _accumulate_linear(self.depthwise, dweight, dbias)
        return dsum + dbranch, dcond                      # residual + branch


def _make_sampler_norm(cls_name, norm_type, channels, eps, elementwise_affine, dtype):
    """The channel norm before a down/up-sampler: "rms_norm", "ln_norm" (LayerNorm) or None."""
    if norm_type == "ln_norm":
        return LayerNorm(channels, eps, elementwise_affine, dtype=dtype)
    if norm_type == "rms_norm":
        return RMSNorm(channels, eps, elementwise_affine, dtype=dtype)
    if norm_type is None:
        return None
    raise ValueError(f"{cls_name}: unknown norm_type {norm_type!r}")


class Downsample2D(Module):
    """diffusers' `Downsample2D` (all its constructor arguments), channel-last.

    Optional norm ("rms_norm" or "ln_norm") over channels, then a stride-2 conv (use_conv; with
    padding=0 the input is first zero-padded by one row at the bottom and one column on the right)
    or a 2x2 average pool. The 2x2/padding-0 conv that UVit2DModel uses runs as `downsample_2x2`.
    name="conv" registers the conv as both `conv` and `Conv2d_0`, as diffusers does.
    """

    def __init__(self, channels, use_conv=False, out_channels=None, padding=1, name="conv",
                 kernel_size=3, norm_type=None, eps=None, elementwise_affine=None, bias=True,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.padding, self.name = use_conv, padding, name
        self.norm = _make_sampler_norm("Downsample2D", norm_type, channels, eps, elementwise_affine,
                                       dtype)
        if use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size, stride=2, padding=padding,
                          bias=bias, dtype=dtype, rng=rng)
        else:
            if self.out_channels != channels:
                raise ValueError(f"Downsample2D: average pooling keeps the channels, got "
                                 f"channels={channels}, out_channels={self.out_channels}")
            conv = None
        if name == "conv":
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states):
        """hidden_states: (B, H, W, channels) -> (B, H', W', out_channels)."""
        x = to_module_dtype("Downsample2D: hidden_states", hidden_states, self.dtype)
        check_rank("Downsample2D: hidden_states", x, 4, "(B, H, W, C)")
        check_dim("Downsample2D: hidden_states", x, -1, self.channels, "channels")
        if self.norm is not None:
            x = self.norm(x)
        if not self.use_conv:                             # 2x2 average pool, odd edges dropped
            B, H, W, C = x.shape
            pooled = x[:, :H // 2 * 2, :W // 2 * 2]
            pooled = pooled.reshape(B, H // 2, 2, W // 2, 2, C)  # (B, h, a, w, d, C)
            return self._record(pooled.mean(axis=(2, 4)), ("pool", x.shape))  # (B, h, w, C)
        conv = self.conv
        if self.padding == 0 and conv.kernel_size == (2, 2):
            out, cache = downsample_2x2(x, conv.weight, conv.bias, return_cache=True)
            return self._record(out, ("2x2", cache))
        if self.padding == 0:
            x = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # one zero row/column, bottom/right
        return self._record(_conv_nhwc(conv, x), ("conv", None))

    def backward(self, grad_out):
        """grad_out: (B, H', W', out_channels) -> d hidden_states (B, H, W, channels)."""
        path, cache = self._recall(grad_out)
        if path == "pool":                                # each input shares 1/4 of its output
            B, H, W, C = cache
            h, w = H // 2, W // 2
            d = np.repeat(np.repeat(grad_out * 0.25, 2, axis=1), 2, axis=2)  # (B, 2h, 2w, C)
            d = np.pad(d, ((0, 0), (0, H - 2 * h), (0, W - 2 * w), (0, 0)))  # dropped edges: 0
        elif path == "2x2":
            d, dweight, dbias = downsample_2x2_backward(grad_out, cache)
            _accumulate_linear(self.conv, dweight, dbias)
        else:
            d = _conv_nhwc_backward(self.conv, grad_out)
            if self.padding == 0:
                d = d[:, :-1, :-1]                        # the padded row and column
        return d if self.norm is None else self.norm.backward(d)


class Upsample2D(Module):
    """diffusers' `Upsample2D` (all its constructor arguments), channel-last.

    Optional norm, then either a stride-2 transposed conv (use_conv_transpose; the result is
    returned at once, so `interpolate` plays no part) or nearest-neighbour x2 interpolation
    (if `interpolate`) followed by an optional conv (use_conv). The 2x2/padding-0 transposed conv
    that UVit2DModel uses runs as `upsample_2x2`.
    """

    def __init__(self, channels, use_conv=False, use_conv_transpose=False, out_channels=None,
                 name="conv", kernel_size=None, padding=1, norm_type=None, eps=None,
                 elementwise_affine=None, bias=True, interpolate=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.use_conv_transpose = use_conv, use_conv_transpose
        self.name, self.interpolate = name, interpolate
        self.norm = _make_sampler_norm("Upsample2D", norm_type, channels, eps, elementwise_affine,
                                       dtype)
        conv = None
        if use_conv_transpose:
            conv = ConvTranspose2d(channels, self.out_channels, 4 if kernel_size is None
                                   else kernel_size, stride=2, padding=padding, bias=bias,
                                   dtype=dtype, rng=rng)
        elif use_conv:
            conv = Conv2d(channels, self.out_channels, 3 if kernel_size is None else kernel_size,
                          padding=padding, bias=bias, dtype=dtype, rng=rng)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states, output_size=None):
        """hidden_states: (B, H, W, channels) -> (B, H', W', out_channels)."""
        x = to_module_dtype("Upsample2D: hidden_states", hidden_states, self.dtype)
        check_rank("Upsample2D: hidden_states", x, 4, "(B, H, W, C)")
        check_dim("Upsample2D: hidden_states", x, -1, self.channels, "channels")
        if self.norm is not None:
            x = self.norm(x)
        if self.use_conv_transpose:
            conv = self.conv
            if conv.kernel_size == (2, 2) and conv.padding == 0:
                out, cache = upsample_2x2(x, conv.weight, conv.bias, return_cache=True)
                return self._record(out, ("2x2", cache))
            return self._record(_conv_nhwc(conv, x), ("transpose", None))
        if self.interpolate:
            if output_size is not None:
                raise NotImplementedError("Upsample2D: output_size is not implemented")
            x = x.repeat(2, axis=1).repeat(2, axis=2)     # (B, H, W, C) -> (B, 2H, 2W, C)
        if self.use_conv:
            x = _conv_nhwc(self._conv(), x)
        return self._record(x, ("interpolate", None))

    def _conv(self):
        return self.conv if self.name == "conv" else self.Conv2d_0

    def backward(self, grad_out):
        """grad_out: (B, H', W', out_channels) -> d hidden_states (B, H, W, channels)."""
        path, cache = self._recall(grad_out)
        if path == "2x2":
            d, dweight, dbias = upsample_2x2_backward(grad_out, cache)
            _accumulate_linear(self.conv, dweight, dbias)
        elif path == "transpose":
            d = _conv_nhwc_backward(self.conv, grad_out)
        else:
            d = _conv_nhwc_backward(self._conv(), grad_out) if self.use_conv else grad_out
            if self.interpolate:                          # each input was copied to 2 x 2 pixels
                B, H2, W2, C = d.shape
                d = d.reshape(B, H2 // 2, 2, W2 // 2, 2, C).sum(axis=(2, 4))
        return d if self.norm is None else self.norm.backward(d)


# The BasicTransformerBlock options this implementation supports (UVit2DModel's configuration).
TRANSFORMER_BLOCK_OPTIONS = {"norm_type": ("layer_norm", "ada_norm_continuous"),
                             "num_embeds_ada_norm": (None,), "only_cross_attention": (False,),
                             "double_self_attention": (False,), "attention_type": ("default",),
                             "positional_embeddings": (None,)}


def check_transformer_block_options(**options):
    """NotImplementedError naming the first option outside `TRANSFORMER_BLOCK_OPTIONS`."""
    for name, value in options.items():
        allowed = TRANSFORMER_BLOCK_OPTIONS[name]
        if value not in allowed:
            raise NotImplementedError(f"BasicTransformerBlock: {name}={value!r} is not "
                                      f"implemented (supported: {allowed})")


class BasicTransformerBlock(Module):
    """diffusers' `BasicTransformerBlock` (its constructor arguments and defaults).

    Self-attention, cross-attention (when `cross_attention_dim` is given) and a GEGLU feed-forward,
    each pre-normed and added back. Norms: norm_type="layer_norm" (plain LayerNorms) or
    "ada_norm_continuous" (what UVit2DModel uses: RMS-based adaptive norms for norm1/norm2 and a
    LayerNorm-based one for norm3, all driven by `pooled_text_emb`). Other diffusers options
    (ada_norm, ada_norm_zero, gated attention, positional embeddings, other activations) raise
    NotImplementedError.
    """

    def __init__(self, dim, num_attention_heads, attention_head_dim, dropout=0.0,
                 cross_attention_dim=None, activation_fn="geglu", num_embeds_ada_norm=None,
                 attention_bias=False, only_cross_attention=False, double_self_attention=False,
                 upcast_attention=False, norm_elementwise_affine=True, norm_type="layer_norm",
                 norm_eps=1e-5, final_dropout=False, attention_type="default",
                 positional_embeddings=None, num_positional_embeddings=None,
                 ada_norm_continous_conditioning_embedding_dim=None, ada_norm_bias=None,
                 ff_inner_dim=None, ff_bias=True, attention_out_bias=True,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        check_transformer_block_options(norm_type=norm_type,
                                        num_embeds_ada_norm=num_embeds_ada_norm,
                                        only_cross_attention=only_cross_attention,
                                        double_self_attention=double_self_attention,
                                        attention_type=attention_type,
                                        positional_embeddings=positional_embeddings)
        self.norm_type = norm_type
        ada = norm_type == "ada_norm_continuous"

        def make_norm(kind):
            if ada:
                return AdaLayerNormContinuous(dim, ada_norm_continous_conditioning_embedding_dim,
                                              norm_elementwise_affine, norm_eps, ada_norm_bias,
                                              kind, dtype=dtype, rng=rng)
            return LayerNorm(dim, norm_eps, norm_elementwise_affine, dtype=dtype)

        attn = dict(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim,
                    dropout=dropout, bias=attention_bias, out_bias=attention_out_bias,
                    dtype=dtype, rng=rng)
        self.norm1 = make_norm("rms_norm")
        self.attn1 = Attention(**attn)
        if cross_attention_dim is not None:
            self.norm2 = make_norm("rms_norm")
            self.attn2 = Attention(cross_attention_dim=cross_attention_dim, **attn)
        else:
            self.norm2, self.attn2 = None, None
        self.norm3 = make_norm("layer_norm")
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn,
                              final_dropout=final_dropout, inner_dim=ff_inner_dim, bias=ff_bias,
                              dtype=dtype, rng=rng)

    def _norm(self, norm, x, cond):
        return norm(x, cond) if self.norm_type == "ada_norm_continuous" else norm(x)

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_text_emb=None):
        """hidden_states: (B, L, dim); encoder_hidden_states: (B, S, cross_attention_dim) or None
        (then attn2 attends to the block's own tokens); pooled_text_emb: (B, D) conditioning of the
        adaptive norms (required for norm_type="ada_norm_continuous"). Returns (B, L, dim)."""
        x = to_module_dtype("BasicTransformerBlock: hidden_states", hidden_states, self.dtype)
        check_rank("BasicTransformerBlock: hidden_states", x, 3, "(B, L, C)")
        if self.norm_type == "ada_norm_continuous" and pooled_text_emb is None:
            raise ValueError("BasicTransformerBlock: norm_type='ada_norm_continuous' needs "
                             "pooled_text_emb (B, D), got None")
        a = self._norm(self.norm1, x, pooled_text_emb)
        x = x + self.attn1(a)                             # self-attention: K, V from the normed x
        if self.attn2 is not None:
            a = self._norm(self.norm2, x, pooled_text_emb)
            x = x + self.attn2(a, encoder_hidden_states)
        a = self._norm(self.norm3, x, pooled_text_emb)
        return self._record(x + self.ff(a), None)

    def _norm_backward(self, norm, d):
        """(dx, d cond) of a norm; d cond is None for plain LayerNorms."""
        if self.norm_type == "ada_norm_continuous":
            return norm.backward(d)
        return norm.backward(d), None

    def backward(self, grad_out):
        """grad_out: (B, L, dim). Returns (d hidden_states, d encoder_hidden_states, d
        pooled_text_emb): the text gradient is None without cross-attention (or when attn2
        attended to the block's own tokens), the conditioning one None for plain LayerNorms.
        Every residual adds its branch's gradient to the one passing straight through; the
        conditioning vector fed all three adaptive norms, so their gradients are summed."""
        self._recall(grad_out)
        dconds = []
        d = grad_out
        dx3, dc = self._norm_backward(self.norm3, self.ff.backward(d))
        d, dconds = d + dx3, dconds + [dc]                # x + ff(norm3(x))
        dctx = None
        if self.attn2 is not None:
            da, dctx = self.attn2.backward(d)
            dx2, dc = self._norm_backward(self.norm2, da)
            d, dconds = d + dx2, dconds + [dc]            # x + attn2(norm2(x), text)
        da, _ = self.attn1.backward(d)
        dx1, dc = self._norm_backward(self.norm1, da)
        d, dconds = d + dx1, dconds + [dc]                # x + attn1(norm1(x))
        dcond = None if dconds[0] is None else sum(dconds[1:], dconds[0])
        return d, dctx, dcond


class UVitBlock(Module):
    """The conv stage of UVit2DModel: [Downsample2D], then `num_res_blocks` pairs of
    (ConvNextBlock, SkipFFTransformerBlock), then [Upsample2D]. Channel-last.
    """

    def __init__(self, channels, num_res_blocks, hidden_size, hidden_dropout, ln_elementwise_affine,
                 layer_norm_eps, use_bias, block_num_heads, attention_dropout, downsample, upsample,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.downsample = (Downsample2D(channels, use_conv=True, padding=0, name="Conv2d_0",
                                        kernel_size=2, norm_type="rms_norm", eps=layer_norm_eps,
                                        elementwise_affine=ln_elementwise_affine, bias=use_bias,
                                        dtype=dtype, rng=rng) if downsample else None)
        self.res_blocks = ModuleList(
            [ConvNextBlock(channels, layer_norm_eps, ln_elementwise_affine, use_bias,
                           hidden_dropout, hidden_size, dtype=dtype, rng=rng)
             for _ in range(num_res_blocks)], dtype=dtype)
        self.attention_blocks = ModuleList(
            [SkipFFTransformerBlock(channels, block_num_heads, channels // block_num_heads,
                                    hidden_size, use_bias, attention_dropout, channels,
                                    attention_bias=use_bias, attention_out_bias=use_bias,
                                    dtype=dtype, rng=rng)
             for _ in range(num_res_blocks)], dtype=dtype)
        self.upsample = (Upsample2D(channels, use_conv_transpose=True, kernel_size=2, padding=0,
                                    name="conv", norm_type="rms_norm", eps=layer_norm_eps,
                                    elementwise_affine=ln_elementwise_affine, bias=use_bias,
                                    interpolate=False, dtype=dtype, rng=rng)
                         if upsample else None)

    def forward(self, x, pooled_text_emb, encoder_hidden_states):
        """x: (B, H, W, C); pooled_text_emb: (B, hidden_size); encoder_hidden_states:
        (B, S, hidden_size). Returns (B, H', W', C) (halved / doubled by the samplers)."""
        x = to_module_dtype("UVitBlock: x", x, self.dtype)
        check_rank("UVitBlock: x", x, 4, "(B, H, W, C)")
        if self.downsample is not None:
            x = self.downsample(x)
        grid = x.shape
        for res_block, attention_block in zip(self.res_blocks, self.attention_blocks):
            x = res_block(x, pooled_text_emb)
            B, H, W, C = x.shape
            tokens = x.reshape(B, H * W, C)               # (B, H, W, C) -> (B, L, C), n = i W + j
            tokens = attention_block(tokens, encoder_hidden_states)
            x = tokens.reshape(B, H, W, C)                # (B, L, C) -> (B, H, W, C)
        if self.upsample is not None:
            x = self.upsample(x)
        return self._record(x, grid)

    def backward(self, grad_out):
        """grad_out: (B, H', W', C). Returns (dx, d pooled_text_emb, d encoder_hidden_states),
        the last two summed over every ConvNeXt block and every attention block that read them."""
        B, H, W, C = self._recall(grad_out)
        d = grad_out if self.upsample is None else self.upsample.backward(grad_out)
        dcond, dctx = 0.0, 0.0
        for res_block, attention_block in zip(reversed(list(self.res_blocks)),
                                              reversed(list(self.attention_blocks))):
            dt, dc = attention_block.backward(d.reshape(B, H * W, C))  # (B, H, W, C) -> (B, L, C)
            dctx = dctx + dc
            d, dp = res_block.backward(dt.reshape(B, H, W, C))          # (B, L, C) -> (B, H, W, C)
            dcond = dcond + dp
        if self.downsample is not None:
            d = self.downsample.backward(d)
        return d, dcond, dctx


class UVit2DConvEmbed(Module):
    """Token ids -> embedding rows -> RMSNorm -> 1x1 conv. Returns channel-last (B, H, W, C_b).

    embeddings Embedding(vocab_size, in_channels); layer_norm RMSNorm(in_channels);
    conv Conv2d(in_channels, block_out_channels, 1), applied as a per-pixel linear map.
    """

    def __init__(self, in_channels, block_out_channels, vocab_size, elementwise_affine, eps, bias,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.embeddings = Embedding(vocab_size, in_channels, dtype=dtype, rng=rng)
        self.layer_norm = RMSNorm(in_channels, eps, elementwise_affine, dtype=dtype)
        self.conv = Conv2d(in_channels, block_out_channels, kernel_size=1, bias=bias, dtype=dtype,
                           rng=rng)

    def forward(self, input_ids):
        """input_ids: (B, H, W) integers in [0, vocab_size).
        Returns (B, H, W, block_out_channels)."""
        check_rank("UVit2DConvEmbed: input_ids", input_ids, 3, "(B, H, W)")
        x = self.embeddings(input_ids)                    # (B, H, W, in_channels)
        x = self.layer_norm(x)
        out, cache = F.linear(x, self.conv.weight[:, :, 0, 0], self.conv.bias,
                              return_cache=True)          # the 1x1 conv, (B, H, W, C_b)
        return self._record(out, cache)

    def backward(self, grad_out):
        """grad_out: (B, H, W, block_out_channels). Accumulates the gradients of the conv, the
        norm and the embedding table; the ids take none, so this returns None."""
        dx, dweight, dbias = F.linear_backward(grad_out, self._recall(grad_out))
        _accumulate_linear(self.conv, dweight, dbias)
        return self.embeddings.backward(self.layer_norm.backward(dx))


class ConvMlmLayer(Module):
    """The output head: 1x1 conv to in_channels -> RMSNorm -> 1x1 conv to codebook_size logits.

    Takes channel-last (B, H, W, C_b) and returns logits (B, K, H, W), diffusers' output layout:
    the last product is computed as W2 @ h^T, so no transpose of the large logits is needed.
    """

    def __init__(self, block_out_channels, in_channels, use_bias, ln_elementwise_affine,
                 layer_norm_eps, codebook_size, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.conv1 = Conv2d(block_out_channels, in_channels, kernel_size=1, bias=use_bias,
                            dtype=dtype, rng=rng)
        self.layer_norm = RMSNorm(in_channels, layer_norm_eps, ln_elementwise_affine, dtype=dtype)
        self.conv2 = Conv2d(in_channels, codebook_size, kernel_size=1, bias=use_bias, dtype=dtype,
                            rng=rng)

    def forward(self, hidden_states):
        """hidden_states: (B, H, W, block_out_channels). Returns logits (B, codebook_size, H, W)."""
        x = to_module_dtype("ConvMlmLayer: hidden_states", hidden_states, self.dtype)
        check_rank("ConvMlmLayer: hidden_states", x, 4, "(B, H, W, C)")
        B, H, W, _ = x.shape
        z, conv1_cache = F.linear(x, self.conv1.weight[:, :, 0, 0], self.conv1.bias,
                                  return_cache=True)      # the 1x1 conv1, (B, H, W, in_channels)
        h = self.layer_norm(z)
        h = h.reshape(B, H * W, -1)                       # (B, H, W, Ci) -> (B, L, Ci)
        w2 = self.conv2.weight[:, :, 0, 0]                # (K, Ci, 1, 1) -> (K, Ci)
        logits = w2 @ h.transpose(0, 2, 1)                # (K, Ci) @ (B, Ci, L) -> (B, K, L)
        if self.conv2.bias is not None:
            logits += self.conv2.bias[:, None]
        logits = logits.reshape(B, -1, H, W)              # (B, K, L) -> (B, K, H, W)
        return self._record(logits, (conv1_cache, h))

    def backward(self, grad_out):
        """grad_out: logits' gradient (B, K, H, W) -> d hidden_states (B, H, W, C_b).

        With the logits l = W2 h^T per sample: dW2 = sum_b dl_b h_b, dh = dl^T W2, db2 = sum dl.
        """
        conv1_cache, h = self._recall(grad_out)
        B, K, H, W = grad_out.shape
        dl = grad_out.reshape(B, K, H * W)                # (B, K, H, W) -> (B, K, L)
        w2 = self.conv2.weight[:, :, 0, 0]                # (K, Ci)
        dw2 = np.einsum("bkl,blc->kc", dl, h, optimize=True)
        db2 = dl.sum(axis=(0, 2)) if self.conv2.bias is not None else None
        _accumulate_linear(self.conv2, dw2, db2)
        dh = (dl.transpose(0, 2, 1) @ w2).reshape(B, H, W, -1)  # (B, L, K) @ (K, Ci) -> NHWC
        dx, dw1, db1 = F.linear_backward(self.layer_norm.backward(dh), conv1_cache)
        _accumulate_linear(self.conv1, dw1, db1)
        return dx


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class _Float32Draws(np.random.Generator):
    """A Generator that draws the initial weights in float32 (the foundation layers ask for float64
    draws and round them): ~7x faster, so amused-256's 600M parameters initialise in about a second.
    It shares the bit generator, hence the seed, of the Generator it is built from."""

    def uniform(self, low=0.0, high=1.0, size=None):
        r = self.random(size, dtype=np.float32)
        r *= high - low                                   # Python floats keep float32
        r += low
        return r

    def standard_normal(self, size=None, dtype=np.float32, out=None):
        return super().standard_normal(size, dtype=np.float32)


class _NoDraws(np.random.Generator):
    """A Generator whose weight draws are zeros: for models whose weights are loaded right after."""

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.zeros(size, np.float32)

    def standard_normal(self, size=None, dtype=np.float32, out=None):
        return np.zeros(size, np.float32)


class UVit2DModel(Module):
    """aMUSEd's transformer: logits over VQ codes for every position of a grid of token ids.

    Constructor arguments and defaults are diffusers' (see `CONFIG_DEFAULTS`); `config` keeps
    them. Build from a named config with `UVit2DModel.from_config("tiny")` (or "amused-256",
    "amused-512", or a dict), or from a diffusers folder with `UVit2DModel.from_pretrained(path)`.
    A freshly built model is in train mode (as in diffusers); call `.eval()` to turn dropout off.
    Initial weights follow torch's defaults, drawn in float32 from `rng` (a Generator or a seed).
    """

    def __init__(self, hidden_size=1024, use_bias=False, hidden_dropout=0.0, cond_embed_dim=768,
                 micro_cond_encode_dim=256, micro_cond_embed_dim=1280, encoder_hidden_size=768,
                 vocab_size=8256, codebook_size=8192, in_channels=768, block_out_channels=768,
                 num_res_blocks=3, downsample=False, upsample=False, block_num_heads=12,
                 num_hidden_layers=22, num_attention_heads=16, attention_dropout=0.0,
                 intermediate_size=2816, layer_norm_eps=1e-6, ln_elementwise_affine=True,
                 sample_size=64, dtype=np.float32, rng=None):
        super().__init__(dtype)
        if not isinstance(rng, (_Float32Draws, _NoDraws)):
            rng = _Float32Draws(as_rng(rng).bit_generator)
        cfg = {k: v for k, v in locals().items() if k in CONFIG_DEFAULTS}
        self._config = cfg
        eps, affine, bias = layer_norm_eps, ln_elementwise_affine, use_bias
        kw = dict(dtype=dtype, rng=rng)

        self.encoder_proj = Linear(encoder_hidden_size, hidden_size, bias=bias, **kw)
        self.encoder_proj_layer_norm = RMSNorm(hidden_size, eps, affine, dtype=dtype)
        self.embed = UVit2DConvEmbed(in_channels, block_out_channels, vocab_size, affine, eps,
                                     bias, **kw)
        self.cond_embed = TimestepEmbedding(micro_cond_embed_dim + cond_embed_dim, hidden_size,
                                            sample_proj_bias=bias, **kw)
        self.down_block = UVitBlock(block_out_channels, num_res_blocks, hidden_size,
                                    hidden_dropout, affine, eps, bias, block_num_heads,
                                    attention_dropout, downsample, False, **kw)
        self.project_to_hidden_norm = RMSNorm(block_out_channels, eps, affine, dtype=dtype)
        self.project_to_hidden = Linear(block_out_channels, hidden_size, bias=bias, **kw)
        self.transformer_layers = ModuleList([
            BasicTransformerBlock(
                dim=hidden_size, num_attention_heads=num_attention_heads,
                attention_head_dim=hidden_size // num_attention_heads, dropout=hidden_dropout,
                cross_attention_dim=hidden_size, attention_bias=bias,
                norm_type="ada_norm_continuous",
                ada_norm_continous_conditioning_embedding_dim=hidden_size,
                norm_elementwise_affine=affine, norm_eps=eps, ada_norm_bias=bias,
                ff_inner_dim=intermediate_size, ff_bias=bias, attention_out_bias=bias, **kw)
            for _ in range(num_hidden_layers)], dtype=dtype)
        self.project_from_hidden_norm = RMSNorm(hidden_size, eps, affine, dtype=dtype)
        self.project_from_hidden = Linear(hidden_size, block_out_channels, bias=bias, **kw)
        self.up_block = UVitBlock(block_out_channels, num_res_blocks, hidden_size, hidden_dropout,
                                  affine, eps, bias, block_num_heads, attention_dropout,
                                  downsample=False, upsample=upsample, **kw)
        self.mlm_layer = ConvMlmLayer(block_out_channels, in_channels, bias, affine, eps,
                                      codebook_size, **kw)

    @property
    def config(self):
        """The constructor arguments (a copy), as diffusers' `model.config`."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config=None, dtype=np.float32, rng=None, **overrides):
        """Build a randomly initialised model from a name in `CONFIGS` or a config dict."""
        return cls(**resolve_config(config, **overrides), dtype=dtype, rng=rng)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, variant=None):
        """Load a diffusers folder (config.json + diffusion_pytorch_model.safetensors, or a
        pipeline folder with a `transformer/` subfolder) without torch. Returns the model in eval
        mode, computing in `dtype`."""
        from .weights import load_pretrained
        config, state_dict = load_pretrained(path, variant=variant)
        model = cls.from_config(resolve_config(config), dtype=dtype,
                                rng=_NoDraws(np.random.PCG64(0)))
        model.load_state_dict(state_dict)
        return model.eval()

    def save_pretrained(self, path, **extra):
        """Write config.json + diffusion_pytorch_model.safetensors that diffusers can load;
        `extra` entries (how the weights were trained, say) go under `_`-prefixed keys, which
        diffusers and `from_pretrained` leave aside."""
        from .uvit import folder_config

        from .weights import save_pretrained
        save_pretrained(path, folder_config(self.config, extra), self.state_dict())

    def forward(self, input_ids, encoder_hidden_states, pooled_text_emb, micro_conds,
                cross_attention_kwargs=None):
        """Logits (B, codebook_size, H', W') for token ids (B, H, W) and their conditioning.

        encoder_hidden_states: (B, S, encoder_hidden_size) per-token text features.
        pooled_text_emb: (B, cond_embed_dim). micro_conds: (B, M) numbers, M * micro_cond_encode_dim
        = micro_cond_embed_dim (aMUSEd: [width, height, crop x, crop y, aesthetic score]).
        `cross_attention_kwargs` is accepted for drop-in use and ignored (it has no numerical effect
        in diffusers either). H' = H unless exactly one of downsample / upsample is on.
        """
        B, _, _ = check_model_inputs(self._config, input_ids, encoder_hidden_states,
                                     pooled_text_emb, micro_conds)
        cfg, dt = self._config, self.dtype
        # 1. text: project and normalise the per-token features, (B, S, E) -> (B, S, D)
        ctx = self.encoder_proj_layer_norm(self.encoder_proj(encoder_hidden_states))
        # 2. conditioning vector: [pooled text; micro-condition sinusoids] -> TimestepEmbedding
        micro = micro_conditioning(micro_conds, B, cfg["micro_cond_encode_dim"], dt)  # (B, M d)
        cond = np.concatenate([pooled_text_emb.astype(dt, copy=False), micro],
                              axis=1)                 # (B, D_p) + (B, M d) -> (B, D_p + M d)
        cond = self.cond_embed(cond)                      # (B, D_p + M d) -> (B, D), no final silu
        # 3. tokens -> channel-last feature map, conv stage
        x = self.embed(input_ids)                         # (B, H, W, C_b)
        x = self.down_block(x, cond, ctx)                 # (B, H1, W1, C_b)
        # 4. transformer on the flattened grid
        B, H1, W1, C = x.shape
        z = x.reshape(B, H1 * W1, C)                      # (B, H1, W1, C_b) -> (B, L, C_b)
        z = self.project_to_hidden(self.project_to_hidden_norm(z))  # (B, L, D)
        for layer in self.transformer_layers:
            z = layer(z, ctx, cond)
        z = self.project_from_hidden(self.project_from_hidden_norm(z))  # (B, L, C_b)
        x = z.reshape(B, H1, W1, C)                       # (B, L, C_b) -> (B, H1, W1, C_b)
        # 5. conv stage and output head
        x = self.up_block(x, cond, ctx)                   # (B, H2, W2, C_b)
        return self._record(self.mlm_layer(x), (z.shape, (B, H1, W1, C),
                                                pooled_text_emb.shape[1]))

    def backward(self, grad_out):
        """grad_out: dLoss/d logits (B, K, H', W'). Returns (d encoder_hidden_states (B, S, E),
        d pooled_text_emb (B, cond_embed_dim)); the ids and micro-conditions take none. Parameter
        gradients accumulate in `grads()`.

        Two tensors fan out to many blocks, and their gradients are summed over all of them: the
        projected text `ctx` (every attention of both conv stages and every transformer layer)
        and the conditioning vector `cond` (every ConvNeXt modulation and every adaptive norm).
        """
        check_floating("UVit2DModel.backward: grad_out", grad_out)
        z_shape, grid, pooled_dim = self._recall(grad_out)
        d = self.mlm_layer.backward(grad_out.astype(self.dtype, copy=False))
        d, dcond, dctx = self.up_block.backward(d)
        dz = self.project_from_hidden.backward(d.reshape(z_shape))     # (B, H1, W1, C) -> (B, L, C)
        dz = self.project_from_hidden_norm.backward(dz)
        for layer in reversed(list(self.transformer_layers)):
            dz, dc, dp = layer.backward(dz)
            dctx, dcond = dctx + dc, dcond + dp
        dz = self.project_to_hidden_norm.backward(self.project_to_hidden.backward(dz))
        d, dp, dc = self.down_block.backward(dz.reshape(grid))          # (B, L, C) -> (B, H1, ...)
        dcond, dctx = dcond + dp, dctx + dc
        self.embed.backward(d)
        dcat = self.cond_embed.backward(dcond)            # (B, D_p + M d)
        dehs = self.encoder_proj.backward(self.encoder_proj_layer_norm.backward(dctx))
        return dehs, dcat[:, :pooled_dim]                 # the micro-conditions get none


# --------------------------------------------------------------------------------------------------
# Masked-token decoding (MaskGIT, as aMUSEd's scheduler and pipeline do it)
# --------------------------------------------------------------------------------------------------
def mask_schedule(ratio, schedule="cosine"):
    """Fraction of the tokens that stay masked once a fraction `ratio` in (0, 1] of the steps is
    done: cos(ratio pi / 2) ("cosine", aMUSEd's default) or 1 - ratio ("linear")."""
    if schedule == "cosine":
        return math.cos(ratio * math.pi / 2)
    if schedule == "linear":
        return 1.0 - ratio
    raise ValueError(f"mask_schedule: schedule must be 'cosine' or 'linear', got {schedule!r}")


def masked_count(num_tokens, step, num_steps, schedule="cosine", starting_mask_ratio=1.0):
    """How many of `num_tokens` stay masked after 0-based step `step` of `num_steps`:
    floor(L * starting_mask_ratio * mask_schedule((step + 1) / num_steps)).

    Computed in float32, exactly as diffusers' `AmusedScheduler` computes it (on float32 tensors),
    not in float64: the two disagree where the product lands on an integer. At step 8 of 12 the
    cosine is cos(pi / 3) = 0.5; float32 gives 0.49999997, so floor(256 * 0.49999997) = 127 tokens
    stay masked on a 16x16 grid (31 on 8x8), where float64 would give 128 (32).
    """
    r = np.float32(step + 1) / np.float32(num_steps)
    if schedule == "cosine":
        m = np.cos(r * np.float32(math.pi) / np.float32(2.0))
    elif schedule == "linear":
        m = np.float32(1.0) - r
    else:
        raise ValueError(f"masked_count: schedule must be 'cosine' or 'linear', got {schedule!r}")
    return int(np.floor(np.float32(num_tokens) * (np.float32(starting_mask_ratio) * m)))


def decoding_temperatures(temperature, num_steps):
    """The per-step Gumbel temperatures (num_steps,) float32, as aMUSEd's scheduler sets them: a
    pair (a, b) goes linearly from a to b, a single number t from t to 0.01; an array of
    num_steps values is used as it is (pass `AmusedScheduler.temperatures` to replay diffusers
    exactly: torch's float32 linspace can differ from this correctly rounded one by an ulp)."""
    if isinstance(temperature, np.ndarray) or hasattr(temperature, "numpy"):
        temps = np.asarray(temperature, dtype=np.float32).reshape(-1)
        if len(temps) != num_steps:
            raise ValueError(f"decoding_temperatures: expected {num_steps} temperatures, one per "
                             f"step, got {len(temps)}")
        return temps
    a, b = (temperature if isinstance(temperature, (tuple, list)) else (temperature, 0.01))
    return np.linspace(a, b, num_steps).astype(np.float32)


def gumbel_noise(u):
    """Gumbel(0, 1) samples from uniforms u in [0, 1): -log(-log(u)), both logs clamped at 1e-20."""
    return -np.log(np.maximum(-np.log(np.maximum(u, 1e-20)), 1e-20))


def masked_decoding_step(logits, tokens, step, num_steps, mask_token_id, temperature=1.0,
                         rng=None, schedule="cosine", starting_mask_ratio=1.0, noise=None):
    """One step of MaskGIT decoding, as diffusers' `AmusedScheduler.step` takes it.

    logits: (B, K, H, W) from the model; tokens: (B, H, W) ids, masked positions = mask_token_id.
    step: 0-based index of this step among `num_steps`. temperature: scale of the Gumbel noise
    added to the confidences (aMUSEd anneals it from 2 to 0 over the steps).
    Returns (next_tokens, predicted), both (B, H, W):
      1. sample a code for every position from softmax(logits); known tokens are kept;
      2. after the last step, return the prediction; otherwise keep the mask on the
         n = `masked_count(L, step, num_steps, ...)` least confident predictions (at least 1, at
         most one less than are masked now; the count in float32, as diffusers), where the
         confidence is
         log p(sampled code) + temperature * Gumbel noise and known tokens are never re-masked.
    Randomness: two uniform arrays (B, L), one to sample codes (by inverse CDF) and one for the
    Gumbel noise, drawn from `rng` (Generator or seed) unless given as `noise=(u_sample, u_gumbel)`.
    """
    check_floating("masked_decoding_step: logits", logits)
    check_rank("masked_decoding_step: logits", logits, 4, "(B, K, H, W)")
    check_integer("masked_decoding_step: tokens", tokens)
    B, K, H, W = logits.shape
    if tuple(tokens.shape) != (B, H, W):
        raise ValueError(f"masked_decoding_step: expected tokens of shape {(B, H, W)} to match "
                         f"logits {tuple(logits.shape)}, got {tuple(tokens.shape)}")
    if not 0 <= step < num_steps:
        raise ValueError(f"masked_decoding_step: expected 0 <= step < {num_steps}, got {step}")
    L = H * W
    if noise is None:
        rng = as_rng(rng)
        noise = (rng.random((B, L)), rng.random((B, L)))
    u_sample, u_gumbel = (np.asarray(u).reshape(B, L) for u in noise)  # 2 x (B, L)
    tok = tokens.reshape(B, L)                            # (B, H, W) -> (B, L)
    unknown = tok == mask_token_id                        # (B, L)
    scores = logits.reshape(B, K, L).transpose(0, 2, 1)   # (B, K, H, W) -> (B, L, K)
    probs = F.softmax(scores.astype(np.float64), axis=-1)  # (B, L, K), float64 for sampling
    # 1. sample by inverse CDF: the first code whose cumulative probability reaches u
    cdf = np.cumsum(probs, axis=-1)                       # (B, L, K)
    sampled = np.sum(cdf < (u_sample * cdf[..., -1])[..., None], axis=-1)
    sampled = np.minimum(sampled, K - 1)                  # (B, L)
    predicted = np.where(unknown, sampled, tok)
    if step == num_steps - 1:
        out = predicted.reshape(B, H, W)                  # (B, L) -> (B, H, W)
        return out, out
    # 2. how many stay masked (in float32, as diffusers' AmusedScheduler)
    mask_len = np.full(B, masked_count(L, step, num_steps, schedule, starting_mask_ratio))
    mask_len = np.minimum(unknown.sum(axis=-1) - 1, mask_len)
    mask_len = np.maximum(1, mask_len)                    # (B,)
    # 3. confidence of each prediction; known tokens get the largest value so they stay
    chosen = np.take_along_axis(probs, predicted[..., None], axis=-1)[..., 0]  # (B, L)
    chosen = np.where(unknown, chosen, np.finfo(chosen.dtype).max)
    confidence = np.log(np.maximum(chosen, 1e-20)) + temperature * gumbel_noise(u_gumbel)
    cut = np.take_along_axis(np.sort(confidence, axis=-1), mask_len[:, None], axis=-1)  # (B, 1)
    masking = confidence < cut
    next_tokens = np.where(masking, mask_token_id, predicted)
    return next_tokens.reshape(B, H, W), predicted.reshape(B, H, W)  # (B, L) -> (B, H, W)


def generate(model, encoder_hidden_states, pooled_text_emb, micro_conds, height, width,
             num_steps=12, temperature=(2.0, 0.0), mask_token_id=None, guidance_scale=0.0,
             negative_encoder_hidden_states=None, negative_pooled_text_emb=None, rng=None,
             schedule="cosine", noise=None, return_history=False):
    """Decode a grid of token ids from nothing but masks, as aMUSEd's pipeline does.

    Starts from a (B, height, width) grid of `mask_token_id` (default vocab_size - 1, aMUSEd's
    choice), then runs `num_steps` of model + `masked_decoding_step`, with the temperature going
    linearly from temperature[0] to temperature[1] (a single number t means t -> 0.01).
    With guidance_scale > 1 the model also runs on the negative (unconditional) text, and the
    logits become uncond + guidance_scale * (cond - uncond).
    noise: optional list of per-step (u_sample, u_gumbel) pairs, for exact reproducibility across
    implementations. Returns the final tokens (B, height, width), and the list of the token grids
    after every step if `return_history`.
    """
    B = encoder_hidden_states.shape[0]
    if mask_token_id is None:
        mask_token_id = model.config["vocab_size"] - 1
    temps = decoding_temperatures(temperature, num_steps)   # float32, as the scheduler's
    rng = as_rng(rng)
    guided = guidance_scale > 1.0
    if guided:
        if negative_encoder_hidden_states is None or negative_pooled_text_emb is None:
            raise ValueError("generate: guidance_scale > 1 needs negative_encoder_hidden_states "
                             "and negative_pooled_text_emb")
        ehs = np.concatenate([negative_encoder_hidden_states, encoder_hidden_states])  # (2B, S, E)
        pooled = np.concatenate([negative_pooled_text_emb, pooled_text_emb])           # (2B, D_p)
        mc = np.concatenate([micro_conds, micro_conds])                                # (2B, M)
    else:
        ehs, pooled, mc = encoder_hidden_states, pooled_text_emb, micro_conds
    tokens = np.full((B, height, width), mask_token_id, dtype=np.int64)
    history = []
    for step in range(num_steps):
        model_in = np.concatenate([tokens, tokens]) if guided else tokens  # (2B, H, W) if guided
        logits = model(model_in, ehs, pooled, mc)         # (B or 2B, K, H, W)
        if guided:
            uncond, cond = logits[:B], logits[B:]
            logits = uncond + guidance_scale * (cond - uncond)
        tokens, _ = masked_decoding_step(
            logits, tokens, step, num_steps, mask_token_id, temperature=float(temps[step]),
            rng=rng, schedule=schedule, noise=None if noise is None else noise[step])
        history.append(tokens)
    return (tokens, history) if return_history else tokens
