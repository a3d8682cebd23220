"""The convolutional blocks of diffusers' autoencoders in PyTorch: the twin of `uvit_numpy.vae`.

Same class names, constructor arguments, parameter names and NCHW layout as the NumPy reference
(and diffusers), so `ours.load_state_dict(diffusers_module.state_dict())` works unchanged. Built
from `torch.nn` layers, `F.pad`, `F.interpolate` and `F.scaled_dot_product_attention`. As in the
NumPy module, `vae.Downsample2D`/`vae.Upsample2D` are the VAE's NCHW samplers, not `uvit2d`'s
channel-last ones of the same names. Options the autoencoders never use raise NotImplementedError.
"""

import torch.nn as nn
import torch.nn.functional as F

from uvit_numpy.checks import check_dim, check_floating, check_rank
from uvit_numpy.vae import DecoderOutput  # noqa: F401  (the same output class in both packages)

from . import layers
from .layers import Conv2d, ConvTranspose2d, Dropout, GroupNorm, LayerNorm, RMSNorm, SiLU

__all__ = [
    "DecoderOutput", "get_activation", "ResnetBlock2D", "Downsample2D", "Upsample2D", "Attention",
    "UNetMidBlock2D", "DownEncoderBlock2D", "UpDecoderBlock2D", "Encoder", "Decoder",
]


def get_activation(name, dtype=None):
    """SiLU for "silu" / "swish" (the only activation the autoencoders use)."""
    if name in ("silu", "swish"):
        return SiLU()
    raise NotImplementedError(f"activation {name!r}: only 'silu' (or 'swish') is implemented, "
                              f"the one diffusers' autoencoders use")


def _check_nchw(name, x, channels):
    check_floating(name, x)
    check_rank(name, x, 4, "(B, C, H, W)")
    check_dim(name, x, 1, channels, "channels")


class ResnetBlock2D(nn.Module):
    """diffusers' `ResnetBlock2D` without a timestep (see `uvit_numpy.vae.ResnetBlock2D`)."""

    def __init__(self, *, in_channels, out_channels=None, conv_shortcut=False, dropout=0.0,
                 temb_channels=512, groups=32, groups_out=None, pre_norm=True, eps=1e-6,
                 non_linearity="swish", skip_time_act=False, time_embedding_norm="default",
                 kernel=None, output_scale_factor=1.0, use_in_shortcut=None, up=False, down=False,
                 conv_shortcut_bias=True, conv_2d_out_channels=None, dtype=None):
        super().__init__()
        if time_embedding_norm in ("ada_group", "spatial"):
            raise ValueError(f"ResnetBlock2D: time_embedding_norm={time_embedding_norm!r} belongs "
                             f"to diffusers' ResnetBlockCondNorm2D, not this class")
        if temb_channels is not None:
            raise NotImplementedError(
                f"ResnetBlock2D: temb_channels={temb_channels}: the timestep projection is not "
                f"implemented; the autoencoders' blocks pass temb_channels=None")
        if up or down or kernel is not None:
            raise NotImplementedError("ResnetBlock2D: up/down-sampling inside the block (up, "
                                      "down, kernel) is not implemented")
        out_channels = in_channels if out_channels is None else out_channels
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        self.norm1 = GroupNorm(groups, in_channels, eps=eps, dtype=dtype)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, dtype=dtype)
        self.norm2 = GroupNorm(groups_out or groups, out_channels, eps=eps, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.conv2 = Conv2d(out_channels, conv_2d_out_channels, 3, padding=1, dtype=dtype)
        self.nonlinearity = get_activation(non_linearity)
        if use_in_shortcut is None:
            use_in_shortcut = in_channels != conv_2d_out_channels
        self.use_in_shortcut = use_in_shortcut
        self.conv_shortcut = (Conv2d(in_channels, conv_2d_out_channels, 1,
                                     bias=conv_shortcut_bias, dtype=dtype)
                              if use_in_shortcut else None)

    def forward(self, input_tensor, temb=None):
        if temb is not None:
            raise NotImplementedError("ResnetBlock2D: temb must be None (no timestep projection)")
        if self.time_embedding_norm == "scale_shift":
            raise ValueError("ResnetBlock2D: temb should not be None when time_embedding_norm is "
                             "'scale_shift'")
        _check_nchw("ResnetBlock2D: input_tensor", input_tensor, self.in_channels)
        h = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        return (shortcut + h) / self.output_scale_factor


def _make_norm(cls_name, norm_type, channels, eps, elementwise_affine, dtype):
    if norm_type == "ln_norm":
        return LayerNorm(channels, eps, elementwise_affine, dtype=dtype)
    if norm_type == "rms_norm":
        return RMSNorm(channels, eps, elementwise_affine, dtype=dtype)
    if norm_type is None:
        return None
    raise ValueError(f"{cls_name}: unknown norm_type {norm_type!r}")


class Downsample2D(nn.Module):
    """diffusers' `Downsample2D`, NCHW (the VAE's): stride-2 conv, (0, 1, 0, 1) zero padding first
    when padding=0; 2x2 average pooling without `use_conv`."""

    def __init__(self, channels, use_conv=False, out_channels=None, padding=1, name="conv",
                 kernel_size=3, norm_type=None, eps=None, elementwise_affine=None, bias=True,
                 dtype=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.padding, self.name = use_conv, padding, name
        self.norm = _make_norm("Downsample2D", norm_type, channels, eps, elementwise_affine,
                               dtype)
        if use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size, stride=2, padding=padding,
                          bias=bias, dtype=dtype)
        elif self.out_channels != channels:
            raise ValueError(f"Downsample2D: average pooling keeps the channels, got "
                             f"channels={channels}, out_channels={self.out_channels}")
        else:
            conv = nn.AvgPool2d(kernel_size=2, stride=2)
        if name == "conv":
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states):
        _check_nchw("Downsample2D: hidden_states", hidden_states, self.channels)
        x = hidden_states
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.use_conv and self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(x)


class Upsample2D(nn.Module):
    """diffusers' `Upsample2D`, NCHW (the VAE's): nearest x2, then a conv if `use_conv`; or a
    stride-2 transposed conv with `use_conv_transpose`."""

    def __init__(self, channels, use_conv=False, use_conv_transpose=False, out_channels=None,
                 name="conv", kernel_size=None, padding=1, norm_type=None, eps=None,
                 elementwise_affine=None, bias=True, interpolate=True, dtype=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.use_conv_transpose = use_conv, use_conv_transpose
        self.name, self.interpolate = name, interpolate
        self.norm = _make_norm("Upsample2D", norm_type, channels, eps, elementwise_affine, dtype)
        conv = None
        if use_conv_transpose:
            conv = ConvTranspose2d(channels, self.out_channels,
                                   4 if kernel_size is None else kernel_size, stride=2,
                                   padding=padding, bias=bias, dtype=dtype)
        elif use_conv:
            conv = Conv2d(channels, self.out_channels, 3 if kernel_size is None else kernel_size,
                          padding=padding, bias=bias, dtype=dtype)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states, output_size=None):
        _check_nchw("Upsample2D: hidden_states", hidden_states, self.channels)
        if output_size is not None:
            raise NotImplementedError("Upsample2D: output_size is not implemented (x2 only)")
        x = hidden_states
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        conv = self.conv if self.name == "conv" else self.Conv2d_0
        if self.use_conv_transpose:
            return conv(x)
        if self.interpolate:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return conv(x) if self.use_conv else x


class Attention(layers.Attention):
    """diffusers' `Attention` with a GroupNorm, residual connection and output rescale (the VAE's
    mid-block attention; see `uvit_numpy.vae.Attention`), on the foundation's `layers.Attention`.
    """

    def __init__(self, query_dim, cross_attention_dim=None, heads=8, kv_heads=None, dim_head=64,
                 dropout=0.0, bias=False, upcast_attention=False, upcast_softmax=False,
                 cross_attention_norm=None, cross_attention_norm_num_groups=32, qk_norm=None,
                 added_kv_proj_dim=None, added_proj_bias=True, norm_num_groups=None,
                 spatial_norm_dim=None, out_bias=True, scale_qk=True, only_cross_attention=False,
                 eps=1e-5, rescale_output_factor=1.0, residual_connection=False,
                 _from_deprecated_attn_block=False, dtype=None):
        unsupported = {"kv_heads": (kv_heads, None), "cross_attention_norm":
                       (cross_attention_norm, None), "qk_norm": (qk_norm, None),
                       "added_kv_proj_dim": (added_kv_proj_dim, None),
                       "spatial_norm_dim": (spatial_norm_dim, None), "scale_qk": (scale_qk, True),
                       "only_cross_attention": (only_cross_attention, False)}
        for name, (value, default) in unsupported.items():
            if value != default:
                raise NotImplementedError(f"Attention: {name}={value!r} is not implemented "
                                          f"(only the default {default!r})")
        super().__init__(query_dim, cross_attention_dim, heads, dim_head, dropout, bias, out_bias,
                         dtype=dtype)
        self.group_norm = (GroupNorm(norm_num_groups, query_dim, eps=eps, dtype=dtype)
                           if norm_num_groups is not None else None)
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.upcast_attention, self.upcast_softmax = upcast_attention, upcast_softmax

    def forward(self, hidden_states, encoder_hidden_states=None, temb=None):
        if temb is not None:
            raise NotImplementedError("Attention: temb is only used by the spatial norm, which "
                                      "is not implemented")
        check_floating("Attention: hidden_states", hidden_states)
        check_rank("Attention: hidden_states", hidden_states, (3, 4), "(B, C, H, W) or (B, L, C)")
        x = hidden_states
        h = x
        if x.ndim == 4:
            check_dim("Attention: hidden_states", x, 1, self.query_dim, "channels")
            B, C, H, W = x.shape
            h = x.view(B, C, H * W).transpose(1, 2)                       # (B, L, C)
        if self.group_norm is not None:
            h = self.group_norm(h.transpose(1, 2)).transpose(1, 2)
        out = super().forward(h, encoder_hidden_states)
        if x.ndim == 4:
            out = out.transpose(1, 2).reshape(x.shape)                     # (B, C, H, W)
        if self.residual_connection:
            out = out + x
        return out / self.rescale_output_factor


class UNetMidBlock2D(nn.Module):
    """diffusers' `UNetMidBlock2D` without a timestep: resnet, ([attention], resnet) x num_layers.
    """

    def __init__(self, in_channels, temb_channels, dropout=0.0, num_layers=1, resnet_eps=1e-6,
                 resnet_time_scale_shift="default", resnet_act_fn="swish", resnet_groups=32,
                 attn_groups=None, resnet_pre_norm=True, add_attention=True, attention_head_dim=1,
                 output_scale_factor=1.0, dtype=None):
        super().__init__()
        _check_shift("UNetMidBlock2D", resnet_time_scale_shift)
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
                                 pre_norm=resnet_pre_norm, dtype=dtype)
        resnets, attentions = [resnet()], []
        for _ in range(num_layers):
            if add_attention:
                attentions.append(Attention(
                    in_channels, heads=in_channels // attention_head_dim,
                    dim_head=attention_head_dim, rescale_output_factor=output_scale_factor,
                    eps=resnet_eps, norm_num_groups=attn_groups, residual_connection=True,
                    bias=True, upcast_softmax=True, _from_deprecated_attn_block=True,
                    dtype=dtype))
            resnets.append(resnet())
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, hidden_states, temb=None):
        if temb is not None:
            raise NotImplementedError("UNetMidBlock2D: temb must be None (no timestep projection)")
        _check_nchw("UNetMidBlock2D: hidden_states", hidden_states, self.in_channels)
        x = self.resnets[0](hidden_states)
        for i, resnet in enumerate(self.resnets[1:]):
            if self.add_attention:
                x = self.attentions[i](x)
            x = resnet(x)
        return x


def _check_shift(cls_name, resnet_time_scale_shift):
    if resnet_time_scale_shift == "spatial":
        raise NotImplementedError(f"{cls_name}: resnet_time_scale_shift='spatial' (MoVQ's "
                                  f"spatial norm, ResnetBlockCondNorm2D) is not implemented")


class DownEncoderBlock2D(nn.Module):
    """diffusers' `DownEncoderBlock2D`: resnets, then `downsamplers.0` (name "op")."""

    def __init__(self, in_channels, out_channels, dropout=0.0, num_layers=1, resnet_eps=1e-6,
                 resnet_time_scale_shift="default", resnet_act_fn="swish", resnet_groups=32,
                 resnet_pre_norm=True, output_scale_factor=1.0, add_downsample=True,
                 downsample_padding=1, dtype=None):
        super().__init__()
        _check_shift("DownEncoderBlock2D", resnet_time_scale_shift)
        self.in_channels = in_channels
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels,
                          out_channels=out_channels, temb_channels=None, eps=resnet_eps,
                          groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift,
                          non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor,
                          pre_norm=resnet_pre_norm, dtype=dtype)
            for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([
            Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                         padding=downsample_padding, name="op", dtype=dtype)]
        ) if add_downsample else None

    def forward(self, hidden_states):
        _check_nchw("DownEncoderBlock2D: hidden_states", hidden_states, self.in_channels)
        x = hidden_states
        for resnet in self.resnets:
            x = resnet(x)
        for downsampler in self.downsamplers or []:
            x = downsampler(x)
        return x


class UpDecoderBlock2D(nn.Module):
    """diffusers' `UpDecoderBlock2D`: resnets, then `upsamplers.0` (nearest x2 + 3x3 conv)."""

    def __init__(self, in_channels, out_channels, resolution_idx=None, dropout=0.0, num_layers=1,
                 resnet_eps=1e-6, resnet_time_scale_shift="default", resnet_act_fn="swish",
                 resnet_groups=32, resnet_pre_norm=True, output_scale_factor=1.0,
                 add_upsample=True, temb_channels=None, dtype=None):
        super().__init__()
        _check_shift("UpDecoderBlock2D", resnet_time_scale_shift)
        self.in_channels, self.resolution_idx = in_channels, resolution_idx
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels,
                          out_channels=out_channels, temb_channels=temb_channels, eps=resnet_eps,
                          groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift,
                          non_linearity=resnet_act_fn, output_scale_factor=output_scale_factor,
                          pre_norm=resnet_pre_norm, dtype=dtype)
            for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([
            Upsample2D(out_channels, use_conv=True, out_channels=out_channels, dtype=dtype)]
        ) if add_upsample else None

    def forward(self, hidden_states, temb=None):
        if temb is not None:
            raise NotImplementedError("UpDecoderBlock2D: temb must be None")
        _check_nchw("UpDecoderBlock2D: hidden_states", hidden_states, self.in_channels)
        x = hidden_states
        for resnet in self.resnets:
            x = resnet(x)
        for upsampler in self.upsamplers or []:
            x = upsampler(x)
        return x


def _check_block_types(cls_name, block_types, expected, block_out_channels):
    for t in block_types:
        if t != expected:
            raise NotImplementedError(f"{cls_name}: block type {t!r} is not implemented; only "
                                      f"{expected!r} (the autoencoders' block)")
    if len(block_types) != len(block_out_channels):
        raise ValueError(f"{cls_name}: expected one block type per entry of block_out_channels "
                         f"{tuple(block_out_channels)}, got {len(block_types)}")


class Encoder(nn.Module):
    """diffusers' VAE `Encoder` (see `uvit_numpy.vae.Encoder`)."""

    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block=2, norm_num_groups=32, act_fn="silu",
                 double_z=True, mid_block_add_attention=True, dtype=None):
        super().__init__()
        _check_block_types("Encoder", down_block_types, "DownEncoderBlock2D", block_out_channels)
        self.in_channels, self.layers_per_block = in_channels, layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, stride=1, padding=1,
                              dtype=dtype)
        blocks, output_channel = [], block_out_channels[0]
        for i in range(len(down_block_types)):
            input_channel, output_channel = output_channel, block_out_channels[i]
            blocks.append(DownEncoderBlock2D(
                num_layers=layers_per_block, in_channels=input_channel,
                out_channels=output_channel, add_downsample=i < len(block_out_channels) - 1,
                resnet_eps=1e-6, downsample_padding=0, resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups, dtype=dtype))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn,
            output_scale_factor=1, resnet_time_scale_shift="default",
            attention_head_dim=block_out_channels[-1], resnet_groups=norm_num_groups,
            temb_channels=None, add_attention=mid_block_add_attention, dtype=dtype)
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6,
                                       dtype=dtype)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(block_out_channels[-1], 2 * out_channels if double_z
                               else out_channels, 3, padding=1, dtype=dtype)

    def forward(self, sample):
        _check_nchw("Encoder: sample", sample, self.in_channels)
        need = 2 ** (len(self.down_blocks) - 1)
        if min(sample.shape[2:]) < need:
            raise ValueError(f"Encoder: an image of {sample.shape[2]}x{sample.shape[3]} is too "
                             f"small for {len(self.down_blocks) - 1} down-samplings: each side "
                             f"must be at least {need}")
        x = self.conv_in(sample)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """diffusers' VAE `Decoder`, norm_type "group" (see `uvit_numpy.vae.Decoder`)."""

    def __init__(self, in_channels=3, out_channels=3, up_block_types=("UpDecoderBlock2D",),
                 block_out_channels=(64,), layers_per_block=2, norm_num_groups=32, act_fn="silu",
                 norm_type="group", mid_block_add_attention=True, dtype=None):
        super().__init__()
        if norm_type != "group":
            raise NotImplementedError(f"Decoder: norm_type={norm_type!r} is not implemented; only "
                                      f"'group' ('spatial' is MoVQ's SpatialNorm)")
        _check_block_types("Decoder", up_block_types, "UpDecoderBlock2D", block_out_channels)
        self.in_channels, self.layers_per_block = in_channels, layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], 3, stride=1, padding=1,
                              dtype=dtype)
        self.up_blocks = nn.ModuleList([])
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn,
            output_scale_factor=1, resnet_time_scale_shift="default",
            attention_head_dim=block_out_channels[-1], resnet_groups=norm_num_groups,
            temb_channels=None, add_attention=mid_block_add_attention, dtype=dtype)
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i in range(len(up_block_types)):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            self.up_blocks.append(UpDecoderBlock2D(
                num_layers=layers_per_block + 1, in_channels=prev_output_channel,
                out_channels=output_channel, add_upsample=i < len(block_out_channels) - 1,
                resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                temb_channels=None, resnet_time_scale_shift=norm_type, dtype=dtype))
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6,
                                       dtype=dtype)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1, dtype=dtype)

    def forward(self, sample, latent_embeds=None):
        if latent_embeds is not None:
            raise NotImplementedError("Decoder: latent_embeds is only used by norm_type "
                                      "'spatial', which is not implemented")
        _check_nchw("Decoder: sample", sample, self.in_channels)
        x = self.mid_block(self.conv_in(sample))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))
