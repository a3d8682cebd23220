"""uvit_numpy: the NumPy reference of the U-ViT family (NumPy and SciPy only, never torch).

Every name below loads on first use (PEP 562): `import uvit_numpy` imports nothing but this
file, and `uvit_numpy.UViT`, `from uvit_numpy import UViT` or `uvit_numpy.vae` import the module
that defines it then. So a command that needs a moment before its heavy imports has it: the
grader starts its sandbox, which imports NumPy and SciPy in a process of its own, while it
imports them itself (`exercises.sandbox`).
"""

import importlib
import sys

# module -> the names this package gives from it
_EXPORTS = {
    "module": ("Module", "ModuleList", "Sequential"),
    "layers": ("Linear", "Embedding", "LayerNorm", "RMSNorm", "GlobalResponseNorm", "GroupNorm",
               "SiLU", "GELU", "GEGLU", "Dropout", "Conv2d", "ConvTranspose2d", "Attention",
               "QKVAttention", "TimestepEmbedding"),
    "uvit": ("UViT", "UViTText"),
    "uvit2d": ("UVit2DModel", "UVit2DConvEmbed", "UVitBlock", "ConvNextBlock", "ConvMlmLayer",
               "SkipFFTransformerBlock", "BasicTransformerBlock", "FeedForward",
               "AdaLayerNormContinuous", "Downsample2D", "Upsample2D"),
    # the autoencoders (NCHW blocks in `vae`; their Downsample2D/Upsample2D are not uvit2d's)
    "vq_model": ("VQModel", "VectorQuantizer"),
    "autoencoder": ("FrozenAutoencoderKL",),
}
__all__ = ["functional", "maskgit", "vae", *(n for names in _EXPORTS.values() for n in names)]


def lazy_names(package, exports):
    """The `__getattr__` and `__dir__` of a package whose names load on first use: `exports`
    ({module: names it gives}) and any submodule of `package` (`uvit_numpy.sampling`)."""
    module_of = {name: module for module, names in exports.items() for name in names}
    namespace = sys.modules[package].__dict__

    def __getattr__(name):
        if name in module_of:
            value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        elif name.isidentifier() and not name.startswith("_"):
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":       # the submodule exists but failed
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value                           # found directly from now on
        return value

    def __dir__():
        return sorted({*namespace, *module_of})

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
