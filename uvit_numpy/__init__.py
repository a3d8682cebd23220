"""uvit_numpy: the NumPy reference of the U-ViT family (NumPy and SciPy only, never torch)."""

from . import functional, maskgit
from .layers import (GEGLU, GELU, Attention, Conv2d, ConvTranspose2d, Dropout, Embedding,
                     GlobalResponseNorm, LayerNorm, Linear, QKVAttention, RMSNorm, SiLU,
                     TimestepEmbedding)
from .module import Module, ModuleList, Sequential
from .uvit import UViT, UViTText
from .uvit2d import (AdaLayerNormContinuous, BasicTransformerBlock, ConvMlmLayer, ConvNextBlock,
                     Downsample2D, FeedForward, SkipFFTransformerBlock, Upsample2D,
                     UVit2DConvEmbed, UVit2DModel, UVitBlock)

__all__ = [
    "functional", "maskgit", "Module", "ModuleList", "Sequential", "Linear", "Embedding",
    "LayerNorm", "RMSNorm", "GlobalResponseNorm", "SiLU", "GELU", "GEGLU", "Dropout", "Conv2d",
    "ConvTranspose2d", "Attention", "QKVAttention", "TimestepEmbedding",
]
__all__ += ["UViT", "UViTText"]
__all__ += ["UVit2DModel", "UVit2DConvEmbed", "UVitBlock", "ConvNextBlock", "ConvMlmLayer",
            "SkipFFTransformerBlock", "BasicTransformerBlock", "FeedForward",
            "AdaLayerNormContinuous", "Downsample2D", "Upsample2D"]
