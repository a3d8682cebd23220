"""The convolutional blocks of diffusers' autoencoders, in NumPy, weight-compatible with diffusers.

One implementation serves two models: aMUSEd's VQ-GAN (`vq_model.VQModel`, diffusers' `VQModel`)
and the U-ViT paper's KL autoencoder (`autoencoder.FrozenAutoencoderKL`, Stable Diffusion's first
stage, which diffusers calls `AutoencoderKL`). Both are an `Encoder` and a `Decoder` built from the
same blocks, in the order the encoder meets them:

    x (B, 3, H, W) --conv_in--> --DownEncoderBlock2D x levels--> --UNetMidBlock2D-->
      --GroupNorm, SiLU, conv_out--> (B, latent, H / 2^(levels-1), W / 2^(levels-1))

    DownEncoderBlock2D = ResnetBlock2D x layers_per_block, then Downsample2D (all levels but the
                         last): a stride-2 3x3 conv after an asymmetric zero padding
    UNetMidBlock2D     = ResnetBlock2D, [Attention], ResnetBlock2D (the attention is optional:
                         aMUSEd's VQ-GAN has none, `mid_block_add_attention=False`)
    ResnetBlock2D      = x + conv2(drop(silu(norm2(conv1(silu(norm1(x)))))))  (a 1x1 conv on the
                         shortcut when the channels change)

The `Decoder` runs the same pieces the other way: conv_in, the mid block, then `UpDecoderBlock2D`
(layers_per_block + 1 resnets, then `Upsample2D`: nearest x2 and a 3x3 conv) per level.

**Layout: NCHW**, (B, C, H, W) everywhere, as diffusers. Note the two samplers: `vae.Downsample2D`
and `vae.Upsample2D` here are diffusers' classes as the VAEs use them (NCHW, stride-2 conv with
(0, 1, 0, 1) padding; nearest x2 then a conv). `uvit2d.Downsample2D` and `uvit2d.Upsample2D` are
the same diffusers classes written **channel-last** for aMUSEd's transformer (2x2 convs). Same
names and arguments, different modules; import them from the module you mean.

Class names, constructor arguments, defaults and parameter names are diffusers', so state dicts
move between diffusers, `uvit_torch.vae` and this module unchanged. Options the two autoencoders
never use (timestep embeddings in the resnets, the "spatial" norm of MoVQ, attention inside the
down/up blocks) raise NotImplementedError naming themselves. Every block has a `backward` (see
`module.Module`): it calls its children's backwards in reverse order, and where one tensor fed two
paths (the resnet's and the attention's residual) it adds the two gradients on a commented line.

Numerics, said aloud: GroupNorm with a two-pass variance and eps inside the root (torch's); the
attention is softmax(q k^T / sqrt(hd)) v with a single head of width C in the VAE's mid block;
SiLU is x / (1 + exp(-x)); everything in the model's dtype.
"""

from dataclasses import dataclass

import numpy as np

from . import functional as F
from . import layers
from .checks import check_dim, check_rank
from .layers import (Conv2d, Dropout, GroupNorm, LayerNorm, RMSNorm, SiLU, to_module_dtype)
from .module import Module, ModuleList, as_rng

__all__ = [
    "DecoderOutput", "get_activation", "ResnetBlock2D", "Downsample2D", "Upsample2D", "Attention",
    "UNetMidBlock2D", "DownEncoderBlock2D", "UpDecoderBlock2D", "Encoder", "Decoder",
]


@dataclass
class DecoderOutput:
    """What `decode` returns, as diffusers' `DecoderOutput`: `sample` (B, C, H, W), the decoded
    image, and `commit_loss` (the VQ-GAN's quantiser loss; None for the KL autoencoder)."""
    sample: np.ndarray
    commit_loss: np.ndarray = None


def get_activation(name, dtype=np.float32):
    """diffusers' `get_activation` for the names the autoencoders use: "silu" and "swish" (the same
    function, x sigmoid(x)). Returns a SiLU module."""
    if name in ("silu", "swish"):
        return SiLU(dtype=dtype)
    raise NotImplementedError(f"activation {name!r}: only 'silu' (or 'swish') is implemented, "
                              f"the one diffusers' autoencoders use")


def _check_nchw(name, x, channels, dtype):
    """Cast to the module's dtype and check (B, channels, H, W)."""
    x = to_module_dtype(name, x, dtype)
    check_rank(name, x, 4, "(B, C, H, W)")
    check_dim(name, x, 1, channels, "channels")
    return x


# --------------------------------------------------------------------------------------------------
# The resnet block
# --------------------------------------------------------------------------------------------------
class ResnetBlock2D(Module):
    """diffusers' `ResnetBlock2D` (keyword-only arguments, as diffusers) without a timestep:

        h = conv1(silu(norm1(x)));  h = conv2(dropout(silu(norm2(h))))
        out = (shortcut(x) + h) / output_scale_factor

    norm1 GroupNorm(groups, in_channels, eps), norm2 GroupNorm(groups_out or groups, out_channels,
    eps), conv1/conv2 3x3 with padding 1, and `conv_shortcut` a 1x1 conv (bias if
    `conv_shortcut_bias`) when the channels change (or `use_in_shortcut=True`); otherwise the
    shortcut is the identity. The `conv_shortcut` *argument* is stored and, as in diffusers, plays
    no part (the shortcut conv is always 1x1). The VAEs pass `temb_channels=None`; a timestep
    projection (diffusers' default 512), `up`/`down` and `kernel` raise NotImplementedError.
    """

    def __init__(self, *, in_channels, out_channels=None, conv_shortcut=False, dropout=0.0,
                 temb_channels=512, groups=32, groups_out=None, pre_norm=True, eps=1e-6,
                 non_linearity="swish", skip_time_act=False, time_embedding_norm="default",
                 kernel=None, output_scale_factor=1.0, use_in_shortcut=None, up=False, down=False,
                 conv_shortcut_bias=True, conv_2d_out_channels=None, dtype=np.float32, rng=None):
        super().__init__(dtype)
        if time_embedding_norm in ("ada_group", "spatial"):
            raise ValueError(f"ResnetBlock2D: time_embedding_norm={time_embedding_norm!r} belongs "
                             f"to diffusers' ResnetBlockCondNorm2D, not this class")
        if temb_channels is not None:
            raise NotImplementedError(
                f"ResnetBlock2D: temb_channels={temb_channels}: the timestep projection is not "
                f"implemented; the autoencoders' blocks pass temb_channels=None")
        if up or down or kernel is not None:
            raise NotImplementedError("ResnetBlock2D: up/down-sampling inside the block (up, "
                                      "down, kernel) is not implemented; the autoencoders use "
                                      "separate Downsample2D/Upsample2D blocks")
        rng = as_rng(rng)
        out_channels = in_channels if out_channels is None else out_channels
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        kw = dict(dtype=dtype, rng=rng)
        self.norm1 = GroupNorm(groups, in_channels, eps=eps, dtype=dtype)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, **kw)
        self.norm2 = GroupNorm(groups_out or groups, out_channels, eps=eps, dtype=dtype)
        self.dropout = Dropout(dropout, **kw)
        self.conv2 = Conv2d(out_channels, conv_2d_out_channels, 3, padding=1, **kw)
        self.nonlinearity = get_activation(non_linearity, dtype)
        if use_in_shortcut is None:
            use_in_shortcut = in_channels != conv_2d_out_channels
        self.use_in_shortcut = use_in_shortcut
        self.conv_shortcut = (Conv2d(in_channels, conv_2d_out_channels, 1,
                                     bias=conv_shortcut_bias, **kw) if use_in_shortcut else None)

    def forward(self, input_tensor, temb=None):
        """input_tensor: (B, in_channels, H, W) -> (B, conv_2d_out_channels, H, W). `temb` must be
        None (there is no timestep projection)."""
        if temb is not None:
            raise NotImplementedError("ResnetBlock2D: temb must be None (no timestep projection)")
        if self.time_embedding_norm == "scale_shift":
            raise ValueError("ResnetBlock2D: temb should not be None when time_embedding_norm is "
                             "'scale_shift'")
        x = _check_nchw("ResnetBlock2D: input_tensor", input_tensor, self.in_channels, self.dtype)
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))  # silu's second call
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return self._record((shortcut + h) / self.output_scale_factor, None)

    def backward(self, grad_out):
        """grad_out: (B, out, H, W) -> d input_tensor (B, in_channels, H, W). The one `nonlinearity`
        module ran twice; its backward answers the later call (after norm2) first."""
        self._recall(grad_out)
        d = grad_out / self.output_scale_factor
        dshort = d if self.conv_shortcut is None else self.conv_shortcut.backward(d)
        dh = self.nonlinearity.backward(self.dropout.backward(self.conv2.backward(d)))
        dh = self.conv1.backward(self.norm2.backward(dh))
        dh = self.norm1.backward(self.nonlinearity.backward(dh))
        return dshort + dh                                # x fed the shortcut and the branch


# --------------------------------------------------------------------------------------------------
# Down- and up-sampling (NCHW; not uvit2d's channel-last classes of the same names)
# --------------------------------------------------------------------------------------------------
def _make_norm(cls_name, norm_type, channels, eps, elementwise_affine, dtype):
    """The optional channel norm of diffusers' samplers: "ln_norm", "rms_norm" or None."""
    if norm_type == "ln_norm":
        return LayerNorm(channels, eps, elementwise_affine, dtype=dtype)
    if norm_type == "rms_norm":
        return RMSNorm(channels, eps, elementwise_affine, dtype=dtype)
    if norm_type is None:
        return None
    raise ValueError(f"{cls_name}: unknown norm_type {norm_type!r}")


def _channel_norm(norm, x):
    """A channel-last norm (LayerNorm, RMSNorm) applied to NCHW x."""
    return norm(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # (B, C, H, W) <-> (B, H, W, C)


def _channel_norm_backward(norm, d):
    return norm.backward(d.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


class Downsample2D(Module):
    """diffusers' `Downsample2D`, NCHW, as the VAE's encoder uses it: halve H and W.

    With `use_conv`, a stride-2 conv (kernel_size, `padding`); with padding=0 the input is first
    zero-padded by one column on the right and one row at the bottom, (0, 1, 0, 1), so that a 3x3
    stride-2 conv maps H to H // 2 (the VAE's encoder: `downsample_padding=0`). Without `use_conv`,
    2x2 average pooling. An optional norm ("ln_norm"/"rms_norm") over channels comes first.
    name="conv" registers the conv as both `conv` and `Conv2d_0` (two keys, as diffusers); the
    VAE's blocks use name="op", i.e. `conv` only.
    """

    def __init__(self, channels, use_conv=False, out_channels=None, padding=1, name="conv",
                 kernel_size=3, norm_type=None, eps=None, elementwise_affine=None, bias=True,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.padding, self.name = use_conv, padding, name
        self.norm = _make_norm("Downsample2D", norm_type, channels, eps, elementwise_affine,
                               dtype)
        if use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size, stride=2, padding=padding,
                          bias=bias, dtype=dtype, rng=as_rng(rng))
        elif self.out_channels != channels:
            raise ValueError(f"Downsample2D: average pooling keeps the channels, got "
                             f"channels={channels}, out_channels={self.out_channels}")
        else:
            conv = None
        if name == "conv":
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states):
        """hidden_states: (B, channels, H, W) -> (B, out_channels, H', W'); H' = H // 2 for the
        VAE's 3x3 conv with (0, 1, 0, 1) padding and for the pool."""
        x = _check_nchw("Downsample2D: hidden_states", hidden_states, self.channels, self.dtype)
        if self.norm is not None:
            x = _channel_norm(self.norm, x)
        if not self.use_conv:
            return self._record(F.avg_pool2d(x, 2), x.shape)
        if self.padding == 0:
            x = F.pad2d(x, (0, 1, 0, 1))                  # (B, C, H, W) -> (B, C, H + 1, W + 1)
        return self._record(self.conv(x), None)

    def backward(self, grad_out):
        """grad_out: (B, out_channels, H', W') -> d hidden_states (B, channels, H, W)."""
        x_shape = self._recall(grad_out)
        if not self.use_conv:
            d = F.avg_pool2d_backward(grad_out, x_shape, 2)
        else:
            d = self.conv.backward(grad_out)
            if self.padding == 0:
                d = F.pad2d_backward(d, (0, 1, 0, 1))
        return d if self.norm is None else _channel_norm_backward(self.norm, d)


class Upsample2D(Module):
    """diffusers' `Upsample2D`, NCHW, as the VAE's decoder uses it: double H and W.

    Nearest-neighbour x2 (each pixel becomes a 2x2 block; if `interpolate`), then a conv (if
    `use_conv`; 3x3, padding 1 by default). With `use_conv_transpose`, a stride-2 transposed conv
    instead (4x4, padding 1), returned at once. An optional channel norm comes first. The conv is
    `conv` for name="conv", else `Conv2d_0`.
    """

    def __init__(self, channels, use_conv=False, use_conv_transpose=False, out_channels=None,
                 name="conv", kernel_size=None, padding=1, norm_type=None, eps=None,
                 elementwise_affine=None, bias=True, interpolate=True, dtype=np.float32,
                 rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.use_conv_transpose = use_conv, use_conv_transpose
        self.name, self.interpolate = name, interpolate
        self.norm = _make_norm("Upsample2D", norm_type, channels, eps, elementwise_affine, dtype)
        conv = None
        if use_conv_transpose:
            conv = layers.ConvTranspose2d(channels, self.out_channels,
                                          4 if kernel_size is None else kernel_size, stride=2,
                                          padding=padding, bias=bias, dtype=dtype, rng=rng)
        elif use_conv:
            conv = Conv2d(channels, self.out_channels, 3 if kernel_size is None else kernel_size,
                          padding=padding, bias=bias, dtype=dtype, rng=rng)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def _conv(self):
        return self.conv if self.name == "conv" else self.Conv2d_0

    def forward(self, hidden_states, output_size=None):
        """hidden_states: (B, channels, H, W) -> (B, out_channels, 2H, 2W)."""
        x = _check_nchw("Upsample2D: hidden_states", hidden_states, self.channels, self.dtype)
        if output_size is not None:
            raise NotImplementedError("Upsample2D: output_size is not implemented (x2 only)")
        if self.norm is not None:
            x = _channel_norm(self.norm, x)
        if self.use_conv_transpose:
            return self._record(self._conv()(x), None)
        if self.interpolate:
            x = F.upsample_nearest2d(x, 2)                # (B, C, H, W) -> (B, C, 2H, 2W)
        if self.use_conv:
            x = self._conv()(x)
        return self._record(x, None)

    def backward(self, grad_out):
        """grad_out: (B, out_channels, 2H, 2W) -> d hidden_states (B, channels, H, W)."""
        self._recall(grad_out)
        d = grad_out
        if self.use_conv_transpose:
            d = self._conv().backward(d)
        else:
            if self.use_conv:
                d = self._conv().backward(d)
            if self.interpolate:
                d = F.upsample_nearest2d_backward(d, 2)   # the sum over each 2x2 block
        return d if self.norm is None else _channel_norm_backward(self.norm, d)


# --------------------------------------------------------------------------------------------------
# Attention over the pixels of a feature map
# --------------------------------------------------------------------------------------------------
class Attention(layers.Attention):
    """diffusers' `Attention` with the options the VAE's mid block sets: a GroupNorm before the
    projections (`norm_num_groups`, `eps`), the input added back (`residual_connection`) and the
    sum divided by `rescale_output_factor`:

        h = group_norm(x) seen as (B, H*W, C) tokens;  out = to_out(softmax(q k^T / sqrt(hd)) v)
        y = (out + x) / rescale_output_factor          (back in x's (B, C, H, W) layout)

    The projections `to_q`, `to_k`, `to_v` and `to_out.0` (and the attention itself) are the
    foundation's `layers.Attention`, which this class extends; the mid block builds it with
    heads = C // attention_head_dim = 1 head of width C, and biases on every projection.
    `upcast_attention`/`upcast_softmax` are accepted and change nothing here (they matter in
    float16; diffusers' default processor ignores them too). The other options of diffusers'
    signature must keep their defaults (NotImplementedError otherwise).
    """

    def __init__(self, query_dim, cross_attention_dim=None, heads=8, kv_heads=None, dim_head=64,
                 dropout=0.0, bias=False, upcast_attention=False, upcast_softmax=False,
                 cross_attention_norm=None, cross_attention_norm_num_groups=32, qk_norm=None,
                 added_kv_proj_dim=None, added_proj_bias=True, norm_num_groups=None,
                 spatial_norm_dim=None, out_bias=True, scale_qk=True, only_cross_attention=False,
                 eps=1e-5, rescale_output_factor=1.0, residual_connection=False,
                 _from_deprecated_attn_block=False, dtype=np.float32, rng=None):
        unsupported = {"kv_heads": (kv_heads, None), "cross_attention_norm":
                       (cross_attention_norm, None), "qk_norm": (qk_norm, None),
                       "added_kv_proj_dim": (added_kv_proj_dim, None),
                       "spatial_norm_dim": (spatial_norm_dim, None), "scale_qk": (scale_qk, True),
                       "only_cross_attention": (only_cross_attention, False)}
        for name, (value, default) in unsupported.items():
            if value != default:
                raise NotImplementedError(f"Attention: {name}={value!r} is not implemented "
                                          f"(only the default {default!r})")
        super().__init__(query_dim, cross_attention_dim, heads, dim_head, dropout, bias,
                         out_bias, dtype=dtype, rng=rng)
        self.group_norm = (GroupNorm(norm_num_groups, query_dim, eps=eps, dtype=dtype)
                           if norm_num_groups is not None else None)
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.upcast_attention, self.upcast_softmax = upcast_attention, upcast_softmax

    def forward(self, hidden_states, encoder_hidden_states=None, temb=None):
        """hidden_states: (B, C, H, W) (or tokens (B, L, C)); encoder_hidden_states: (B, S, C_kv)
        or None (self-attention). Returns hidden_states' shape. `temb` must be None (it only
        feeds the spatial norm, which is not implemented)."""
        if temb is not None:
            raise NotImplementedError("Attention: temb is only used by the spatial norm, which "
                                      "is not implemented")
        x = to_module_dtype("Attention: hidden_states", hidden_states, self.dtype)
        check_rank("Attention: hidden_states", x, (3, 4), "(B, C, H, W) or (B, L, C)")
        h = x
        if x.ndim == 4:
            check_dim("Attention: hidden_states", x, 1, self.query_dim, "channels")
            B, C, H, W = x.shape
            h = x.reshape(B, C, H * W).transpose(0, 2, 1)  # (B, C, H, W) -> (B, L, C)
        if self.group_norm is not None:
            h = self.group_norm(h.transpose(0, 2, 1)).transpose(0, 2, 1)  # norm on (B, C, L)
        out = super().forward(h, encoder_hidden_states)   # (B, L, C): the foundation's attention
        if x.ndim == 4:
            out = out.transpose(0, 2, 1).reshape(x.shape)  # (B, L, C) -> (B, C, H, W)
        if self.residual_connection:
            out = out + x
        out = out / self.rescale_output_factor
        return self._record(out, (x.shape, encoder_hidden_states is None))

    def backward(self, grad_out):
        """grad_out: hidden_states' shape. Returns d hidden_states for self-attention, else
        (d hidden_states, d encoder_hidden_states). The foundation's backward (`super`) answers
        the record its own forward left under this one."""
        shape, self_attention = self._recall(grad_out)
        d = grad_out / self.rescale_output_factor
        if len(shape) == 4:
            B, C, H, W = shape
            d_tokens = d.reshape(B, C, H * W).transpose(0, 2, 1)  # (B, C, H, W) -> (B, L, C)
        else:
            d_tokens = d
        dh, dctx = super().backward(d_tokens)             # (B, L, C), and the context's or None
        if self.group_norm is not None:                   # (B, L, C) <-> (B, C, L) around it
            dh = self.group_norm.backward(dh.transpose(0, 2, 1)).transpose(0, 2, 1)
        if len(shape) == 4:
            dh = dh.transpose(0, 2, 1).reshape(shape)     # (B, L, C) -> (B, C, H, W)
        if self.residual_connection:
            dh = dh + d                                   # x fed the attention and the residual
        return dh if self_attention else (dh, dctx)


# --------------------------------------------------------------------------------------------------
# Blocks of blocks
# --------------------------------------------------------------------------------------------------
def _check_shift(cls_name, resnet_time_scale_shift):
    if resnet_time_scale_shift == "spatial":
        raise NotImplementedError(f"{cls_name}: resnet_time_scale_shift='spatial' (MoVQ's "
                                  f"spatial norm, ResnetBlockCondNorm2D) is not implemented")


def _backward_chain(modules, grad_out):
    """The backwards of modules applied in sequence, in reverse order."""
    for module in reversed(modules):
        grad_out = module.backward(grad_out)
    return grad_out


class UNetMidBlock2D(Module):
    """diffusers' `UNetMidBlock2D` without a timestep: resnets[0], then for each of `num_layers`
    layers [attention,] resnet, all at `in_channels`. The attention (if `add_attention`) has
    heads = in_channels // attention_head_dim, a GroupNorm of `attn_groups` groups (default:
    resnet_groups), a residual connection and rescale by `output_scale_factor`. `temb_channels`
    must be None. Keys: `resnets.N.*`, `attentions.N.*` (no attention keys without attention).
    """

    def __init__(self, in_channels, temb_channels, dropout=0.0, num_layers=1, resnet_eps=1e-6,
                 resnet_time_scale_shift="default", resnet_act_fn="swish", resnet_groups=32,
                 attn_groups=None, resnet_pre_norm=True, add_attention=True, attention_head_dim=1,
                 output_scale_factor=1.0, dtype=np.float32, rng=None):
        super().__init__(dtype)
        _check_shift("UNetMidBlock2D", resnet_time_scale_shift)
        rng = as_rng(rng)
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        if attn_groups is None:
            attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None
        if attention_head_dim is None:
            attention_head_dim = in_channels
        self.in_channels, self.add_attention = in_channels, add_attention

        def resnet():
            return ResnetBlock2D(in_channels=in_channels, out_channels=in_channels,
                                 temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups,
                                 dropout=dropout, time_embedding_norm=resnet_time_scale_shift,
                                 non_linearity=resnet_act_fn,
                                 output_scale_factor=output_scale_factor,
                                 pre_norm=resnet_pre_norm, dtype=dtype, rng=rng)
        resnets = [resnet()]
        attentions = []
        for _ in range(num_layers):
            if add_attention:
                attentions.append(Attention(
                    in_channels, heads=in_channels // attention_head_dim,
                    dim_head=attention_head_dim, rescale_output_factor=output_scale_factor,
                    eps=resnet_eps, norm_num_groups=attn_groups, residual_connection=True,
                    bias=True, upcast_softmax=True, _from_deprecated_attn_block=True, dtype=dtype,
                    rng=rng))
            resnets.append(resnet())
        self.attentions = ModuleList(attentions, dtype=dtype)
        self.resnets = ModuleList(resnets, dtype=dtype)

    def _sequence(self):
        """The modules in the order the forward calls them."""
        order = [self.resnets[0]]
        for i in range(len(self.resnets) - 1):
            if self.add_attention:
                order.append(self.attentions[i])
            order.append(self.resnets[i + 1])
        return order

    def forward(self, hidden_states, temb=None):
        """hidden_states: (B, C, H, W) -> (B, C, H, W). `temb` must be None."""
        if temb is not None:
            raise NotImplementedError("UNetMidBlock2D: temb must be None (no timestep projection)")
        x = _check_nchw("UNetMidBlock2D: hidden_states", hidden_states, self.in_channels,
                        self.dtype)
        for module in self._sequence():
            x = module(x)
        return self._record(x, None)

    def backward(self, grad_out):
        """grad_out: (B, C, H, W) -> d hidden_states, through every resnet and attention."""
        self._recall(grad_out)
        return _backward_chain(self._sequence(), grad_out)


class DownEncoderBlock2D(Module):
    """diffusers' `DownEncoderBlock2D`: `num_layers` resnets (the first from in_channels to
    out_channels), then, if `add_downsample`, `downsamplers.0` = Downsample2D(out_channels,
    use_conv=True, padding=downsample_padding, name="op") (the encoder passes padding 0: the
    asymmetric (0, 1, 0, 1) zero padding)."""

    def __init__(self, in_channels, out_channels, dropout=0.0, num_layers=1, resnet_eps=1e-6,
                 resnet_time_scale_shift="default", resnet_act_fn="swish", resnet_groups=32,
                 resnet_pre_norm=True, output_scale_factor=1.0, add_downsample=True,
                 downsample_padding=1, dtype=np.float32, rng=None):
        super().__init__(dtype)
        _check_shift("DownEncoderBlock2D", resnet_time_scale_shift)
        rng = as_rng(rng)
        self.in_channels = in_channels
        self.resnets = ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels,
                          out_channels=out_channels, temb_channels=None, eps=resnet_eps,
                          groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift,
                          non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor,
                          pre_norm=resnet_pre_norm, dtype=dtype, rng=rng)
            for i in range(num_layers)], dtype=dtype)
        self.downsamplers = ModuleList([
            Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                         padding=downsample_padding, name="op", dtype=dtype, rng=rng)],
            dtype=dtype) if add_downsample else None

    def _sequence(self):
        return list(self.resnets) + (list(self.downsamplers) if self.downsamplers else [])

    def forward(self, hidden_states):
        """hidden_states: (B, in_channels, H, W) -> (B, out_channels, H', W'), H' = H // 2 with
        the encoder's down-sampler, H without."""
        x = _check_nchw("DownEncoderBlock2D: hidden_states", hidden_states, self.in_channels,
                        self.dtype)
        for module in self._sequence():
            x = module(x)
        return self._record(x, None)

    def backward(self, grad_out):
        self._recall(grad_out)
        return _backward_chain(self._sequence(), grad_out)


class UpDecoderBlock2D(Module):
    """diffusers' `UpDecoderBlock2D`: `num_layers` resnets (the decoder passes
    layers_per_block + 1), then, if `add_upsample`, `upsamplers.0` = Upsample2D(out_channels,
    use_conv=True): nearest x2 and a 3x3 conv. `resolution_idx` is kept for diffusers'
    signature; `temb_channels` must be None."""

    def __init__(self, in_channels, out_channels, resolution_idx=None, dropout=0.0, num_layers=1,
                 resnet_eps=1e-6, resnet_time_scale_shift="default", resnet_act_fn="swish",
                 resnet_groups=32, resnet_pre_norm=True, output_scale_factor=1.0,
                 add_upsample=True, temb_channels=None, dtype=np.float32, rng=None):
        super().__init__(dtype)
        _check_shift("UpDecoderBlock2D", resnet_time_scale_shift)
        rng = as_rng(rng)
        self.in_channels, self.resolution_idx = in_channels, resolution_idx
        self.resnets = ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels,
                          out_channels=out_channels, temb_channels=temb_channels, eps=resnet_eps,
                          groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift,
                          non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor,
                          pre_norm=resnet_pre_norm, dtype=dtype, rng=rng)
            for i in range(num_layers)], dtype=dtype)
        self.upsamplers = ModuleList([
            Upsample2D(out_channels, use_conv=True, out_channels=out_channels, dtype=dtype,
                       rng=rng)], dtype=dtype) if add_upsample else None

    def _sequence(self):
        return list(self.resnets) + (list(self.upsamplers) if self.upsamplers else [])

    def forward(self, hidden_states, temb=None):
        """hidden_states: (B, in_channels, H, W) -> (B, out_channels, 2H, 2W) (H, W without the
        up-sampler). `temb` must be None."""
        if temb is not None:
            raise NotImplementedError("UpDecoderBlock2D: temb must be None")
        x = _check_nchw("UpDecoderBlock2D: hidden_states", hidden_states, self.in_channels,
                        self.dtype)
        for module in self._sequence():
            x = module(x)
        return self._record(x, None)

    def backward(self, grad_out):
        self._recall(grad_out)
        return _backward_chain(self._sequence(), grad_out)


# --------------------------------------------------------------------------------------------------
# Encoder and decoder
# --------------------------------------------------------------------------------------------------
def _check_block_types(cls_name, block_types, expected, block_out_channels):
    """Only diffusers' plain VAE blocks; one block type per entry of block_out_channels."""
    for t in block_types:
        if t != expected:
            raise NotImplementedError(f"{cls_name}: block type {t!r} is not implemented; only "
                                      f"{expected!r} (the autoencoders' block)")
    if len(block_types) != len(block_out_channels):
        raise ValueError(f"{cls_name}: expected one block type per entry of block_out_channels "
                         f"{tuple(block_out_channels)}, got {len(block_types)}")


class Encoder(Module):
    """diffusers' VAE `Encoder`: image (B, in_channels, H, W) -> latent moments or latents.

    conv_in (3x3) to block_out_channels[0]; one DownEncoderBlock2D per entry of
    `block_out_channels` (`layers_per_block` resnets each; every block but the last halves H and
    W); the mid block (resnet, [attention], resnet; eps 1e-6); conv_norm_out (GroupNorm, eps
    1e-6), SiLU and conv_out (3x3) to `out_channels`, doubled if `double_z` (the KL autoencoder's
    mean and log-variance). Keys: `conv_in`, `down_blocks.N`, `mid_block`, `conv_norm_out`,
    `conv_out`.
    """

    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block=2, norm_num_groups=32, act_fn="silu",
                 double_z=True, mid_block_add_attention=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        _check_block_types("Encoder", down_block_types, "DownEncoderBlock2D", block_out_channels)
        rng = as_rng(rng)
        kw = dict(dtype=dtype, rng=rng)
        self.in_channels, self.layers_per_block = in_channels, layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, stride=1, padding=1, **kw)
        blocks, output_channel = [], block_out_channels[0]
        for i in range(len(down_block_types)):
            input_channel, output_channel = output_channel, block_out_channels[i]
            blocks.append(DownEncoderBlock2D(
                num_layers=layers_per_block, in_channels=input_channel,
                out_channels=output_channel, add_downsample=i < len(block_out_channels) - 1,
                resnet_eps=1e-6, downsample_padding=0, resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups, **kw))
        self.down_blocks = ModuleList(blocks, dtype=dtype)
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn,
            output_scale_factor=1, resnet_time_scale_shift="default",
            attention_head_dim=block_out_channels[-1], resnet_groups=norm_num_groups,
            temb_channels=None, add_attention=mid_block_add_attention, **kw)
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6,
                                       dtype=dtype)
        self.conv_act = SiLU(dtype=dtype)
        self.conv_out = Conv2d(block_out_channels[-1], 2 * out_channels if double_z
                               else out_channels, 3, padding=1, **kw)

    def _sequence(self):
        return ([self.conv_in] + list(self.down_blocks)
                + [self.mid_block, self.conv_norm_out, self.conv_act, self.conv_out])

    def forward(self, sample):
        """sample: (B, in_channels, H, W), each side at least 2^(levels - 1) (every down-sampler
        halves it, rounding down, and needs 2 pixels) -> (B, out (x2 if double_z), h, w)."""
        x = _check_nchw("Encoder: sample", sample, self.in_channels, self.dtype)
        need = 2 ** (len(self.down_blocks) - 1)
        if min(x.shape[2:]) < need:
            raise ValueError(f"Encoder: an image of {x.shape[2]}x{x.shape[3]} is too small for "
                             f"{len(self.down_blocks) - 1} down-samplings: each side must be at "
                             f"least {need}")
        for module in self._sequence():
            x = module(x)
        return self._record(x, None)

    def backward(self, grad_out):
        """grad_out: (B, out, h, w) -> d sample (B, in_channels, H, W)."""
        self._recall(grad_out)
        return _backward_chain(self._sequence(), grad_out)


class Decoder(Module):
    """diffusers' VAE `Decoder`: latents (B, in_channels, h, w) -> image (B, out_channels, H, W).

    conv_in (3x3) to block_out_channels[-1]; the mid block; one UpDecoderBlock2D per entry of
    `block_out_channels`, widest first (`layers_per_block + 1` resnets each; every block but the
    last doubles H and W); conv_norm_out (GroupNorm, eps 1e-6), SiLU, conv_out (3x3). norm_type
    "group" only ("spatial", MoVQ's norm conditioned on the latents, raises NotImplementedError).
    Keys: `conv_in`, `up_blocks.N`, `mid_block`, `conv_norm_out`, `conv_out`.
    """

    def __init__(self, in_channels=3, out_channels=3, up_block_types=("UpDecoderBlock2D",),
                 block_out_channels=(64,), layers_per_block=2, norm_num_groups=32, act_fn="silu",
                 norm_type="group", mid_block_add_attention=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        if norm_type != "group":
            raise NotImplementedError(f"Decoder: norm_type={norm_type!r} is not implemented; only "
                                      f"'group' ('spatial' is MoVQ's SpatialNorm)")
        _check_block_types("Decoder", up_block_types, "UpDecoderBlock2D", block_out_channels)
        rng = as_rng(rng)
        kw = dict(dtype=dtype, rng=rng)
        self.in_channels, self.layers_per_block = in_channels, layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], 3, stride=1, padding=1, **kw)
        self.up_blocks = ModuleList(dtype=dtype)          # before mid_block, as diffusers
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn,
            output_scale_factor=1, resnet_time_scale_shift="default",
            attention_head_dim=block_out_channels[-1], resnet_groups=norm_num_groups,
            temb_channels=None, add_attention=mid_block_add_attention, **kw)
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i in range(len(up_block_types)):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            self.up_blocks.append(UpDecoderBlock2D(
                num_layers=layers_per_block + 1, in_channels=prev_output_channel,
                out_channels=output_channel, add_upsample=i < len(block_out_channels) - 1,
                resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                temb_channels=None, resnet_time_scale_shift=norm_type, **kw))
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6,
                                       dtype=dtype)
        self.conv_act = SiLU(dtype=dtype)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1, **kw)

    def _sequence(self):
        return ([self.conv_in, self.mid_block] + list(self.up_blocks)
                + [self.conv_norm_out, self.conv_act, self.conv_out])

    def forward(self, sample, latent_embeds=None):
        """sample: (B, in_channels, h, w) -> (B, out_channels, h 2^(levels-1), w 2^(levels-1)).
        `latent_embeds` (the spatial norm's input) must be None."""
        if latent_embeds is not None:
            raise NotImplementedError("Decoder: latent_embeds is only used by norm_type "
                                      "'spatial', which is not implemented")
        x = _check_nchw("Decoder: sample", sample, self.in_channels, self.dtype)
        for module in self._sequence():
            x = module(x)
        return self._record(x, None)

    def backward(self, grad_out):
        """grad_out: (B, out_channels, H, W) -> d sample (B, in_channels, h, w)."""
        self._recall(grad_out)
        return _backward_chain(self._sequence(), grad_out)
