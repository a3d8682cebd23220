"""Layers that hold parameters, each a thin `Module` around a function of `functional`.

Class names, constructor arguments and parameter names follow `torch.nn` and diffusers exactly, so a
torch state dict loads unchanged. Every constructor also takes `dtype` (float32 by default) and
`rng` (an `np.random.Generator` or a seed) for the initial values, which follow torch's defaults:
weights and biases of linear and conv layers U(-1/sqrt(fan_in), 1/sqrt(fan_in)), embeddings N(0, 1),
norm weights 1 and biases 0, GlobalResponseNorm's gamma and beta 0.

A module computes in its own dtype: floating input is cast to it, non-floating input is a TypeError.

Each layer's `backward(grad_out)` (see `module.Module`) calls the backward of its function,
accumulates the parameter gradients and returns the gradient of its input.
"""

import math

import numpy as np

from . import functional as F
from .checks import check_dim, check_floating, check_rank
from .module import Module, ModuleList, as_rng, uniform_init


def to_module_dtype(name, x, dtype):
    """Check that `x` is floating and cast it to the module's dtype (no copy when it already is)."""
    check_floating(name, x)
    return x.astype(dtype, copy=False)


class Linear(Module):
    """y = x W^T + b. weight (out_features, in_features), bias (out_features,)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.in_features, self.out_features = in_features, out_features
        self.weight = uniform_init(rng, (out_features, in_features), in_features, self.dtype)
        self.bias = uniform_init(rng, (out_features,), in_features, self.dtype) if bias else None

    def forward(self, x):
        """x: (..., in_features) -> (..., out_features)."""
        x = to_module_dtype("Linear: x", x, self.dtype)
        return self._record(*F.linear(x, self.weight, self.bias, return_cache=True))

    def backward(self, grad_out):
        """grad_out: (..., out_features) -> dx (..., in_features)."""
        dx, dw, db = F.linear_backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of `num_embeddings` rows of width `embedding_dim`; weight (V, C)."""

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = rng.standard_normal((num_embeddings, embedding_dim)).astype(self.dtype)

    def forward(self, ids):
        """ids: integer array of any shape, values in [0, V) -> ids.shape + (C,)."""
        return self._record(*F.embedding(ids, self.weight, return_cache=True))

    def backward(self, grad_out):
        """Accumulates the table's gradient; ids take none, so this returns None."""
        self.accumulate_grads(weight=F.embedding_backward(grad_out, self._recall(grad_out)))
        return None

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """torch.nn.LayerNorm over the last axis (a single int `normalized_shape`)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.normalized_shape, self.eps = int(normalized_shape), eps
        affine = elementwise_affine
        self.weight = np.ones(self.normalized_shape, self.dtype) if affine else None
        self.bias = np.zeros(self.normalized_shape, self.dtype) if affine and bias else None

    def forward(self, x):
        """x: (..., C) -> (..., C)."""
        x = to_module_dtype("LayerNorm: x", x, self.dtype)
        return self._record(*F.layer_norm(x, self.weight, self.bias, self.eps, return_cache=True))

    def backward(self, grad_out):
        dx, dw, db = F.layer_norm_backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    """diffusers' RMSNorm: weight only with `elementwise_affine`, bias only if also `bias`."""

    def __init__(self, dim, eps, elementwise_affine=True, bias=False, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.dim, self.eps = int(dim), eps
        affine = elementwise_affine
        self.weight = np.ones(self.dim, self.dtype) if affine else None
        self.bias = np.zeros(self.dim, self.dtype) if affine and bias else None

    def forward(self, x):
        """x: (..., C) -> (..., C)."""
        x = to_module_dtype("RMSNorm: x", x, self.dtype)
        if self.weight is None:
            check_dim("RMSNorm: x", x, -1, self.dim, "channels")
        return self._record(*F.rms_norm(x, self.weight, self.bias, self.eps, return_cache=True))

    def backward(self, grad_out):
        dx, dw, db = F.rms_norm_backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class GlobalResponseNorm(Module):
    """ConvNeXt-V2's GRN, channel-last; gamma and beta (1, 1, 1, C), zero at init (identity)."""

    def __init__(self, dim, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.dim = int(dim)
        self.gamma = np.zeros((1, 1, 1, self.dim), self.dtype)
        self.beta = np.zeros((1, 1, 1, self.dim), self.dtype)

    def forward(self, x):
        """x: (B, H, W, C) -> (B, H, W, C)."""
        x = to_module_dtype("GlobalResponseNorm: x", x, self.dtype)
        return self._record(*F.global_response_norm(x, self.gamma, self.beta, return_cache=True))

    def backward(self, grad_out):
        dx, dgamma, dbeta = F.global_response_norm_backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(gamma=dgamma, beta=dbeta)
        return dx


class GroupNorm(Module):
    """torch.nn.GroupNorm: `num_groups` groups of channels, each normalised over its channels and
    all positions; weight (C,) ones and bias (C,) zeros if `affine`. Input (B, C, *)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32,
                 rng=None):
        super().__init__(dtype)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by "
                             f"num_groups={num_groups}")
        self.num_groups, self.num_channels, self.eps = int(num_groups), int(num_channels), eps
        self.weight = np.ones(self.num_channels, self.dtype) if affine else None
        self.bias = np.zeros(self.num_channels, self.dtype) if affine else None

    def forward(self, x):
        """x: (B, C, *) -> (B, C, *)."""
        x = to_module_dtype("GroupNorm: x", x, self.dtype)
        if x.ndim < 2:
            raise ValueError(f"GroupNorm: expected x shaped (B, C, ...), got shape {x.shape}")
        check_dim("GroupNorm: x", x, 1, self.num_channels, "channels")
        return self._record(*F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                          return_cache=True))

    def backward(self, grad_out):
        dx, dw, db = F.group_norm_backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class SiLU(Module):
    """x * sigmoid(x); no parameters."""

    def forward(self, x):
        x = to_module_dtype("SiLU: x", x, self.dtype)
        return self._record(F.silu(x), x)

    def backward(self, grad_out):
        return F.silu_backward(grad_out, self._recall(grad_out))


class ReLU(Module):
    """max(x, 0); no parameters."""

    def forward(self, x):
        x = to_module_dtype("ReLU: x", x, self.dtype)
        return self._record(F.relu(x), x)

    def backward(self, grad_out):
        return F.relu_backward(grad_out, self._recall(grad_out))


class GELU(Module):
    """torch.nn.GELU: exact (erf) by default, `approximate="tanh"` for the tanh form (float32's
    exact form runs through the fast kernel that `functional.gelu` dispatches to)."""

    def __init__(self, approximate="none", dtype=np.float32, rng=None):
        super().__init__(dtype)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        x = to_module_dtype("GELU: x", x, self.dtype)
        return self._record(F.gelu(x, self.approximate), x)

    def backward(self, grad_out):
        return F.gelu_backward(grad_out, self._recall(grad_out), self.approximate)


class GEGLU(Module):
    """diffusers' GEGLU: `proj` Linear(dim_in, 2 dim_out), then value * gelu(gate)."""

    def __init__(self, dim_in, dim_out, bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.proj = Linear(dim_in, dim_out * 2, bias=bias, dtype=dtype, rng=as_rng(rng))

    def forward(self, x):
        """x: (..., dim_in) -> (..., dim_out)."""
        u = self.proj(x)                                  # (..., 2 dim_out)
        return self._record(F.geglu(u), u)

    def backward(self, grad_out):
        """grad_out: (..., dim_out) -> dx (..., dim_in), through the gate and `proj`."""
        return self.proj.backward(F.geglu_backward(grad_out, self._recall(grad_out)))


class Dropout(Module):
    """Identity in eval mode; in train mode zeroes values with probability p (seeded mask)."""

    def __init__(self, p=0.5, dtype=np.float32, rng=None):
        super().__init__(dtype)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: expected p in [0, 1), got {p}")
        self.p = p
        self._rng = as_rng(rng)

    def forward(self, x):
        return self._record(*F.dropout(x, self.p, self.training, self._rng, return_cache=True))

    def backward(self, grad_out):
        """The forward's own mask, scaled by 1 / (1 - p)."""
        return F.dropout_backward(grad_out, self._recall(grad_out))

    def extra_repr(self):
        return f"p={self.p}"


class Conv2d(Module):
    """torch.nn.Conv2d (zero padding). weight (O, C/groups, kh, kw), bias (O,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        kh, kw = F._pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.groups = groups
        fan_in = in_channels // groups * kh * kw
        self.weight = uniform_init(rng, (out_channels, in_channels // groups, kh, kw), fan_in,
                                   self.dtype)
        self.bias = uniform_init(rng, (out_channels,), fan_in, self.dtype) if bias else None

    def forward(self, x):
        """x: (B, C, H, W) -> (B, O, Ho, Wo)."""
        x = to_module_dtype("Conv2d: x", x, self.dtype)
        return self._record(*F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                                      self.groups, return_cache=True))

    def backward(self, grad_out):
        """grad_out: (B, O, Ho, Wo) -> dx (B, C, H, W)."""
        dx, dw, db = F.conv2d_backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}")


class ConvTranspose2d(Module):
    """torch.nn.ConvTranspose2d (groups=1). weight (C, O, kh, kw) -- in-channels first."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        kh, kw = F._pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        fan_in = out_channels * kh * kw  # torch computes fan_in from weight.shape[1:]
        self.weight = uniform_init(rng, (in_channels, out_channels, kh, kw), fan_in, self.dtype)
        self.bias = uniform_init(rng, (out_channels,), fan_in, self.dtype) if bias else None

    def forward(self, x):
        """x: (B, C, H, W) -> (B, O, (H-1) s - 2p + kh, (W-1) s - 2p + kw)."""
        x = to_module_dtype("ConvTranspose2d: x", x, self.dtype)
        return self._record(*F.conv_transpose2d(x, self.weight, self.bias, self.stride,
                                                self.padding, return_cache=True))

    def backward(self, grad_out):
        """grad_out: (B, O, Ho, Wo) -> dx (B, C, H, W)."""
        dx, dw, db = F.conv_transpose2d_backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(weight=dw, bias=db)
        return dx


# The functions (forward, backward) that compute a channel-last convolution of each geometry.
CHANNELS_LAST_CONVS = {
    "conv1x1": (F.conv1x1, F.conv1x1_backward),
    "conv1x1_to_channels_first": (F.conv1x1_to_channels_first,
                                  F.conv1x1_to_channels_first_backward),
    "depthwise_conv3x3": (F.depthwise_conv3x3, F.depthwise_conv3x3_backward),
    "downsample_2x2": (F.downsample_2x2, F.downsample_2x2_backward),
    "conv2d_channels_last": (F.conv2d_channels_last, F.conv2d_channels_last_backward),
    "upsample_2x2": (F.upsample_2x2, F.upsample_2x2_backward),
    "conv_transpose2d_channels_last": (F.conv_transpose2d_channels_last,
                                       F.conv_transpose2d_channels_last_backward),
}


class ChannelsLastConv2d(Conv2d):
    """A `Conv2d` (the same arguments, parameters and initial values) applied to channel-last
    maps: x (B, H, W, C) -> (B, Ho, Wo, O). aMUSEd's blocks keep their maps channel-last, where
    diffusers transposes between blocks; the weight keeps torch's (O, C/groups, kh, kw) layout.

    The geometry picks the function of `functional` that computes it, once, at construction:

        1x1, stride 1, no padding                     conv1x1 (a per-pixel linear map)
        3x3 depthwise (groups = C = O), stride 1, pad 1  depthwise_conv3x3 (nine shifts)
        2x2, stride 2, no padding                     downsample_2x2 (one GEMM over patches)
        anything else                                 conv2d_channels_last (transposes + conv2d)

    With `channels_first_out=True` (1x1 only) the output is (B, O, H, W), written directly in that
    layout (`conv1x1_to_channels_first`): aMUSEd's output head uses it for its logits.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, channels_first_out=False, dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups, bias,
                         dtype=dtype, rng=rng)
        geometry = (self.kernel_size, F._pair(stride), F._pair(padding))
        if geometry == ((1, 1), (1, 1), (0, 0)) and groups == 1:
            self.kind = "conv1x1_to_channels_first" if channels_first_out else "conv1x1"
        elif channels_first_out:
            raise ValueError(f"ChannelsLastConv2d: channels_first_out needs a 1x1 convolution, "
                             f"got kernel_size={kernel_size}, stride={stride}, padding={padding}")
        elif geometry == ((3, 3), (1, 1), (1, 1)) and groups == in_channels == out_channels:
            self.kind = "depthwise_conv3x3"
        elif geometry == ((2, 2), (2, 2), (0, 0)) and groups == 1:
            self.kind = "downsample_2x2"
        else:
            self.kind = "conv2d_channels_last"

    def forward(self, x):
        """x: (B, H, W, C) -> (B, Ho, Wo, O) (or (B, O, H, W) with channels_first_out)."""
        x = to_module_dtype("ChannelsLastConv2d: x", x, self.dtype)
        check_rank("ChannelsLastConv2d: x", x, 4, "(B, H, W, C)")
        check_dim("ChannelsLastConv2d: x", x, -1, self.in_channels, "channels")
        forward = CHANNELS_LAST_CONVS[self.kind][0]
        if self.kind == "conv2d_channels_last":
            out = forward(x, self.weight, self.bias, self.stride, self.padding, self.groups,
                          return_cache=True)
        else:
            out = forward(x, self.weight, self.bias, return_cache=True)
        return self._record(*out)

    def backward(self, grad_out):
        """grad_out: shaped like the output -> dx (B, H, W, C)."""
        backward = CHANNELS_LAST_CONVS[self.kind][1]
        dx, dw, db = backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(weight=dw, bias=db)
        return dx

    def extra_repr(self):
        return super().extra_repr() + f", channels_last ({self.kind})"


class ChannelsLastConvTranspose2d(ConvTranspose2d):
    """A `ConvTranspose2d` applied to channel-last maps: x (B, H, W, C) -> (B, Ho, Wo, O); the
    weight keeps torch's (C, O, kh, kw) layout. A 2x2, stride-2, unpadded one (aMUSEd's up-sampler)
    runs as `functional.upsample_2x2` (one GEMM and a pixel shuffle), any other as
    `functional.conv_transpose2d_channels_last`."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias,
                         dtype=dtype, rng=rng)
        geometry = (self.kernel_size, F._pair(stride), F._pair(padding))
        self.kind = ("upsample_2x2" if geometry == ((2, 2), (2, 2), (0, 0))
                     else "conv_transpose2d_channels_last")

    def forward(self, x):
        """x: (B, H, W, C) -> (B, Ho, Wo, O)."""
        x = to_module_dtype("ChannelsLastConvTranspose2d: x", x, self.dtype)
        check_rank("ChannelsLastConvTranspose2d: x", x, 4, "(B, H, W, C)")
        check_dim("ChannelsLastConvTranspose2d: x", x, -1, self.in_channels, "channels")
        forward = CHANNELS_LAST_CONVS[self.kind][0]
        if self.kind == "upsample_2x2":
            out = forward(x, self.weight, self.bias, return_cache=True)
        else:
            out = forward(x, self.weight, self.bias, self.stride, self.padding, return_cache=True)
        return self._record(*out)

    def backward(self, grad_out):
        """grad_out: (B, Ho, Wo, O) -> dx (B, H, W, C)."""
        backward = CHANNELS_LAST_CONVS[self.kind][1]
        dx, dw, db = backward(grad_out, self._recall(grad_out))
        self.accumulate_grads(weight=dw, bias=db)
        return dx


class Attention(Module):
    """Multi-head attention as diffusers' `Attention` (default processor), self or cross.

    Separate projections `to_q` (I, query_dim), `to_k`, `to_v` (I, cross_attention_dim) with
    I = heads * dim_head, then `to_out` = [Linear(I, query_dim), Dropout]. Keys and values come from
    `encoder_hidden_states` when given (cross-attention), otherwise from the queries' input.
    """

    def __init__(self, query_dim, cross_attention_dim=None, heads=8, dim_head=64, dropout=0.0,
                 bias=False, out_bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        kv_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.query_dim, self.cross_attention_dim = query_dim, kv_dim
        self.to_q = Linear(query_dim, inner, bias=bias, dtype=dtype, rng=rng)
        self.to_k = Linear(kv_dim, inner, bias=bias, dtype=dtype, rng=rng)
        self.to_v = Linear(kv_dim, inner, bias=bias, dtype=dtype, rng=rng)
        self.to_out = ModuleList([Linear(inner, query_dim, bias=out_bias, dtype=dtype, rng=rng),
                                  Dropout(dropout, dtype=dtype, rng=rng)], dtype=dtype)

    def forward(self, hidden_states, encoder_hidden_states=None, return_weights=False):
        """hidden_states: (B, L, query_dim); encoder_hidden_states: (B, S, cross_attention_dim).

        Returns (B, L, query_dim), and the weights (B, nh, L, S) if `return_weights`.
        softmax(q k^T / sqrt(hd)) v per head, with the scale applied to q (L x hd values) rather
        than to the scores (L x S): the same numbers up to rounding, and fewer multiplies.
        """
        x = to_module_dtype("Attention: hidden_states", hidden_states, self.dtype)
        check_rank("Attention: hidden_states", x, 3, "(B, L, C)")
        ctx = x if encoder_hidden_states is None else to_module_dtype(
            "Attention: encoder_hidden_states", encoder_hidden_states, self.dtype)
        check_rank("Attention: encoder_hidden_states", ctx, 3, "(B, S, C)")
        if ctx.shape[0] != x.shape[0]:
            raise ValueError(f"Attention: batch sizes disagree: hidden_states {x.shape[0]}, "
                             f"encoder_hidden_states {ctx.shape[0]}")
        q = self.to_q(x)                                  # (B, L, I), a fresh array
        q *= 1.0 / math.sqrt(self.dim_head)
        q = F.split_heads(q, self.heads)                  # (B, L, I) -> (B, nh, L, hd)
        k = F.split_heads(self.to_k(ctx), self.heads)     # (B, S, I) -> (B, nh, S, hd)
        v = F.split_heads(self.to_v(ctx), self.heads)     # (B, S, I) -> (B, nh, S, hd)
        (out, weights), cache = F.scaled_dot_product_attention(
            q, k, v, scale=1.0, return_weights=True, return_cache=True)  # q is already scaled
        out = self.to_out[1](self.to_out[0](F.merge_heads(out)))  # (B, L, I) -> (B, L, query_dim)
        self._record(out, (cache, encoder_hidden_states is None))
        return (out, weights) if return_weights else out

    def backward(self, grad_out):
        """grad_out: (B, L, query_dim). Returns (d hidden_states, d encoder_hidden_states); the
        second is None for self-attention, where x fed q, k and v and dx sums all three paths."""
        cache, self_attention = self._recall(grad_out)
        d = self.to_out[0].backward(self.to_out[1].backward(grad_out))  # (B, L, I)
        dq, dk, dv = F.scaled_dot_product_attention_backward(
            F.merge_heads_backward(d, self.heads), cache)             # 3 x (B, nh, tokens, hd)
        dq *= 1.0 / math.sqrt(self.dim_head)                           # through q *= 1/sqrt(hd)
        dx = self.to_q.backward(F.split_heads_backward(dq))           # (B, L, query_dim)
        dctx = (self.to_k.backward(F.split_heads_backward(dk))
                + self.to_v.backward(F.split_heads_backward(dv)))     # k and v share the input
        return (dx + dctx, None) if self_attention else (dx, dctx)


class QKVAttention(Module):
    """Multi-head self-attention with one fused projection, as the U-ViT paper's `Attention`.

    `qkv` Linear(dim, 3 dim) (bias if qkv_bias), split on the feature axis as (3, nh, hd) in that
    order; softmax(q k^T * scale) v with scale = qk_scale or hd^-1/2
    (`functional.attention_weights`); heads merged; `proj` Linear(dim, dim) with bias.
    `attn_drop` drops attention weights, `proj_drop` the output (train mode).
    """

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0,
                 proj_drop=0.0, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.dim, self.num_heads = dim, num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else head_dim ** -0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, dtype=dtype, rng=rng)
        self.attn_drop = Dropout(attn_drop, dtype=dtype, rng=rng)
        self.proj = Linear(dim, dim, dtype=dtype, rng=rng)
        self.proj_drop = Dropout(proj_drop, dtype=dtype, rng=rng)

    def forward(self, x, return_weights=False):
        """x: (B, L, dim) -> (B, L, dim) (and the weights (B, nh, L, L) if `return_weights`)."""
        x = to_module_dtype("QKVAttention: x", x, self.dtype)
        check_rank("QKVAttention: x", x, 3, "(B, L, C)")
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads)  # (B, L, 3, nh, hd)
        qkv = np.ascontiguousarray(qkv.transpose(2, 0, 3, 1, 4))  # (3, B, nh, L, hd), one copy
        q, k, v = qkv                                     # 3 x (B, nh, L, hd), contiguous
        probs, wcache = F.attention_weights(q, k, self.scale, return_cache=True)  # (B, nh, L, L)
        weights = self.attn_drop(probs)
        out = F.merge_heads(weights @ v)                  # (B, nh, L, hd) -> (B, L, C)
        out = self.proj_drop(self.proj(out))
        self._record(out, (wcache, v, weights))
        return (out, weights) if return_weights else out

    def backward(self, grad_out):
        """grad_out: (B, L, dim) -> dx (B, L, dim).

        Dropout sits between the softmax and v, so the product with v is taken back here:
        dv = W^T dO and dW = dO v^T with W the dropped weights, then attn_drop's backward and
        `attention_weights_backward` (the softmax and the two products of S = scale q k^T). The
        fused projection's gradient is (dq, dk, dv) stacked back into the (B, L, 3, nh, hd)
        layout it was split from.
        """
        wcache, v, weights = self._recall(grad_out)
        B, nh, L, hd = v.shape
        d = self.proj.backward(self.proj_drop.backward(grad_out))      # (B, L, C)
        d = F.merge_heads_backward(d, nh)                              # (B, nh, L, hd)
        dv = weights.swapaxes(-1, -2) @ d                              # (B, nh, L, hd)
        dweights = d @ v.swapaxes(-1, -2)                              # (B, nh, L, L)
        dq, dk = F.attention_weights_backward(self.attn_drop.backward(dweights), wcache)
        dqkv = np.empty((B, L, 3, nh, hd), dtype=d.dtype)              # written in place:
        dqkv[:, :, 0] = dq.transpose(0, 2, 1, 3)                       # -> (B, L, nh, hd)
        dqkv[:, :, 1] = dk.transpose(0, 2, 1, 3)
        dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)
        return self.qkv.backward(dqkv.reshape(B, L, 3 * nh * hd))      # (B, L, 3C) -> (B, L, C)


class TimestepEmbedding(Module):
    """diffusers' TimestepEmbedding: linear_1 -> act (SiLU) -> linear_2.

    `linear_1` Linear(in_channels, time_embed_dim), `linear_2` Linear(time_embed_dim, out_dim or
    time_embed_dim); both have biases iff `sample_proj_bias`.
    """

    def __init__(self, in_channels, time_embed_dim, act_fn="silu", out_dim=None,
                 sample_proj_bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        if act_fn != "silu":
            raise ValueError(f"TimestepEmbedding: only act_fn='silu' is implemented, "
                             f"got {act_fn!r}")
        rng = as_rng(rng)
        out = time_embed_dim if out_dim is None else out_dim
        self.linear_1 = Linear(in_channels, time_embed_dim, sample_proj_bias, dtype=dtype, rng=rng)
        self.act = SiLU(dtype=dtype)
        self.linear_2 = Linear(time_embed_dim, out, sample_proj_bias, dtype=dtype, rng=rng)

    def forward(self, sample):
        """sample: (B, in_channels) -> (B, out_dim)."""
        return self.linear_2(self.act(self.linear_1(sample)))

    def backward(self, grad_out):
        """grad_out: (B, out_dim) -> d sample (B, in_channels)."""
        return self.linear_1.backward(self.act.backward(self.linear_2.backward(grad_out)))
