"""The U-ViT paper's KL autoencoder in PyTorch: the twin of `uvit_numpy.autoencoder`, and the
reader of the paper's `autoencoder_kl.pth` / `autoencoder_kl_ema.pth` for both packages.

    from uvit_torch.autoencoder import load_pretrained
    ae = load_pretrained("autoencoder_kl_ema.pth")                          # torch, 0.18215
    ae = load_pretrained("autoencoder_kl.pth", scale_factor=0.23010, backend="numpy")  # MS-COCO

`state_dict()` and `load_state_dict()` speak the paper's keys through two of torch's own state-dict
hooks (a post-hook renames and reshapes on the way out, a pre-hook on the way in), so they work the
same when the autoencoder sits inside a larger module. The blocks are `uvit_torch.vae`'s, shared
with the VQ-GAN; `diffusers_state_dict()` / `load_diffusers_state_dict()` speak diffusers' keys.
"""

import numpy as np
import torch
import torch.nn as nn

from uvit_numpy.autoencoder import (AUTOENCODER_FILES, PAPER_DDCONFIG, PAPER_EMBED_DIM,  # noqa
                                    SCALE_FACTORS, check_ddconfig, ddconfig_from_diffusers,
                                    paper_key, shared_key, to_paper_value, to_shared_value)
from uvit_numpy.checks import check_floating, check_rank, check_state_dict

from . import functional as UF
from .layers import Conv2d
from .vae import Decoder, Encoder

__all__ = ["PAPER_DDCONFIG", "PAPER_EMBED_DIM", "SCALE_FACTORS", "AUTOENCODER_FILES",
           "FrozenAutoencoderKL", "load_pretrained"]


class FrozenAutoencoderKL(nn.Module):
    """The paper's `FrozenAutoencoderKL` (see `uvit_numpy.autoencoder.FrozenAutoencoderKL`):
    built in eval mode with its parameters frozen (requires_grad False), as the paper's class."""

    def __init__(self, ddconfig, embed_dim, scale_factor=0.18215, dtype=None):
        super().__init__()
        cfg = check_ddconfig(ddconfig)
        self.ddconfig, self.embed_dim, self.scale_factor = dict(ddconfig), embed_dim, scale_factor
        self.num_levels = len(cfg["ch_mult"])
        blocks = tuple(cfg["ch"] * m for m in cfg["ch_mult"])
        kw = dict(block_out_channels=blocks, layers_per_block=cfg["num_res_blocks"],
                  norm_num_groups=32, act_fn="silu",
                  mid_block_add_attention=cfg["attn_type"] != "none", dtype=dtype)
        self.encoder = Encoder(in_channels=cfg["in_channels"], out_channels=cfg["z_channels"],
                               down_block_types=("DownEncoderBlock2D",) * self.num_levels,
                               double_z=True, **kw)
        self.decoder = Decoder(in_channels=cfg["z_channels"], out_channels=cfg["out_ch"],
                               up_block_types=("UpDecoderBlock2D",) * self.num_levels, **kw)
        self.quant_conv = Conv2d(2 * cfg["z_channels"], 2 * embed_dim, 1, dtype=dtype)
        self.post_quant_conv = Conv2d(embed_dim, cfg["z_channels"], 1, dtype=dtype)
        self.register_state_dict_post_hook(_to_paper_keys)
        self.register_load_state_dict_pre_hook(_from_paper_keys)
        self.eval()
        self.requires_grad_(False)

    def encode_moments(self, x):
        UF.check_tensor("FrozenAutoencoderKL.encode_moments: x", x)
        return self.quant_conv(self.encoder(x))

    def sample(self, moments, noise=None, generator=None):
        """scale_factor (mean + exp(logvar / 2) noise); noise drawn like the paper's
        `torch.randn_like(mean)` (from `generator` if given) unless passed in."""
        UF.check_tensor("FrozenAutoencoderKL.sample: moments", moments)
        check_floating("FrozenAutoencoderKL.sample: moments", moments)
        check_rank("FrozenAutoencoderKL.sample: moments", moments, 4, "(B, C, H, W)")
        if moments.shape[1] != 2 * self.embed_dim:
            raise ValueError(f"FrozenAutoencoderKL.sample: expected moments with 2 embed_dim = "
                             f"{2 * self.embed_dim} channels, got shape {tuple(moments.shape)}")
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)
        std = torch.exp(0.5 * logvar)
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                                device=mean.device)
        if tuple(noise.shape) != tuple(mean.shape):
            raise ValueError(f"FrozenAutoencoderKL.sample: expected noise of shape "
                             f"{tuple(mean.shape)}, got {tuple(noise.shape)}")
        z = mean + std * noise.to(mean.dtype)
        return self.scale_factor * z

    def encode(self, x, noise=None, generator=None):
        return self.sample(self.encode_moments(x), noise=noise, generator=generator)

    def decode(self, z):
        UF.check_tensor("FrozenAutoencoderKL.decode: z", z)
        z = (1.0 / self.scale_factor) * z
        return self.decoder(self.post_quant_conv(z))

    def forward(self, inputs, fn):
        if fn == "encode_moments":
            return self.encode_moments(inputs)
        if fn == "encode":
            return self.encode(inputs)
        if fn == "decode":
            return self.decode(inputs)
        raise NotImplementedError(f"FrozenAutoencoderKL: fn must be 'encode_moments', 'encode' "
                                  f"or 'decode', got {fn!r}")

    def diffusers_state_dict(self):
        """The parameters under diffusers' `AutoencoderKL` keys (the shared blocks' names)."""
        return {k: v.detach() for k, v in self.named_parameters()}

    def load_diffusers_state_dict(self, state_dict, strict=True):
        """Load a diffusers `AutoencoderKL` state dict; every problem in one ValueError."""
        check_state_dict(type(self).__name__, self.diffusers_state_dict(), state_dict, strict)
        with torch.no_grad():
            params = dict(self.named_parameters())
            for key, value in state_dict.items():
                if key in params:
                    params[key].copy_(torch.as_tensor(value))

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """torch's `load_state_dict` in the paper's layout, after a check that reports every
        missing, unexpected and mis-shaped key (paper names) in one ValueError."""
        check_state_dict(type(self).__name__, self.state_dict(), state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_diffusers(cls, path, scale_factor=None, dtype=None, variant=None, subfolder="vae"):
        """A diffusers `AutoencoderKL` folder (or a pipeline's `vae/`), e.g. sd-vae-ft-mse."""
        from uvit_numpy.weights import find_model_folder, read_config

        from .weights import load_pretrained as load_folder
        folder = find_model_folder(path, subfolder)
        ddconfig, embed_dim, folder_scale = ddconfig_from_diffusers(read_config(folder), folder)
        _, state_dict = load_folder(path, variant=variant, subfolder=subfolder)
        model = cls(ddconfig, embed_dim, folder_scale if scale_factor is None else scale_factor,
                    dtype=dtype)
        model.load_diffusers_state_dict(state_dict)
        return model


def _to_paper_keys(module, state_dict, prefix, local_metadata):
    """state_dict post-hook: this module's entries renamed (and reshaped) to the paper's."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = paper_key(key[len(prefix):], module.num_levels)
        state_dict[prefix + name] = to_paper_value(name, state_dict.pop(key))


def _from_paper_keys(module, state_dict, prefix, local_metadata, strict, missing_keys,
                     unexpected_keys, error_msgs):
    """load_state_dict pre-hook: paper keys under `prefix` renamed (and reshaped) to the shared
    blocks' before torch loads the children; keys it does not know are left for torch to report.
    """
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix):]
        try:
            shared = shared_key(name, module.num_levels)
        except KeyError:
            continue
        state_dict[prefix + shared] = to_shared_value(name, state_dict.pop(key))


def load_pretrained(path, ddconfig=None, embed_dim=PAPER_EMBED_DIM, scale_factor=0.18215,
                    backend="torch", dtype=None):
    """The paper's `autoencoder_kl.pth` or `autoencoder_kl_ema.pth` (a plain state dict, read with
    `torch.load(weights_only=True)`) as a FrozenAutoencoderKL of `backend` "torch" or "numpy".
    ddconfig: the paper's `PAPER_DDCONFIG` by default. scale_factor: 0.18215 (the class default,
    the ImageNet models'); 0.23010 for mscoco_uvit_small (see `SCALE_FACTORS`)."""
    from .checkpoint import load_pth, to_numpy_state_dict
    ddconfig = PAPER_DDCONFIG if ddconfig is None else ddconfig
    state_dict = load_pth(path)
    if backend == "torch":
        model = FrozenAutoencoderKL(ddconfig, embed_dim, scale_factor, dtype=dtype)
        model.load_state_dict(state_dict)
        return model
    if backend == "numpy":
        from uvit_numpy.autoencoder import FrozenAutoencoderKL as NumpyFrozenAutoencoderKL
        from uvit_numpy.module import NoDraws
        model = NumpyFrozenAutoencoderKL(ddconfig, embed_dim, scale_factor,
                                         dtype=np.float32 if dtype is None else dtype,
                                         rng=NoDraws())
        model.load_state_dict(to_numpy_state_dict(state_dict))
        return model
    raise ValueError(f"load_pretrained: expected backend 'torch' or 'numpy', got {backend!r}")
