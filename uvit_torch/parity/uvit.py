"""Parity cases for U-ViT (see `parity.py`): its blocks one by one, then whole models in every
option (class labels, text tokens, no long skips, no final conv, the time MLP, patch sizes 2 and 4,
3 and 4 channels, integer timesteps), the paper's ablation variants (`ablation_cases`: the other
long-skip joins, AdaLN time, the conv before the linear, the convolutional patch embedding, 2-D
sinusoidal positions), and the paper's CIFAR-10 model (a slow case: `--all`).

Weights: every parameter is redrawn at a scale where each term matters (weights N(0, 1/fan_in),
norm weights 1 + 0.2 N(0, 1), biases 0.2 N(0, 1), pos_embed and label table 0.5 N(0, 1)); the
paper's own init (std 0.02, zero biases) would leave attention nearly uniform and hide mistakes.
"""

import functools
import zlib

import numpy as np
import torch

from uvit_numpy import uvit as N

from .. import uvit as T
from .case import Case
from .harness import TORCH_DTYPE, numpy_state_dict

SMALL = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=4)
TEXT = dict(SMALL, in_chans=4, clip_dim=24, num_clip_token=5)


def _rng(name, batch):
    return np.random.default_rng(zlib.crc32(f"{name}/{batch}".encode()))


@torch.no_grad()
def randomize_uvit_(module, seed=0):
    """Redraw every parameter of a U-ViT module at a scale where it matters (see the module doc).
    Returns the module."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if name.endswith("pos_embed") or name.startswith("label_emb"):
            value = 0.5 * noise
        elif p.ndim >= 2:
            value = noise / p[0].numel() ** 0.5              # fan_in = in features x kernel
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + 0.2 * noise
        else:
            value = 0.2 * noise
        p.copy_(value)
    return module


def uvit_pair(torch_cls, numpy_cls, args=(), kwargs=None, dtype=np.float64, seed=0):
    """(numpy_module, torch_module) holding the same random weights (eval mode)."""
    dtype, kwargs = np.dtype(dtype), kwargs or {}
    with torch.device("meta"):                # skip torch's init: every value is redrawn below
        theirs = torch_cls(*args, dtype=TORCH_DTYPE[dtype], **kwargs)
    theirs = randomize_uvit_(theirs.to_empty(device="cpu"), seed).eval()
    ours = numpy_cls(*args, dtype=dtype, **kwargs).eval()
    ours.load_state_dict(numpy_state_dict(theirs))
    return ours, theirs


def model_inputs(model, rng, batch, dtype, int_times=False):
    """(x, timesteps[, y or context]) for a numpy UViT/UViTText; labels/text only if it has them."""
    x = rng.standard_normal((batch, model.in_chans, model.img_size, model.img_size)).astype(dtype)
    t = (rng.integers(0, 1000, size=batch) if int_times
         else rng.uniform(0, 1000, size=batch).astype(dtype))
    if isinstance(model, N.UViTText):
        ctx = rng.standard_normal((batch, model.num_clip_token, model.clip_dim)).astype(dtype)
        return x, t, ctx
    if model.num_classes > 0:
        return x, t, rng.integers(0, model.num_classes, size=batch)
    return x, t


def module_case(name, torch_cls, numpy_cls, args, kwargs, shapes):
    """A block: random weights, random inputs of shapes (batch, *shape) for each shape."""
    def build(dtype, batch):
        ours, theirs = uvit_pair(torch_cls, numpy_cls, args, kwargs, dtype)
        rng = _rng(name, batch)
        xs = tuple(rng.standard_normal((batch, *s)).astype(dtype) for s in shapes)
        return ours, theirs, xs
    return Case(name, build)


def model_case(name, torch_cls, numpy_cls, kwargs, int_times=False, slow=False, batches=(1, 3)):
    """A whole model with random weights (built once per dtype), on random inputs."""
    @functools.lru_cache(maxsize=1)
    def pair(dtype):
        return uvit_pair(torch_cls, numpy_cls, (), kwargs, dtype)

    def build(dtype, batch):
        ours, theirs = pair(np.dtype(dtype))
        return ours, theirs, model_inputs(ours, _rng(name, batch), batch, dtype, int_times)
    text = numpy_cls is N.UViTText
    case = Case(name, build, batches=batches, slow=slow,
                grad_inputs=(0, 2) if text else (0,))                    # x [, context]
    case.pair = pair          # (dtype) -> (numpy, torch) models; `case.pair.cache_clear()` frees
    return case


def cifar10_case():
    return model_case("UViT cifar10_uvit_small (44M)", T.UViT, N.UViT,
                      N.CONFIGS["cifar10_uvit_small"], slow=True,
                      batches=(2,))          # full size once per dtype; batch 1 and 3: tiny ones


def ablation_cases():
    """The paper's ablation variants (Sec. 3.1, Fig. 2), as options of UViT: blocks and models."""
    D = 48
    return [
        module_case("U-ViT Block(48, skip add)", T.Block, N.Block, (D, 4),
                    {"skip": True, "skip_mode": "add"}, [(7, D), (7, D)]),
        module_case("U-ViT Block(48, skip project_skip)", T.Block, N.Block, (D, 4),
                    {"skip": True, "skip_mode": "project_skip"}, [(7, D), (7, D)]),
        module_case("U-ViT Block(48, skip project_sum)", T.Block, N.Block, (D, 4),
                    {"skip": True, "skip_mode": "project_sum"}, [(7, D), (7, D)]),
        module_case("U-ViT AdaLN(48)", T.AdaLN, N.AdaLN, (D,), {}, [(7, D), (D,)]),
        module_case("U-ViT AdaLNBlock(48, skip)", T.AdaLNBlock, N.AdaLNBlock, (D, 4),
                    {"skip": True}, [(7, D), (7, D), (D,)]),
        module_case("U-ViT ConvPatchEmbed P=4 (3 -> 48)", T.ConvPatchEmbed, N.ConvPatchEmbed,
                    (4, 3, D), {}, [(3, 8, 12)]),
        model_case("UViT small, skip_mode=add", T.UViT, N.UViT, dict(SMALL, skip_mode="add")),
        model_case("UViT small, skip_mode=project_skip", T.UViT, N.UViT,
                   dict(SMALL, skip_mode="project_skip")),
        model_case("UViT small, skip_mode=project_sum", T.UViT, N.UViT,
                   dict(SMALL, skip_mode="project_sum")),
        model_case("UViT small, time_mode=adaln, classes", T.UViT, N.UViT,
                   dict(SMALL, time_mode="adaln", num_classes=10)),
        model_case("UViT small, adaln, time MLP, uncond", T.UViT, N.UViT,
                   dict(SMALL, time_mode="adaln", mlp_time_embed=True)),
        model_case("UViT small, conv_position=before", T.UViT, N.UViT,
                   dict(SMALL, conv_position="before", num_classes=10)),
        model_case("UViT P=4, patch_embed_type=conv", T.UViT, N.UViT,
                   dict(SMALL, img_size=16, patch_size=4, num_classes=10,
                        patch_embed_type="conv")),
        model_case("UViT small, pos_embed_type=sincos2d", T.UViT, N.UViT,
                   dict(SMALL, pos_embed_type="sincos2d", num_classes=10)),
        model_case("UViT small, every variant at once", T.UViT, N.UViT,
                   dict(SMALL, num_classes=10, skip_mode="project_sum", time_mode="adaln",
                        conv_position="before", patch_embed_type="conv",
                        pos_embed_type="sincos2d")),
    ]


def cases():
    D = 48
    return [
        # the blocks
        module_case("U-ViT PatchEmbed P=2 (3 -> 48)", T.PatchEmbed, N.PatchEmbed, (2, 3, D), {},
                    [(3, 8, 12)]),
        module_case("U-ViT PatchEmbed P=4 (4 -> 48)", T.PatchEmbed, N.PatchEmbed, (4, 4, D), {},
                    [(4, 16, 8)]),
        module_case("U-ViT Mlp(48, 192)", T.Mlp, N.Mlp, (D, 4 * D), {}, [(7, D)]),
        module_case("U-ViT Attention(48, 4 heads)", T.Attention, N.Attention, (D, 4), {},
                    [(7, D)]),
        module_case("U-ViT Block(48)", T.Block, N.Block, (D, 4), {}, [(7, D)]),
        module_case("U-ViT Block(48, skip)", T.Block, N.Block, (D, 4), {"skip": True},
                    [(7, D), (7, D)]),
        module_case("U-ViT Block qkv_bias, mlp_ratio 2", T.Block, N.Block, (D, 6),
                    {"mlp_ratio": 2.0, "qkv_bias": True, "skip": True}, [(7, D), (7, D)]),
        # whole models, small
        model_case("UViT small P=2 C=3", T.UViT, N.UViT, SMALL),
        model_case("UViT small, 10 classes", T.UViT, N.UViT, dict(SMALL, num_classes=10)),
        model_case("UViT small, skip=False", T.UViT, N.UViT, dict(SMALL, skip=False)),
        model_case("UViT small, conv=False", T.UViT, N.UViT, dict(SMALL, conv=False)),
        model_case("UViT small, mlp_time_embed", T.UViT, N.UViT,
                   dict(SMALL, mlp_time_embed=True)),
        model_case("UViT P=4 C=4, qkv_bias, depth 5", T.UViT, N.UViT,
                   dict(SMALL, img_size=16, patch_size=4, in_chans=4, depth=5, qkv_bias=True)),
        model_case("UViT small, classes, int times", T.UViT, N.UViT,
                   dict(SMALL, num_classes=7, mlp_time_embed=True), int_times=True),
        model_case("UViTText small (S=5, clip 24)", T.UViTText, N.UViTText, TEXT),
        model_case("UViTText no skip/conv, time MLP", T.UViTText, N.UViTText,
                   dict(TEXT, skip=False, conv=False, mlp_time_embed=True)),
        # the paper's ablation variants
        *ablation_cases(),
        # the paper's CIFAR-10 model
        cifar10_case(),
    ]
