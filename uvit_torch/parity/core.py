"""Parity cases for the core ops (see `parity.py`): odd channel counts, non-square grids, large
attention logits and near-zero inputs to the norms, so that each numerical trap is exercised."""

import zlib

import numpy as np
import torch
import torch.nn.functional as TF

import uvit_numpy.functional as NF
import uvit_numpy.layers as N

from .. import functional as UF
from .. import layers as T
from .case import Case
from .harness import make_pair


def _rng(name, batch):
    return np.random.default_rng(zlib.crc32(f"{name}/{batch}".encode()))


def module_case(name, torch_cls, numpy_cls, args, kwargs, input_shape, scale=1.0, batches=(1, 3)):
    """A case for a module pair: random weights copied from torch to NumPy, one random input of
    shape (batch, *input_shape) times `scale`."""
    def build(dtype, batch):
        ours, theirs = make_pair(torch_cls, numpy_cls, *args, dtype=dtype, **kwargs)
        x = (scale * _rng(name, batch).standard_normal((batch, *input_shape))).astype(dtype)
        return ours, theirs, (x,)
    return Case(name, build, batches)


def function_case(name, ours, theirs, shapes, scale=1.0, batches=(1, 3)):
    """A case for a pair of functions of random inputs of shapes (batch, *shape) times `scale`."""
    def build(dtype, batch):
        rng = _rng(name, batch)
        xs = tuple((scale * rng.standard_normal((batch, *s))).astype(dtype) for s in shapes)
        return ours, theirs, xs
    return Case(name, build, batches, module=False)


def _embedding_case():
    name = "Embedding(50, 17)"

    def build(dtype, batch):
        ours, theirs = make_pair(T.Embedding, N.Embedding, 50, 17, dtype=dtype)
        ids = _rng(name, batch).integers(0, 50, size=(batch, 4, 6))
        return ours, theirs, (ids,)
    return Case(name, build)


def _grn_near_zero_case():
    """GRN on inputs so small that its 1e-6 (added to the mean of the channel norms) dominates;
    beta = 0 so that the output is not swamped by the shift."""
    name = "GlobalResponseNorm near-zero, beta=0"

    def build(dtype, batch):
        rng = _rng(name, batch)
        x = (1e-8 * rng.standard_normal((batch, 5, 7, 13))).astype(dtype)
        gamma = rng.standard_normal((1, 1, 1, 13)).astype(dtype)
        beta = np.zeros((1, 1, 1, 13), dtype)
        return (lambda v: NF.global_response_norm(v, gamma, beta),
                lambda v: UF.global_response_norm(v, torch.from_numpy(gamma),
                                                  torch.from_numpy(beta)), (x,))
    return Case(name, build, module=False)


def _cross_attention_case(name, bias):
    def build(dtype, batch):
        ours, theirs = make_pair(T.Attention, N.Attention, 30, cross_attention_dim=17, heads=3,
                                 dim_head=10, bias=bias, dtype=dtype)
        rng = _rng(name, batch)
        x = rng.standard_normal((batch, 5, 30)).astype(dtype)
        ctx = rng.standard_normal((batch, 7, 17)).astype(dtype)
        return ours, theirs, (x, ctx)
    return Case(name, build)


def _timestep_case(name, dim, **options):
    def build(dtype, batch):
        t = (_rng(name, batch).uniform(0, 1000, size=(batch,))).astype(dtype)
        return (lambda s: NF.get_timestep_embedding(s, dim, **options),
                lambda s: UF.get_timestep_embedding(s, dim, **options), (t,))
    return Case(name, build, module=False)


def _uvit_timestep_case(name, dim):
    def build(dtype, batch):
        t = (_rng(name, batch).uniform(0, 1000, size=(batch,))).astype(dtype)
        return (lambda s: NF.timestep_embedding(s, dim),
                lambda s: UF.timestep_embedding(s, dim), (t,))
    return Case(name, build, module=False)


def _sdpa(q, k, v):
    return TF.scaled_dot_product_attention(q, k, v)


def cases():
    return [
        # linear maps and embeddings
        module_case("Linear(33, 17)", T.Linear, N.Linear, (33, 17), {}, (5, 33)),
        module_case("Linear(33, 17, bias=False)", T.Linear, N.Linear, (33, 17), {"bias": False},
                    (5, 33)),
        _embedding_case(),
        # norms, with near-zero inputs where eps decides the result
        module_case("LayerNorm(33)", T.LayerNorm, N.LayerNorm, (33,), {}, (5, 33)),
        module_case("LayerNorm(33) near-zero input", T.LayerNorm, N.LayerNorm, (33,),
                    {"eps": 1e-6}, (5, 33), scale=1e-4),
        module_case("LayerNorm(33, affine=False)", T.LayerNorm, N.LayerNorm, (33,),
                    {"elementwise_affine": False}, (5, 33)),
        module_case("RMSNorm(33)", T.RMSNorm, N.RMSNorm, (33, 1e-6), {}, (5, 33)),
        module_case("RMSNorm(33) near-zero input", T.RMSNorm, N.RMSNorm, (33, 1e-6), {},
                    (5, 33), scale=1e-4),
        module_case("RMSNorm(33, affine=False)", T.RMSNorm, N.RMSNorm, (33, 1e-6),
                    {"elementwise_affine": False}, (5, 33)),
        module_case("RMSNorm(33, bias=True)", T.RMSNorm, N.RMSNorm, (33, 1e-6), {"bias": True},
                    (5, 33)),
        module_case("GlobalResponseNorm(13)", T.GlobalResponseNorm, N.GlobalResponseNorm, (13,),
                    {}, (5, 7, 13)),
        _grn_near_zero_case(),
        # activations
        module_case("GELU exact", T.GELU, N.GELU, (), {}, (7, 33), scale=3.0),
        module_case("GELU tanh", T.GELU, N.GELU, (), {"approximate": "tanh"}, (7, 33), scale=3.0),
        module_case("GEGLU(33, 21)", T.GEGLU, N.GEGLU, (33, 21), {}, (5, 33)),
        module_case("SiLU", T.SiLU, N.SiLU, (), {}, (7, 33), scale=3.0),
        function_case("softmax large logits", lambda x: NF.softmax(x, -1),
                      lambda x: torch.softmax(x, -1), [(4, 9)], scale=1000.0),
        module_case("Dropout(0.3) eval", T.Dropout, N.Dropout, (0.3,), {}, (7, 33)),
        # attention
        function_case("scaled_dot_product_attention", NF.scaled_dot_product_attention, _sdpa,
                      [(3, 5, 8), (3, 7, 8), (3, 7, 8)]),
        function_case("sdpa large logits", NF.scaled_dot_product_attention, _sdpa,
                      [(3, 5, 8), (3, 7, 8), (3, 7, 8)], scale=30.0),
        module_case("Attention self (30, 3 heads)", T.Attention, N.Attention, (30,),
                    {"heads": 3, "dim_head": 10}, (5, 30)),
        module_case("Attention self, I < C", T.Attention, N.Attention, (32,),
                    {"heads": 3, "dim_head": 10, "bias": True}, (6, 32)),
        _cross_attention_case("Attention cross (30 <- 17)", bias=False),
        _cross_attention_case("Attention cross, bias", bias=True),
        module_case("QKVAttention(48, 4 heads)", T.QKVAttention, N.QKVAttention, (48, 4),
                    {"qkv_bias": True}, (6, 48)),
        module_case("QKVAttention qk_scale, big x", T.QKVAttention, N.QKVAttention, (48, 4),
                    {"qk_scale": 0.5}, (6, 48), scale=10.0),
        # convolutions
        module_case("Conv2d 1x1 (5 -> 7)", T.Conv2d, N.Conv2d, (5, 7, 1), {}, (5, 6, 9)),
        module_case("Conv2d 3x3 pad 1 (5 -> 7)", T.Conv2d, N.Conv2d, (5, 7, 3), {"padding": 1},
                    (5, 6, 9)),
        module_case("Conv2d depthwise 3x3 (7)", T.Conv2d, N.Conv2d, (7, 7, 3),
                    {"padding": 1, "groups": 7}, (7, 6, 9)),
        module_case("Conv2d 3x3 groups=3 (6 -> 9)", T.Conv2d, N.Conv2d, (6, 9, 3),
                    {"padding": 1, "groups": 3}, (6, 5, 7)),
        module_case("Conv2d 2x2 stride 2 (5 -> 7)", T.Conv2d, N.Conv2d, (5, 7, 2), {"stride": 2},
                    (5, 6, 10)),
        module_case("Conv2d 3x3 stride 2 pad 1", T.Conv2d, N.Conv2d, (5, 7, 3),
                    {"stride": 2, "padding": 1}, (5, 7, 9)),
        module_case("ConvTranspose2d 2x2 stride 2", T.ConvTranspose2d, N.ConvTranspose2d,
                    (5, 7, 2), {"stride": 2}, (5, 3, 4)),
        module_case("ConvTranspose2d 3x3 s2 p1", T.ConvTranspose2d, N.ConvTranspose2d,
                    (5, 7, 3), {"stride": 2, "padding": 1}, (5, 3, 4)),
        # timestep embeddings
        _timestep_case("get_timestep_embedding default", 32),
        _timestep_case("get_timestep_embedding flip, shift 0", 32, flip_sin_to_cos=True,
                       downscale_freq_shift=0),
        _timestep_case("get_timestep_embedding odd, scale", 33, scale=0.5, max_period=100),
        _uvit_timestep_case("timestep_embedding (U-ViT)", 64),
        _uvit_timestep_case("timestep_embedding odd dim", 31),
        module_case("TimestepEmbedding(24, 40)", T.TimestepEmbedding, N.TimestepEmbedding,
                    (24, 40), {}, (24,)),
        # patches
        function_case("patchify P=2", lambda x: NF.patchify(x, 2), lambda x: UF.patchify(x, 2),
                      [(3, 6, 8)]),
        function_case("unpatchify P=2 (3 x 4 grid)", lambda x: NF.unpatchify(x, 3, (3, 4)),
                      lambda x: UF.unpatchify(x, 3, (3, 4)), [(12, 12)]),
    ]
