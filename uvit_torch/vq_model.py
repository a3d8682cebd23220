"""aMUSEd's VQ-GAN in PyTorch: the twin of `uvit_numpy.vq_model` (diffusers' `VQModel`).

Same constructor arguments, configs, output classes and state-dict keys as diffusers, so

    ours.load_state_dict(diffusers_vq_model.state_dict())

works unchanged, and `VQModel.from_pretrained` reads a diffusers folder (or an aMUSEd pipeline's
`vqvae/`). The quantiser is diffusers' computation in idiomatic torch: `torch.cdist`, `argmin`,
the straight-through `z + (z_q - z).detach()`.
"""

import torch
import torch.nn as nn

from uvit_numpy.checks import (check_dim, check_floating, check_integer, check_range, check_rank,
                               check_state_dict)
from uvit_numpy.vq_model import (CONFIG_DEFAULTS, CONFIGS, VQEncoderOutput, _check_code_shape,
                                 check_class_name, resolve_config)

from . import functional as UF
from .layers import Conv2d
from .vae import Decoder, DecoderOutput, Encoder

__all__ = ["CONFIG_DEFAULTS", "CONFIGS", "resolve_config", "VQEncoderOutput", "DecoderOutput",
           "VectorQuantizer", "VQModel"]


class VectorQuantizer(nn.Module):
    """diffusers' `VectorQuantizer` (see `uvit_numpy.vq_model.VectorQuantizer`); `embedding` is an
    `nn.Embedding` codebook initialised U(-1/n_e, 1/n_e)."""

    def __init__(self, n_e, vq_embed_dim, beta, remap=None, unknown_index="random",
                 sane_index_shape=False, legacy=True, dtype=None):
        super().__init__()
        if remap is not None:
            raise NotImplementedError("VectorQuantizer: remap (re-indexing to a subset of used "
                                      "codes) is not implemented")
        self.n_e, self.vq_embed_dim, self.beta, self.legacy = n_e, vq_embed_dim, beta, legacy
        self.remap, self.unknown_index, self.re_embed = None, unknown_index, n_e
        self.sane_index_shape = sane_index_shape
        self.embedding = nn.Embedding(n_e, vq_embed_dim, dtype=dtype)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)

    def forward(self, z):
        """z: (B, C, H, W) -> (z_q (B, C, H, W), loss, (None, None, indices (B*H*W,)))."""
        check_floating("VectorQuantizer: z", z)
        check_rank("VectorQuantizer: z", z, 4, "(B, C, H, W)")
        check_dim("VectorQuantizer: z", z, 1, self.vq_embed_dim, "channels (vq_embed_dim)")
        B, C, H, W = z.shape
        z = z.permute(0, 2, 3, 1).contiguous()                      # (B, H, W, C)
        indices = torch.argmin(torch.cdist(z.view(-1, C), self.embedding.weight), dim=1)
        z_q = self.embedding(indices).view(z.shape)
        sg_codes, sg_z = (z_q.detach() - z) ** 2, (z_q - z.detach()) ** 2
        if self.legacy:
            loss = torch.mean(sg_codes) + self.beta * torch.mean(sg_z)
        else:
            loss = self.beta * torch.mean(sg_codes) + torch.mean(sg_z)
        z_q = z + (z_q - z).detach()                                # straight-through
        z_q = z_q.permute(0, 3, 1, 2).contiguous()                  # (B, C, H, W)
        if self.sane_index_shape:
            indices = indices.reshape(B, H, W)
        return z_q, loss, (None, None, indices)

    def get_codebook_entry(self, indices, shape):
        """The codes of `indices`, laid out (B, C, h, w) by shape = (B, h, w, C) (or raw rows)."""
        check_integer("VectorQuantizer.get_codebook_entry: indices", indices)
        check_range("VectorQuantizer.get_codebook_entry: indices", indices, 0, self.n_e)
        z_q = self.embedding(indices)
        if shape is None:
            return z_q
        B, h, w, C = _check_code_shape(shape, indices, self.vq_embed_dim)
        return z_q.view(B, h, w, C).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """diffusers' `VQModel` (see `uvit_numpy.vq_model.VQModel`); `VQModel.from_config("amused")`
    is aMUSEd's VQ-GAN."""

    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,),
                 layers_per_block=1, act_fn="silu", latent_channels=3, sample_size=32,
                 num_vq_embeddings=256, norm_num_groups=32, vq_embed_dim=None,
                 scaling_factor=0.18215, norm_type="group", mid_block_add_attention=True,
                 lookup_from_codebook=False, force_upcast=False, dtype=None):
        super().__init__()
        self._config = resolve_config({k: v for k, v in locals().items()
                                       if k in CONFIG_DEFAULTS})
        vq_embed_dim = latent_channels if vq_embed_dim is None else vq_embed_dim
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels,
                               down_block_types=down_block_types,
                               block_out_channels=block_out_channels,
                               layers_per_block=layers_per_block, act_fn=act_fn,
                               norm_num_groups=norm_num_groups, double_z=False,
                               mid_block_add_attention=mid_block_add_attention, dtype=dtype)
        self.quant_conv = Conv2d(latent_channels, vq_embed_dim, 1, dtype=dtype)
        self.quantize = VectorQuantizer(num_vq_embeddings, vq_embed_dim, beta=0.25, remap=None,
                                        sane_index_shape=False, dtype=dtype)
        self.post_quant_conv = Conv2d(vq_embed_dim, latent_channels, 1, dtype=dtype)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels,
                               up_block_types=up_block_types,
                               block_out_channels=block_out_channels,
                               layers_per_block=layers_per_block, act_fn=act_fn,
                               norm_num_groups=norm_num_groups, norm_type=norm_type,
                               mid_block_add_attention=mid_block_add_attention, dtype=dtype)

    @property
    def config(self):
        return dict(self._config)

    @property
    def dtype(self):
        return self.quant_conv.weight.dtype

    @classmethod
    def from_config(cls, config=None, dtype=None, **overrides):
        """A randomly initialised model from a name in `CONFIGS` or a config dict."""
        return cls(**resolve_config(config, **overrides), dtype=dtype)

    @classmethod
    def from_pretrained(cls, path, dtype=None, variant=None, subfolder="vqvae"):
        """Load a diffusers folder (or a pipeline folder's `vqvae/`); returns it in eval mode."""
        from uvit_numpy.weights import find_model_folder, read_config

        from .weights import load_pretrained
        check_class_name(read_config(find_model_folder(path, subfolder)), path)
        config, state_dict = load_pretrained(path, variant=variant, subfolder=subfolder)
        with torch.device("meta"):
            model = cls.from_config(config, dtype=dtype)
        dtype = dtype or torch.float32
        model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, assign=True)
        return model.eval()

    def save_pretrained(self, path, **extra):
        """Write config.json + diffusion_pytorch_model.safetensors that diffusers' VQModel loads."""
        from uvit_numpy.weights import folder_config

        from .weights import save_pretrained
        save_pretrained(path, folder_config(self.config, extra), self.state_dict(),
                        class_name="VQModel")

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """torch's `load_state_dict` after a check that reports every missing, unexpected and
        mis-shaped key in one ValueError (as the NumPy model does)."""
        check_state_dict(type(self).__name__, self.state_dict(), state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def encode(self, x, return_dict=True):
        UF.check_tensor("VQModel.encode: x", x)
        h = self.quant_conv(self.encoder(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, h, force_not_quantize=False, return_dict=True, shape=None):
        """See `uvit_numpy.vq_model.VQModel.decode`."""
        UF.check_tensor("VQModel.decode: h", h)
        if not force_not_quantize:
            quant, commit_loss, _ = self.quantize(h)
        elif self._config["lookup_from_codebook"]:
            if shape is None:
                raise ValueError("VQModel.decode: with lookup_from_codebook, force_not_quantize="
                                 "True decodes code indices and needs shape=(B, h, w, C)")
            quant = self.quantize.get_codebook_entry(h, shape)
            commit_loss = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        else:
            check_floating("VQModel.decode: h", h)
            quant = h
            commit_loss = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
        dec = self.decoder(self.post_quant_conv(quant), None)
        return DecoderOutput(sample=dec, commit_loss=commit_loss) if return_dict \
            else (dec, commit_loss)

    def forward(self, sample, return_dict=True):
        """Encode, quantise, decode: `DecoderOutput(sample, commit_loss)`."""
        dec = self.decode(self.encode(sample).latents)
        return dec if return_dict else (dec.sample, dec.commit_loss)
