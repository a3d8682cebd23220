"""Torch twins of the `uvit_numpy.functional` helpers that torch does not ship.

Everything else (linear, layer_norm, rms_norm, gelu, softmax, conv2d, scaled_dot_product_attention,
...) is `torch.nn.functional` itself. Same names and arguments as the NumPy side.
"""

import math

import torch
import torch.nn.functional as F

from uvit_numpy.checks import check_floating, check_rank


def check_tensor(name, x, optional=False):
    """TypeError unless `x` is a torch.Tensor (a NumPy array goes to `uvit_numpy`'s twin, or
    through `torch.from_numpy` first), before any work."""
    if x is None and optional:
        return
    if not isinstance(x, torch.Tensor):
        kind = f"{type(x).__module__}.{type(x).__name__}".replace("builtins.", "")
        raise TypeError(f"{name}: expected a torch.Tensor, got a {kind} (convert it with "
                        f"torch.from_numpy, or use uvit_numpy's model for NumPy arrays)")


def global_response_norm(x, gamma, beta, eps=1e-6):
    """ConvNeXt-V2 GRN, channel-last. x: (B, H, W, C); gamma, beta: (1, 1, 1, C).

    The per-channel L2 norm over H and W is taken as sqrt(sum(x^2)): the same number as
    `torch.linalg.vector_norm(x, dim=(1, 2))` (what diffusers calls), about 10x faster on CPU for
    a reduction over the middle axes.
    """
    check_floating("global_response_norm: x", x)
    check_rank("global_response_norm: x", x, 4, "(B, H, W, C)")
    g = x.square().sum(dim=(1, 2), keepdim=True).sqrt()  # (B, 1, 1, C)
    n = g / (g.mean(dim=-1, keepdim=True) + eps)
    return gamma * (x * n) + beta + x


def geglu(x):
    """(..., 2F) -> (..., F): value * gelu(gate), value the first half."""
    value, gate = x.chunk(2, dim=-1)
    return value * F.gelu(gate)


def get_timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False,
                           downscale_freq_shift=1.0, scale=1.0, max_period=10000):
    """diffusers' sinusoidal embedding, formed in float64 and returned in the dtype of `timesteps`
    (float64 for integer input), so float32 results are correctly rounded.

    timesteps: (N,). Returns (N, embedding_dim). See `uvit_numpy.functional` for the formula.
    """
    check_rank("get_timestep_embedding: timesteps", timesteps, 1, "(N,)")
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"get_timestep_embedding: expected a positive embedding_dim, "
                         f"got {embedding_dim!r}")
    out_dtype = timesteps.dtype if timesteps.is_floating_point() else torch.float64
    t = timesteps.to(torch.float64)
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float64, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = scale * (t[:, None] * freqs[None, :])
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if embedding_dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(out_dtype)


def timestep_embedding(timesteps, dim, max_period=10000):
    """The U-ViT paper's sinusoid, [cos, sin], returned in the dtype of `timesteps`."""
    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True,
                                  downscale_freq_shift=0, max_period=max_period)


def patchify(x, patch_size):
    """(B, C, H, W) -> (B, (H/P)(W/P), P*P*C), patches flattened as (p1, p2, C)."""
    check_rank("patchify: x", x, 4, "(B, C, H, W)")
    B, C, H, W = x.shape
    P = patch_size
    if H % P or W % P:
        raise ValueError(f"patchify: expected H and W to be multiples of the patch size {P}, "
                         f"got {H}x{W}")
    x = x.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // P) * (W // P), P * P * C)


def unpatchify(x, channels, grid=None):
    """(B, L, P*P*C) -> (B, C, h*P, w*P); grid (h, w) defaults to a square."""
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
    x = x.reshape(B, h, w, P, P, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, h * P, w * P)


# --------------------------------------------------------------------------------------------------
# aMUSEd's conditioning and its channel-last convolutions (twins of `uvit_numpy.functional`)
# --------------------------------------------------------------------------------------------------
def adaptive_modulation(x, scale, shift):
    """x * (1 + scale) + shift with x (B, ..., C) and scale, shift (B, C)."""
    B, C = x.shape[0], x.shape[-1]
    if tuple(scale.shape) != (B, C) or tuple(shift.shape) != (B, C):
        raise ValueError(f"adaptive_modulation: expected scale and shift of shape {(B, C)}, got "
                         f"{tuple(scale.shape)} and {tuple(shift.shape)}")
    shape = (B,) + (1,) * (x.ndim - 2) + (C,)
    return torch.addcmul(shift.view(shape), x, 1 + scale.view(shape))


def micro_conditioning(micro_conds, batch, encode_dim, dtype=torch.float32):
    """(B, M) micro-conditions -> (B, M * encode_dim) sinusoids [cos | sin] per value, formed in
    float64 and rounded once to `dtype`."""
    flat = micro_conds.reshape(-1).to(torch.float64)
    emb = get_timestep_embedding(flat, encode_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    return emb.reshape(batch, -1).to(dtype)


def conv1x1(x, weight, bias=None):
    """A 1x1 conv on a channel-last map, as a linear map: x (..., C), weight (O, C, 1, 1)."""
    return F.linear(x, weight[:, :, 0, 0], bias)


def conv1x1_to_channels_first(x, weight, bias=None):
    """A 1x1 conv from channel-last x (B, H, W, C) to (B, O, H, W) (a permuted view of the
    channel-last product, like the output of a channels-last convolution)."""
    return conv1x1(x, weight, bias).permute(0, 3, 1, 2)


def conv2d_channels_last(x, weight, bias=None, stride=1, padding=0, groups=1):
    """`F.conv2d` on a channel-last map: x (B, H, W, C) -> (B, Ho, Wo, O)."""
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=stride, padding=padding,
                 groups=groups)
    return y.permute(0, 2, 3, 1)


def depthwise_conv3x3(x, weight, bias=None):
    """3x3 depthwise conv, zero padding 1, channel-last: x (B, H, W, C), weight (C, 1, 3, 3)."""
    return conv2d_channels_last(x, weight, bias, padding=1, groups=x.shape[-1])


def downsample_2x2(x, weight, bias=None):
    """2x2 stride-2 conv without padding, channel-last (an odd last row/column is not read):
    x (B, H, W, C), weight (O, C, 2, 2) -> (B, H // 2, W // 2, O)."""
    return conv2d_channels_last(x, weight, bias, stride=2)


def conv_transpose2d_channels_last(x, weight, bias=None, stride=1, padding=0):
    """`F.conv_transpose2d` on a channel-last map: x (B, H, W, C) -> (B, Ho, Wo, O)."""
    y = F.conv_transpose2d(x.permute(0, 3, 1, 2), weight, bias, stride=stride, padding=padding)
    return y.permute(0, 2, 3, 1)


def upsample_2x2(x, weight, bias=None):
    """2x2 stride-2 transposed conv, channel-last: x (B, H, W, C), weight (C, O, 2, 2)
    -> (B, 2H, 2W, O)."""
    return conv_transpose2d_channels_last(x, weight, bias, stride=2)


def quick_gelu(x):
    """CLIP's x * sigmoid(1.702 x), as transformers' `quick_gelu` (torch ships no such function)."""
    check_floating("quick_gelu: x", x)
    return x * torch.sigmoid(1.702 * x)
