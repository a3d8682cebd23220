"""uvit_torch: the PyTorch port of uvit_numpy, with the same class and parameter names."""

from . import functional, maskgit
from .layers import (GEGLU, GELU, Attention, Conv2d, ConvTranspose2d, Dropout, Embedding,
                     GlobalResponseNorm, LayerNorm, Linear, QKVAttention, RMSNorm, SiLU,
                     TimestepEmbedding)
from .uvit import UViT, UViTText
from .uvit2d import (AdaLayerNormContinuous, BasicTransformerBlock, ConvMlmLayer, ConvNextBlock,
                     Downsample2D, FeedForward, SkipFFTransformerBlock, Upsample2D,
                     UVit2DConvEmbed, UVit2DModel, UVitBlock)

__all__ = [
    "functional", "maskgit", "Linear", "Embedding", "LayerNorm", "RMSNorm", "GlobalResponseNorm",
    "SiLU",
    "GELU", "GEGLU", "Dropout", "Conv2d", "ConvTranspose2d", "Attention", "QKVAttention",
    "TimestepEmbedding",
]
__all__ += ["UViT", "UViTText"]
__all__ += ["UVit2DModel", "UVit2DConvEmbed", "UVitBlock", "ConvNextBlock", "ConvMlmLayer",
            "SkipFFTransformerBlock", "BasicTransformerBlock", "FeedForward",
            "AdaLayerNormContinuous", "Downsample2D", "Upsample2D"]

# The autoencoders (NCHW blocks in `vae`; their Downsample2D/Upsample2D are not uvit2d's above)
from . import vae  # noqa: E402
from .layers import GroupNorm  # noqa: E402
from .vq_model import VectorQuantizer, VQModel  # noqa: E402
from .autoencoder import FrozenAutoencoderKL  # noqa: E402

__all__ += ["vae", "GroupNorm", "VQModel", "VectorQuantizer", "FrozenAutoencoderKL"]
