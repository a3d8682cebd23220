"""U-ViT (arXiv 2209.12152) in PyTorch: the twin of `uvit_numpy.uvit`, same classes, arguments and
state-dict keys, so the paper's released `.pth` checkpoints load unchanged (see `checkpoint.py`).

Built from torch.nn layers and `F.scaled_dot_product_attention`. As on the NumPy side, the timestep
sinusoid is formed in float64 and rounded to the model's dtype (the paper's code uses float32), so a
float64 model is float64 throughout. `use_checkpoint=True` turns on gradient checkpointing in
training, as in the paper's code.
"""

import torch
import torch.utils.checkpoint
from torch import nn

from uvit_numpy.checks import check_batch, check_floating, check_rank, check_state_dict
from uvit_numpy.functional import sincos_2d_position_embedding
from uvit_numpy.uvit import (CONFIGS, DESCRIPTIONS, SKIP_MODES, check_context,
                             check_conv_stem, check_image, check_labels, check_options,
                             check_sizes, check_timesteps, config, config_of, is_text_config,
                             read_folder_config)
from uvit_numpy.weights import folder_config

from . import functional as UF
from .functional import adaptive_modulation
from .layers import (GELU, Conv2d, Dropout, Embedding, LayerNorm, Linear, QKVAttention, ReLU,
                     SiLU)

__all__ = ["CONFIGS", "DESCRIPTIONS", "PatchEmbed", "Mlp", "Attention", "Block", "UViT",
           "UViTText", "from_config", "count_parameters", "sizes_table", "long_skip", "AdaLN",
           "AdaLNBlock", "ConvPatchEmbed"]


class PatchEmbed(nn.Module):
    """Conv2d(in_chans, embed_dim, P, stride=P) -> (B, L, D) tokens in row-major patch order."""

    def __init__(self, patch_size, in_chans=3, embed_dim=768, dtype=None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, dtype=dtype)

    def forward(self, x):
        check_floating("PatchEmbed: x", x)
        check_rank("PatchEmbed: x", x, 4, "(B, C, H, W)")
        P = self.patch_size
        if x.shape[2] % P or x.shape[3] % P:
            raise ValueError(f"PatchEmbed: expected height and width that are multiples of the "
                             f"patch size {P}, got {x.shape[2]}x{x.shape[3]}")
        return self.proj(x).flatten(2).transpose(1, 2)     # (B, D, h, w) -> (B, L, D)


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> GELU (exact) -> fc2, dropout `drop` after each linear."""

    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0,
                 dtype=None):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, dtype=dtype)
        self.act = GELU()
        self.fc2 = Linear(hidden_features, out_features, dtype=dtype)
        self.drop = Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(QKVAttention):
    """The paper's fused-qkv self-attention (`qkv`, `proj`): `layers.QKVAttention` by its name."""


def long_skip(x, skip, skip_linear, mode="concat"):
    """The long skip joined to the current tokens x, (B, N, D) twice -> (B, N, D): "concat"
    skip_linear(cat([x, skip], -1)) (the current tokens first), "add" x + skip, "project_skip"
    x + skip_linear(skip), "project_sum" skip_linear(x + skip)."""
    check_floating("long_skip: x", x)
    if tuple(skip.shape) != tuple(x.shape):
        raise ValueError(f"long_skip: expected a skip shaped like x {tuple(x.shape)}, got "
                         f"{tuple(skip.shape)}")
    if mode == "concat":
        return skip_linear(torch.cat([x, skip], dim=-1))
    if mode == "add":
        return x + skip
    if mode == "project_skip":
        return x + skip_linear(skip)
    if mode == "project_sum":
        return skip_linear(x + skip)
    raise ValueError(f"long_skip: expected mode in {SKIP_MODES}, got {mode!r}")


def make_skip_linear(dim, mode, dtype=None):
    """Linear(2D, D) for "concat", Linear(D, D) for "project_*", None for "add"."""
    if mode not in SKIP_MODES:
        raise ValueError(f"skip_mode: expected one of {SKIP_MODES}, got {mode!r}")
    if mode == "add":
        return None
    return Linear(2 * dim if mode == "concat" else dim, dim, dtype=dtype)


class Block(nn.Module):
    """Pre-norm transformer block; with `skip`, a long skip joined as `skip_mode` says (the
    paper's "concat": `skip_linear` Linear(2D, D))."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, skip=False,
                 use_checkpoint=False, skip_mode="concat", dtype=None):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-5, dtype=dtype)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              dtype=dtype)
        self.norm2 = LayerNorm(dim, eps=1e-5, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype)
        self.skip_mode = skip_mode if skip else None
        self.skip_linear = make_skip_linear(dim, skip_mode, dtype) if skip else None
        self.use_checkpoint = use_checkpoint

    def check_skip(self, x, skip):
        name = type(self).__name__
        if self.skip_mode is not None and skip is None:
            what = ("a skip_linear" if self.skip_linear is not None
                    else f"a long skip (skip_mode={self.skip_mode!r})")
            raise ValueError(f"{name}: this block has {what} and expects a skip of shape "
                             f"{tuple(x.shape)}, got None")
        if self.skip_mode is None and skip is not None:
            raise ValueError(f"{name}: this block has no skip_linear (skip=False) and takes no "
                             f"skip, got one of shape {tuple(skip.shape)}")

    def forward(self, x, skip=None, emb=None):
        check_floating("Block: x", x)
        check_rank("Block: x", x, 3, "(B, N, D)")
        self.check_skip(x, skip)
        if emb is not None:
            raise ValueError("Block: this block takes the time as a token (time_mode='token') "
                             f"and no emb, got one of shape {tuple(emb.shape)}")
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, use_reentrant=False)
        return self._forward(x, skip)

    def _forward(self, x, skip=None):
        if self.skip_mode is not None:
            x = long_skip(x, skip, self.skip_linear, self.skip_mode)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AdaLN(nn.Module):
    """Adaptive LayerNorm (time_mode="adaln"): (1 + scale) * LayerNorm(x) + shift with
    [scale, shift] = linear(emb), scale first; the norm has no weight or bias of its own."""

    def __init__(self, dim, eps=1e-5, dtype=None):
        super().__init__()
        self.linear = Linear(dim, 2 * dim, dtype=dtype)
        self.norm = LayerNorm(dim, eps=eps, elementwise_affine=False, dtype=dtype)

    def forward(self, x, emb):
        check_floating("AdaLN: emb", emb)
        check_rank("AdaLN: emb", emb, 2, "(B, D)")
        check_batch("AdaLN: emb", emb, x.shape[0])
        scale, shift = self.linear(emb).chunk(2, dim=-1)
        return adaptive_modulation(self.norm(x), scale, shift)


class AdaLNBlock(Block):
    """`Block` whose norm1 and norm2 are `AdaLN`s of the time embedding emb (B, D)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, skip=False,
                 use_checkpoint=False, skip_mode="concat", dtype=None):
        nn.Module.__init__(self)
        self.norm1 = AdaLN(dim, eps=1e-5, dtype=dtype)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              dtype=dtype)
        self.norm2 = AdaLN(dim, eps=1e-5, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype)
        self.skip_mode = skip_mode if skip else None
        self.skip_linear = make_skip_linear(dim, skip_mode, dtype) if skip else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x, skip=None, emb=None):
        check_floating("AdaLNBlock: x", x)
        check_rank("AdaLNBlock: x", x, 3, "(B, N, D)")
        self.check_skip(x, skip)
        if emb is None:
            raise ValueError("AdaLNBlock: expected the time embedding emb of shape (B, D) = "
                             f"({x.shape[0]}, {x.shape[-1]}), got None")
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, emb,
                                                     use_reentrant=False)
        return self._forward(x, skip, emb)

    def _forward(self, x, skip=None, emb=None):
        if self.skip_mode is not None:
            x = long_skip(x, skip, self.skip_linear, self.skip_mode)
        x = x + self.attn(self.norm1(x, emb))
        return x + self.mlp(self.norm2(x, emb))


class ConvPatchEmbed(nn.Module):
    """The convolutional stem (patch_embed_type="conv"): log2(P) x [Conv2d 3x3 stride 2, ReLU]
    with widths doubling up to D, then `proj` Conv2d(D, D, 1); see the NumPy twin."""

    def __init__(self, patch_size, in_chans=3, embed_dim=768, dtype=None):
        super().__init__()
        check_conv_stem("ConvPatchEmbed", patch_size, embed_dim)
        self.patch_size = patch_size
        k = patch_size.bit_length() - 1
        widths = [in_chans] + [embed_dim >> (k - i) for i in range(1, k + 1)]
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [Conv2d(c_in, c_out, 3, stride=2, padding=1, dtype=dtype), ReLU()]
        self.stem = nn.Sequential(*layers)
        self.proj = Conv2d(embed_dim, embed_dim, 1, dtype=dtype)

    def forward(self, x):
        check_floating("ConvPatchEmbed: x", x)
        check_rank("ConvPatchEmbed: x", x, 4, "(B, C, H, W)")
        P = self.patch_size
        if x.shape[2] % P or x.shape[3] % P:
            raise ValueError(f"ConvPatchEmbed: expected height and width that are multiples of "
                             f"the patch size {P}, got {x.shape[2]}x{x.shape[3]}")
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, L, D)


class UViT(nn.Module):
    """U-ViT, unconditional or class-conditional; see `uvit_numpy.uvit.UViT` for the arguments
    (the paper's, then the ablation options skip_mode, time_mode, conv_position,
    patch_embed_type and pos_embed_type, whose defaults are the paper's model).

    forward(x, timesteps, y=None, return_activations=False) -> (B, C, H, W) [, activations].
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None,
                 mlp_time_embed=False, num_classes=-1, use_checkpoint=False, conv=True, skip=True,
                 skip_mode="concat", time_mode="token", conv_position="after",
                 patch_embed_type="linear", pos_embed_type="learned", dtype=None):
        super().__init__()
        self.config = config_of(locals())
        self._set_options(patch_size, embed_dim, skip_mode, time_mode, conv_position,
                          patch_embed_type, pos_embed_type)
        self._build_stem(img_size, patch_size, in_chans, embed_dim, num_heads, mlp_time_embed,
                         dtype)
        self.num_classes = num_classes
        if num_classes > 0:
            self.label_emb = Embedding(num_classes, embed_dim, dtype=dtype)
        self.extras = (num_classes > 0) + (time_mode == "token")  # [label,] [time]
        self._build_trunk(depth, mlp_ratio, qkv_bias, qk_scale, use_checkpoint, conv, skip, dtype)

    def _set_options(self, patch_size, embed_dim, skip_mode="concat", time_mode="token",
                     conv_position="after", patch_embed_type="linear", pos_embed_type="learned"):
        check_options(type(self).__name__, skip_mode, time_mode, conv_position,
                      patch_embed_type, pos_embed_type, patch_size, embed_dim)
        self.skip_mode, self.time_mode, self.conv_position = skip_mode, time_mode, conv_position
        self.patch_embed_type, self.pos_embed_type = patch_embed_type, pos_embed_type

    def _build_stem(self, img_size, patch_size, in_chans, embed_dim, num_heads, mlp_time_embed,
                    dtype):
        check_sizes(type(self).__name__, img_size, patch_size, embed_dim, num_heads)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_patches = (img_size // patch_size) ** 2
        embed_cls = PatchEmbed if self.patch_embed_type == "linear" else ConvPatchEmbed
        self.patch_embed = embed_cls(patch_size, in_chans, embed_dim, dtype=dtype)
        self.time_embed = nn.Sequential(
            Linear(embed_dim, 4 * embed_dim, dtype=dtype), SiLU(),
            Linear(4 * embed_dim, embed_dim, dtype=dtype)) if mlp_time_embed else nn.Identity()

    def _build_trunk(self, depth, mlp_ratio, qkv_bias, qk_scale, use_checkpoint, conv, skip,
                     dtype):
        D = self.embed_dim
        self.depth, self.skip, self.conv = depth, skip, conv
        self.pos_embed = (nn.Parameter(torch.zeros(1, self.extras + self.num_patches, D,
                                                   dtype=dtype))
                          if self.pos_embed_type == "learned" else None)
        block_cls = Block if self.time_mode == "token" else AdaLNBlock

        def block(with_skip=False):
            return block_cls(D, self.num_heads, mlp_ratio, qkv_bias, qk_scale, skip=with_skip,
                             use_checkpoint=use_checkpoint, skip_mode=self.skip_mode,
                             dtype=dtype)

        self.in_blocks = nn.ModuleList([block() for _ in range(depth // 2)])
        self.mid_block = block()
        self.out_blocks = nn.ModuleList([block(skip) for _ in range(depth // 2)])
        self.norm = LayerNorm(D, eps=1e-5, dtype=dtype)
        self.patch_dim = self.patch_size ** 2 * self.in_chans
        self.token_conv = (Conv2d(D, D, 3, padding=1, dtype=dtype)
                           if conv and self.conv_position == "before" else None)
        self.decoder_pred = Linear(D, self.patch_dim, dtype=dtype)
        self.final_layer = (Conv2d(self.in_chans, self.in_chans, 3, padding=1, dtype=dtype)
                            if conv and self.conv_position == "after" else nn.Identity())
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    @torch.no_grad()
    def _init_weights(m):
        """The paper's init: Linear weights trunc N(0, 0.02^2), biases 0; LayerNorm 1 and 0."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, name, **overrides):
        """The paper's model `name` (a key of `CONFIGS`): UViT, or UViTText for MS-COCO."""
        return from_config(name, **overrides)

    @classmethod
    def from_pretrained(cls, path, dtype=None):
        """Load a model folder written by `save_pretrained` (either package's): config.json and
        safetensors weights. `dtype` defaults to the weights'. Returns the model in eval mode."""
        from .weights import load_pretrained
        config, state_dict = load_pretrained(path)
        if dtype is None:
            dtype = next(iter(state_dict.values())).dtype
        name, kwargs = read_folder_config(config)
        with torch.device("meta"):
            model = {"UViT": UViT, "UViTText": UViTText}[name](**kwargs, dtype=dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, assign=True)
        return model.eval()

    def save_pretrained(self, path, **extra):
        """Write config.json (the constructor arguments, and `extra` under `_` keys) and the
        weights as safetensors: the folder `uvit_numpy.UViT.from_pretrained` reads too."""
        from .weights import save_pretrained
        save_pretrained(path, folder_config(self.config, extra), self.state_dict(),
                        class_name=type(self).__name__)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """torch's load_state_dict, after checking every key and shape: all missing, unexpected
        and mis-shaped entries are reported in one ValueError (mis-shaped ones even if not
        strict)."""
        check_state_dict(type(self).__name__, self.state_dict(), state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def check_inputs(self, x, timesteps, y=None):
        name = type(self).__name__
        UF.check_tensor(f"{name}: x", x)
        UF.check_tensor(f"{name}: timesteps", timesteps)
        UF.check_tensor(f"{name}: y", y, optional=True)
        check_image(f"{name}: x", x, self.in_chans, self.img_size, self.patch_size)
        check_timesteps(f"{name}: timesteps", timesteps, x.shape[0])
        check_labels(f"{name}: y", y, self.num_classes, x.shape[0])

    def time_token(self, timesteps):
        """(B,) -> (B, 1, D): sinusoid [cos, sin] formed in float64, rounded to the model dtype."""
        t = timesteps.to(self.decoder_pred.weight.dtype)
        return self.time_embed(UF.timestep_embedding(t, self.embed_dim)).unsqueeze(1)

    def time_embedding(self, timesteps):
        """(B,) -> (B, D): the time token without its token axis (the AdaLN blocks' input)."""
        return self.time_token(timesteps)[:, 0, :]

    def position_embedding(self):
        """(1, extras + L, D): `pos_embed`, or the fixed 2-D sinusoids (pos_embed_type="sincos2d",
        formed in float64 by the NumPy function and rounded to the model's dtype)."""
        if self.pos_embed is not None:
            return self.pos_embed
        g = self.img_size // self.patch_size
        table = sincos_2d_position_embedding(g, g, self.embed_dim, self.extras)
        weight = self.decoder_pred.weight
        return torch.from_numpy(table).to(device=weight.device, dtype=weight.dtype)

    def embed(self, x, timesteps, y=None):
        """[label (if class-conditional), time (time_mode="token"), patches] + pos_embed:
        (B, extras + L, D)."""
        self.check_inputs(x, timesteps, y)
        tokens = [self.patch_embed(x)]
        if self.time_mode == "token":
            tokens.insert(0, self.time_token(timesteps))
        if y is not None:
            tokens.insert(0, self.label_emb(y).unsqueeze(1))
        return torch.cat(tokens, dim=1) + self.position_embedding()

    def run_blocks(self, x, emb=None, return_activations=False):
        """The blocks with their long skips (out_blocks[i] gets in_blocks[-1 - i]'s output);
        emb: the time embedding (B, D) with time_mode="adaln", else None."""
        acts = {"in_blocks": [], "mid_block": None, "out_blocks": []}
        skips = []
        for blk in self.in_blocks:
            x = blk(x, emb=emb)
            skips.append(x)
            acts["in_blocks"].append(x)
        x = self.mid_block(x, emb=emb)
        acts["mid_block"] = x
        for blk in self.out_blocks:
            skip = skips.pop()
            x = blk(x, skip if self.skip else None, emb=emb)
            acts["out_blocks"].append(x)
        return (x, acts) if return_activations else x

    def decode(self, x):
        """(B, extras + L, D) -> (B, C, H, W): norm, decoder_pred, drop extras, unpatchify, conv
        (conv_position="before": norm, drop extras, `token_conv` on the grid, decoder_pred)."""
        if self.token_conv is not None:
            g = self.img_size // self.patch_size
            h = self.norm(x)[:, self.extras:, :]
            h = h.transpose(1, 2).reshape(h.shape[0], -1, g, g)  # (B, L, D) -> (B, D, h, w)
            h = self.token_conv(h).flatten(2).transpose(1, 2)     # (B, D, h, w) -> (B, L, D)
            return UF.unpatchify(self.decoder_pred(h), self.in_chans)
        x = self.decoder_pred(self.norm(x))[:, self.extras:, :]
        return self.final_layer(UF.unpatchify(x, self.in_chans))

    def forward(self, x, timesteps, y=None, return_activations=False):
        tokens = self.embed(x, timesteps, y)
        emb = self.time_embedding(timesteps) if self.time_mode == "adaln" else None
        h, acts = self.run_blocks(tokens, emb, return_activations=True)
        out = self.decode(h)
        return (out, {"embed": tokens, **acts}) if return_activations else out


class UViTText(UViT):
    """Text-to-image U-ViT (`libs/uvit_t2i.py`): [time, context_embed(context), patches]."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None,
                 mlp_time_embed=False, use_checkpoint=False, clip_dim=768, num_clip_token=77,
                 conv=True, skip=True, dtype=None):
        nn.Module.__init__(self)
        self.config = config_of(locals())
        self._set_options(patch_size, embed_dim)
        self._build_stem(img_size, patch_size, in_chans, embed_dim, num_heads, mlp_time_embed,
                         dtype)
        self.num_classes = -1
        self.clip_dim, self.num_clip_token = clip_dim, num_clip_token
        self.context_embed = Linear(clip_dim, embed_dim, dtype=dtype)
        self.extras = 1 + num_clip_token
        self._build_trunk(depth, mlp_ratio, qkv_bias, qk_scale, use_checkpoint, conv, skip, dtype)

    def check_inputs(self, x, timesteps, context=None):
        name = type(self).__name__
        UF.check_tensor(f"{name}: x", x)
        UF.check_tensor(f"{name}: timesteps", timesteps)
        UF.check_tensor(f"{name}: context", context, optional=True)
        check_image(f"{name}: x", x, self.in_chans, self.img_size, self.patch_size)
        check_timesteps(f"{name}: timesteps", timesteps, x.shape[0])
        check_context(f"{name}: context", context, x.shape[0], self.num_clip_token,
                      self.clip_dim)

    def embed(self, x, timesteps, context=None):
        """[time, text tokens, patches] + pos_embed: (B, 1 + S + L, D)."""
        self.check_inputs(x, timesteps, context)
        tokens = [self.time_token(timesteps), self.context_embed(context), self.patch_embed(x)]
        return torch.cat(tokens, dim=1) + self.pos_embed

    def forward(self, x, timesteps, context=None, return_activations=False):
        return super().forward(x, timesteps, context, return_activations)


def from_config(name, **overrides):
    """Build the paper's model `name`; `overrides` may change arguments and add `dtype`.
    Build under `torch.device("meta")` to get its structure without allocating its weights."""
    kwargs = config(name, **overrides)
    return UViTText(**kwargs) if is_text_config(kwargs) else UViT(**kwargs)


def count_parameters(name_or_model, **overrides):
    """The number of parameters of a model, or of the paper's config `name` (built on the meta
    device, so nothing is allocated)."""
    model = name_or_model
    if isinstance(name_or_model, str):
        with torch.device("meta"):
            model = from_config(name_or_model, **overrides)
    return sum(p.numel() for p in model.parameters())


def sizes_table():
    """One dict per paper config, counted from our classes on the meta device: name, description,
    img_size, patch_size, in_chans, embed_dim, depth, layers (blocks: depth // 2 * 2 + 1),
    num_heads, mlp_ratio, condition, params."""
    rows = []
    for name in CONFIGS:
        with torch.device("meta"):
            model = from_config(name)
        cond = (f"text {model.num_clip_token} x {model.clip_dim}" if isinstance(model, UViTText)
                else f"{model.num_classes} classes" if model.num_classes > 0 else "none")
        cfg = CONFIGS[name]
        rows.append({
            "name": name, "description": DESCRIPTIONS[name], "img_size": model.img_size,
            "patch_size": model.patch_size, "in_chans": model.in_chans,
            "embed_dim": model.embed_dim, "depth": model.depth,
            "layers": len(model.in_blocks) + 1 + len(model.out_blocks),
            "num_heads": model.num_heads, "mlp_ratio": cfg["mlp_ratio"], "condition": cond,
            "conv": model.conv, "params": count_parameters(model)})
    return rows
