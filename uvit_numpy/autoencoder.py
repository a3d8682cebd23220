"""The U-ViT paper's KL autoencoder in NumPy: `FrozenAutoencoderKL`, Stable Diffusion's first stage.

The paper's latent models (ImageNet 256 and 512, MS-COCO) denoise 4-channel latents at 1/8 of the
image's side. `FrozenAutoencoderKL` (the paper's `libs/autoencoder.py`) turns images into them and
back, computing exactly what the paper's class computes:

    encode_moments(x) = quant_conv(encoder(x))                     (B, 2 embed_dim, H/8, W/8)
    sample(moments)   = scale_factor (mean + exp(logvar / 2) eps),  mean, logvar = the two halves,
                        logvar clamped to [-30, 20], eps ~ N(0, 1)
    encode(x)         = sample(encode_moments(x))
    decode(z)         = decoder(post_quant_conv((1 / scale_factor) z))   (multiplied by the
                        reciprocal, as the paper does, not divided)

The encoder and decoder are the same network as diffusers' `AutoencoderKL`, so they are built from
the blocks `vae.py` shares with aMUSEd's VQ-GAN: one implementation, two key layouts.
`state_dict()` / `load_state_dict()` speak the **paper's** keys (its LDM `Encoder`/`Decoder`:
`down.N.block.M.norm1`, `nin_shortcut`, `mid.block_1`, `mid.attn_1.q` as 1x1 convs, `norm_out`,
`up.N.upsample`, ...) through a key map onto the shared blocks (`paper_key`, `shared_key`); the
attention's q, k, v and proj_out weights are (C, C, 1, 1) convs there and (C, C) linears here.
`diffusers_state_dict()` / `load_diffusers_state_dict()` speak diffusers' `AutoencoderKL` keys,
which are the shared blocks' own, and `FrozenAutoencoderKL.from_diffusers(folder)` reads a
diffusers folder (e.g. stabilityai/sd-vae-ft-mse) without torch. The paper's `.pth` files are
read by `uvit_torch.autoencoder.load_pretrained` (torch.load(weights_only=True), then arrays).

**The paper's scale factors and files** (its `configs/*.py` and the scripts that read them):

    config                   autoencoder file           scale_factor
    imagenet256_uvit_large   autoencoder_kl.pth         0.18215
    imagenet256_uvit_huge    autoencoder_kl_ema.pth     0.18215
    imagenet512_uvit_large   autoencoder_kl.pth         0.18215
    imagenet512_uvit_huge    autoencoder_kl_ema.pth     0.18215
    mscoco_uvit_small        autoencoder_kl.pth         0.23010

The ImageNet configs set only `autoencoder.pretrained_path`, and their scripts (train_ldm.py,
train_ldm_discrete.py, eval_ldm.py, eval_ldm_discrete.py) call `get_model(pretrained_path)`, so
the class's default 0.18215 (Stable Diffusion's) applies. mscoco_uvit_small.py sets
`scale_factor=0.23010`, which train_t2i_discrete.py and eval_t2i_discrete.py pass on with
`get_model(**config.autoencoder)`; note that the paper's sample_t2i_discrete.py calls
`get_model(config.autoencoder.pretrained_path)` and so decodes with 0.18215 instead. The feature
scripts (scripts/extract_*_feature.py) store the unscaled moments; the scale is applied when the
trainers call `sample`. Both files hold the same network (`PAPER_DDCONFIG`, embed_dim 4,
83,653,863 parameters), converted from Stable Diffusion's first stage.
"""

import re

import numpy as np

from .checks import check_floating, check_rank, check_state_dict
from .layers import Conv2d
from .module import Module, NoDraws, as_rng, dtype_draws
from .vae import Decoder, Encoder

__all__ = ["PAPER_DDCONFIG", "PAPER_EMBED_DIM", "SCALE_FACTORS", "AUTOENCODER_FILES",
           "check_ddconfig", "paper_key", "shared_key", "FrozenAutoencoderKL"]

# The paper's `get_model`: Stable Diffusion's KL-f8 autoencoder.
PAPER_DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3,
                      ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[],
                      dropout=0.0)
PAPER_EMBED_DIM = 4

# Per paper config (see the module's docstring for where each value comes from).
SCALE_FACTORS = {"imagenet256_uvit_large": 0.18215, "imagenet256_uvit_huge": 0.18215,
                 "imagenet512_uvit_large": 0.18215, "imagenet512_uvit_huge": 0.18215,
                 "mscoco_uvit_small": 0.23010}
AUTOENCODER_FILES = {"imagenet256_uvit_large": "autoencoder_kl.pth",
                     "imagenet256_uvit_huge": "autoencoder_kl_ema.pth",
                     "imagenet512_uvit_large": "autoencoder_kl.pth",
                     "imagenet512_uvit_huge": "autoencoder_kl_ema.pth",
                     "mscoco_uvit_small": "autoencoder_kl.pth"}

# The paper's Encoder/Decoder arguments and their defaults (`**ignore_kwargs` aside).
DDCONFIG_DEFAULTS = dict(ch_mult=(1, 2, 4, 8), attn_resolutions=(), dropout=0.0,
                         resamp_with_conv=True, double_z=True, use_linear_attn=False,
                         attn_type="vanilla", give_pre_end=False, tanh_out=False)
DDCONFIG_REQUIRED = ("ch", "out_ch", "num_res_blocks", "in_channels", "resolution", "z_channels")


def check_ddconfig(ddconfig):
    """The paper's `ddconfig` with its defaults filled in, after checking that the shared blocks
    build that network. ValueError for a missing key or double_z=False (the paper asserts it);
    NotImplementedError for what the paper's code allows but its autoencoders do not use:
    attention at other resolutions, linear attention, resampling without convs, a first ch_mult
    other than 1 (the paper's encoder then widens inside its first block, diffusers' in
    conv_in), dropout, tanh_out, give_pre_end. attn_type "none" (no mid attention) is built."""
    if not isinstance(ddconfig, dict):
        raise TypeError(f"ddconfig: expected a dict, got {type(ddconfig).__name__}")
    missing = [k for k in DDCONFIG_REQUIRED if k not in ddconfig]
    if missing:
        raise ValueError(f"ddconfig: missing key(s) {missing} (the paper's Encoder/Decoder "
                         f"need {list(DDCONFIG_REQUIRED)})")
    cfg = {**DDCONFIG_DEFAULTS, **ddconfig}
    if not cfg["double_z"]:
        raise ValueError("ddconfig: FrozenAutoencoderKL needs double_z=True (the encoder's "
                         "mean and log-variance), as the paper asserts")
    attn_type = "linear" if cfg["use_linear_attn"] else cfg["attn_type"]
    unsupported = [
        (len(cfg["attn_resolutions"]) > 0, f"attn_resolutions={list(cfg['attn_resolutions'])} "
                                           f"(attention inside the levels)"),
        (attn_type not in ("vanilla", "none"), f"attn_type={attn_type!r}"),
        (not cfg["resamp_with_conv"], "resamp_with_conv=False"),
        (tuple(cfg["ch_mult"])[0] != 1, f"ch_mult={list(cfg['ch_mult'])} with a first entry "
                                        f"other than 1"),
        (cfg["dropout"] != 0.0, f"dropout={cfg['dropout']}"),
        (cfg["tanh_out"], "tanh_out=True"), (cfg["give_pre_end"], "give_pre_end=True")]
    for bad, what in unsupported:
        if bad:
            raise NotImplementedError(f"ddconfig: {what} is not implemented (the paper's "
                                      f"autoencoders use none of it)")
    return cfg


# --------------------------------------------------------------------------------------------------
# The key map: the shared (diffusers) layout <-> the paper's (LDM) layout
# --------------------------------------------------------------------------------------------------
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "nin_shortcut"}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_UNCHANGED = re.compile(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)"
                        r"|(post_)?quant_conv\.(weight|bias)")


def paper_key(key, num_levels):
    """The paper's name of a shared-layout (diffusers `AutoencoderKL`) key. num_levels:
    len(ch_mult). The decoder's levels are numbered the other way round: diffusers' up_blocks.0
    (the widest, run first) is the paper's up.{num_levels - 1}."""
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m and m[3] in _RESNET:
        return f"encoder.down.{m[1]}.block.{m[2]}.{_RESNET[m[3]]}.{m[4]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m and m[3] in _RESNET:
        return f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{_RESNET[m[3]]}.{m[4]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)", key)
    if m and m[3] in _RESNET:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_RESNET[m[3]]}.{m[4]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|"
                     r"to_out\.0)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.mid.attn_1.{_ATTENTION[m[2]]}.{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    if _UNCHANGED.fullmatch(key):
        return key
    raise KeyError(f"paper_key: no paper name for {key!r}")


def shared_key(key, num_levels):
    """The inverse of `paper_key`: the shared-layout (diffusers) name of a paper key."""
    resnet = {v: k for k, v in _RESNET.items()}
    attention = {v: k for k, v in _ATTENTION.items()}
    m = re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m and m[3] in resnet:
        return f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{resnet[m[3]]}.{m[4]}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m and m[3] in resnet:
        return f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.{resnet[m[3]]}." \
               f"{m[4]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)", key)
    if m and m[3] in resnet:
        return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{resnet[m[3]]}.{m[4]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.mid_block.attentions.0.{attention[m[2]]}.{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key)
    if m:
        return f"{m[1]}.conv_norm_out.{m[2]}"
    if _UNCHANGED.fullmatch(key):
        return key
    raise KeyError(f"shared_key: no shared name for {key!r}")


_ONE_BY_ONE = re.compile(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight")


def to_paper_value(paper_name, value):
    """A shared-layout array under its paper name: the attention's (C, C) linear weights become
    (C, C, 1, 1) 1x1-conv weights (a view); everything else is unchanged."""
    return value.reshape(*value.shape, 1, 1) if _ONE_BY_ONE.fullmatch(paper_name) else value


def to_shared_value(paper_name, value):
    """The inverse of `to_paper_value`: (C, C, 1, 1) -> (C, C) for the attention's weights."""
    if _ONE_BY_ONE.fullmatch(paper_name) and len(value.shape) == 4:
        return value.reshape(value.shape[0], value.shape[1])
    return value


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class FrozenAutoencoderKL(Module):
    """The paper's `FrozenAutoencoderKL(ddconfig, embed_dim, scale_factor)` (without its
    `pretrained_path`: load weights with `load_state_dict`, `from_diffusers` or
    `uvit_torch.autoencoder.load_pretrained`). Frozen as the paper's: built in eval mode.

    Children: `encoder` (vae.Encoder: conv_in to ch, one level of num_res_blocks resnets per
    ch_mult entry, down-sampling between levels, mid block with attention, GroupNorm/SiLU/conv_out
    to 2 z_channels), `decoder` (vae.Decoder, num_res_blocks + 1 resnets per level), `quant_conv`
    (1x1, 2 z_channels -> 2 embed_dim) and `post_quant_conv` (1x1, embed_dim -> z_channels).
    GroupNorms have 32 groups and eps 1e-6 (the paper's `Normalize`).
    """

    def __init__(self, ddconfig, embed_dim, scale_factor=0.18215, dtype=np.float32, rng=None):
        super().__init__(dtype)
        cfg = check_ddconfig(ddconfig)
        rng = dtype_draws(rng, self.dtype)
        self.ddconfig, self.embed_dim, self.scale_factor = dict(ddconfig), embed_dim, scale_factor
        self.num_levels = len(cfg["ch_mult"])
        blocks = tuple(cfg["ch"] * m for m in cfg["ch_mult"])
        attention = cfg["attn_type"] != "none" and not cfg["use_linear_attn"]
        kw = dict(block_out_channels=blocks, layers_per_block=cfg["num_res_blocks"],
                  norm_num_groups=32, act_fn="silu", mid_block_add_attention=attention,
                  dtype=dtype, rng=rng)
        self.encoder = Encoder(in_channels=cfg["in_channels"], out_channels=cfg["z_channels"],
                               down_block_types=("DownEncoderBlock2D",) * self.num_levels,
                               double_z=True, **kw)
        self.decoder = Decoder(in_channels=cfg["z_channels"], out_channels=cfg["out_ch"],
                               up_block_types=("UpDecoderBlock2D",) * self.num_levels, **kw)
        self.quant_conv = Conv2d(2 * cfg["z_channels"], 2 * embed_dim, 1, dtype=dtype, rng=rng)
        self.post_quant_conv = Conv2d(embed_dim, cfg["z_channels"], 1, dtype=dtype, rng=rng)
        self.eval()

    # --- the paper's four methods --------------------------------------------------------------
    def encode_moments(self, x):
        """x: images (B, in_channels, H, W) in [-1, 1] -> moments (B, 2 embed_dim, H/f, W/f),
        f = 2^(levels - 1): the mean and log-variance of each latent, stacked on channels."""
        return self.quant_conv(self.encoder(x))

    def sample(self, moments, noise=None, rng=None):
        """A scaled latent drawn from the moments' Gaussian (B, embed_dim, h, w):
        scale_factor (mean + exp(logvar / 2) noise), logvar clamped to [-30, 20].

        noise: (B, embed_dim, h, w) standard normal values (to reproduce the paper's
        `torch.randn_like(mean)` draw exactly), or None to draw them from `rng` (a Generator or a
        seed; None is seed 0, as elsewhere in this package)."""
        moments = to_float(moments, self.dtype, "FrozenAutoencoderKL.sample: moments")
        if moments.shape[1] != 2 * self.embed_dim:
            raise ValueError(f"FrozenAutoencoderKL.sample: expected moments with 2 embed_dim = "
                             f"{2 * self.embed_dim} channels, got shape {moments.shape}")
        mean, logvar = np.split(moments, 2, axis=1)       # (B, 2E, h, w) -> 2 x (B, E, h, w)
        logvar = np.clip(logvar, -30.0, 20.0)
        std = np.exp(0.5 * logvar)
        if noise is None:
            noise = as_rng(rng).standard_normal(mean.shape)
        noise = np.asarray(noise)
        if noise.shape != mean.shape:
            raise ValueError(f"FrozenAutoencoderKL.sample: expected noise of shape {mean.shape}, "
                             f"got {noise.shape}")
        z = mean + std * noise.astype(self.dtype, copy=False)
        return self.scale_factor * z

    def encode(self, x, noise=None, rng=None):
        """x (B, in_channels, H, W) -> a scaled latent sample (B, embed_dim, H/f, W/f)."""
        return self.sample(self.encode_moments(x), noise=noise, rng=rng)

    def decode(self, z):
        """z: scaled latents (B, embed_dim, h, w) -> images (B, out_ch, h f, w f)."""
        z = to_float(z, self.dtype, "FrozenAutoencoderKL.decode: z")
        z = (1.0 / self.scale_factor) * z                 # the reciprocal, as the paper
        return self.decoder(self.post_quant_conv(z))

    def forward(self, inputs, fn):
        """The paper's dispatch: fn in "encode_moments", "encode", "decode"."""
        if fn == "encode_moments":
            return self.encode_moments(inputs)
        if fn == "encode":
            return self.encode(inputs)
        if fn == "decode":
            return self.decode(inputs)
        raise NotImplementedError(f"FrozenAutoencoderKL: fn must be 'encode_moments', 'encode' "
                                  f"or 'decode', got {fn!r}")

    # --- state dicts in two layouts -----------------------------------------------------------
    def diffusers_state_dict(self):
        """`{key: array}` with diffusers' `AutoencoderKL` keys (the shared blocks' own names)."""
        return dict(self.named_parameters())

    def load_diffusers_state_dict(self, state_dict, strict=True):
        """Load a diffusers `AutoencoderKL` state dict (quant_conv must be 2 embed_dim wide, so
        embed_dim = z_channels there). Every problem is reported in one ValueError before
        anything changes; each child then loads its part. Returns (missing, unexpected)."""
        given = {k: np.asarray(v) for k, v in state_dict.items()}
        missing, unexpected = check_state_dict(type(self).__name__,
                                               dict(self.named_parameters()), given, strict)
        for name, child in self._modules.items():
            prefix = name + "."
            child.load_state_dict({k[len(prefix):]: v for k, v in given.items()
                                   if k.startswith(prefix)}, strict=False)
        return missing, unexpected

    def state_dict(self):
        """`{paper key: array}`: the paper's names, the attention's weights as 1x1 convs."""
        out = {}
        for key, value in self.named_parameters():
            name = paper_key(key, self.num_levels)
            out[name] = to_paper_value(name, value)
        return out

    def grads(self):
        """The gradients under the keys and shapes of `state_dict()` (the paper's)."""
        out = {}
        for key, value in Module.grads(self).items():
            name = paper_key(key, self.num_levels)
            out[name] = to_paper_value(name, value)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Load a state dict in the paper's layout (`autoencoder_kl.pth`'s keys, arrays or CPU
        tensors). Missing, unexpected and mis-shaped keys are reported, under the paper's names,
        in one ValueError before anything changes. Returns (missing, unexpected)."""
        given = {k: np.asarray(v) for k, v in state_dict.items()}
        missing, unexpected = check_state_dict(type(self).__name__, self.state_dict(), given,
                                               strict)
        shared = {shared_key(k, self.num_levels): to_shared_value(k, v)
                  for k, v in given.items() if k not in unexpected}
        self.load_diffusers_state_dict(shared, strict=False)
        return missing, unexpected

    # --- diffusers folders ---------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, path, scale_factor=None, dtype=np.float32, variant=None,
                       subfolder="vae"):
        """A diffusers `AutoencoderKL` folder (config.json + diffusion_pytorch_model.safetensors,
        or a pipeline folder with `vae/`), e.g. stabilityai/sd-vae-ft-mse, read without torch.
        scale_factor: None takes the folder's `scaling_factor` (0.18215 for Stable Diffusion's
        VAEs; the paper's MS-COCO model wants 0.23010)."""
        from .weights import find_model_folder, read_config, read_safetensors, weight_files
        folder = find_model_folder(path, subfolder)
        config = read_config(folder)
        ddconfig, embed_dim, folder_scale = ddconfig_from_diffusers(config, folder)
        model = cls(ddconfig, embed_dim, folder_scale if scale_factor is None else scale_factor,
                    dtype=dtype, rng=NoDraws())
        model.load_diffusers_state_dict(read_safetensors(weight_files(folder, variant)))
        return model

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, scale_factor={self.scale_factor}"


def to_float(x, dtype, name):
    """Check a floating (B, C, H, W) array and cast it to the model's dtype."""
    check_floating(name, x)
    check_rank(name, x, 4, "(B, C, H, W)")
    return x.astype(dtype, copy=False)


# diffusers' AutoencoderKL arguments and the values the paper's network needs
_DIFFUSERS_KL_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=
                              ("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                              block_out_channels=(64,), layers_per_block=1, act_fn="silu",
                              latent_channels=4, norm_num_groups=32, sample_size=32,
                              scaling_factor=0.18215, shift_factor=None, latents_mean=None,
                              latents_std=None, force_upcast=True, use_quant_conv=True,
                              use_post_quant_conv=True, mid_block_add_attention=True)


def ddconfig_from_diffusers(config, folder="the folder"):
    """(ddconfig, embed_dim, scaling_factor) of the paper's class for a diffusers `AutoencoderKL`
    config.json dict. ValueError when the folder holds another model or a network the paper's
    class cannot express (other groups or activation, no quant convs, a shift of the latents,
    channels that are not multiples of the first)."""
    name = config.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
        raise ValueError(f"FrozenAutoencoderKL.from_diffusers: {str(folder)!r} holds a {name!r}, "
                         f"not an AutoencoderKL")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in
                     _DIFFUSERS_KL_DEFAULTS)
    if unknown:
        raise ValueError(f"FrozenAutoencoderKL.from_diffusers: unknown AutoencoderKL key(s) "
                         f"{unknown} in {str(folder)!r}")
    c = {**_DIFFUSERS_KL_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    boc = list(c["block_out_channels"])
    problems = [
        (c["norm_num_groups"] != 32, f"norm_num_groups={c['norm_num_groups']} (the paper's "
                                     f"GroupNorms have 32 groups)"),
        (c["act_fn"] not in ("silu", "swish"), f"act_fn={c['act_fn']!r}"),
        (not (c["use_quant_conv"] and c["use_post_quant_conv"]), "no quant_conv/post_quant_conv"),
        (c["shift_factor"] is not None or c["latents_mean"] is not None,
         "a shift of the latents (shift_factor/latents_mean), which the paper's class lacks"),
        (any(b % boc[0] for b in boc), f"block_out_channels={boc} not multiples of the first"),
        (set(c["down_block_types"]) != {"DownEncoderBlock2D"}
         or set(c["up_block_types"]) != {"UpDecoderBlock2D"}, "attention inside the levels")]
    for bad, what in problems:
        if bad:
            raise ValueError(f"FrozenAutoencoderKL.from_diffusers: {str(folder)!r} has {what}")
    ddconfig = dict(double_z=True, z_channels=c["latent_channels"], resolution=c["sample_size"],
                    in_channels=c["in_channels"], out_ch=c["out_channels"], ch=boc[0],
                    ch_mult=[b // boc[0] for b in boc], num_res_blocks=c["layers_per_block"],
                    attn_resolutions=[], dropout=0.0,
                    attn_type="vanilla" if c["mid_block_add_attention"] else "none")
    return ddconfig, c["latent_channels"], c["scaling_factor"]
