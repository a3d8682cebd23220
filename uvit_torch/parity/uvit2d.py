"""Parity cases for `UVit2DModel` (aMUSEd) and every block it is made of (see `parity.py`).

Two families share one list of blocks:
* `cases(config)`: the NumPy reference vs the torch port (weights copied torch -> NumPy);
* `diffusers_cases(config)`: the torch port vs diffusers' own classes, with diffusers' weights
  loaded into the port (`python -m uvit_torch.parity --against-diffusers`). These run in float32
  only: in float64 diffusers keeps two float32 islands (RMSNorm's mean square, the micro-condition
  sinusoid) that alone cost ~1e-7 of relative error; the float64 comparison, with those islands
  lifted, lives in tests/test_uvit2d_diffusers.py.

Block sizes come from a named config ("tiny" by default; `--config amused-256` runs every block at
aMUSEd's sizes). Weights: torch's default init, with every constant-initialised parameter (norm
weights 1, GlobalResponseNorm's gamma/beta 0, LayerNorm biases 0) perturbed by 0.2 N(0, 1) so that
it matters. Blocks are channel-last (B, H, W, C) in both packages; diffusers' conv blocks are
wrapped with the two permutes.
"""

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

import uvit_numpy.layers as NL
import uvit_numpy.uvit2d as N

from .. import layers as TL
from .. import uvit2d as T
from .case import Case
from .harness import TORCH_DTYPE, make_pair, randomize_, to_torch

# aMUSEd-like micro-conditions: [width, height, crop x, crop y, aesthetic score]
MICRO_CONDS = ((256.0, 256.0, 0.0, 0.0, 6.0), (512.0, 192.0, 3.0, 7.0, 5.5),
               (1024.0, 512.0, 64.0, 0.0, 6.5))


def _rng(name, batch):
    return np.random.default_rng(zlib.crc32(f"uvit2d/{name}/{batch}".encode()))


def micro_conds(batch, count=5, dtype=np.float64):
    """(batch, count) micro-conditions cycling through aMUSEd-like rows."""
    rows = [list(MICRO_CONDS[b % len(MICRO_CONDS)]) for b in range(batch)]
    rows = [(r * (count // len(r) + 1))[:count] for r in rows]
    return np.array(rows, dtype=dtype)


def model_inputs(config, rng, batch, dtype, grid=(4, 6), text_len=7):
    """(input_ids, encoder_hidden_states, pooled_text_emb, micro_conds) as NumPy arrays."""
    H, W = grid
    M = config["micro_cond_embed_dim"] // config["micro_cond_encode_dim"]
    ids = rng.integers(0, config["vocab_size"], size=(batch, H, W))
    ehs = rng.standard_normal((batch, text_len, config["encoder_hidden_size"])).astype(dtype)
    pooled = rng.standard_normal((batch, config["cond_embed_dim"])).astype(dtype)
    return ids, ehs, pooled, micro_conds(batch, M, dtype)


# --------------------------------------------------------------------------------------------------
# The blocks, with their arguments at a config's sizes
# --------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """One block: our two classes, their arguments, a maker of (channel-last) NumPy inputs and,
    for the diffusers comparison, diffusers' class path and a call adapter."""
    name: str
    torch_cls: type
    numpy_cls: type
    args: tuple
    kwargs: dict
    inputs: Callable                   # (rng, batch, dtype) -> tuple of NumPy arrays
    diffusers: str = ""                # "module:Class" under diffusers.models, "" if none
    call: Callable = None              # (diffusers_module, *torch_inputs) -> output, our layout
    diffusers_kwargs: dict = field(default_factory=dict)


def _nchw(x):
    return x.permute(0, 3, 1, 2)


def _nhwc(x):
    return x.permute(0, 2, 3, 1)


def blocks(config="tiny"):
    """The blocks of UVit2DModel at the sizes of `config` (a name or a dict)."""
    c = N.resolve_config(config)
    D, Cb, Ci = c["hidden_size"], c["block_out_channels"], c["in_channels"]
    eps, aff, bias = c["layer_norm_eps"], c["ln_elementwise_affine"], c["use_bias"]
    hb, h = c["block_num_heads"], c["num_attention_heads"]
    S = 7

    def normal(*shape):
        return lambda rng, b, dt: (rng.standard_normal((b, *shape)).astype(dt),)

    def x_and(shape, *others):
        def make(rng, b, dt):
            return tuple(rng.standard_normal((b, *s)).astype(dt) for s in (shape, *others))
        return make

    def ids(rng, b, dt):
        return (rng.integers(0, c["vocab_size"], size=(b, 4, 6)),)

    conv_call = (lambda m, x, cond: _nhwc(m(_nchw(x), cond)))
    grid_call = (lambda m, x: _nhwc(m(_nchw(x))))
    basic_args = dict(dim=D, num_attention_heads=h, attention_head_dim=D // h,
                      cross_attention_dim=D, attention_bias=bias, norm_type="ada_norm_continuous",
                      ada_norm_continous_conditioning_embedding_dim=D, norm_elementwise_affine=aff,
                      norm_eps=eps, ada_norm_bias=bias, ff_inner_dim=c["intermediate_size"],
                      ff_bias=bias, attention_out_bias=bias)
    skip_args = (Cb, hb, Cb // hb, D, bias, 0.0, Cb)
    skip_kwargs = dict(attention_bias=bias, attention_out_bias=bias)
    down = dict(use_conv=True, padding=0, name="Conv2d_0", kernel_size=2, norm_type="rms_norm",
                eps=eps, elementwise_affine=aff, bias=bias)
    up = dict(use_conv_transpose=True, kernel_size=2, padding=0, name="conv",
              norm_type="rms_norm", eps=eps, elementwise_affine=aff, bias=bias, interpolate=False)
    uvit_args = (Cb, c["num_res_blocks"], D, 0.0, aff, eps, bias, hb, 0.0)
    return [
        Block("UVit2DConvEmbed", T.UVit2DConvEmbed, N.UVit2DConvEmbed,
              (Ci, Cb, c["vocab_size"], aff, eps, bias), {}, ids,
              "unets.uvit_2d:UVit2DConvEmbed", lambda m, x: _nhwc(m(x))),
        Block("TimestepEmbedding (cond_embed)", TL.TimestepEmbedding, NL.TimestepEmbedding,
              (c["micro_cond_embed_dim"] + c["cond_embed_dim"], D), {"sample_proj_bias": bias},
              normal(c["micro_cond_embed_dim"] + c["cond_embed_dim"]),
              "embeddings:TimestepEmbedding", lambda m, x: m(x)),
        Block("ConvNextBlock", T.ConvNextBlock, N.ConvNextBlock, (Cb, eps, aff, bias, 0.0, D), {},
              x_and((4, 6, Cb), (D,)), "unets.uvit_2d:ConvNextBlock", conv_call),
        Block("ConvNextBlock odd grid 5x7", T.ConvNextBlock, N.ConvNextBlock,
              (Cb, eps, aff, bias, 0.0, D), {}, x_and((5, 7, Cb), (D,)),
              "unets.uvit_2d:ConvNextBlock", conv_call),
        Block("Attention cross (SkipFF attn1)", T.Attention, N.Attention, (Cb,),
              dict(cross_attention_dim=Cb, heads=hb, dim_head=Cb // hb, bias=bias,
                   out_bias=bias), x_and((24, Cb), (S, Cb)),
              "attention_processor:Attention", lambda m, x, ctx: m(x, ctx)),
        Block("Attention self (transformer attn1)", T.Attention, N.Attention, (D,),
              dict(heads=h, dim_head=D // h, bias=bias, out_bias=bias), normal(24, D),
              "attention_processor:Attention", lambda m, x: m(x)),
        Block("SkipFFTransformerBlock", T.SkipFFTransformerBlock, N.SkipFFTransformerBlock,
              skip_args, skip_kwargs, x_and((24, Cb), (S, D)),
              "attention:SkipFFTransformerBlock", lambda m, x, ctx: m(x, ctx, None)),
        Block("SkipFFTransformerBlock no kv_mapper", T.SkipFFTransformerBlock,
              N.SkipFFTransformerBlock, (Cb, hb, Cb // hb, Cb, bias, 0.0, Cb), skip_kwargs,
              x_and((24, Cb), (S, Cb)), "attention:SkipFFTransformerBlock",
              lambda m, x, ctx: m(x, ctx, None)),
        Block("AdaLayerNormContinuous rms_norm", T.AdaLayerNormContinuous,
              N.AdaLayerNormContinuous, (D, D, aff, eps, bias, "rms_norm"), {},
              x_and((24, D), (D,)), "normalization:AdaLayerNormContinuous",
              lambda m, x, cond: m(x, cond)),
        Block("AdaLayerNormContinuous layer_norm", T.AdaLayerNormContinuous,
              N.AdaLayerNormContinuous, (D, D, aff, eps, bias, "layer_norm"), {},
              x_and((24, D), (D,)), "normalization:AdaLayerNormContinuous",
              lambda m, x, cond: m(x, cond)),
        Block("FeedForward geglu", T.FeedForward, N.FeedForward, (D,),
              dict(inner_dim=c["intermediate_size"], bias=bias), normal(24, D),
              "attention:FeedForward", lambda m, x: m(x)),
        Block("BasicTransformerBlock ada_norm_continuous", T.BasicTransformerBlock,
              N.BasicTransformerBlock, (), basic_args, x_and((24, D), (S, D), (D,)),
              "attention:BasicTransformerBlock",
              lambda m, x, ctx, cond: m(x, encoder_hidden_states=ctx,
                                        added_cond_kwargs={"pooled_text_emb": cond})),
        Block("BasicTransformerBlock layer_norm", T.BasicTransformerBlock,
              N.BasicTransformerBlock, (D, h, D // h), dict(cross_attention_dim=D),
              x_and((24, D), (S, D)), "attention:BasicTransformerBlock",
              lambda m, x, ctx: m(x, encoder_hidden_states=ctx)),
        Block("Downsample2D 2x2 rms", T.Downsample2D, N.Downsample2D, (Cb,), down,
              x_and((4, 6, Cb)), "downsampling:Downsample2D", grid_call),
        Block("Downsample2D 2x2 rms odd grid 5x7", T.Downsample2D, N.Downsample2D, (Cb,), down,
              x_and((5, 7, Cb)), "downsampling:Downsample2D", grid_call),
        Block("Upsample2D 2x2 transposed rms", T.Upsample2D, N.Upsample2D, (Cb,), up,
              x_and((3, 5, Cb)), "upsampling:Upsample2D", grid_call),
        # the other options of diffusers' samplers (not used by UVit2DModel)
        Block("Downsample2D avg pool", T.Downsample2D, N.Downsample2D, (Cb,), {},
              x_and((5, 6, Cb)), "downsampling:Downsample2D", grid_call),
        Block("Downsample2D conv 3x3 pad 1, ln_norm", T.Downsample2D, N.Downsample2D, (Cb,),
              dict(use_conv=True, out_channels=Ci, norm_type="ln_norm", eps=1e-5,
                   elementwise_affine=True), x_and((5, 6, Cb)), "downsampling:Downsample2D",
              grid_call),
        Block("Upsample2D nearest + conv 3x3", T.Upsample2D, N.Upsample2D, (Cb,),
              dict(use_conv=True, out_channels=Ci, name="Conv2d_0"), x_and((3, 2, Cb)),
              "upsampling:Upsample2D", grid_call),
        Block("Upsample2D transposed 4x4 pad 1", T.Upsample2D, N.Upsample2D, (Cb,),
              dict(use_conv_transpose=True, norm_type="rms_norm", eps=eps,
                   elementwise_affine=True), x_and((3, 2, Cb)), "upsampling:Upsample2D",
              grid_call),
        Block("UVitBlock down (downsample)", T.UVitBlock, N.UVitBlock, uvit_args + (True, False),
              {}, x_and((4, 6, Cb), (D,), (S, D)), "unets.uvit_2d:UVitBlock",
              lambda m, x, cond, ctx: _nhwc(m(_nchw(x), cond, ctx, None))),
        Block("UVitBlock up (upsample)", T.UVitBlock, N.UVitBlock, uvit_args + (False, True), {},
              x_and((2, 3, Cb), (D,), (S, D)), "unets.uvit_2d:UVitBlock",
              lambda m, x, cond, ctx: _nhwc(m(_nchw(x), cond, ctx, None))),
        Block("ConvMlmLayer", T.ConvMlmLayer, N.ConvMlmLayer,
              (Cb, Ci, bias, aff, eps, c["codebook_size"]), {}, x_and((4, 6, Cb)),
              "unets.uvit_2d:ConvMlmLayer", lambda m, x: m(_nchw(x))),
    ]


# --------------------------------------------------------------------------------------------------
# Models: the variants the tests cover
# --------------------------------------------------------------------------------------------------
def model_variants(config="tiny"):
    """(name, config overrides, grid, text length) of the full-model cases."""
    if config != "tiny":
        side = N.resolve_config(config)["sample_size"]
        return [(f"UVit2DModel {config} (random weights)", {}, (side, side), 77)]
    return [
        ("UVit2DModel tiny", {}, (4, 6), 7),
        ("UVit2DModel tiny use_bias", {"use_bias": True}, (4, 6), 7),
        ("UVit2DModel tiny no elementwise affine", {"ln_elementwise_affine": False},
         (4, 6), 7),
        ("UVit2DModel tiny bias, no affine", {"use_bias": True, "ln_elementwise_affine": False},
         (6, 4), 3),
        ("UVit2DModel tiny no down/up, 5x7 grid", {"downsample": False, "upsample": False},
         (5, 7), 7),
        ("UVit2DModel tiny hidden = block width", {"hidden_size": 32, "num_attention_heads": 2,
                                                   "use_bias": True}, (4, 4), 1),
        ("UVit2DModel tiny 16x16, 77 text tokens", {}, (16, 16), 77),
    ]


def _model_case(config, name, overrides, grid, text_len, batches=(1, 3), dtypes=None,
                slow=False):
    cfg = N.resolve_config(config, **overrides)

    def build(dtype, batch):
        ours, theirs = make_pair(T.UVit2DModel, N.UVit2DModel, dtype=dtype, **cfg)
        return ours, theirs, model_inputs(cfg, _rng(name, batch), batch, dtype, grid, text_len)
    return Case(name, build, batches, dtypes or ("float64", "float32"), slow,
                grad_inputs=(1, 2))                       # the text and the pooled text



def shared_pair(config, dtype=np.float32, seed=0):
    """(numpy_model, torch_model) of a config holding the *same memory* as weights: the NumPy
    model is initialised (float32 draws, about a second for amused-256), the torch port is built
    on the meta device and takes the arrays as its parameters, then constant parameters are
    perturbed in place (both see it). One copy of the weights for two models."""
    ours = N.UVit2DModel.from_config(config, dtype=dtype, rng=seed).eval()
    with torch.device("meta"):
        theirs = T.UVit2DModel.from_config(config, dtype=TORCH_DTYPE[np.dtype(dtype)])
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()},
                           assign=True)
    randomize_(theirs.eval(), seed)
    for p in theirs.parameters():
        p.requires_grad_(False)
    return ours, theirs


def _big_model_case(config, dtypes=("float32",), slow=True):
    """A published config on random weights, batch 1, its own token grid, 77 text tokens; the two
    models share one copy of the weights (`shared_pair`)."""
    side = N.resolve_config(config)["sample_size"]
    name = f"UVit2DModel {config} (random weights)"

    def build(dtype, batch):
        ours, theirs = shared_pair(config, dtype)
        cfg = N.resolve_config(config)
        return ours, theirs, model_inputs(cfg, _rng(name, batch), batch, dtype, (side, side), 77)
    return Case(name, build, batches=(1,), dtypes=dtypes, slow=slow)


def _block_case(block):
    def build(dtype, batch):
        ours, theirs = make_pair(block.torch_cls, block.numpy_cls, *block.args, dtype=dtype,
                                 **block.kwargs)
        return ours, theirs, block.inputs(_rng(block.name, batch), batch, dtype)
    return Case(block.name, build)


def cases(config="tiny"):
    """NumPy reference vs torch port: every block, then the full models."""
    out = [_block_case(b) for b in blocks(config)]
    if config == "tiny":
        out += [_model_case("tiny", *v) for v in model_variants("tiny")]
        out.append(_big_model_case("amused-256"))
    else:
        out.append(_big_model_case(config, ("float64", "float32"), slow=False))
    return out


# --------------------------------------------------------------------------------------------------
# Against diffusers
# --------------------------------------------------------------------------------------------------
def diffusers_class(path):
    """diffusers.models.<module>.<Class> from "module:Class"."""
    import importlib
    module, cls = path.split(":")
    return getattr(importlib.import_module(f"diffusers.models.{module}"), cls)


def _torch_caller(module):
    """Our torch module as a callable of NumPy inputs (run_case hands NumPy arrays to `ours`)."""
    def call(*xs):
        with torch.no_grad():
            return module(*[to_torch(x) for x in xs])
    return call


def diffusers_pair(block, dtype, seed=0):
    """(our torch module, diffusers module) with diffusers' perturbed weights loaded into ours."""
    tdt = TORCH_DTYPE[np.dtype(dtype)]
    torch.manual_seed(seed)
    theirs = diffusers_class(block.diffusers)(*block.args, **block.kwargs).to(tdt).eval()
    randomize_(theirs, seed)
    ours = block.torch_cls(*block.args, dtype=tdt, **block.kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _diffusers_block_case(block, dtypes):
    def build(dtype, batch):
        ours, theirs = diffusers_pair(block, dtype)
        return (_torch_caller(ours), lambda *xs: block.call(theirs, *xs),
                block.inputs(_rng(block.name, batch), batch, dtype))
    return Case(f"{block.name} vs diffusers", build, dtypes=dtypes)


def diffusers_model_pair(config, dtype, seed=0, **overrides):
    """(our torch UVit2DModel, diffusers' UVit2DModel) with the same perturbed weights."""
    from diffusers import UVit2DModel as DiffusersUVit2DModel
    cfg = N.resolve_config(config, **overrides)
    tdt = TORCH_DTYPE[np.dtype(dtype)]
    torch.manual_seed(seed)
    theirs = DiffusersUVit2DModel(**cfg).to(tdt).eval()
    randomize_(theirs, seed)
    ours = T.UVit2DModel(**cfg, dtype=tdt).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _diffusers_model_case(config, name, overrides, grid, text_len, dtypes, batches=(1, 3)):
    cfg = N.resolve_config(config, **overrides)

    def build(dtype, batch):
        ours, theirs = diffusers_model_pair(config, dtype, **overrides)
        return (_torch_caller(ours), theirs,
                model_inputs(cfg, _rng(name, batch), batch, dtype, grid, text_len))
    return Case(f"{name} vs diffusers", build, batches, dtypes)


def diffusers_cases(config="tiny", dtypes=("float32",)):
    """Torch port vs diffusers: every block, then the full models (float32 by default)."""
    out = [_diffusers_block_case(b, dtypes) for b in blocks(config)]
    batches = (1, 3) if config == "tiny" else (1,)
    out += [_diffusers_model_case(config, *v, dtypes=dtypes, batches=batches)
            for v in model_variants(config)]
    return out
