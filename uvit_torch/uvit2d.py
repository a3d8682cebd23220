"""`UVit2DModel`, the transformer of aMUSEd, in PyTorch: the twin of `uvit_numpy.uvit2d`.

Same class names, constructor arguments (diffusers'), parameter names and channel-last block layout
as the NumPy reference; `state_dict()` has exactly diffusers' keys and shapes, so

    ours.load_state_dict(diffusers_model.state_dict())

works unchanged. The model's input ids (B, H, W) and logits (B, K, H, W) follow diffusers.
Built from `torch.nn` layers, `F.rms_norm`, `F.gelu` and `F.scaled_dot_product_attention`.
Norms and the micro-condition sinusoid compute in the model's dtype (diffusers keeps two float32
islands in a float64 model: RMSNorm's mean square and the micro-condition sinusoid).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from uvit_numpy.checks import check_batch, check_dim, check_floating, check_rank, check_state_dict
from uvit_numpy.configs import CONFIG_DEFAULTS, CONFIGS, resolve_config
from uvit_numpy.uvit2d import check_model_inputs, check_transformer_block_options

from . import functional as UF
from .layers import (GEGLU, GELU, Attention, ChannelsLastConv2d, ChannelsLastConvTranspose2d,
                     Dropout, Embedding, GlobalResponseNorm, LayerNorm, Linear, RMSNorm, SiLU,
                     TimestepEmbedding)

__all__ = [
    "CONFIGS", "CONFIG_DEFAULTS", "resolve_config",
    "UVit2DModel", "UVit2DConvEmbed", "UVitBlock", "ConvNextBlock", "ConvMlmLayer",
    "SkipFFTransformerBlock", "BasicTransformerBlock", "Attention", "FeedForward",
    "AdaLayerNormContinuous", "TimestepEmbedding", "Downsample2D", "Upsample2D",
]


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------
class AdaLayerNormContinuous(nn.Module):
    """norm(x) * (1 + scale) + shift, with (scale, shift) = linear(silu(cond)), scale first."""

    def __init__(self, embedding_dim, conditioning_embedding_dim, elementwise_affine=True,
                 eps=1e-5, bias=True, norm_type="layer_norm", dtype=None):
        super().__init__()
        self.silu = SiLU()
        self.linear = Linear(conditioning_embedding_dim, embedding_dim * 2, bias=bias, dtype=dtype)
        if norm_type == "layer_norm":
            self.norm = LayerNorm(embedding_dim, eps, elementwise_affine, bias, dtype=dtype)
        elif norm_type == "rms_norm":
            self.norm = RMSNorm(embedding_dim, eps, elementwise_affine, dtype=dtype)
        else:
            raise ValueError(f"AdaLayerNormContinuous: norm_type must be 'layer_norm' or "
                             f"'rms_norm', got {norm_type!r}")

    def forward(self, x, conditioning_embedding):
        check_floating("AdaLayerNormContinuous: x", x)
        check_rank("AdaLayerNormContinuous: conditioning_embedding", conditioning_embedding, 2,
                   "(B, D)")
        check_batch("AdaLayerNormContinuous: conditioning_embedding", conditioning_embedding,
                    x.shape[0])
        emb = self.linear(self.silu(conditioning_embedding).to(x.dtype))
        scale, shift = emb.chunk(2, dim=1)
        return UF.adaptive_modulation(self.norm(x), scale, shift)


class FeedForward(nn.Module):
    """net = [GEGLU(dim, inner_dim), Dropout, Linear(inner_dim, dim_out)] (+ final Dropout)."""

    def __init__(self, dim, dim_out=None, mult=4, dropout=0.0, activation_fn="geglu",
                 final_dropout=False, inner_dim=None, bias=True, dtype=None):
        super().__init__()
        if activation_fn != "geglu":
            raise NotImplementedError(f"FeedForward: only activation_fn='geglu' is implemented, "
                                      f"got {activation_fn!r}")
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim if dim_out is None else dim_out
        layers = [GEGLU(dim, inner_dim, bias=bias, dtype=dtype), Dropout(dropout),
                  Linear(inner_dim, dim_out, bias=bias, dtype=dtype)]
        if final_dropout:
            layers.append(Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, hidden_states):
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class SkipFFTransformerBlock(nn.Module):
    """Two pre-norm cross-attentions to the same (mapped) text; no feed-forward."""

    def __init__(self, dim, num_attention_heads, attention_head_dim, kv_input_dim,
                 kv_input_dim_proj_use_bias, dropout=0.0, cross_attention_dim=None,
                 attention_bias=False, attention_out_bias=True, dtype=None):
        super().__init__()
        self.kv_mapper = (Linear(kv_input_dim, dim, kv_input_dim_proj_use_bias, dtype=dtype)
                          if kv_input_dim != dim else None)
        attn = dict(query_dim=dim, cross_attention_dim=cross_attention_dim,
                    heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                    bias=attention_bias, out_bias=attention_out_bias, dtype=dtype)
        self.norm1 = RMSNorm(dim, 1e-06, dtype=dtype)
        self.attn1 = Attention(**attn)
        self.norm2 = RMSNorm(dim, 1e-06, dtype=dtype)
        self.attn2 = Attention(**attn)

    def forward(self, hidden_states, encoder_hidden_states):
        ctx = encoder_hidden_states
        if self.kv_mapper is not None:
            ctx = self.kv_mapper(F.silu(ctx))
        x = hidden_states + self.attn1(self.norm1(hidden_states), ctx)
        return x + self.attn2(self.norm2(x), ctx)


class ConvNextBlock(nn.Module):
    """ConvNeXt-V2 block with FiLM conditioning (after the residual add), channel-last."""

    def __init__(self, channels, layer_norm_eps, ln_elementwise_affine, use_bias, hidden_dropout,
                 hidden_size, res_ffn_factor=4, dtype=None):
        super().__init__()
        inner = int(channels * res_ffn_factor)
        self.depthwise = ChannelsLastConv2d(channels, channels, kernel_size=3, padding=1,
                                            groups=channels, bias=use_bias, dtype=dtype)
        self.norm = RMSNorm(channels, layer_norm_eps, ln_elementwise_affine, dtype=dtype)
        self.channelwise_linear_1 = Linear(channels, inner, bias=use_bias, dtype=dtype)
        self.channelwise_act = GELU()
        self.channelwise_norm = GlobalResponseNorm(inner, dtype=dtype)
        self.channelwise_linear_2 = Linear(inner, channels, bias=use_bias, dtype=dtype)
        self.channelwise_dropout = Dropout(hidden_dropout)
        self.cond_embeds_mapper = Linear(hidden_size, channels * 2, use_bias, dtype=dtype)

    def forward(self, x, cond_embeds):
        check_floating("ConvNextBlock: x", x)
        check_rank("ConvNextBlock: x", x, 4, "(B, H, W, C)")
        check_batch("ConvNextBlock: cond_embeds", cond_embeds, x.shape[0])
        h = self.norm(self.depthwise(x))
        h = self.channelwise_act(self.channelwise_linear_1(h))
        h = self.channelwise_norm(h)
        h = self.channelwise_dropout(self.channelwise_linear_2(h))
        h = h + x
        scale, shift = self.cond_embeds_mapper(F.silu(cond_embeds)).chunk(2, dim=1)
        return UF.adaptive_modulation(h, scale, shift)


def _make_sampler_norm(cls_name, norm_type, channels, eps, elementwise_affine, dtype):
    if norm_type == "ln_norm":
        return LayerNorm(channels, eps, elementwise_affine, dtype=dtype)
    if norm_type == "rms_norm":
        return RMSNorm(channels, eps, elementwise_affine, dtype=dtype)
    if norm_type is None:
        return None
    raise ValueError(f"{cls_name}: unknown norm_type {norm_type!r}")


class Downsample2D(nn.Module):
    """diffusers' `Downsample2D` (all its constructor arguments), channel-last."""

    def __init__(self, channels, use_conv=False, out_channels=None, padding=1, name="conv",
                 kernel_size=3, norm_type=None, eps=None, elementwise_affine=None, bias=True,
                 dtype=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.padding, self.name = use_conv, padding, name
        self.norm = _make_sampler_norm("Downsample2D", norm_type, channels, eps,
                                       elementwise_affine, dtype)
        if use_conv:
            conv = ChannelsLastConv2d(channels, self.out_channels, kernel_size=kernel_size,
                                      stride=2, padding=padding, bias=bias, dtype=dtype)
        else:
            if self.out_channels != channels:
                raise ValueError(f"Downsample2D: average pooling keeps the channels, got "
                                 f"channels={channels}, out_channels={self.out_channels}")
            conv = None
        if name == "conv":
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states):
        check_floating("Downsample2D: hidden_states", hidden_states)
        check_rank("Downsample2D: hidden_states", hidden_states, 4, "(B, H, W, C)")
        check_dim("Downsample2D: hidden_states", hidden_states, -1, self.channels, "channels")
        x = hidden_states if self.norm is None else self.norm(hidden_states)
        if not self.use_conv:                             # 2x2 average pool, odd edges dropped
            return F.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        if self.padding == 0:
            x = F.pad(x, (0, 0, 0, 1, 0, 1))              # one zero row / column, bottom / right
        return self.conv(x)


class Upsample2D(nn.Module):
    """diffusers' `Upsample2D` (all its constructor arguments), channel-last."""

    def __init__(self, channels, use_conv=False, use_conv_transpose=False, out_channels=None,
                 name="conv", kernel_size=None, padding=1, norm_type=None, eps=None,
                 elementwise_affine=None, bias=True, interpolate=True, dtype=None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.use_conv_transpose = use_conv, use_conv_transpose
        self.name, self.interpolate = name, interpolate
        self.norm = _make_sampler_norm("Upsample2D", norm_type, channels, eps,
                                       elementwise_affine, dtype)
        conv = None
        if use_conv_transpose:
            conv = ChannelsLastConvTranspose2d(
                channels, self.out_channels, kernel_size=4 if kernel_size is None else kernel_size,
                stride=2, padding=padding, bias=bias, dtype=dtype)
        elif use_conv:
            conv = ChannelsLastConv2d(channels, self.out_channels,
                                      kernel_size=3 if kernel_size is None else kernel_size,
                                      padding=padding, bias=bias, dtype=dtype)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states, output_size=None):
        check_floating("Upsample2D: hidden_states", hidden_states)
        check_rank("Upsample2D: hidden_states", hidden_states, 4, "(B, H, W, C)")
        check_dim("Upsample2D: hidden_states", hidden_states, -1, self.channels, "channels")
        x = hidden_states if self.norm is None else self.norm(hidden_states)
        conv = self.conv if self.name == "conv" else self.Conv2d_0
        if self.use_conv_transpose:
            return conv(x)
        if self.interpolate:
            if output_size is not None:
                raise NotImplementedError("Upsample2D: output_size is not implemented")
            x = x.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        return conv(x) if self.use_conv else x


class BasicTransformerBlock(nn.Module):
    """diffusers' `BasicTransformerBlock` with norm_type "layer_norm" or "ada_norm_continuous"
    and the GEGLU feed-forward (other options raise NotImplementedError)."""

    def __init__(self, dim, num_attention_heads, attention_head_dim, dropout=0.0,
                 cross_attention_dim=None, activation_fn="geglu", num_embeds_ada_norm=None,
                 attention_bias=False, only_cross_attention=False, double_self_attention=False,
                 upcast_attention=False, norm_elementwise_affine=True, norm_type="layer_norm",
                 norm_eps=1e-5, final_dropout=False, attention_type="default",
                 positional_embeddings=None, num_positional_embeddings=None,
                 ada_norm_continous_conditioning_embedding_dim=None, ada_norm_bias=None,
                 ff_inner_dim=None, ff_bias=True, attention_out_bias=True, dtype=None):
        super().__init__()
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
                                              kind, dtype=dtype)
            return LayerNorm(dim, norm_eps, norm_elementwise_affine, dtype=dtype)

        attn = dict(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim,
                    dropout=dropout, bias=attention_bias, out_bias=attention_out_bias, dtype=dtype)
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
                              dtype=dtype)

    def _norm(self, norm, x, cond):
        return norm(x, cond) if self.norm_type == "ada_norm_continuous" else norm(x)

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_text_emb=None):
        check_floating("BasicTransformerBlock: hidden_states", hidden_states)
        check_rank("BasicTransformerBlock: hidden_states", hidden_states, 3, "(B, L, C)")
        if self.norm_type == "ada_norm_continuous" and pooled_text_emb is None:
            raise ValueError("BasicTransformerBlock: norm_type='ada_norm_continuous' needs "
                             "pooled_text_emb (B, D), got None")
        x = hidden_states
        x = x + self.attn1(self._norm(self.norm1, x, pooled_text_emb))
        if self.attn2 is not None:
            x = x + self.attn2(self._norm(self.norm2, x, pooled_text_emb), encoder_hidden_states)
        return x + self.ff(self._norm(self.norm3, x, pooled_text_emb))


class UVitBlock(nn.Module):
    """[Downsample2D] -> (ConvNextBlock, SkipFFTransformerBlock) x num_res_blocks
    -> [Upsample2D]."""

    def __init__(self, channels, num_res_blocks, hidden_size, hidden_dropout, ln_elementwise_affine,
                 layer_norm_eps, use_bias, block_num_heads, attention_dropout, downsample, upsample,
                 dtype=None):
        super().__init__()
        self.downsample = (Downsample2D(channels, use_conv=True, padding=0, name="Conv2d_0",
                                        kernel_size=2, norm_type="rms_norm", eps=layer_norm_eps,
                                        elementwise_affine=ln_elementwise_affine, bias=use_bias,
                                        dtype=dtype) if downsample else None)
        self.res_blocks = nn.ModuleList(
            [ConvNextBlock(channels, layer_norm_eps, ln_elementwise_affine, use_bias,
                           hidden_dropout, hidden_size, dtype=dtype)
             for _ in range(num_res_blocks)])
        self.attention_blocks = nn.ModuleList(
            [SkipFFTransformerBlock(channels, block_num_heads, channels // block_num_heads,
                                    hidden_size, use_bias, attention_dropout, channels,
                                    attention_bias=use_bias, attention_out_bias=use_bias,
                                    dtype=dtype)
             for _ in range(num_res_blocks)])
        self.upsample = (Upsample2D(channels, use_conv_transpose=True, kernel_size=2, padding=0,
                                    name="conv", norm_type="rms_norm", eps=layer_norm_eps,
                                    elementwise_affine=ln_elementwise_affine, bias=use_bias,
                                    interpolate=False, dtype=dtype) if upsample else None)

    def forward(self, x, pooled_text_emb, encoder_hidden_states):
        check_floating("UVitBlock: x", x)
        check_rank("UVitBlock: x", x, 4, "(B, H, W, C)")
        if self.downsample is not None:
            x = self.downsample(x)
        for res_block, attention_block in zip(self.res_blocks, self.attention_blocks):
            x = res_block(x, pooled_text_emb)
            B, H, W, C = x.shape
            x = attention_block(x.reshape(B, H * W, C), encoder_hidden_states).view(B, H, W, C)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class UVit2DConvEmbed(nn.Module):
    """Token ids (B, H, W) -> embedding -> RMSNorm -> 1x1 conv -> (B, H, W, block_out_channels)."""

    def __init__(self, in_channels, block_out_channels, vocab_size, elementwise_affine, eps, bias,
                 dtype=None):
        super().__init__()
        self.embeddings = Embedding(vocab_size, in_channels, dtype=dtype)
        self.layer_norm = RMSNorm(in_channels, eps, elementwise_affine, dtype=dtype)
        self.conv = ChannelsLastConv2d(in_channels, block_out_channels, kernel_size=1, bias=bias,
                                       dtype=dtype)

    def forward(self, input_ids):
        check_rank("UVit2DConvEmbed: input_ids", input_ids, 3, "(B, H, W)")
        return self.conv(self.layer_norm(self.embeddings(input_ids)))


class ConvMlmLayer(nn.Module):
    """1x1 conv -> RMSNorm -> 1x1 conv to logits; channel-last in, (B, K, H, W) out (a permuted
    view of channel-last memory, like the output of diffusers' channels-last convolution)."""

    def __init__(self, block_out_channels, in_channels, use_bias, ln_elementwise_affine,
                 layer_norm_eps, codebook_size, dtype=None):
        super().__init__()
        self.conv1 = ChannelsLastConv2d(block_out_channels, in_channels, kernel_size=1,
                                        bias=use_bias, dtype=dtype)
        self.layer_norm = RMSNorm(in_channels, layer_norm_eps, ln_elementwise_affine, dtype=dtype)
        self.conv2 = ChannelsLastConv2d(in_channels, codebook_size, kernel_size=1, bias=use_bias,
                                        channels_first_out=True, dtype=dtype)

    def forward(self, hidden_states):
        check_floating("ConvMlmLayer: hidden_states", hidden_states)
        check_rank("ConvMlmLayer: hidden_states", hidden_states, 4, "(B, H, W, C)")
        return self.conv2(self.layer_norm(self.conv1(hidden_states)))  # (B, K, H, W), a view


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class UVit2DModel(nn.Module):
    """aMUSEd's transformer (diffusers' `UVit2DModel`): logits (B, K, H, W) for token ids."""

    def __init__(self, hidden_size=1024, use_bias=False, hidden_dropout=0.0, cond_embed_dim=768,
                 micro_cond_encode_dim=256, micro_cond_embed_dim=1280, encoder_hidden_size=768,
                 vocab_size=8256, codebook_size=8192, in_channels=768, block_out_channels=768,
                 num_res_blocks=3, downsample=False, upsample=False, block_num_heads=12,
                 num_hidden_layers=22, num_attention_heads=16, attention_dropout=0.0,
                 intermediate_size=2816, layer_norm_eps=1e-6, ln_elementwise_affine=True,
                 sample_size=64, dtype=None):
        super().__init__()
        self._config = {k: v for k, v in locals().items() if k in CONFIG_DEFAULTS}
        eps, affine, bias = layer_norm_eps, ln_elementwise_affine, use_bias
        self.encoder_proj = Linear(encoder_hidden_size, hidden_size, bias=bias, dtype=dtype)
        self.encoder_proj_layer_norm = RMSNorm(hidden_size, eps, affine, dtype=dtype)
        self.embed = UVit2DConvEmbed(in_channels, block_out_channels, vocab_size, affine, eps,
                                     bias, dtype=dtype)
        self.cond_embed = TimestepEmbedding(micro_cond_embed_dim + cond_embed_dim, hidden_size,
                                            sample_proj_bias=bias, dtype=dtype)
        self.down_block = UVitBlock(block_out_channels, num_res_blocks, hidden_size,
                                    hidden_dropout, affine, eps, bias, block_num_heads,
                                    attention_dropout, downsample, False, dtype=dtype)
        self.project_to_hidden_norm = RMSNorm(block_out_channels, eps, affine, dtype=dtype)
        self.project_to_hidden = Linear(block_out_channels, hidden_size, bias=bias, dtype=dtype)
        self.transformer_layers = nn.ModuleList([
            BasicTransformerBlock(
                dim=hidden_size, num_attention_heads=num_attention_heads,
                attention_head_dim=hidden_size // num_attention_heads, dropout=hidden_dropout,
                cross_attention_dim=hidden_size, attention_bias=bias,
                norm_type="ada_norm_continuous",
                ada_norm_continous_conditioning_embedding_dim=hidden_size,
                norm_elementwise_affine=affine, norm_eps=eps, ada_norm_bias=bias,
                ff_inner_dim=intermediate_size, ff_bias=bias, attention_out_bias=bias,
                dtype=dtype)
            for _ in range(num_hidden_layers)])
        self.project_from_hidden_norm = RMSNorm(hidden_size, eps, affine, dtype=dtype)
        self.project_from_hidden = Linear(hidden_size, block_out_channels, bias=bias, dtype=dtype)
        self.up_block = UVitBlock(block_out_channels, num_res_blocks, hidden_size, hidden_dropout,
                                  affine, eps, bias, block_num_heads, attention_dropout,
                                  downsample=False, upsample=upsample, dtype=dtype)
        self.mlm_layer = ConvMlmLayer(block_out_channels, in_channels, bias, affine, eps,
                                      codebook_size, dtype=dtype)

    @property
    def config(self):
        """The constructor arguments (a copy), as diffusers' `model.config`."""
        return dict(self._config)

    @property
    def dtype(self):
        return self.encoder_proj.weight.dtype

    @classmethod
    def from_config(cls, config=None, dtype=None, **overrides):
        """A randomly initialised model (torch's default init) from a name in `CONFIGS` or a
        config dict."""
        return cls(**resolve_config(config, **overrides), dtype=dtype)

    @classmethod
    def from_pretrained(cls, path, dtype=None, variant=None):
        """Load a diffusers folder (config.json + diffusion_pytorch_model.safetensors, or a
        pipeline folder's `transformer/`). The model is built on the meta device and takes the
        loaded tensors as its parameters (no random init). Returns it in eval mode."""
        from .weights import load_pretrained
        config, state_dict = load_pretrained(path, variant=variant)
        if dtype is None:
            dtype = next(iter(state_dict.values())).dtype if state_dict else torch.float32
        with torch.device("meta"):
            model = cls.from_config(resolve_config(config), dtype=dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, assign=True)
        return model.eval()

    def save_pretrained(self, path, **extra):
        """Write config.json + diffusion_pytorch_model.safetensors that diffusers can load;
        `extra` entries (how the weights were trained, say) go under `_`-prefixed keys, which
        diffusers and `from_pretrained` leave aside."""
        from uvit_numpy.weights import folder_config

        from .weights import save_pretrained
        save_pretrained(path, folder_config(self.config, extra), self.state_dict())

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """torch's `load_state_dict`, after a check that reports every missing, unexpected and
        mis-shaped key in one ValueError (`check_state_dict`, as the NumPy model does)."""
        check_state_dict(type(self).__name__, self.state_dict(), state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, input_ids, encoder_hidden_states, pooled_text_emb, micro_conds,
                cross_attention_kwargs=None):
        """Logits (B, codebook_size, H', W'); see `uvit_numpy.uvit2d.UVit2DModel.forward`.
        `cross_attention_kwargs` is accepted (drop-in for diffusers' pipelines) and ignored."""
        for name, value in (("input_ids", input_ids), ("encoder_hidden_states",
                                                       encoder_hidden_states),
                            ("pooled_text_emb", pooled_text_emb), ("micro_conds", micro_conds)):
            UF.check_tensor(f"UVit2DModel: {name}", value)
        B, _, _ = check_model_inputs(self._config, input_ids, encoder_hidden_states,
                                     pooled_text_emb, micro_conds)
        dt = self.dtype
        ctx = self.encoder_proj_layer_norm(self.encoder_proj(encoder_hidden_states.to(dt)))
        micro = UF.micro_conditioning(micro_conds, B, self._config["micro_cond_encode_dim"], dt)
        cond = self.cond_embed(torch.cat([pooled_text_emb.to(dt), micro], dim=1))
        x = self.down_block(self.embed(input_ids), cond, ctx)
        B, H1, W1, C = x.shape
        z = self.project_to_hidden(self.project_to_hidden_norm(x.reshape(B, H1 * W1, C)))
        for layer in self.transformer_layers:
            z = layer(z, ctx, cond)
        z = self.project_from_hidden(self.project_from_hidden_norm(z))
        x = self.up_block(z.view(B, H1, W1, C), cond, ctx)
        return self.mlm_layer(x)
