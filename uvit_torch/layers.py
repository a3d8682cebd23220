"""PyTorch twins of `uvit_numpy.layers`: the same class names, arguments and parameter names.

Built on `torch.nn` layers; each forward first checks its input and raises the same clear
`ValueError`/`TypeError` as the NumPy side (torch's own errors are terse RuntimeErrors).
"""

import torch
import torch.nn.functional as F
from torch import nn

from uvit_numpy.checks import check_dim, check_floating, check_integer, check_range, check_rank

from . import functional as UF


class Linear(nn.Linear):
    """nn.Linear with input checks."""

    def forward(self, x):
        check_floating("Linear: x", x)
        check_dim("Linear: x", x, -1, self.in_features, "in_features")
        return super().forward(x)


class Embedding(nn.Embedding):
    """nn.Embedding with input checks (integer ids in [0, V))."""

    def forward(self, ids):
        check_integer("embedding: ids", ids)
        check_range("embedding: ids", ids, 0, self.num_embeddings)
        return super().forward(ids)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last axis, with input checks."""

    def forward(self, x):
        check_floating("LayerNorm: x", x)
        check_dim("LayerNorm: x", x, -1, self.normalized_shape[0], "channels")
        return super().forward(x)


class RMSNorm(nn.Module):
    """diffusers' RMSNorm via `F.rms_norm`; half precision is reduced in float32."""

    def __init__(self, dim, eps, elementwise_affine=True, bias=False, dtype=None):
        super().__init__()
        self.dim, self.eps = int(dim), eps
        affine = elementwise_affine
        self.weight = nn.Parameter(torch.ones(self.dim, dtype=dtype)) if affine else None
        self.bias = nn.Parameter(torch.zeros(self.dim, dtype=dtype)) if affine and bias else None

    def forward(self, x):
        check_floating("RMSNorm: x", x)
        check_dim("RMSNorm: x", x, -1, self.dim, "channels")
        xr = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = F.rms_norm(xr, (self.dim,), eps=self.eps).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN, channel-last; gamma and beta (1, 1, 1, C), zero at init."""

    def __init__(self, dim, dtype=None):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim, dtype=dtype))

    def forward(self, x):
        check_floating("GlobalResponseNorm: x", x)
        check_rank("GlobalResponseNorm: x", x, 4, "(B, H, W, C)")
        check_dim("GlobalResponseNorm: x", x, -1, self.gamma.shape[-1], "channels")
        return UF.global_response_norm(x, self.gamma, self.beta)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (input (B, C, *)) with input checks."""

    def forward(self, x):
        check_floating("GroupNorm: x", x)
        if x.ndim < 2:
            raise ValueError(f"GroupNorm: expected x shaped (B, C, ...), got shape "
                             f"{tuple(x.shape)}")
        check_dim("GroupNorm: x", x, 1, self.num_channels, "channels")
        return super().forward(x)


class SiLU(nn.SiLU):
    """nn.SiLU with input checks (`dtype` accepted for symmetry with the NumPy twin)."""

    def __init__(self, dtype=None):
        super().__init__()

    def forward(self, x):
        check_floating("SiLU: x", x)
        return super().forward(x)


class ReLU(nn.ReLU):
    """nn.ReLU with input checks (`dtype` accepted for symmetry with the NumPy twin)."""

    def __init__(self, dtype=None):
        super().__init__()

    def forward(self, x):
        check_floating("ReLU: x", x)
        return super().forward(x)


class GELU(nn.GELU):
    """nn.GELU (exact by default) with input checks."""

    def __init__(self, approximate="none", dtype=None):
        super().__init__(approximate=approximate)

    def forward(self, x):
        check_floating("GELU: x", x)
        return super().forward(x)


class GEGLU(nn.Module):
    """diffusers' GEGLU: `proj` Linear(dim_in, 2 dim_out), then value * gelu(gate)."""

    def __init__(self, dim_in, dim_out, bias=True, dtype=None):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2, bias=bias, dtype=dtype)

    def forward(self, x):
        return UF.geglu(self.proj(x))


class Dropout(nn.Dropout):
    """nn.Dropout (`dtype` accepted for symmetry with the NumPy twin)."""

    def __init__(self, p=0.5, dtype=None):
        super().__init__(p)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (zero padding) with input checks."""

    def forward(self, x):
        check_floating("Conv2d: x", x)
        check_rank("Conv2d: x", x, 4, "(B, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"conv2d: expected {self.in_channels} input channels "
                             f"({self.in_channels // self.groups} per group x {self.groups} "
                             f"groups), got {x.shape[1]} (x shape {tuple(x.shape)})")
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if x.shape[2] + 2 * ph < kh or x.shape[3] + 2 * pw < kw:
            raise ValueError(f"conv2d: padded input {x.shape[2] + 2 * ph}x{x.shape[3] + 2 * pw} "
                             f"is smaller than the {kh}x{kw} kernel")
        return super().forward(x)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d with input checks."""

    def forward(self, x):
        check_floating("ConvTranspose2d: x", x)
        check_rank("ConvTranspose2d: x", x, 4, "(B, C, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"conv_transpose2d: expected {self.in_channels} input channels, "
                             f"got {x.shape[1]} (x shape {tuple(x.shape)})")
        return super().forward(x)


class ChannelsLastConv2d(Conv2d):
    """A `Conv2d` applied to channel-last maps, x (B, H, W, C) -> (B, Ho, Wo, O), as
    `uvit_numpy.layers.ChannelsLastConv2d`: a 1x1 conv runs as a linear map, any other through
    `F.conv2d` between two permutes. `channels_first_out=True` (1x1 only) returns (B, O, H, W)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, channels_first_out=False, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=bias, dtype=dtype)
        pointwise = (self.kernel_size == (1, 1) and self.stride == (1, 1)
                     and self.padding == (0, 0) and groups == 1)
        if channels_first_out and not pointwise:
            raise ValueError(f"ChannelsLastConv2d: channels_first_out needs a 1x1 convolution, "
                             f"got kernel_size={kernel_size}, stride={stride}, padding={padding}")
        self.pointwise, self.channels_first_out = pointwise, channels_first_out

    def forward(self, x):
        check_floating("ChannelsLastConv2d: x", x)
        check_rank("ChannelsLastConv2d: x", x, 4, "(B, H, W, C)")
        check_dim("ChannelsLastConv2d: x", x, -1, self.in_channels, "channels")
        if self.channels_first_out:
            return UF.conv1x1_to_channels_first(x, self.weight, self.bias)
        if self.pointwise:
            return UF.conv1x1(x, self.weight, self.bias)
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ChannelsLastConvTranspose2d(ConvTranspose2d):
    """A `ConvTranspose2d` applied to channel-last maps: x (B, H, W, C) -> (B, Ho, Wo, O)."""

    def forward(self, x):
        check_rank("ChannelsLastConvTranspose2d: x", x, 4, "(B, H, W, C)")
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head (self or cross) attention as diffusers' `Attention`, via SDPA."""

    def __init__(self, query_dim, cross_attention_dim=None, heads=8, dim_head=64, dropout=0.0,
                 bias=False, out_bias=True, dtype=None):
        super().__init__()
        kv_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.query_dim, self.cross_attention_dim = query_dim, kv_dim
        self.to_q = Linear(query_dim, inner, bias=bias, dtype=dtype)
        self.to_k = Linear(kv_dim, inner, bias=bias, dtype=dtype)
        self.to_v = Linear(kv_dim, inner, bias=bias, dtype=dtype)
        self.to_out = nn.ModuleList([Linear(inner, query_dim, bias=out_bias, dtype=dtype),
                                     Dropout(dropout)])

    def forward(self, hidden_states, encoder_hidden_states=None):
        check_floating("Attention: hidden_states", hidden_states)
        check_rank("Attention: hidden_states", hidden_states, 3, "(B, L, C)")
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        check_floating("Attention: encoder_hidden_states", ctx)
        check_rank("Attention: encoder_hidden_states", ctx, 3, "(B, S, C)")
        if ctx.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"Attention: batch sizes disagree: hidden_states "
                             f"{hidden_states.shape[0]}, encoder_hidden_states {ctx.shape[0]}")
        B, L, _ = hidden_states.shape
        q = self.to_q(hidden_states).view(B, L, self.heads, -1).transpose(1, 2)  # (B, nh, L, hd)
        k = self.to_k(ctx).view(B, ctx.shape[1], self.heads, -1).transpose(1, 2)  # (B, nh, S, hd)
        v = self.to_v(ctx).view(B, ctx.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)                           # (B, nh, L, hd)
        out = out.transpose(1, 2).reshape(B, L, -1)                             # (B, L, I)
        return self.to_out[1](self.to_out[0](out))


class QKVAttention(nn.Module):
    """The U-ViT paper's fused-qkv self-attention (`qkv`, `proj`), via SDPA."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0,
                 proj_drop=0.0, dtype=None):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else head_dim ** -0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, dtype=dtype)
        self.attn_drop = Dropout(attn_drop)
        self.proj = Linear(dim, dim, dtype=dtype)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x):
        check_floating("QKVAttention: x", x)
        check_rank("QKVAttention: x", x, 3, "(B, L, C)")
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                    # 3 x (B, nh, L, hd)
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


class TimestepEmbedding(nn.Module):
    """diffusers' TimestepEmbedding: linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels, time_embed_dim, act_fn="silu", out_dim=None,
                 sample_proj_bias=True, dtype=None):
        super().__init__()
        if act_fn != "silu":
            raise ValueError(f"TimestepEmbedding: only act_fn='silu' is implemented, "
                             f"got {act_fn!r}")
        out = time_embed_dim if out_dim is None else out_dim
        self.linear_1 = Linear(in_channels, time_embed_dim, sample_proj_bias, dtype=dtype)
        self.act = SiLU()
        self.linear_2 = Linear(time_embed_dim, out, sample_proj_bias, dtype=dtype)

    def forward(self, sample):
        return self.linear_2(self.act(self.linear_1(sample)))
