"""uvit_numpy: the NumPy reference of the U-ViT family (imports NumPy and SciPy only, never torch)."""

from . import functional
from .layers import (GEGLU, GELU, Attention, Conv2d, ConvTranspose2d, Dropout, Embedding,
                     GlobalResponseNorm, LayerNorm, Linear, QKVAttention, RMSNorm, SiLU,
                     TimestepEmbedding)
from .module import Module, ModuleList, Sequential
from .uvit import UViT, UViTText

__all__ = [
    "functional", "Module", "ModuleList", "Sequential", "Linear", "Embedding", "LayerNorm",
    "RMSNorm", "GlobalResponseNorm", "SiLU", "GELU", "GEGLU", "Dropout", "Conv2d",
    "ConvTranspose2d", "Attention", "QKVAttention", "TimestepEmbedding",
]
__all__ += ["UViT", "UViTText"]
