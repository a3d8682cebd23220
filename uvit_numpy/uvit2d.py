"""`UVit2DModel`, aMUSEd's transformer, in NumPy: every block, weight-compatible with diffusers.

The model predicts, for every position of a grid of VQ token ids (some of them the mask token),
logits over the `codebook_size` codes. It is conditioned on text (per-token CLIP features, attended
to; a pooled CLIP feature and a few "micro-conditions", added through adaptive norms). The pieces,
in the order the forward pass meets them:

    ids (B, H, W) --embed--> (B, H, W, C) --down_block--> --project_to_hidden--> (B, L, D)
      --transformer_layers x N--> --project_from_hidden--> (B, H, W, C) --up_block-->
      --mlm_layer--> logits (B, K, H, W)

Layout: the blocks work **channel-last**, (B, H, W, C), in both packages (diffusers uses
(B, C, H, W) between blocks; the numbers are the same, only the axis order differs), with the
convolutions as `layers.ChannelsLastConv2d` (a `Conv2d` with torch's weight layout). Only the
model's input ids (B, H, W) and output logits (B, K, H, W) follow diffusers exactly.

Class names, constructor arguments, defaults and parameter names are diffusers', so a state dict
moves between diffusers, `uvit_torch` and this package unchanged. Every module also takes `dtype`
(float32 by default, float64 for exact parity runs) and `rng` (a Generator or a seed). The named
configs are in `configs.py` (`CONFIGS`, `resolve_config`); MaskGIT decoding, which runs the model
step by step, is in `maskgit.py`; the pure functions the blocks call (`adaptive_modulation`,
`depthwise_conv3x3`, `micro_conditioning`, ...) are in `functional.py`, each with its backward.

Numerics, said aloud:
* every norm and sinusoid is computed in the model's dtype (diffusers computes RMSNorm's mean square
  and the micro-condition sinusoid in float32 even in a float64 model; we don't);
* GELU is the exact erf form (float32 through `fast.py`'s erf, good to 1.5e-7; see
  `functional.gelu`);
* every matmul goes through BLAS (`@`), and float32 stays float32 (Python-float constants only).

Every block follows `module.Module`'s one rule: it computes by calling its children and pure
functions, and its `backward` calls theirs in reverse. Two tensors reach many blocks, the
conditioning vector and the text features, and their gradients are summed over all of them.
"""

import math

import numpy as np

from . import functional as F
from .checks import (check_batch, check_dim, check_floating, check_integer, check_numpy,
                     check_range, check_rank, dtype_name, is_floating, is_integer)
from .configs import CONFIG_DEFAULTS, CONFIGS, resolve_config
from .layers import (GEGLU, GELU, Attention, ChannelsLastConv2d, ChannelsLastConvTranspose2d,
                     Dropout, Embedding, GlobalResponseNorm, LayerNorm, Linear, RMSNorm, SiLU,
                     TimestepEmbedding, to_module_dtype)
from .module import Module, ModuleList, NoDraws, as_rng, float32_draws

__all__ = [
    "CONFIGS", "CONFIG_DEFAULTS", "resolve_config", "check_model_inputs",
    "UVit2DModel", "UVit2DConvEmbed", "UVitBlock", "ConvNextBlock", "ConvMlmLayer",
    "SkipFFTransformerBlock", "BasicTransformerBlock", "Attention", "GELU", "FeedForward",
    "AdaLayerNormContinuous", "TimestepEmbedding", "Downsample2D", "Upsample2D",
]


# --------------------------------------------------------------------------------------------------
# Input checks (shared with uvit_torch: they read only .shape, .dtype, .min() and .max())
# --------------------------------------------------------------------------------------------------
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
# Blocks
# --------------------------------------------------------------------------------------------------
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
        scale, shift = np.split(self.linear(self.silu(cond)), 2, axis=-1)  # (B, 2C) -> 2 x (B, C)
        out, cache = F.adaptive_modulation(self.norm(x), scale, shift, return_cache=True)
        return self._record(out, cache)

    def backward(self, grad_out):
        """grad_out: (B, L, C). Returns (dx (B, L, C), d conditioning_embedding (B, D))."""
        dn, dscale, dshift = F.adaptive_modulation_backward(grad_out, self._recall(grad_out))
        dm = np.concatenate([dscale, dshift], axis=-1)    # 2 x (B, C) -> (B, 2C), scale first
        return self.norm.backward(dn), self.silu.backward(self.linear.backward(dm))


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
        h = hidden_states
        for module in self.net:
            h = module(h)
        return h

    def backward(self, grad_out):
        """grad_out: (..., dim_out) -> d hidden_states (..., dim)."""
        d = grad_out
        for module in reversed(list(self.net)):
            d = module.backward(d)
        return d


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
        dctx = dctx1 + dctx2                              # both attentions read the text
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
        self.depthwise = ChannelsLastConv2d(channels, channels, kernel_size=3, padding=1,
                                            groups=channels, bias=use_bias, dtype=dtype, rng=rng)
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
        h = self.norm(self.depthwise(x))                  # (B, H, W, C)
        h = self.channelwise_act(self.channelwise_linear_1(h))  # (B, H, W, 4C)
        h = self.channelwise_norm(h)
        h = self.channelwise_dropout(self.channelwise_linear_2(h))  # (B, H, W, C)
        h = h + x
        scale, shift = np.split(self.cond_embeds_mapper(F.silu(cond)), 2, axis=-1)  # 2 x (B, C)
        out, cache = F.adaptive_modulation(h, scale, shift, return_cache=True)
        return self._record(out, (cond, cache))

    def backward(self, grad_out):
        """grad_out: (B, H, W, C). Returns (dx (B, H, W, C), d cond_embeds (B, hidden_size)).

        The modulation acted on the sum h + x, so its input gradient goes both to the residual
        (straight to x) and into the branch, whose backward ends at the depthwise conv.
        """
        cond, cache = self._recall(grad_out)
        dsum, dscale, dshift = F.adaptive_modulation_backward(grad_out, cache)
        dm = np.concatenate([dscale, dshift], axis=-1)    # 2 x (B, C) -> (B, 2C), scale first
        dcond = F.silu_backward(self.cond_embeds_mapper.backward(dm), cond)
        d = self.channelwise_linear_2.backward(self.channelwise_dropout.backward(dsum))
        d = self.channelwise_linear_1.backward(
            self.channelwise_act.backward(self.channelwise_norm.backward(d)))
        dbranch = self.depthwise.backward(self.norm.backward(d))
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
    padding=0 the input is first zero-padded by one row at the bottom and one column on the right,
    as diffusers does) or a 2x2 average pool. The conv is a `ChannelsLastConv2d`, so the 2x2 one
    that UVit2DModel uses runs as one GEMM over patches (`functional.downsample_2x2`).
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
            conv = ChannelsLastConv2d(channels, self.out_channels, kernel_size, stride=2,
                                      padding=padding, bias=bias, dtype=dtype, rng=rng)
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
            return self._record(pooled.mean(axis=(2, 4)), x.shape)  # (B, h, w, C)
        if self.padding == 0:
            x = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # one zero row/column, bottom/right
        return self._record(self.conv(x), None)

    def backward(self, grad_out):
        """grad_out: (B, H', W', out_channels) -> d hidden_states (B, H, W, channels)."""
        shape = self._recall(grad_out)
        if not self.use_conv:                             # each input shares 1/4 of its output
            B, H, W, C = shape
            h, w = H // 2, W // 2
            d = np.repeat(np.repeat(grad_out * 0.25, 2, axis=1), 2, axis=2)  # (B, 2h, 2w, C)
            d = np.pad(d, ((0, 0), (0, H - 2 * h), (0, W - 2 * w), (0, 0)))  # dropped edges: 0
        else:
            d = self.conv.backward(grad_out)
            if self.padding == 0:
                d = d[:, :-1, :-1]                        # the padded row and column
        return d if self.norm is None else self.norm.backward(d)


class Upsample2D(Module):
    """diffusers' `Upsample2D` (all its constructor arguments), channel-last.

    Optional norm, then either a stride-2 transposed conv (use_conv_transpose; the result is
    returned at once, so `interpolate` plays no part) or nearest-neighbour x2 interpolation
    (if `interpolate`) followed by an optional conv (use_conv). The convs are channel-last layers,
    so the 2x2 transposed conv that UVit2DModel uses runs as `functional.upsample_2x2`.
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
            conv = ChannelsLastConvTranspose2d(channels, self.out_channels,
                                               4 if kernel_size is None else kernel_size,
                                               stride=2, padding=padding, bias=bias, dtype=dtype,
                                               rng=rng)
        elif use_conv:
            conv = ChannelsLastConv2d(channels, self.out_channels,
                                      3 if kernel_size is None else kernel_size, padding=padding,
                                      bias=bias, dtype=dtype, rng=rng)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def _conv(self):
        return self.conv if self.name == "conv" else self.Conv2d_0

    def forward(self, hidden_states, output_size=None):
        """hidden_states: (B, H, W, channels) -> (B, H', W', out_channels)."""
        x = to_module_dtype("Upsample2D: hidden_states", hidden_states, self.dtype)
        check_rank("Upsample2D: hidden_states", x, 4, "(B, H, W, C)")
        check_dim("Upsample2D: hidden_states", x, -1, self.channels, "channels")
        if self.norm is not None:
            x = self.norm(x)
        if self.use_conv_transpose:
            return self._record(self._conv()(x), None)
        if self.interpolate:
            if output_size is not None:
                raise NotImplementedError("Upsample2D: output_size is not implemented")
            x = x.repeat(2, axis=1).repeat(2, axis=2)     # (B, H, W, C) -> (B, 2H, 2W, C)
        if self.use_conv:
            x = self._conv()(x)
        return self._record(x, None)

    def backward(self, grad_out):
        """grad_out: (B, H', W', out_channels) -> d hidden_states (B, H, W, channels)."""
        self._recall(grad_out)
        if self.use_conv_transpose:
            d = self._conv().backward(grad_out)
        else:
            d = self._conv().backward(grad_out) if self.use_conv else grad_out
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
    conv a 1x1 conv (in_channels -> block_out_channels), channel-last: a per-pixel linear map.
    """

    def __init__(self, in_channels, block_out_channels, vocab_size, elementwise_affine, eps, bias,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.embeddings = Embedding(vocab_size, in_channels, dtype=dtype, rng=rng)
        self.layer_norm = RMSNorm(in_channels, eps, elementwise_affine, dtype=dtype)
        self.conv = ChannelsLastConv2d(in_channels, block_out_channels, kernel_size=1, bias=bias,
                                       dtype=dtype, rng=rng)

    def forward(self, input_ids):
        """input_ids: (B, H, W) integers in [0, vocab_size).
        Returns (B, H, W, block_out_channels)."""
        check_rank("UVit2DConvEmbed: input_ids", input_ids, 3, "(B, H, W)")
        return self.conv(self.layer_norm(self.embeddings(input_ids)))  # (B, H, W, C_b)

    def backward(self, grad_out):
        """grad_out: (B, H, W, block_out_channels). Accumulates the gradients of the conv, the
        norm and the embedding table; the ids take none, so this returns None."""
        return self.embeddings.backward(self.layer_norm.backward(self.conv.backward(grad_out)))


class ConvMlmLayer(Module):
    """The output head: 1x1 conv to in_channels -> RMSNorm -> 1x1 conv to codebook_size logits.

    Takes channel-last (B, H, W, C_b) and returns logits (B, K, H, W), diffusers' output layout:
    conv2 writes its output channel-first directly (`channels_first_out`), so the large logits
    are never transposed.
    """

    def __init__(self, block_out_channels, in_channels, use_bias, ln_elementwise_affine,
                 layer_norm_eps, codebook_size, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.conv1 = ChannelsLastConv2d(block_out_channels, in_channels, kernel_size=1,
                                        bias=use_bias, dtype=dtype, rng=rng)
        self.layer_norm = RMSNorm(in_channels, layer_norm_eps, ln_elementwise_affine, dtype=dtype)
        self.conv2 = ChannelsLastConv2d(in_channels, codebook_size, kernel_size=1, bias=use_bias,
                                        channels_first_out=True, dtype=dtype, rng=rng)

    def forward(self, hidden_states):
        """hidden_states: (B, H, W, block_out_channels). Returns logits (B, codebook_size, H, W)."""
        x = to_module_dtype("ConvMlmLayer: hidden_states", hidden_states, self.dtype)
        check_rank("ConvMlmLayer: hidden_states", x, 4, "(B, H, W, C)")
        return self.conv2(self.layer_norm(self.conv1(x)))  # (B, H, W, Ci) -> (B, K, H, W)

    def backward(self, grad_out):
        """grad_out: logits' gradient (B, K, H, W) -> d hidden_states (B, H, W, C_b)."""
        return self.conv1.backward(self.layer_norm.backward(self.conv2.backward(grad_out)))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
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
        rng = float32_draws(rng)
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
                                rng=NoDraws())
        model.load_state_dict(state_dict)
        return model.eval()

    def save_pretrained(self, path, **extra):
        """Write config.json + diffusion_pytorch_model.safetensors that diffusers can load;
        `extra` entries (how the weights were trained, say) go under `_`-prefixed keys, which
        diffusers and `from_pretrained` leave aside."""
        from .weights import folder_config, save_pretrained
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
        for name, value in (("input_ids", input_ids),
                            ("encoder_hidden_states", encoder_hidden_states),
                            ("pooled_text_emb", pooled_text_emb), ("micro_conds", micro_conds)):
            check_numpy(f"UVit2DModel: {name}", value)   # a torch tensor: said by name
        B, _, _ = check_model_inputs(self._config, input_ids, encoder_hidden_states,
                                     pooled_text_emb, micro_conds)
        cfg, dt = self._config, self.dtype
        # 1. text: project and normalise the per-token features, (B, S, E) -> (B, S, D)
        ctx = self.encoder_proj_layer_norm(self.encoder_proj(encoder_hidden_states))
        # 2. conditioning vector: [pooled text; micro-condition sinusoids] -> TimestepEmbedding
        micro = F.micro_conditioning(micro_conds, B, cfg["micro_cond_encode_dim"], dt)  # (B, M d)
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
