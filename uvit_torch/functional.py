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
    """ConvNeXt-V2 GRN, channel-last. x: (B, H, W, C); gamma, beta: (1, 1, 1, C)."""
    check_floating("global_response_norm: x", x)
    check_rank("global_response_norm: x", x, 4, "(B, H, W, C)")
    g = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
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


def quick_gelu(x):
    """CLIP's x * sigmoid(1.702 x), as transformers' `quick_gelu` (torch ships no such function)."""
    check_floating("quick_gelu: x", x)
    return x * torch.sigmoid(1.702 * x)
