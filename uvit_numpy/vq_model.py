"""aMUSEd's VQ-GAN in NumPy: diffusers' `VQModel` and its `VectorQuantizer`, weight-compatible.

A VQ-GAN turns an image into a grid of code indices and back. Three learned parts:

    image (B, 3, H, W) --encoder, quant_conv--> h (B, C, h, w)           `encode(x).latents`
      --quantize: each h[:, :, i, j] replaced by its nearest codebook row--> (B, C, h, w),
                  with the row indices (B*h*w,)                          `quantize(h)`
      --post_quant_conv, decoder--> image (B, 3, H', W')                 `decode(...).sample`

(h = H / 2^(levels-1), rounded down per level; aMUSEd: 256 x 256 pixels -> 16 x 16 codes of 8,192.)
aMUSEd's transformer predicts the indices; `decode(indices, force_not_quantize=True, shape=(B, h,
w, C))` with `lookup_from_codebook=True` turns them into an image. The encoder and decoder are
`vae.Encoder`/`vae.Decoder` (the blocks shared with the KL autoencoder); this module adds the
codebook and the model around it.

Training (what the quantiser's backward is for): the argmin has no gradient, so the decoder's
gradient reaches the encoder by the straight-through estimator (z_q = z + sg[z_q - z]) and the
codebook learns only from the loss terms `functional.vq_loss` returns with the codes.

Constructor arguments, defaults, `config`, the output classes and state-dict keys are diffusers',
so `VQModel.from_pretrained` reads a diffusers folder (an aMUSEd pipeline's `vqvae/`) without torch.
"""

import math
from dataclasses import dataclass

import numpy as np

from . import functional as F
from .checks import check_dim, check_floating, check_integer, check_range, check_rank
from .layers import Conv2d, Embedding, to_module_dtype
from .module import Module, NoDraws, as_rng, dtype_draws
from .vae import Decoder, DecoderOutput, Encoder

__all__ = ["CONFIG_DEFAULTS", "CONFIGS", "resolve_config", "VQEncoderOutput", "DecoderOutput",
           "CodebookEmbedding", "VectorQuantizer", "VQModel"]

# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------
# The constructor arguments of diffusers' `VQModel` and their defaults.
CONFIG_DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 3, "sample_size": 32, "num_vq_embeddings": 256,
    "norm_num_groups": 32, "vq_embed_dim": None, "scaling_factor": 0.18215, "norm_type": "group",
    "mid_block_add_attention": True, "lookup_from_codebook": False, "force_upcast": False,
}

# aMUSEd's VQ-GAN (the `vqvae/` of amused/amused-256 and amused-512, converted from open-muse's
# VQGANModel): 146,244,675 parameters. Provenance: the arguments diffusers' conversion script
# (scripts/convert_amused.py, `make_vqvae`) passes to VQModel; every other argument keeps its
# default (vq_embed_dim = latent_channels = 64, scaling_factor 0.18215, norm_type "group",
# force_upcast False). Not checked against the Hub's config.json (no internet here).
CONFIGS = {
    "amused": {**CONFIG_DEFAULTS, "block_out_channels": (128, 256, 256, 512, 768),
               "down_block_types": ("DownEncoderBlock2D",) * 5,
               "up_block_types": ("UpDecoderBlock2D",) * 5, "layers_per_block": 2,
               "latent_channels": 64, "num_vq_embeddings": 8192, "norm_num_groups": 32,
               "mid_block_add_attention": False, "lookup_from_codebook": True},
    # Small enough for tests and exercises: two levels (one down-sampling), mid attention on.
    "tiny": {**CONFIG_DEFAULTS, "block_out_channels": (8, 16),
             "down_block_types": ("DownEncoderBlock2D",) * 2,
             "up_block_types": ("UpDecoderBlock2D",) * 2, "layers_per_block": 1,
             "latent_channels": 4, "num_vq_embeddings": 32, "norm_num_groups": 4,
             "lookup_from_codebook": True},
}


def resolve_config(config=None, **overrides):
    """A complete `VQModel` config dict from a name in `CONFIGS`, a dict (a folder's config.json)
    or None (diffusers' defaults). Keys starting with `_` (`_class_name`, `_diffusers_version`)
    are dropped; an unknown key is a ValueError naming it; lists become tuples."""
    if config is None:
        config = {}
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"config: expected one of {sorted(CONFIGS)}, got {config!r}")
        config = CONFIGS[config]
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a name or a dict, got {type(config).__name__}")
    given = {k: v for k, v in {**config, **overrides}.items() if not str(k).startswith("_")}
    unknown = sorted(k for k in given if k not in CONFIG_DEFAULTS)
    if unknown:
        raise ValueError(f"config: unknown key(s) {unknown} for VQModel; expected keys among "
                         f"{sorted(CONFIG_DEFAULTS)}")
    cfg = {**CONFIG_DEFAULTS, **given}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def check_class_name(config, folder):
    """ValueError unless a folder's config.json is a VQModel's (no `_class_name`: accepted)."""
    name = config.get("_class_name", "VQModel")
    if name != "VQModel":
        raise ValueError(f"VQModel.from_pretrained: {str(folder)!r} holds a {name!r}, not a "
                         f"VQModel")


@dataclass
class VQEncoderOutput:
    """What `VQModel.encode` returns, as diffusers': `latents` (B, vq_embed_dim, h, w), the
    encoder's output after `quant_conv`, not yet quantised."""
    latents: np.ndarray


# --------------------------------------------------------------------------------------------------
# The codebook and the quantiser
# --------------------------------------------------------------------------------------------------
class CodebookEmbedding(Embedding):
    """The codebook: an `Embedding` whose `weight` (K, C) rows are the K codes, with one more
    method, `nearest`, the search the quantiser needs (a layer computes with its own weights).
    Initial codes U(-1/K, 1/K), as diffusers' `VectorQuantizer` draws them."""

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32, rng=None):
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, rng=rng)
        bound = 1.0 / num_embeddings
        self.weight = as_rng(rng).uniform(-bound, bound, (num_embeddings, embedding_dim)
                                          ).astype(self.dtype)

    def nearest(self, z):
        """z: (N, C) -> (N,) the index of the nearest code of each row (`functional.nearest_code`:
        torch's `cdist` distances, the lowest index on a tie). Nothing is recorded: an argmin
        passes no gradient."""
        return F.nearest_code(z, self.weight)


class VectorQuantizer(Module):
    """diffusers' `VectorQuantizer`: every vector of a feature map replaced by its nearest code.

    `embedding` (K = n_e codes of width vq_embed_dim) is the codebook. Forward on z (B, C, H, W):
        idx = argmin_k ||z[b, :, i, j] - e_k||;  z_q = e_idx;
        loss = vq_loss(z, z_q, beta, legacy)   (codebook + commitment terms, one scalar);
        out = z + sg[z_q - z]                  (straight-through: the value of z_q, z's gradient)
    and returns `(out, loss, (None, None, idx))` exactly as diffusers: no perplexity, no one-hot
    encodings, idx (B*H*W,) int64 in (b, i, j) order, or (B, H, W) with `sane_index_shape`.
    `legacy=True` (diffusers' default, which `VQModel` uses) weights the terms as an old bug did
    (see `functional.vq_loss`). `remap` (a file of used indices) is not implemented.
    """

    def __init__(self, n_e, vq_embed_dim, beta, remap=None, unknown_index="random",
                 sane_index_shape=False, legacy=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        if remap is not None:
            raise NotImplementedError("VectorQuantizer: remap (re-indexing to a subset of used "
                                      "codes) is not implemented")
        self.n_e, self.vq_embed_dim, self.beta, self.legacy = n_e, vq_embed_dim, beta, legacy
        self.remap, self.unknown_index, self.re_embed = None, unknown_index, n_e
        self.sane_index_shape = sane_index_shape
        self.embedding = CodebookEmbedding(n_e, vq_embed_dim, dtype=dtype, rng=rng)

    def forward(self, z):
        """z: (B, vq_embed_dim, H, W) -> (z_q (B, C, H, W), loss (), (None, None, indices))."""
        z = to_module_dtype("VectorQuantizer: z", z, self.dtype)
        check_rank("VectorQuantizer: z", z, 4, "(B, C, H, W)")
        check_dim("VectorQuantizer: z", z, 1, self.vq_embed_dim, "channels (vq_embed_dim)")
        B, C, H, W = z.shape
        z_hwc = z.transpose(0, 2, 3, 1)                   # (B, C, H, W) -> (B, H, W, C)
        indices = self.embedding.nearest(z_hwc.reshape(-1, C))  # (B*H*W, C) -> (B*H*W,)
        z_q = self.embedding(indices).reshape(B, H, W, C)  # the codes, (B*H*W, C) -> (B, H, W, C)
        loss, loss_cache = F.vq_loss(z_hwc, z_q, self.beta, self.legacy, return_cache=True)
        out = F.straight_through(z_hwc, z_q).transpose(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        if self.sane_index_shape:
            indices = indices.reshape(B, H, W)            # (B*H*W,) -> (B, H, W)
        self._record(out, loss_cache)
        return out, loss, (None, None, indices)

    def backward(self, grad_out, grad_loss=None):
        """grad_out: dL/d z_q (B, C, H, W); grad_loss: dL/d loss, a number (None: the loss was not
        used). Returns dL/dz (B, C, H, W); the codebook's gradient goes into `embedding.weight`.

        z reaches the output through the straight-through path (gradient: grad_out, unchanged)
        and the loss (its commitment or codebook term); the chosen codes reach only the loss.
        """
        loss_cache = self._recall(grad_out)
        dz, _ = F.straight_through_backward(grad_out.transpose(0, 2, 3, 1))  # -> (B, H, W, C)
        if grad_loss is None:
            dz_q = np.zeros_like(dz)
        else:
            dz_loss, dz_q = F.vq_loss_backward(grad_loss, loss_cache)
            dz = dz + dz_loss                             # z fed the output and the loss
        self.embedding.backward(dz_q.reshape(-1, self.vq_embed_dim))  # into the rows it picked
        return dz.transpose(0, 3, 1, 2)                   # (B, H, W, C) -> (B, C, H, W)

    def get_codebook_entry(self, indices, shape):
        """The codes of `indices` (any integer shape; values in [0, n_e)). With `shape` =
        (B, h, w, C) they are laid out as a feature map (B, C, h, w); with shape=None the rows are
        returned as looked up, indices.shape + (C,)."""
        check_integer("VectorQuantizer.get_codebook_entry: indices", indices)
        check_range("VectorQuantizer.get_codebook_entry: indices", indices, 0, self.n_e)
        z_q = self.embedding(indices)                     # indices.shape + (C,)
        if shape is None:
            return z_q
        B, h, w, C = _check_code_shape(shape, indices, self.vq_embed_dim)
        return z_q.reshape(B, h, w, C).transpose(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)


def _check_code_shape(shape, indices, width):
    """(B, h, w, C) from `shape`, checked against the number of indices and the codes' width."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise ValueError(f"shape: expected (B, h, w, C), got {shape!r}")
    B, h, w, C = (int(s) for s in shape)
    if C != width:
        raise ValueError(f"shape: expected C = {width} (the codes' width), got shape {shape}")
    if B * h * w != math.prod(indices.shape):
        raise ValueError(f"shape: {shape} holds B*h*w = {B * h * w} codes, but "
                         f"{math.prod(indices.shape)} indices arrived (shape "
                         f"{tuple(indices.shape)})")
    return B, h, w, C


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class VQModel(Module):
    """diffusers' `VQModel` (aMUSEd's VQ-GAN is `VQModel.from_config("amused")`).

    Children in diffusers' order: `encoder` (vae.Encoder, double_z=False), `quant_conv` (1x1,
    latent_channels -> vq_embed_dim), `quantize` (VectorQuantizer(num_vq_embeddings, vq_embed_dim,
    beta=0.25, legacy)), `post_quant_conv` (1x1 back) and `decoder` (vae.Decoder).
    `scaling_factor` and `force_upcast` are configuration only (pipelines read them: the latter
    asks for float32 when the model runs in float16); `sample_size` too. Initial weights follow
    torch's defaults (the codebook diffusers'), drawn from `rng` in the model's dtype.
    """

    def __init__(self, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,),
                 layers_per_block=1, act_fn="silu", latent_channels=3, sample_size=32,
                 num_vq_embeddings=256, norm_num_groups=32, vq_embed_dim=None,
                 scaling_factor=0.18215, norm_type="group", mid_block_add_attention=True,
                 lookup_from_codebook=False, force_upcast=False, dtype=np.float32, rng=None):
        super().__init__(dtype)
        rng = dtype_draws(rng, self.dtype)
        self._config = resolve_config({k: v for k, v in locals().items()
                                       if k in CONFIG_DEFAULTS})
        kw = dict(dtype=dtype, rng=rng)
        vq_embed_dim = latent_channels if vq_embed_dim is None else vq_embed_dim
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels,
                               down_block_types=down_block_types,
                               block_out_channels=block_out_channels,
                               layers_per_block=layers_per_block, act_fn=act_fn,
                               norm_num_groups=norm_num_groups, double_z=False,
                               mid_block_add_attention=mid_block_add_attention, **kw)
        self.quant_conv = Conv2d(latent_channels, vq_embed_dim, 1, **kw)
        self.quantize = VectorQuantizer(num_vq_embeddings, vq_embed_dim, beta=0.25, remap=None,
                                        sane_index_shape=False, **kw)
        self.post_quant_conv = Conv2d(vq_embed_dim, latent_channels, 1, **kw)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels,
                               up_block_types=up_block_types,
                               block_out_channels=block_out_channels,
                               layers_per_block=layers_per_block, act_fn=act_fn,
                               norm_num_groups=norm_num_groups, norm_type=norm_type,
                               mid_block_add_attention=mid_block_add_attention, **kw)

    # --- configuration and folders ------------------------------------------------------------
    @property
    def config(self):
        """The constructor arguments (a copy), as diffusers' `model.config`."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config=None, dtype=np.float32, rng=None, **overrides):
        """A randomly initialised model from a name in `CONFIGS` ("amused", "tiny") or a dict."""
        return cls(**resolve_config(config, **overrides), dtype=dtype, rng=rng)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, variant=None, subfolder="vqvae"):
        """Load a diffusers folder (config.json + diffusion_pytorch_model.safetensors), or a
        pipeline folder with a `vqvae/` subfolder, without torch. Returns the model in eval mode."""
        from .weights import find_model_folder, read_config, read_safetensors, weight_files
        folder = find_model_folder(path, subfolder)
        config = read_config(folder)
        check_class_name(config, folder)
        model = cls.from_config(config, dtype=dtype, rng=NoDraws())
        model.load_state_dict(read_safetensors(weight_files(folder, variant)))
        return model.eval()

    def save_pretrained(self, path, **extra):
        """Write config.json + diffusion_pytorch_model.safetensors that diffusers' VQModel loads;
        `extra` entries go under `_`-prefixed keys, which diffusers and `from_pretrained` skip."""
        from .weights import folder_config, save_pretrained
        save_pretrained(path, folder_config(self.config, extra), self.state_dict(),
                        class_name="VQModel")

    # --- the three stages ---------------------------------------------------------------------
    def encode(self, x, return_dict=True):
        """x: (B, in_channels, H, W) -> `VQEncoderOutput(latents)` (B, vq_embed_dim, h, w), not
        yet quantised (or the tuple `(latents,)` with return_dict=False)."""
        h = self.quant_conv(self.encoder(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, h, force_not_quantize=False, return_dict=True, shape=None):
        """Latents or code indices -> `DecoderOutput(sample, commit_loss)`, as diffusers:

        * force_not_quantize=False: h (B, vq_embed_dim, h, w) floats are quantised first;
          commit_loss is the quantiser's loss (a 0-d array);
        * force_not_quantize=True and `lookup_from_codebook`: h are code indices (B, h, w) (any
          shape with B*h*w entries) and `shape` = (B, h, w, vq_embed_dim) lays their codes out;
        * force_not_quantize=True otherwise: h are used as they are.
        In the last two, commit_loss is zeros (B,) in h's dtype (int64 for indices: diffusers').
        """
        if not force_not_quantize:
            quant, commit_loss, _ = self.quantize(h)
        elif self._config["lookup_from_codebook"]:
            if shape is None:
                raise ValueError("VQModel.decode: with lookup_from_codebook, force_not_quantize="
                                 "True decodes code indices and needs shape=(B, h, w, C)")
            quant = self.quantize.get_codebook_entry(h, shape)
            commit_loss = np.zeros(h.shape[0], dtype=h.dtype)
        else:
            check_floating("VQModel.decode: h", h)
            quant = h
            commit_loss = np.zeros(h.shape[0], dtype=h.dtype)
        dec = self.decoder(self.post_quant_conv(quant), None)
        return DecoderOutput(sample=dec, commit_loss=commit_loss) if return_dict \
            else (dec, commit_loss)

    def forward(self, sample, return_dict=True):
        """Encode, quantise and decode: sample (B, in_channels, H, W) -> `DecoderOutput(sample
        (B, out_channels, H', W'), commit_loss)` (or the tuple with return_dict=False). In
        training mode this is the call `backward` differentiates."""
        h = self.encode(sample).latents
        dec = self.decode(h)
        self._record(dec.sample, None)
        return dec if return_dict else (dec.sample, dec.commit_loss)

    def backward(self, grad_out, grad_commit_loss=None):
        """Gradients of the last `forward`: grad_out dL/d sample, grad_commit_loss dL/d commit_loss
        (a number; None if the loss did not enter L). Returns dL/d input sample; every parameter's
        gradient accumulates in `grads()` (the codebook's only through the loss)."""
        self._recall(grad_out)
        d = self.post_quant_conv.backward(self.decoder.backward(grad_out))
        d = self.quantize.backward(d, grad_commit_loss)
        return self.encoder.backward(self.quant_conv.backward(d))
