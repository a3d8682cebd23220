"""U-ViT, the model of "All are Worth Words: A ViT Backbone for Diffusion Models" (2209.12152).

Everything is a token: the diffusion time, the condition (a class label, or a sequence of text
features) and the patches of the noisy image go through one plain transformer. Two things make it a
diffusion backbone rather than a ViT: **long skips**, which hand each block of the first half's
output to the matching block of the second half (as a U-Net's skips do), and a **3x3 convolution**
on the predicted image, after the patches are put back together.

    x (B, C, H, W) --PatchEmbed--> patches (B, L, D)
    tokens = [label?, time, patches] + pos_embed              (B, extras + L, D)
    depth // 2 input blocks (outputs pushed on a stack) -> 1 middle block
    -> depth // 2 output blocks (each pops a skip: Linear(2D -> D) of [x, skip])
    -> LayerNorm -> decoder_pred Linear(D -> P*P*C) -> drop the extras -> unpatchify -> 3x3 conv

Class names, constructor arguments, defaults and state-dict keys are those of the paper's public
code (`libs/uvit.py`, and `libs/uvit_t2i.py` for the text variant, `UViTText` here), so its released
`.pth` checkpoints load unchanged (`uvit_torch.checkpoint` reads them and converts them to arrays).

The design choices the paper's Section 3.1 ablates on CIFAR-10 (its Fig. 2) are options of `UViT`
whose defaults are the paper's model: how a long skip is joined (`skip_mode`, `long_skip`), time
as a token or through adaptive LayerNorm (`time_mode`, `AdaLN`, `AdaLNBlock`), the 3x3 conv
after or before the tokens-to-patches linear (`conv_position`), a convolutional patch embedding
(`patch_embed_type`, `ConvPatchEmbed`) and fixed 2-D sinusoidal positions (`pos_embed_type`).
By default none of them adds a parameter or changes a number. `uvit_numpy.ablations` lists them
as training runs.

One deliberate difference: the paper's code always forms the timestep sinusoid in float32; ours
forms it in float64 and rounds it to the model's dtype (`functional.timestep_embedding`), and
everything else is computed in the model's dtype, so a float64 model is float64 throughout. In
float32 the two sinusoids differ by a few float32 ulps of the argument (~3e-5 at t = 1000).

Glossary: B batch, C image channels (`in_chans`), H x W image, P patch size, D `embed_dim`,
L = (H/P)(W/P) patch tokens, S text tokens (`num_clip_token`), nh heads, hd = D / nh.
"""

import numpy as np

from . import functional as F
from .checks import (check_batch, check_dim, check_floating, check_integer, check_numpy,
                     check_range, check_rank, dtype_name, is_floating, is_integer)
from .configs import UVIT_CONFIGS as CONFIGS
from .configs import UVIT_DESCRIPTIONS as DESCRIPTIONS
from .configs import uvit_config
from .layers import (GELU, Conv2d, Dropout, Embedding, LayerNorm, Linear, QKVAttention, ReLU,
                     SiLU)
from .module import Module, ModuleList, Sequential, as_rng

__all__ = ["CONFIGS", "DESCRIPTIONS", "config", "UViT", "UViTText", "Block", "Attention", "Mlp",
           "PatchEmbed", "long_skip", "long_skip_backward", "long_skip_parts", "from_config"]


# --------------------------------------------------------------------------------------------------
# The paper's configurations (`configs.UVIT_CONFIGS`, by checkpoint name)
# --------------------------------------------------------------------------------------------------
def config(name, **overrides):
    """A copy of `CONFIGS[name]` (the paper's model `name`, `configs.UVIT_CONFIGS`) with
    `overrides` applied; ValueError naming the known configs."""
    return uvit_config(name, **overrides)


def is_text_config(kwargs):
    """True for the text-conditioned variant's arguments (they name `clip_dim`)."""
    return "clip_dim" in kwargs or "num_clip_token" in kwargs


# --------------------------------------------------------------------------------------------------
# The paper's ablations (Sec. 3.1, Fig. 2) as options of UViT; the first value of each: the default
# --------------------------------------------------------------------------------------------------
SKIP_MODES = ("concat", "add", "project_skip", "project_sum")
TIME_MODES = ("token", "adaln")
CONV_POSITIONS = ("after", "before")
PATCH_EMBED_TYPES = ("linear", "conv")
POS_EMBED_TYPES = ("learned", "sincos2d")
ABLATION_DEFAULTS = dict(skip_mode="concat", time_mode="token", conv_position="after",
                         patch_embed_type="linear", pos_embed_type="learned")
"""UViT's ablation options and their defaults, which are the paper's model (and the arguments a
config.json written before these options existed is read with)."""


def check_options(name, skip_mode, time_mode, conv_position, patch_embed_type, pos_embed_type,
                  patch_size, embed_dim):
    """Constructor check of the ablation options: known values, and sizes the variants need."""
    for arg, value, allowed in (("skip_mode", skip_mode, SKIP_MODES),
                                ("time_mode", time_mode, TIME_MODES),
                                ("conv_position", conv_position, CONV_POSITIONS),
                                ("patch_embed_type", patch_embed_type, PATCH_EMBED_TYPES),
                                ("pos_embed_type", pos_embed_type, POS_EMBED_TYPES)):
        if value not in allowed:
            raise ValueError(f"{name}: expected {arg} in {allowed}, got {value!r}")
    if patch_embed_type == "conv":
        check_conv_stem(name, patch_size, embed_dim)
    if pos_embed_type == "sincos2d" and embed_dim % 4:
        raise ValueError(f"{name}: pos_embed_type='sincos2d' needs embed_dim to be a multiple of 4 "
                         f"(sin and cos of the row and of the column), got {embed_dim}")


def check_conv_stem(name, patch_size, embed_dim):
    """The convolutional stem halves the image log2(P) times, doubling its width up to D: P must
    be a power of 2 and D a multiple of P / 2."""
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"{name}: the convolutional patch embedding (patch_embed_type='conv') "
                         f"needs a patch size that is a power of 2, got {patch_size}")
    if embed_dim % (patch_size // 2):
        raise ValueError(f"{name}: the convolutional patch embedding needs embed_dim to be a "
                         f"multiple of patch_size / 2 = {patch_size // 2}, got {embed_dim}")


# --------------------------------------------------------------------------------------------------
# Input checks (shared with uvit_torch: they read only .shape, .dtype, .min() and .max())
# --------------------------------------------------------------------------------------------------
def check_sizes(name, img_size, patch_size, embed_dim, num_heads):
    """Constructor check: the patches tile the image and the heads split the width."""
    if img_size % patch_size:
        raise ValueError(f"{name}: expected img_size to be a multiple of patch_size "
                         f"{patch_size}, got {img_size}")
    if embed_dim % num_heads:
        raise ValueError(f"{name}: expected embed_dim to be a multiple of num_heads "
                         f"{num_heads}, got {embed_dim}")


def check_image(name, x, in_chans, img_size, patch_size):
    """x must be a floating (B, in_chans, img_size, img_size) batch of images or latents."""
    check_floating(name, x)
    check_rank(name, x, 4, "(B, C, H, W)")
    check_dim(name, x, 1, in_chans, "channels (in_chans)")
    H, W = x.shape[2], x.shape[3]
    if H % patch_size or W % patch_size:
        raise ValueError(f"{name}: expected height and width that are multiples of the patch size "
                         f"{patch_size}, got {H}x{W}")
    if (H, W) != (img_size, img_size):
        raise ValueError(f"{name}: expected a {img_size}x{img_size} input (img_size={img_size}; "
                         f"pos_embed has one row per patch of that size), got {H}x{W}")


def check_timesteps(name, timesteps, batch):
    """timesteps must be a (B,) array of floats or integers, one per image."""
    if not hasattr(timesteps, "dtype") or not hasattr(timesteps, "shape"):
        raise TypeError(f"{name}: expected a (B,) array of times, got {type(timesteps).__name__}")
    if not (is_floating(timesteps) or is_integer(timesteps)):
        raise TypeError(f"{name}: expected float or integer times, got dtype "
                        f"{dtype_name(timesteps)}")
    check_rank(name, timesteps, 1, "(B,)")
    check_batch(name, timesteps, batch)


def check_labels(name, y, num_classes, batch):
    """A class-conditional model (num_classes > 0) needs (B,) integer labels in [0, num_classes);
    an unconditional one takes none."""
    if num_classes <= 0:
        if y is not None:
            raise ValueError(f"{name}: this model is unconditional (num_classes={num_classes}) and "
                             f"takes no labels, got labels of shape {tuple(y.shape)}")
        return
    if y is None:
        raise ValueError(f"{name}: this model is class-conditional: expected (B,) = ({batch},) "
                         f"integer labels in [0, {num_classes}), got None")
    check_integer(name, y)
    check_rank(name, y, 1, "(B,)")
    check_batch(name, y, batch)
    check_range(name, y, 0, num_classes)


def check_context(name, context, batch, num_clip_token, clip_dim):
    """The text variant needs floating (B, num_clip_token, clip_dim) text-encoder features."""
    if context is None:
        raise ValueError(f"{name}: expected text features of shape (B, S, clip_dim) = "
                         f"({batch}, {num_clip_token}, {clip_dim}), got None")
    check_floating(name, context)
    check_rank(name, context, 3, "(B, S, clip_dim)")
    check_batch(name, context, batch)
    check_dim(name, context, 1, num_clip_token, "text tokens (num_clip_token)")
    check_dim(name, context, 2, clip_dim, "features (clip_dim)")


# --------------------------------------------------------------------------------------------------
# The paper's initialisation
# --------------------------------------------------------------------------------------------------
def trunc_normal(rng, shape, std, dtype, a=-2.0, b=2.0):
    """N(0, std^2) redrawn until inside [a, b], timm's `trunc_normal_` with its default absolute
    bounds (with std 0.02 they sit 100 standard deviations out, so redraws almost never happen)."""
    out = rng.normal(0.0, std, size=shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = (out < a) | (out > b)
    return out.astype(dtype)


def init_uvit_(model, rng):
    """The paper's `_init_weights`: every Linear weight ~ trunc N(0, 0.02^2) and bias 0, `pos_embed`
    likewise (when learned); LayerNorm weight 1 and bias 0 (already so); convolutions and the
    label table keep torch's defaults. Returns the model."""
    for _, module in model.named_modules():
        if isinstance(module, Linear):
            module.weight = trunc_normal(rng, module.weight.shape, 0.02, module.dtype)
            if module.bias is not None:
                module.bias = np.zeros_like(module.bias)
    if getattr(model, "pos_embed", None) is not None:    # learned positions (the default)
        model.pos_embed = trunc_normal(rng, model.pos_embed.shape, 0.02, model.dtype)
    return model


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
class PatchEmbed(Module):
    """Cut the image into P x P patches and map each to a D-dim token.

    `proj` is a Conv2d(in_chans, embed_dim, kernel_size=P, stride=P): one matrix applied to every
    patch. x: (B, C, H, W) with H, W multiples of P -> (B, L, D), tokens in row-major patch order.
    """

    def __init__(self, patch_size, in_chans=3, embed_dim=768, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.patch_size = patch_size
        self.proj = Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, dtype=dtype,
                           rng=as_rng(rng))

    def forward(self, x):
        check_floating("PatchEmbed: x", x)
        check_rank("PatchEmbed: x", x, 4, "(B, C, H, W)")
        P = self.patch_size
        if x.shape[2] % P or x.shape[3] % P:
            raise ValueError(f"PatchEmbed: expected height and width that are multiples of the "
                             f"patch size {P}, got {x.shape[2]}x{x.shape[3]}")
        y = self.proj(x)                                   # (B, D, H/P, W/P)
        B, D, h, w = y.shape
        out = y.reshape(B, D, h * w).transpose(0, 2, 1)    # (B, D, h, w) -> (B, L, D)
        return self._record(out, (h, w))

    def backward(self, grad_out):
        """grad_out: (B, L, D) -> dx (B, C, H, W), back through the token reshape and the conv."""
        h, w = self._recall(grad_out)
        B, L, D = grad_out.shape
        dy = grad_out.transpose(0, 2, 1).reshape(B, D, h, w)  # (B, L, D) -> (B, D, h, w)
        return self.proj.backward(dy)


class Mlp(Module):
    """timm's Mlp as the paper uses it: fc1 Linear(D, hidden) -> exact GELU -> fc2 back to D.

    `drop` (dropout after each linear) acts in training mode only; the paper trains with 0.
    x: (..., in_features) -> (..., out_features).
    """

    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0,
                 dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, dtype=dtype, rng=rng)
        self.act = GELU(dtype=dtype)
        self.fc2 = Linear(hidden_features, out_features, dtype=dtype, rng=rng)
        self.drop = Dropout(drop, dtype=dtype, rng=rng)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def backward(self, grad_out):
        """grad_out: (..., out_features) -> dx (..., in_features). `drop` ran twice in the forward,
        so its two records are taken back last first."""
        d = self.fc2.backward(self.drop.backward(grad_out))
        return self.fc1.backward(self.act.backward(self.drop.backward(d)))


class Attention(QKVAttention):
    """The paper's self-attention: one fused `qkv` Linear(D, 3D), split as (3, nh, hd), then
    softmax(q k^T / sqrt(hd)) v per head and `proj` Linear(D, D). It is `layers.QKVAttention`
    under the paper's class name (x: (B, L, D) -> (B, L, D)).

    `qk_scale`, if given, replaces 1/sqrt(hd), as in the paper's "math" attention path (its
    `F.scaled_dot_product_attention` path ignores it; every released config leaves it None).
    """


def long_skip(x, skip, skip_linear, mode="concat"):
    """A long skip connection: the current tokens x (the paper's h_m, the main branch) joined with
    the skip (h_s, the output of the matching input block), in one of the ways the paper compares
    (Sec. 3.1, Fig. 2a; `UViT`'s `skip_mode`):

        "concat"        skip_linear([x, skip])     Linear(2D, D), the current tokens first (default)
        "add"           x + skip                   no parameters (skip_linear is None)
        "project_skip"  x + skip_linear(skip)      Linear(D, D)
        "project_sum"   skip_linear(x + skip)      Linear(D, D)

    x, skip: (B, L, D). Returns (B, L, D).
    """
    check_floating("long_skip: x", x)
    if tuple(skip.shape) != tuple(x.shape):
        raise ValueError(f"long_skip: expected a skip shaped like x {tuple(x.shape)}, got "
                         f"{tuple(skip.shape)}")
    if mode == "concat":
        return skip_linear(np.concatenate([x, skip], axis=-1))  # 2 x (B, L, D) -> (B, L, 2D) -> D
    if mode == "add":
        return x + skip
    if mode == "project_skip":
        return x + skip_linear(skip)
    if mode == "project_sum":
        return skip_linear(x + skip)
    raise ValueError(f"long_skip: expected mode in {SKIP_MODES}, got {mode!r}")


def long_skip_backward(grad_out, skip_linear, mode="concat"):
    """The gradient of `long_skip` (after its forward ran in training mode), as (dx, dskip).

    "concat": skip_linear's input gradient (B, L, 2D) split back into the halves of the
    concatenation; "add": both terms receive grad_out; "project_skip": x receives grad_out, the
    skip skip_linear's backward of it; "project_sum": both terms of the sum receive skip_linear's
    input gradient.
    """
    if mode == "concat":
        d = skip_linear.backward(grad_out)                # (B, L, 2D)
        D = grad_out.shape[-1]
        return d[..., :D], d[..., D:]                     # (B, L, 2D) -> 2 x (B, L, D)
    if mode == "add":
        return grad_out, grad_out                         # d(x + skip): dy to each term
    if mode == "project_skip":
        return grad_out, skip_linear.backward(grad_out)
    if mode == "project_sum":
        d = skip_linear.backward(grad_out)                # d(x + skip), (B, L, D)
        return d, d                                       # the sum's two terms: the same gradient
    raise ValueError(f"long_skip_backward: expected mode in {SKIP_MODES}, got {mode!r}")


def make_skip_linear(dim, mode, dtype=np.float32, rng=None):
    """The Linear a long skip of `mode` needs: Linear(2D, D) for "concat", Linear(D, D) for the
    "project_*" modes, None for "add"."""
    if mode not in SKIP_MODES:
        raise ValueError(f"skip_mode: expected one of {SKIP_MODES}, got {mode!r}")
    if mode == "add":
        return None
    return Linear(2 * dim if mode == "concat" else dim, dim, dtype=dtype, rng=rng)


def long_skip_parts(x, skip, skip_linear):
    """The two halves of a long skip, for looking at what the skip carries.

    skip_linear's weight (D, 2D) splits into W_x = W[:, :D] (acting on x) and W_s = W[:, D:] (acting
    on the skip), so long_skip(x, skip) = x W_x^T + skip W_s^T + b. Returns (x W_x^T, skip W_s^T),
    each (B, L, D), bias excluded.
    """
    D = x.shape[-1]
    W = skip_linear.weight                                # (D, 2D)
    return F.linear(x, W[:, :D]), F.linear(skip, W[:, D:])


class Block(Module):
    """A pre-norm transformer block, with a long skip in the output half of the network.

        x = long_skip(x, skip)            (only when the block has a skip)
        x = x + attn(norm1(x))
        x = x + mlp(norm2(x))

    norm1, norm2: LayerNorm(D, eps=1e-5); attn: `Attention`; mlp: `Mlp(D, int(D * mlp_ratio))`;
    with `skip`, the skip is joined as `skip_mode` says (see `long_skip`; the paper's "concat" has
    skip_linear Linear(2D, D)). x, skip: (B, N, D) -> (B, N, D), N all tokens.
    A missing skip, or a skip given to a block without one, is a ValueError (the paper's code
    silently drops the latter). `use_checkpoint` is accepted for the paper's signature and
    ignored (it only saves memory in a backward pass). `emb` is `AdaLNBlock`'s; here it must be
    None (this block's time is a token).
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, skip=False,
                 use_checkpoint=False, skip_mode="concat", dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self.norm1 = LayerNorm(dim, eps=1e-5, dtype=dtype)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              dtype=dtype, rng=rng)
        self.norm2 = LayerNorm(dim, eps=1e-5, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rng=rng)
        self.skip_mode = skip_mode if skip else None
        self.skip_linear = make_skip_linear(dim, skip_mode, dtype, rng) if skip else None
        self.use_checkpoint = use_checkpoint

    def join_skip(self, x, skip):
        """x joined with the long skip (`long_skip`), or x itself for a block without one."""
        name = type(self).__name__
        if self.skip_mode is None:
            if skip is not None:
                raise ValueError(f"{name}: this block has no skip_linear (skip=False) and takes "
                                 f"no skip, got one of shape {tuple(skip.shape)}")
            return x
        if skip is None:
            what = ("a skip_linear" if self.skip_linear is not None
                    else f"a long skip (skip_mode={self.skip_mode!r})")
            raise ValueError(f"{name}: this block has {what} and expects a skip of shape "
                             f"{tuple(x.shape)}, got None")
        return long_skip(x, skip, self.skip_linear, self.skip_mode)

    def join_skip_backward(self, d):
        """(dx, dskip) from the gradient of `join_skip`'s output; dskip None without a skip."""
        if self.skip_mode is None:
            return d, None
        return long_skip_backward(d, self.skip_linear, self.skip_mode)

    def forward(self, x, skip=None, emb=None):
        check_floating("Block: x", x)
        check_rank("Block: x", x, 3, "(B, N, D)")
        if emb is not None:
            raise ValueError("Block: this block takes the time as a token (time_mode='token') "
                             f"and no emb, got one of shape {tuple(emb.shape)}")
        x = self.join_skip(x, skip)
        x = x + self.attn(self.norm1(x))
        out = x + self.mlp(self.norm2(x))
        return self._record(out, None)

    def backward(self, grad_out):
        """grad_out: (B, N, D). Returns (dx, dskip); dskip is None for a block without a skip.

        Each residual y = x + f(x) passes grad_out straight through and adds f's backward:
        dx = dy + f'(x)^T dy. The skip's gradient comes from `long_skip_backward`.
        """
        self._recall(grad_out)
        d = grad_out + self.norm2.backward(self.mlp.backward(grad_out))   # x + mlp(norm2(x))
        d = d + self.norm1.backward(self.attn.backward(d))                # x + attn(norm1(x))
        return self.join_skip_backward(d)


# --------------------------------------------------------------------------------------------------
# The paper's ablation variants (Sec. 3.1, Fig. 2): blocks used only when UViT is asked for them
# --------------------------------------------------------------------------------------------------
class AdaLN(Module):
    """Adaptive LayerNorm, the paper's alternative to the time token (`time_mode="adaln"`):

        AdaLN(h, y) = y_s * LayerNorm(h) + y_b,   [y_s - 1, y_b] = linear(emb)  (scale first)

    The paper: "y_s, y_b are obtained from a linear projection of the time embedding"; the rest
    is our reading. `linear` Linear(D, 2D) projects the time embedding (the sinusoid, through
    `time_embed` if the model has one) with no activation before it; `norm` is LayerNorm(D,
    eps=1e-5) without its own weight and bias (y_s and y_b take their place). y_s is written
    1 + scale (`functional.adaptive_modulation`), so with the paper's init (linear weights
    ~ N(0, 0.02^2), bias 0) a fresh AdaLN starts as a plain LayerNorm.
    x: (B, N, D), emb: (B, D) -> (B, N, D).
    """

    def __init__(self, dim, eps=1e-5, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.linear = Linear(dim, 2 * dim, dtype=dtype, rng=as_rng(rng))
        self.norm = LayerNorm(dim, eps=eps, elementwise_affine=False, dtype=dtype)

    def forward(self, x, emb):
        check_floating("AdaLN: emb", emb)
        check_rank("AdaLN: emb", emb, 2, "(B, D)")
        check_batch("AdaLN: emb", emb, x.shape[0])
        scale, shift = np.split(self.linear(emb), 2, axis=-1)   # (B, 2D) -> 2 x (B, D)
        out, cache = F.adaptive_modulation(self.norm(x), scale, shift, return_cache=True)
        return self._record(out, cache)

    def backward(self, grad_out):
        """grad_out: (B, N, D). Returns (dx (B, N, D), d emb (B, D))."""
        dn, dscale, dshift = F.adaptive_modulation_backward(grad_out, self._recall(grad_out))
        demb = self.linear.backward(np.concatenate([dscale, dshift], axis=-1))  # -> (B, 2D)
        return self.norm.backward(dn), demb


class AdaLNBlock(Block):
    """`Block` with the time fed through adaptive LayerNorms instead of a token
    (`time_mode="adaln"`): norm1 and norm2 are `AdaLN`s of the time embedding emb (B, D).

        x = long_skip(x, skip)            (only when the block has a skip)
        x = x + attn(norm1(x, emb))
        x = x + mlp(norm2(x, emb))

    forward(x, skip=None, emb) -> (B, N, D); backward -> (dx, dskip, d emb).
    """

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, skip=False,
                 use_checkpoint=False, skip_mode="concat", dtype=np.float32, rng=None):
        Module.__init__(self, dtype)
        rng = as_rng(rng)
        self.norm1 = AdaLN(dim, eps=1e-5, dtype=dtype, rng=rng)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              dtype=dtype, rng=rng)
        self.norm2 = AdaLN(dim, eps=1e-5, dtype=dtype, rng=rng)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rng=rng)
        self.skip_mode = skip_mode if skip else None
        self.skip_linear = make_skip_linear(dim, skip_mode, dtype, rng) if skip else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x, skip=None, emb=None):
        check_floating("AdaLNBlock: x", x)
        check_rank("AdaLNBlock: x", x, 3, "(B, N, D)")
        if emb is None:
            raise ValueError("AdaLNBlock: expected the time embedding emb of shape (B, D) = "
                             f"({x.shape[0]}, {x.shape[-1]}), got None")
        x = self.join_skip(x, skip)
        x = x + self.attn(self.norm1(x, emb))
        out = x + self.mlp(self.norm2(x, emb))
        return self._record(out, None)

    def backward(self, grad_out):
        """grad_out: (B, N, D). Returns (dx, dskip, d emb); emb fed both norms, so its gradient
        is the sum of theirs."""
        self._recall(grad_out)
        dn2, demb2 = self.norm2.backward(self.mlp.backward(grad_out))
        d = grad_out + dn2                                                 # x + mlp(norm2(x))
        dn1, demb1 = self.norm1.backward(self.attn.backward(d))
        d = d + dn1                                                        # x + attn(norm1(x))
        return (*self.join_skip_backward(d), demb1 + demb2)               # emb fed both norms


class ConvPatchEmbed(Module):
    """A convolutional stem in place of the one-matrix patch embedding (`patch_embed_type="conv"`;
    the paper's Fig. 2d, after Xiao et al. 2021, "Early convolutions help transformers see
    better": "a stack of 3x3 convolutional blocks followed by a 1x1 convolutional block").

    Our reading: k = log2(P) 3x3 convolutions of stride 2 (padding 1), each followed by ReLU,
    halve the image k times; their widths double up to D (the i-th of k has D / 2^(k - i)
    channels); then `proj`, a 1x1 Conv2d(D, D), makes the tokens. Xiao et al. put a BatchNorm
    after each 3x3 convolution; it is left out, so that no layer of the model depends on the
    batch. `stem`: Sequential(Conv2d, ReLU, Conv2d, ReLU, ...); P must be a power of 2.
    x: (B, C, H, W) with H, W multiples of P -> (B, L, D), in PatchEmbed's row-major token order.
    """

    def __init__(self, patch_size, in_chans=3, embed_dim=768, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        check_conv_stem("ConvPatchEmbed", patch_size, embed_dim)
        self.patch_size = patch_size
        k = patch_size.bit_length() - 1                   # P = 2^k
        widths = [in_chans] + [embed_dim >> (k - i) for i in range(1, k + 1)]
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [Conv2d(c_in, c_out, 3, stride=2, padding=1, dtype=dtype, rng=rng),
                       ReLU(dtype=dtype)]
        self.stem = Sequential(*layers, dtype=dtype)
        self.proj = Conv2d(embed_dim, embed_dim, 1, dtype=dtype, rng=rng)

    def forward(self, x):
        check_floating("ConvPatchEmbed: x", x)
        check_rank("ConvPatchEmbed: x", x, 4, "(B, C, H, W)")
        P = self.patch_size
        if x.shape[2] % P or x.shape[3] % P:
            raise ValueError(f"ConvPatchEmbed: expected height and width that are multiples of "
                             f"the patch size {P}, got {x.shape[2]}x{x.shape[3]}")
        y = self.proj(self.stem(x))                       # (B, D, H/P, W/P)
        return self._record(F.grid_to_tokens(y), y.shape[2:])  # (B, D, h, w) -> (B, L, D)

    def backward(self, grad_out):
        """grad_out: (B, L, D) -> dx (B, C, H, W)."""
        grid = self._recall(grad_out)
        d = F.grid_to_tokens_backward(grad_out, grid)     # (B, L, D) -> (B, D, h, w)
        return self.stem.backward(self.proj.backward(d))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class UViT(Module):
    """U-ViT for unconditional or class-conditional noise prediction (the paper's `libs/uvit.py`).

    Arguments as the paper's code: img_size, patch_size, in_chans, embed_dim (D), depth (depth // 2
    input blocks + 1 middle + depth // 2 output blocks), num_heads, mlp_ratio, qkv_bias, qk_scale,
    mlp_time_embed (pass the sinusoid through Linear(D, 4D) -> SiLU -> Linear(4D, D)),
    num_classes (> 0: a label token from `label_emb`), use_checkpoint (accepted, ignored here),
    conv (the final 3x3 conv), skip (the long skips). The paper's `norm_layer` is left out: it is
    always LayerNorm(eps=1e-5). Plus `dtype` and `rng` (a Generator or seed) as every module here.

    The design choices the paper ablates (Sec. 3.1, Fig. 2), as options whose defaults are the
    paper's model (`ABLATION_DEFAULTS`; they add no parameter and change no number by default):
      skip_mode         how an output block joins its long skip (when `skip`): "concat"
                        Linear(Concat(h_m, h_s)), "add" h_m + h_s, "project_skip"
                        h_m + Linear(h_s), "project_sum" Linear(h_m + h_s) (see `long_skip`);
      time_mode         "token" (the time is a token) or "adaln" (no time token; every block's
                        two norms are `AdaLN`s of the time embedding);
      conv_position     where the extra 3x3 conv goes when `conv`: "after" the linear that maps
                        tokens to patches (`final_layer`, on the image), or "before" it
                        (`token_conv`, Conv2d(D, D, 3) on the patch tokens laid out as their
                        (H/P, W/P) grid, after the final norm);
      patch_embed_type  "linear" (`PatchEmbed`, the stride-P conv) or "conv" (`ConvPatchEmbed`);
      pos_embed_type    "learned" (`pos_embed`, 1-D, one row per token) or "sincos2d" (no
                        parameter: `functional.sincos_2d_position_embedding`, zero for the
                        label and time tokens).

    forward(x, timesteps, y=None): x (B, C, H, W), timesteps (B,), y (B,) ints -> (B, C, H, W).
    The pieces are public so the book can run them one at a time: `embed` (tokens), `run_blocks`
    (the transformer, optionally returning every block's output) and `decode` (back to an image).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None,
                 mlp_time_embed=False, num_classes=-1, use_checkpoint=False, conv=True, skip=True,
                 skip_mode="concat", time_mode="token", conv_position="after",
                 patch_embed_type="linear", pos_embed_type="learned", dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = as_rng(rng)
        self._config = config_of(locals())
        self._set_options(patch_size, embed_dim, skip_mode, time_mode, conv_position,
                          patch_embed_type, pos_embed_type)
        self._build_stem(img_size, patch_size, in_chans, embed_dim, num_heads, mlp_time_embed,
                         rng)
        self.num_classes = num_classes
        if num_classes > 0:
            self.label_emb = Embedding(num_classes, embed_dim, dtype=dtype, rng=rng)
        self.extras = (num_classes > 0) + (time_mode == "token")  # [label,] [time] tokens
        self._build_trunk(depth, mlp_ratio, qkv_bias, qk_scale, use_checkpoint, conv, skip, rng)

    # --- construction (shared with UViTText) -------------------------------------------------
    def _set_options(self, patch_size, embed_dim, skip_mode="concat", time_mode="token",
                     conv_position="after", patch_embed_type="linear", pos_embed_type="learned"):
        check_options(type(self).__name__, skip_mode, time_mode, conv_position,
                      patch_embed_type, pos_embed_type, patch_size, embed_dim)
        self.skip_mode, self.time_mode, self.conv_position = skip_mode, time_mode, conv_position
        self.patch_embed_type, self.pos_embed_type = patch_embed_type, pos_embed_type

    def _build_stem(self, img_size, patch_size, in_chans, embed_dim, num_heads, mlp_time_embed,
                    rng):
        check_sizes(type(self).__name__, img_size, patch_size, embed_dim, num_heads)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_patches = (img_size // patch_size) ** 2
        dt = self.dtype
        embed_cls = PatchEmbed if self.patch_embed_type == "linear" else ConvPatchEmbed
        self.patch_embed = embed_cls(patch_size, in_chans, embed_dim, dtype=dt, rng=rng)
        self.time_embed = Sequential(Linear(embed_dim, 4 * embed_dim, dtype=dt, rng=rng),
                                     SiLU(dtype=dt),
                                     Linear(4 * embed_dim, embed_dim, dtype=dt, rng=rng),
                                     dtype=dt) if mlp_time_embed else None

    def _build_trunk(self, depth, mlp_ratio, qkv_bias, qk_scale, use_checkpoint, conv, skip, rng):
        D, dt = self.embed_dim, self.dtype
        self.depth, self.skip, self.conv = depth, skip, conv
        self.pos_embed = (np.zeros((1, self.extras + self.num_patches, D), dt)
                          if self.pos_embed_type == "learned" else None)
        block_cls = Block if self.time_mode == "token" else AdaLNBlock

        def block(with_skip=False):
            return block_cls(D, self.num_heads, mlp_ratio, qkv_bias, qk_scale, skip=with_skip,
                             use_checkpoint=use_checkpoint, skip_mode=self.skip_mode, dtype=dt,
                             rng=rng)

        self.in_blocks = ModuleList([block() for _ in range(depth // 2)], dtype=dt)
        self.mid_block = block()
        self.out_blocks = ModuleList([block(skip) for _ in range(depth // 2)], dtype=dt)
        self.norm = LayerNorm(D, eps=1e-5, dtype=dt)
        self.patch_dim = self.patch_size ** 2 * self.in_chans
        self.token_conv = Conv2d(D, D, 3, padding=1, dtype=dt, rng=rng) if (
            conv and self.conv_position == "before") else None
        self.decoder_pred = Linear(D, self.patch_dim, dtype=dt, rng=rng)
        self.final_layer = Conv2d(self.in_chans, self.in_chans, 3, padding=1, dtype=dt,
                                  rng=rng) if conv and self.conv_position == "after" else None
        init_uvit_(self, rng)

    @classmethod
    def from_config(cls, name, **overrides):
        """The paper's model `name` (a key of `CONFIGS`): a `UViT`, or a `UViTText` for the MS-COCO
        configs. `overrides` replace config values or add `dtype`/`rng`."""
        return from_config(name, **overrides)

    @property
    def config(self):
        """The constructor arguments (without dtype and rng), as `UViT(**model.config)` takes."""
        return dict(self._config)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32):
        """Load a model folder written by `save_pretrained` (config.json + safetensors weights),
        without torch. Returns a `UViT` (or `UViTText`) in eval mode, computing in `dtype`."""
        from .weights import load_pretrained
        config, state_dict = load_pretrained(path)
        name, kwargs = read_folder_config(config)
        model = {"UViT": UViT, "UViTText": UViTText}[name](**kwargs, dtype=dtype)
        model.load_state_dict(state_dict)
        return model.eval()

    def save_pretrained(self, path, **extra):
        """Write `config.json` (the constructor arguments, plus `extra` entries such as how the
        weights were trained, under keys starting with `_`) and the weights as safetensors."""
        from .weights import folder_config, save_pretrained
        save_pretrained(path, folder_config(self.config, extra), self.state_dict(),
                        class_name=type(self).__name__)

    # --- forward, in three public pieces -----------------------------------------------------
    def check_inputs(self, x, timesteps, y=None):
        """Raise a clear ValueError/TypeError for bad input, before any arithmetic."""
        name = type(self).__name__
        check_numpy(f"{name}: x", x)                       # a torch tensor: said by name
        check_numpy(f"{name}: timesteps", timesteps)
        check_numpy(f"{name}: y", y, optional=True)
        check_image(f"{name}: x", x, self.in_chans, self.img_size, self.patch_size)
        check_timesteps(f"{name}: timesteps", timesteps, x.shape[0])
        check_labels(f"{name}: y", y, self.num_classes, x.shape[0])

    def time_token(self, timesteps):
        """(B,) times -> (B, 1, D): the sinusoid [cos(t f_k), sin(t f_k)] (computed in float64,
        rounded to the model dtype), through `time_embed` if the model has one."""
        t = np.asarray(timesteps).astype(self.dtype)       # the times as the model's dtype
        emb = F.timestep_embedding(t, self.embed_dim)      # (B, D)
        if self.time_embed is not None:
            emb = self.time_embed(emb)
        return emb[:, None, :]                             # (B, D) -> (B, 1, D)

    def time_embedding(self, timesteps):
        """(B,) times -> (B, D): the time token without its token axis, what the AdaLN blocks
        of `time_mode="adaln"` are given."""
        return self.time_token(timesteps)[:, 0, :]         # (B, 1, D) -> (B, D)

    def position_embedding(self):
        """(1, extras + L, D): `pos_embed` (learned), or with pos_embed_type="sincos2d" the
        fixed 2-D sinusoids of the patch grid (zero rows for the extras), in the model's dtype."""
        if self.pos_embed is not None:
            return self.pos_embed
        g = self.img_size // self.patch_size
        return F.sincos_2d_position_embedding(g, g, self.embed_dim, self.extras).astype(self.dtype)

    def embed(self, x, timesteps, y=None):
        """The token sequence: [label (if class-conditional), time, patches] + pos_embed.

        x: (B, C, H, W); timesteps: (B,); y: (B,) ints or None. Returns (B, extras + L, D).
        With time_mode="adaln" there is no time token: [label, patches].
        """
        self.check_inputs(x, timesteps, y)
        tokens = [self.patch_embed(x)]                     # (B, L, D)
        if self.time_mode == "token":
            tokens.insert(0, self.time_token(timesteps))   # (B, 1, D), before the patches
        if y is not None:
            tokens.insert(0, self.label_emb(y)[:, None, :])  # (B, D) -> (B, 1, D), in front
        x = np.concatenate(tokens, axis=1)                 # (B, extras + L, D)
        return self._record(x + self.position_embedding(), ("embed", y is not None))

    def run_blocks(self, x, emb=None, return_activations=False):
        """The transformer with its long skips. x: (B, N, D) -> (B, N, D).

        Each input block's output is pushed on a stack; each output block pops the most recent one,
        so out_blocks[i] receives in_blocks[-1 - i]'s output. With `return_activations`, also
        returns {"in_blocks": [...], "mid_block": array, "out_blocks": [...]}, every block's output
        (the in_blocks list is exactly what the long skips carry). emb: the time embedding (B, D)
        every block is given with time_mode="adaln" (`time_embedding`); None otherwise.
        """
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
        """Tokens back to an image: norm -> decoder_pred -> drop the extras -> unpatchify -> conv.

        x: (B, extras + L, D) -> (B, C, H, W). With conv_position="before" the 3x3 conv
        (`token_conv`) runs on the normed patch tokens, as an (H/P, W/P) grid, before decoder_pred.
        """
        if self.token_conv is not None:                    # conv_position="before"
            return F.unpatchify(self.decoder_pred(self.conv_tokens(self.norm(x))), self.in_chans)
        x = self.decoder_pred(self.norm(x))                # (B, extras + L, P*P*C)
        x = x[:, self.extras:, :]                          # (B, L, P*P*C): patch tokens only
        x = F.unpatchify(x, self.in_chans)                 # (B, C, H, W)
        return x if self.final_layer is None else self.final_layer(x)

    def conv_tokens(self, x):
        """`token_conv` over the patch tokens: (B, extras + L, D) -> (B, L, D), extras dropped."""
        g = self.img_size // self.patch_size
        grid = F.tokens_to_grid(x[:, self.extras:, :], (g, g))  # (B, L, D) -> (B, D, h, w)
        return F.grid_to_tokens(self.token_conv(grid))     # (B, D, h, w) -> (B, L, D)

    # --- backward, the three pieces in reverse ---------------------------------------------------
    def decode_backward(self, grad_out):
        """(B, C, H, W) -> d tokens (B, extras + L, D). The extras were dropped before unpatchify,
        so the head gives them zero gradient (they still get some through the blocks)."""
        d = grad_out if self.final_layer is None else self.final_layer.backward(grad_out)
        d = F.unpatchify_backward(d, self.patch_size)      # (B, C, H, W) -> (B, L, P*P*C)
        if self.token_conv is not None:                    # conv_position="before"
            return self.norm.backward(self.conv_tokens_backward(self.decoder_pred.backward(d)))
        B, L, PPC = d.shape
        full = np.zeros((B, self.extras + L, PPC), dtype=d.dtype)
        full[:, self.extras:] = d                          # zeros for the dropped extras
        return self.norm.backward(self.decoder_pred.backward(full))

    def conv_tokens_backward(self, grad_out):
        """(B, L, D) -> (B, extras + L, D), zero for the extras that `conv_tokens` dropped."""
        g = self.img_size // self.patch_size
        d = self.token_conv.backward(F.grid_to_tokens_backward(grad_out, (g, g)))  # (B, D, h, w)
        d = F.tokens_to_grid_backward(d)                   # (B, D, h, w) -> (B, L, D)
        B, L, D = d.shape
        full = np.zeros((B, self.extras + L, D), dtype=d.dtype)
        full[:, self.extras:] = d                          # zeros for the dropped extras
        return full

    def run_blocks_backward(self, grad_out):
        """d output of the blocks (B, N, D) -> d input of the first block (B, N, D).

        The long skips, written out: out_blocks[i] popped the output of in_blocks[-1 - i], so its
        dskip belongs to that in-block. Going down, each in-block's output receives two gradients,
        one from the block above it (the next in-block, or the middle block) and one from its
        skip; they are added before the in-block's own backward runs. With time_mode="adaln"
        each block also returns the gradient of the time embedding it was given, and this returns
        (d input, their sum (B, D)).
        """
        K = len(self.in_blocks)
        dskips = [None] * K                                # dskips[j]: for in_blocks[j]'s output
        demb = []                                          # time_mode="adaln": each block's d emb
        d = grad_out
        for i in reversed(range(len(self.out_blocks))):
            d, dskip, *de = self.out_blocks[i].backward(d)
            dskips[K - 1 - i] = dskip
            demb += de
        d, _, *de = self.mid_block.backward(d)
        demb += de
        for j in reversed(range(K)):
            if dskips[j] is not None:
                d = d + dskips[j]                          # from the block above + from its skip
            d, _, *de = self.in_blocks[j].backward(d)
            demb += de
        return (d, sum(demb)) if demb else d               # every block got the same emb

    def embed_backward(self, grad_out):
        """d tokens (B, extras + L, D) -> dx (B, C, H, W); pos_embed gets the batch sum, the label
        table and the time MLP (if any) their shares; timesteps and labels take no gradient."""
        _, has_label = self._recall(grad_out)
        if self.pos_embed is not None:                     # learned (sincos2d: fixed, no grad)
            self.accumulate_grads(pos_embed=grad_out.sum(axis=0, keepdims=True))
        first = 0
        if has_label:
            self.label_emb.backward(grad_out[:, 0])        # the label token's row
            first = 1
        if self.time_mode == "token" and self.time_embed is not None:
            self.time_embed.backward(grad_out[:, first])   # (B, D): the time token
        return self.patch_embed.backward(grad_out[:, self.extras:])  # (B, L, D) patch tokens

    def backward(self, grad_out):
        """grad_out: (B, C, H, W), dLoss/d output. Returns dLoss/dx (B, C, H, W); parameter
        gradients accumulate in `grads()`. Needs a forward in training mode before it."""
        check_floating(f"{type(self).__name__}.backward: grad_out", grad_out)
        self._recall(grad_out)
        d = self.decode_backward(grad_out.astype(self.dtype, copy=False))
        d = self.run_blocks_backward(d)
        if self.time_mode == "adaln":
            d, demb = d                                    # the blocks' time-embedding gradient
            if self.time_embed is not None:
                self.time_embed.backward(demb)             # the sinusoid itself takes none
        return self.embed_backward(d)

    def forward(self, x, timesteps, y=None, return_activations=False):
        """x: (B, C, H, W); timesteps: (B,); y: (B,) ints for a class-conditional model, else None.

        Returns the prediction (B, C, H, W), and with `return_activations` also a dict of the
        intermediate tokens: "embed" (the input of the first block) and `run_blocks`'s entries.
        """
        tokens = self.embed(x, timesteps, y)               # (B, extras + L, D)
        emb = self.time_embedding(timesteps) if self.time_mode == "adaln" else None  # (B, D)
        h, acts = self.run_blocks(tokens, emb, return_activations=True)
        out = self._record(self.decode(h), "forward")
        return (out, {"embed": tokens, **acts}) if return_activations else out

    def extra_repr(self):
        options = "".join(f", {k}={getattr(self, k)!r}" for k, v in ABLATION_DEFAULTS.items()
                          if getattr(self, k) != v)
        return (f"img_size={self.img_size}, patch_size={self.patch_size}, "
                f"in_chans={self.in_chans}, embed_dim={self.embed_dim}, depth={self.depth}, "
                f"num_heads={self.num_heads}, num_classes={self.num_classes}{options}")


class UViTText(UViT):
    """The text-to-image U-ViT (the paper's `libs/uvit_t2i.py`): the condition is a sequence of S
    text-encoder features (CLIP: 77 x 768) projected to width D by `context_embed`, placed after the
    time token: tokens = [time, context_embed(context), patches] + pos_embed.

    Arguments as UViT's, without num_classes, plus clip_dim and num_clip_token.
    forward(x, timesteps, context): context (B, S, clip_dim) -> (B, C, H, W).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None,
                 mlp_time_embed=False, use_checkpoint=False, clip_dim=768, num_clip_token=77,
                 conv=True, skip=True, dtype=np.float32, rng=None):
        Module.__init__(self, dtype)
        rng = as_rng(rng)
        self._config = config_of(locals())
        self._set_options(patch_size, embed_dim)           # the paper's model (ABLATION_DEFAULTS)
        self._build_stem(img_size, patch_size, in_chans, embed_dim, num_heads, mlp_time_embed,
                         rng)
        self.num_classes = -1
        self.clip_dim, self.num_clip_token = clip_dim, num_clip_token
        self.context_embed = Linear(clip_dim, embed_dim, dtype=self.dtype, rng=rng)
        self.extras = 1 + num_clip_token                   # time, S text tokens
        self._build_trunk(depth, mlp_ratio, qkv_bias, qk_scale, use_checkpoint, conv, skip, rng)

    def check_inputs(self, x, timesteps, context=None):
        name = type(self).__name__
        check_numpy(f"{name}: x", x)                       # a torch tensor: said by name
        check_numpy(f"{name}: timesteps", timesteps)
        check_numpy(f"{name}: context", context, optional=True)
        check_image(f"{name}: x", x, self.in_chans, self.img_size, self.patch_size)
        check_timesteps(f"{name}: timesteps", timesteps, x.shape[0])
        check_context(f"{name}: context", context, x.shape[0], self.num_clip_token,
                      self.clip_dim)

    def embed(self, x, timesteps, context=None):
        """[time, text tokens, patches] + pos_embed: (B, 1 + S + L, D)."""
        self.check_inputs(x, timesteps, context)
        patches = self.patch_embed(x)                      # (B, L, D)
        text = self.context_embed(context)                 # (B, S, clip_dim) -> (B, S, D)
        x = np.concatenate([self.time_token(timesteps), text, patches], axis=1)  # (B, 1+S+L, D)
        return self._record(x + self.pos_embed, "embed")

    def embed_backward(self, grad_out):
        """d tokens (B, 1 + S + L, D) -> (dx (B, C, H, W), d context (B, S, clip_dim))."""
        self._recall(grad_out)
        self.accumulate_grads(pos_embed=grad_out.sum(axis=0, keepdims=True))
        if self.time_embed is not None:
            self.time_embed.backward(grad_out[:, 0])       # (B, D): the time token
        dcontext = self.context_embed.backward(grad_out[:, 1:self.extras])  # (B, S, D) -> clip
        return self.patch_embed.backward(grad_out[:, self.extras:]), dcontext

    def backward(self, grad_out):
        """grad_out: (B, C, H, W). Returns (dx (B, C, H, W), d context (B, S, clip_dim))."""
        return super().backward(grad_out)

    def forward(self, x, timesteps, context=None, return_activations=False):
        """x: (B, C, H, W); timesteps: (B,); context: (B, S, clip_dim). Returns (B, C, H, W)."""
        return super().forward(x, timesteps, context, return_activations)

    def extra_repr(self):
        return (f"img_size={self.img_size}, patch_size={self.patch_size}, "
                f"in_chans={self.in_chans}, embed_dim={self.embed_dim}, depth={self.depth}, "
                f"num_heads={self.num_heads}, clip_dim={self.clip_dim}, "
                f"num_clip_token={self.num_clip_token}")


def config_of(arguments):
    """The constructor arguments of a U-ViT from its `locals()` (self, dtype and rng left out)."""
    return {k: v for k, v in arguments.items() if k not in ("self", "dtype", "rng", "__class__")}


def read_folder_config(config):
    """(class name, constructor arguments) from a model folder's config.json dict: its `_` keys
    are information, not arguments. A clear ValueError when the folder holds another model."""
    name = config.get("_class_name")
    if name not in ("UViT", "UViTText"):
        raise ValueError(f"from_pretrained: expected a folder written by UViT.save_pretrained "
                         f"(_class_name 'UViT' or 'UViTText'), got _class_name {name!r}")
    return name, {k: v for k, v in config.items() if not k.startswith("_")}


def from_config(name, **overrides):
    """Build the paper's model `name` (see `CONFIGS`); `overrides` may change any argument and add
    `dtype` and `rng`. Returns a UViT, or a UViTText for the text-to-image configs."""
    kwargs = config(name, **overrides)
    return UViTText(**kwargs) if is_text_config(kwargs) else UViT(**kwargs)
